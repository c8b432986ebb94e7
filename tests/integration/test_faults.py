"""Faults on real processes: nothing accepted is lost, nothing is applied twice.

Each test streams clicks (or comments) with distinct event ids for a few users, breaks one
component mid-stream (``kill -9`` of the worker, a broker restart, a killed Serve replica),
brings it back where the platform would, and checks every user's state through the
worker: ``n_events`` equals the number of distinct events sent (each applied exactly
once, by ``event_id``), the vector store holds exactly the state's vectors, and
recommendations flow again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from typing import Any

import numpy as np
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from deploy.ports import free_port
from deploy.worker import start_worker, stop_worker
from scenerec.kafka import assigned_partitions, client_kwargs, consumer
from tests.integration.conftest import Bus, Services, click, get_json, uid, wait_for

pytestmark = pytest.mark.integration

USERS = 6


def state(services: Services, user: str) -> dict[str, Any] | None:
    status, body = get_json(f"{services.worker_url}/users/{user}/state")
    return body if status == 200 else None


def all_applied(services: Services, sent: dict[str, int]) -> bool:
    for user, n in sent.items():
        st = state(services, user)
        if st is None or st["n_events"] < n:
            return False
    return True


async def stream(
    bus: Bus, catalog: dict[str, Any], users: list[str], n: int, sent: dict[str, int]
) -> None:
    """``n`` clicks round-robin over ``users``, each with a new event id."""
    items = sorted(catalog)
    for k in range(n):
        user = users[k % len(users)]
        item = items[(k * 7) % len(items)]
        await bus.send("events.click", user, click(user, item, catalog[item]["scenes"][0]))
        sent[user] = sent.get(user, 0) + 1
        await asyncio.sleep(0.01)


def progress(services: Services, sent: dict[str, int]) -> str:
    """Per user: events applied / sent, and the worker log's tail, for a failure message."""
    seen = {u: (state(services, u) or {}).get("n_events") for u in sent}
    log_path = services.settings.var_dir / "logs" / "worker.log"
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-60:])
    try:
        with urllib.request.urlopen(f"{services.worker_url}/metrics", timeout=5) as resp:
            lines = resp.read().decode().splitlines()
        lag = "\n".join(
            x
            for x in lines
            if x.startswith(("scenerec_consumer_lag", "scenerec_events_total", "scenerec_refetch"))
        )
        with urllib.request.urlopen(f"{services.worker_url}/debug/tasks", timeout=5) as resp:
            tasks = resp.read().decode()
    except OSError as exc:
        lag = tasks = f"(worker unreachable: {exc})"
    return (
        f"applied/sent per user: { {u: (seen[u], n) for u, n in sent.items()} }\n"
        f"consumer lag and events:\n{lag}\nworker tasks:\n{tasks}\nworker log:\n{tail}"
    )


async def kafka_view(services: Services, users: list[str]) -> str:
    """Where the users' clicks are in Kafka, and the worker group's committed offsets."""
    topic = services.settings.topic("events.click")
    cons = consumer(services.settings, auto_offset_reset="earliest")
    admin = AIOKafkaAdminClient(**client_kwargs(services.settings))
    await cons.start()
    await admin.start()
    try:
        tps = await assigned_partitions(cons, topic)
        end = await cons.end_offsets(tps)
        where: dict[str, set[tuple[int, int]]] = {}
        while any([await cons.position(tp) < end[tp] for tp in tps]):
            for tp, recs in (await cons.getmany(timeout_ms=500)).items():
                for r in recs:
                    user = (r.key or b"").decode()
                    if user in users:
                        where.setdefault(user, set()).add((tp.partition, r.offset))
        committed = await admin.list_consumer_group_offsets(services.settings.app_id)
    finally:
        await cons.stop()
        await admin.close()
    spans = {u: sorted(pos) for u, pos in where.items()}
    ours = {f"{tp.partition}": m.offset for tp, m in committed.items() if tp.topic == topic}
    ends = {tp.partition: off for tp, off in end.items()}
    return f"users' (partition, offset)s: {spans}\nend offsets: {ends}\ncommitted: {ours}"


async def wait_applied(services: Services, sent: dict[str, int], timeout_s: float) -> None:
    try:
        await wait_for(lambda: all_applied(services, sent), timeout_s=timeout_s)
    except TimeoutError:
        try:
            kafka = await kafka_view(services, list(sent))
        except Exception as exc:  # diagnostics must not hide the failure
            kafka = f"(kafka view failed: {exc!r})"
        try:
            debug = get_json(f"{services.worker_url}/debug/consumer")[1]
        except Exception as exc:
            debug = f"(debug/consumer failed: {exc!r})"
        pytest.fail(
            f"not all events applied in {timeout_s:.0f}s; {kafka}\nworker consumer: {debug}\n"
            f"{progress(services, sent)}"
        )


def check_exactly_once(services: Services, sent: dict[str, int]) -> None:
    for user, n in sent.items():
        st = state(services, user)
        assert st is not None, user
        assert st["n_events"] == n, (user, st["n_events"], n)  # none lost, none twice
        assert st["store_consistent"], user


async def test_kill_9_worker_mid_stream_then_restart(
    services: Services, bus: Bus, catalog: dict[str, Any]
) -> None:
    var = services.settings.var_dir
    users = [uid() for _ in range(USERS)]
    sent: dict[str, int] = {}
    producer = asyncio.create_task(stream(bus, catalog, users, 300, sent))
    await wait_for(lambda: sum(sent.values()) >= 100, timeout_s=60)
    stop_worker(var, sig=signal.SIGKILL)  # kill -9: no clean shutdown, no final commit
    await producer
    await asyncio.to_thread(
        start_worker, var, services.settings.worker_web_port, services.env, 180.0
    )
    await wait_applied(services, sent, 120)
    await asyncio.sleep(2)  # a replay of unacked batches would show up as extra counts
    check_exactly_once(services, sent)
    # Recommendations resume: a new click gets a list naming it.
    event = click(users[0], "7", catalog["7"]["scenes"][0], event_id=uuid.uuid4().hex)
    await bus.send("events.click", users[0], event)
    msgs = await bus.collect(
        "recommendations",
        lambda ms: any(m.get("trigger_event_id") == event["event_id"] for m in ms),
        timeout_s=60,
    )
    assert any(m.get("trigger_event_id") == event["event_id"] for m in msgs)


async def test_broker_restart_mid_stream(
    services: Services, bus: Bus, catalog: dict[str, Any]
) -> None:
    if services.broker is None:
        pytest.skip("the broker is not the project's local one (existing cluster/container)")
    users = [uid() for _ in range(USERS)]
    sent: dict[str, int] = {}
    await stream(bus, catalog, users, 60, sent)
    await asyncio.to_thread(services.broker.stop)
    await asyncio.to_thread(services.broker.start)
    # A new producer: the test's own one may have given up while the broker was away.
    async with Bus(services.settings) as bus2:
        await stream(bus2, catalog, users, 60, sent)
    await wait_applied(services, sent, 180)
    await asyncio.sleep(2)
    check_exactly_once(services, sent)


def kill_encoder_replica() -> int:
    """SIGKILL the process of the Serve encoder replica; returns its pid."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    pids = [
        int(line.split()[0])
        for line in out.splitlines()
        if "ServeReplica:encoder:Encoder" in line and str(os.getpid()) != line.split()[0]
    ]
    assert pids, "no encoder replica process found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    return pids[0]


async def test_encoder_replica_killed_while_comments_flow(
    services: Services, bus: Bus, catalog: dict[str, Any]
) -> None:
    users = [uid() for _ in range(USERS)]
    sent: dict[str, int] = {}
    items = sorted(catalog)

    async def comments(n: int) -> None:
        for k in range(n):
            user, item = users[k % len(users)], items[k % len(items)]
            event = {
                **click(user, item, catalog[item]["scenes"][0]),
                "text": f"comment {k}: loved the score",
            }
            await bus.send("events.comment", user, event)
            sent[user] = sent.get(user, 0) + 1
            await asyncio.sleep(0.05)

    producer = asyncio.create_task(comments(80))
    await wait_for(lambda: sum(sent.values()) >= 20, timeout_s=60)
    await asyncio.to_thread(kill_encoder_replica)
    await producer
    # Serve replaces the replica; the worker's encoder calls retry meanwhile.
    await wait_applied(services, sent, 180)
    check_exactly_once(services, sent)
    dead = await bus.collect("events.dlq", lambda _: False, timeout_s=3)
    assert not [d for d in dead if d.get("reason") == "processing_error"]


def start_worker_with(services: Services, **env: str) -> subprocess.CompletedProcess[str]:
    """``scenerec worker`` in the foreground with the services' settings plus ``env``."""
    return subprocess.run(
        [sys.executable, "-m", "scenerec.cli", "worker"],
        env={**os.environ, **services.env, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_unwritable_data_dir_fails_at_start_with_a_clear_error(services: Services) -> None:
    proc = start_worker_with(services, SCENEREC_VAR_DIR="/proc/scenerec-cannot-write")
    assert proc.returncode != 0
    assert "/proc/scenerec-cannot-write cannot be used" in proc.stderr
    assert "SCENEREC_VAR_DIR" in proc.stderr


def test_too_little_free_space_fails_at_start(services: Services) -> None:
    # A full disk cannot be made here safely; the same start-up check refuses a data
    # folder with less free space than SCENEREC_MIN_FREE_MB.
    proc = start_worker_with(services, SCENEREC_MIN_FREE_MB=str(10**12))
    assert proc.returncode != 0 and "MiB free" in proc.stderr


# --- the shared item statistics: every click counted once, whatever happens --------------


async def own_items(services: Services, bus: Bus, n: int) -> list[str]:
    """``n`` new catalog items only this test clicks (their rows are this test's alone)."""
    tag = uuid.uuid4().hex[:6]
    items = [f"x{tag}-{j}" for j in range(n)]
    for j, item in enumerate(items):
        record = {"item_id": item, "scenes": ["drama"], "title": f"Fault item {j}"}
        await bus.send("catalog.items", item, {**record, "description": f"number {j}"})
    await wait_for(
        lambda: all(get_json(f"{services.worker_url}/items/{i}/stats")[0] == 200 for i in items),
        timeout_s=60,
    )
    return items


async def stream_own(
    bus: Bus,
    items: list[str],
    users: list[str],
    n: int,
    sent: dict[str, int],
    history: dict[str, list[tuple[str, float]]],
    on_sent: Any = None,
) -> None:
    """``n`` clicks round-robin over ``users``, each walking ``items`` in short runs."""
    for k in range(n):
        user = users[k % len(users)]
        done = len(history.setdefault(user, []))
        item = items[(done * 3 + k // len(users) + hash(user) % 5) % len(items)]
        ts = 880_000_000.0 + 60.0 * k
        event = {**click(user, item, "drama"), "ts": ts}
        await bus.send("events.click", user, event)
        history[user].append((item, ts))
        sent[user] = sent.get(user, 0) + 1
        if on_sent is not None:
            await on_sent(k + 1)
        await asyncio.sleep(0.01)


def clean_rows(items: list[str], history: dict[str, list[tuple[str, float]]]) -> dict[int, Any]:
    """The rows a clean run of the same clicks gives: each user's clicks in order, through
    the worker's own counting code, applied once each."""
    from embeddings.collaborative import DEFAULT_FEED_BLEND
    from embeddings.itemstats import START, DeltaBatch
    from embeddings.model import SceneRecModel
    from embeddings.ranking import GatedScenes, ItemIndex
    from embeddings.scenes import SceneGates
    from embeddings.user_model import UserState
    from streams.itemstats import ItemStatsStage

    index = ItemIndex(4)
    zero = np.zeros(4, np.float32)
    for item in items:
        index.upsert(item, zero, ["drama"], item)
    model = SceneRecModel(index, DEFAULT_FEED_BLEND, GatedScenes(SceneGates(4)), 10)
    deltas = DeltaBatch()
    for clicks in history.values():
        state = UserState()
        for item, ts in clicks:
            model.click_deltas(deltas, state, item, ts)
            state.apply_item(item, zero, "drama")
    changed = ItemStatsStage({}, model.stats.stats).apply(deltas)
    return {key: row for key, row in changed.items() if key != START}


async def changelog_rows(services: Services, keys: set[int]) -> dict[int, Any]:
    """The latest item-stats row of each of ``keys``, as the table's changelog holds it."""
    from embeddings.itemstats import loads_row
    from streams.itemstats import key_of

    topic = f"{services.settings.app_id}-item-stats-changelog"
    cons = consumer(services.settings, auto_offset_reset="earliest")
    await cons.start()
    rows: dict[int, Any] = {}
    try:
        tps = await assigned_partitions(cons, topic)
        end = await cons.end_offsets(tps)
        while any([await cons.position(tp) < end[tp] for tp in tps]):
            for records in (await cons.getmany(timeout_ms=500)).values():
                for r in records:
                    if r.key is not None and r.value is not None and key_of(r.key) in keys:
                        rows[key_of(r.key)] = loads_row(r.value)
    finally:
        await cons.stop()
    return rows


def row_differences(want: Any, got: Any) -> list[str]:
    problems = []
    if got is None:
        return ["no row"]
    if not np.isclose(want.log_pop, got.log_pop, rtol=1e-12):
        problems.append(f"clicks: log {got.log_pop} != {want.log_pop}")
    for name in ("count", "first_click"):
        if getattr(want, name) != getattr(got, name):
            problems.append(f"{name}: {getattr(got, name)} != {getattr(want, name)}")
    for name in ("trans", "cooc"):
        a = dict(zip(*[x.tolist() for x in getattr(want, name).items()], strict=True))
        b = dict(zip(*[x.tolist() for x in getattr(got, name).items()], strict=True))
        if a.keys() != b.keys() or any(not np.isclose(a[t], b[t]) for t in a):
            problems.append(f"{name}: {b} != {a}")
    return problems


async def check_shared_counts(
    services: Services, items: list[str], history: dict[str, list[tuple[str, float]]]
) -> None:
    """The shared rows of the test's items equal a clean run's: nothing counted twice or
    lost (the stage writes within its batch window, so this waits for it to settle)."""
    want = clean_rows(items, history)
    assert want, "the test's clicks produced no item statistics"
    diffs: dict[int, list[str]] = {}
    for _ in range(60):
        got = await changelog_rows(services, set(want))
        diffs = {k: d for k, w in want.items() if (d := row_differences(w, got.get(k)))}
        if not diffs:
            break
        await asyncio.sleep(1.0)
    assert not diffs, f"{len(diffs)} of {len(want)} shared rows differ from a clean run: {diffs}"
    # The worker ranks with them: its view of an item agrees with the table.
    status, view = get_json(f"{services.worker_url}/items/{items[0]}/stats")
    assert status == 200 and view["users"] > 0


async def test_kill_9_mid_stream_counts_each_click_once_in_the_shared_item_stats(
    services: Services, bus: Bus
) -> None:
    var = services.settings.var_dir
    items = await own_items(services, bus, 20)
    users = [uid() for _ in range(USERS)]
    sent: dict[str, int] = {}
    history: dict[str, list[tuple[str, float]]] = {}
    producer = asyncio.create_task(stream_own(bus, items, users, 240, sent, history))
    await wait_for(lambda: sum(sent.values()) >= 90, timeout_s=60)
    stop_worker(var, sig=signal.SIGKILL)  # deltas in flight, batches unacked
    await producer
    await asyncio.to_thread(
        start_worker, var, services.settings.worker_web_port, services.env, 180.0
    )
    await wait_applied(services, sent, 120)
    check_exactly_once(services, sent)
    await check_shared_counts(services, items, history)


async def test_rebalances_count_each_click_once_in_the_shared_item_stats(
    services: Services, bus: Bus, tmp_path: Any
) -> None:
    """A second worker joins mid-stream (partitions move to it, table partitions too),
    then is killed (they move back): the shared counts are a clean run's."""
    second_var = tmp_path / "second"
    second_port = free_port()
    env = {
        **services.env,
        "SCENEREC_VAR_DIR": str(second_var),
        "SCENEREC_WORKER_WEB_PORT": str(second_port),
    }
    items = await own_items(services, bus, 20)
    users = [uid() for _ in range(USERS)]
    sent: dict[str, int] = {}
    history: dict[str, list[tuple[str, float]]] = {}
    started = asyncio.Event()

    async def on_sent(k: int) -> None:
        if k == 80:
            await asyncio.to_thread(start_worker, second_var, second_port, env, 180.0)
            started.set()
        if k == 200:
            stop_worker(second_var, sig=signal.SIGKILL)

    try:
        await stream_own(bus, items, users, 300, sent, history, on_sent)
    finally:
        stop_worker(second_var, sig=signal.SIGKILL)
    assert started.is_set()
    await wait_applied(services, sent, 180)
    check_exactly_once(services, sent)
    await check_shared_counts(services, items, history)

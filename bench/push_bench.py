"""Feed streams under load: concurrent SSE clients on one pull API replica while the worker
emits lists -> the ``push`` key of results/bench.json.

    python -m bench.push_bench                         # alone, on a stack of its own
    python -m bench.push_bench --clients 200 --seconds 20
    python -m bench.pipeline_bench --only push         # as a phase of the pipeline bench

On a lane of the bench stack (bench/stack.py: own topics and consumer group) with one worker
and the ml-100k catalog, one pull API replica is deployed on the bench's Ray Serve (its own
app and route). ``--clients`` new users get one click each; once each has a list, one
stream per user is opened through Serve's HTTP proxy (``GET /users/{id}/feed/stream``) and
reads its first event (the latest list). Then clicks go out at ``--rate`` per second over
the users for ``--seconds``; half-way every client drops its connection, stays away
``--gap-seconds`` and reconnects with ``Last-Event-ID``.

A consumer reads the recommendations topic from where it ended when the load began: every
list it sees for a bench user must reach that user's client exactly once.

* ``latency_ms``: message on the topic (the record's timestamp, set by the worker's producer
  when it sends the list) to the event read at the client, for lists that landed while the
  client was connected; the ones that landed while it was away are ``resumed`` (their wait
  includes the gap by design) and reach it after its reconnect;
* ``latency_ms_outside_reconnect``: the same for lists that landed before the drop or after
  the last client was back (``reconnect_seconds`` after the gap ended): what a replica
  delivers when it is not also taking 1,000 reconnects;
* ``lost``: lists on the topic that never reached the user's client; ``duplicated``: lists
  a client read twice.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka import TopicPartition

from bench.load import publish, publish_catalog
from bench.stack import BenchStack, Lane, Worker, base_env, machine, percentiles, wait_indexed
from scenerec.config import PROJECT_ROOT, Settings
from scenerec.datasets import Dataset, load_ml100k
from scenerec.kafka import consumer, producer
from serving.sse_client import HEARTBEAT, read_events

log = logging.getLogger("bench.push")

CONNECTS_AT_ONCE = 100


@dataclass
class Client:
    user: str
    last_id: str | None = None
    #: event id -> (time read, connection number) of every list event read
    read: dict[str, tuple[float, int]] = field(default_factory=dict)
    #: connection number -> when its response began (time.time())
    opened: dict[int, float] = field(default_factory=dict)
    duplicated: int = 0
    connections: int = 0
    heartbeats: int = 0
    errors: list[str] = field(default_factory=list)
    first: asyncio.Event = field(default_factory=asyncio.Event)


async def stream(
    session: aiohttp.ClientSession, url: str, c: Client, gate: asyncio.Semaphore
) -> None:
    """One connection of client ``c``: read until cancelled (a drop) or the stream ends."""
    headers = {"Last-Event-ID": c.last_id} if c.last_id else {}
    async with gate:
        resp = await session.get(url, headers=headers)
    c.connections += 1
    number = c.connections
    c.opened[number] = time.time()
    try:
        if resp.status != 200:
            c.errors.append(f"HTTP {resp.status}: {(await resp.text())[:200]}")
            return
        async for event in read_events(resp):
            if event is HEARTBEAT:
                c.heartbeats += 1
                continue
            if event.id is None:
                continue
            if event.id in c.read:
                c.duplicated += 1
            else:
                c.read[event.id] = (event.received, number)
            c.last_id = event.id
            c.first.set()
    except aiohttp.ClientError as exc:
        c.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        resp.release()


class Truth:
    """Every record of the recommendations topic from the moment :meth:`start` returns."""

    def __init__(self, lane: Lane, users: set[str]) -> None:
        self.settings = lane.settings
        self.users = users
        #: event id -> (user, record timestamp in s)
        self.records: dict[str, tuple[str, float]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        topic = self.settings.topic("recommendations")
        self._cons = consumer(self.settings, group_id=None, enable_auto_commit=False)
        await self._cons.start()
        tps = [TopicPartition(topic, p) for p in range(self.settings.partitions)]
        self._cons.assign(tps)
        await self._cons.seek_to_end(*tps)
        for tp in tps:
            await self._cons.position(tp)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            for records in (await self._cons.getmany(timeout_ms=200)).values():
                for r in records:
                    user = (r.key or b"").decode()
                    if user in self.users:
                        self.records[f"{r.partition}-{r.offset}"] = (user, r.timestamp / 1000)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._cons.stop()


def deploy_api(lane: Lane, worker: Worker, clients: int) -> str:
    """The pull API for ``lane`` on the running Serve, at its own route; returns its URL."""
    import ray
    from ray import serve

    from deploy.api_config import api_overrides
    from serving.api_app import build_api_app

    overrides = api_overrides(lane.settings)
    overrides.update(worker_url=worker.url, stream_max_open=max(2000, clients + 100))
    ray.init(address="auto", logging_level=logging.WARNING, log_to_driver=False)
    try:
        serve.run(build_api_app(overrides), name=f"api-{lane.name}", route_prefix=f"/{lane.name}")
    finally:
        ray.shutdown()
    return f"http://127.0.0.1:{lane.settings.serve_port}/{lane.name}"


def delete_api(lane: Lane) -> None:
    import ray
    from ray import serve

    ray.init(address="auto", logging_level=logging.WARNING, log_to_driver=False)
    try:
        serve.delete(f"api-{lane.name}")
    finally:
        ray.shutdown()


def a_click(user: str, item: dict[str, Any], n: int) -> tuple[bytes, dict[str, Any]]:
    return user.encode(), {
        "event_id": f"{user}-c{n}",
        "user_id": user,
        "item_id": item["item_id"],
        "scene": item["scenes"][0],
        "ts": time.time(),
    }


async def clicks(
    lane: Lane,
    users: Sequence[str],
    items: Sequence[dict[str, Any]],
    rng: random.Random,
    rate: float,
    seconds: float,
) -> int:
    """Clicks at ``rate`` per second on random users and items for ``seconds``; how many."""
    prod = producer(lane.settings)
    await prod.start()
    topic = lane.settings.topic("events.click")
    n = 0
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            key, value = a_click(rng.choice(users), rng.choice(items), n + 1)
            await prod.send(topic, key=key, value=orjson.dumps(value))
            n += 1
            await asyncio.sleep(max(0.0, n / rate - (time.monotonic() - t0)))
        await prod.flush()
    finally:
        await prod.stop()
    return n


async def first_lists(api: str, users: Sequence[str], timeout_s: float) -> None:
    """Until the API holds a list for every user (its follower read them)."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"{api}/healthz") as resp:
                cached = int((await resp.json())["users_cached"])
            if cached >= len(users):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the API holds lists of {cached} of {len(users)} users")
            await asyncio.sleep(0.5)


async def load(
    lane: Lane, api: str, data: Dataset, clients: int, rate: float, seconds: float, gap_s: float
) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:5]
    users = [f"push{tag}-u{i}" for i in range(clients)]
    rng = random.Random(7)
    items = data.items
    await publish(lane.settings, "events.click", [a_click(u, rng.choice(items), 0) for u in users])
    await first_lists(api, users, 300)
    gate = asyncio.Semaphore(CONNECTS_AT_ONCE)
    conns = {u: Client(u) for u in users}
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        def open_all() -> list[asyncio.Task[None]]:
            return [
                asyncio.create_task(stream(session, f"{api}/users/{u}/feed/stream", c, gate))
                for u, c in conns.items()
            ]

        t_open = time.monotonic()
        tasks = open_all()
        async with asyncio.timeout(300):
            await asyncio.gather(*(c.first.wait() for c in conns.values()))
        open_s = time.monotonic() - t_open
        log.info("push: %d streams open and read their first list in %.1fs", clients, open_s)
        truth = Truth(lane, set(users))
        await truth.start()
        window: dict[str, float] = {}

        async def drop_and_return() -> None:
            nonlocal tasks
            await asyncio.sleep(seconds / 2)
            window["dropped"] = time.time()
            for t in tasks:  # every client goes away at once ...
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.sleep(gap_s)
            window["back"] = time.time()
            tasks = open_all()  # ... and comes back with its Last-Event-ID

        t0 = time.monotonic()
        reconnect = asyncio.create_task(drop_and_return())
        n = await clicks(lane, users, items, rng, rate, seconds)
        await reconnect
        # Until every list on the topic reached its client, or nothing moves for 20 s.
        last_change, seen = time.monotonic(), -1
        while time.monotonic() - last_change < 20:
            got = sum(1 for eid, (u, _) in truth.records.items() if eid in conns[u].read)
            if got == len(truth.records) and got > 0 and time.monotonic() - t0 > seconds + 3:
                break
            if got != seen:
                seen, last_change = got, time.monotonic()
            await asyncio.sleep(0.5)
        await truth.stop()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return summarize(conns, truth, n, open_s, window, rate, seconds, gap_s)


def summarize(
    conns: dict[str, Client],
    truth: Truth,
    clicks: int,
    open_s: float,
    window: dict[str, float],
    rate: float,
    seconds: float,
    gap_s: float,
) -> dict[str, Any]:
    live: list[float] = []
    steady: list[float] = []  # lists that landed before the drop or once all were back
    back = max((c.opened.get(2, 0.0) for c in conns.values()), default=0.0)
    resumed = lost = 0
    for eid, (user, ts) in truth.records.items():
        c = conns[user]
        got = c.read.get(eid)
        if got is None:
            lost += 1
        elif got[1] >= 2 and ts < c.opened[got[1]]:
            resumed += 1  # landed before the connection that read it began: while away
        else:
            live.append(1000 * (got[0] - ts))
            if ts < window["dropped"] or ts > back:
                steady.append(live[-1])
    errors = [e for c in conns.values() for e in c.errors]
    return {
        "clients": len(conns),
        "clicks": clicks,
        "offered_clicks_per_s": rate,
        "seconds": seconds,
        "lists_on_topic": len(truth.records),
        "latency_ms": percentiles(live, (50, 95, 99)) | {"max": round(max(live, default=0), 1)},
        "live_events": len(live),
        "latency_ms_outside_reconnect": percentiles(steady, (50, 95, 99)),
        "steady_events": len(steady),
        "reconnect_seconds": round(back - window["back"], 1),
        "resumed_events": resumed,
        "lost": lost,
        "duplicated": sum(c.duplicated for c in conns.values()),
        "reconnect_gap_s": gap_s,
        "reconnect_window_s": round(window["back"] - window["dropped"], 2),
        "open_seconds": round(open_s, 1),
        "heartbeats": sum(c.heartbeats for c in conns.values()),
        "client_errors": len(errors),
        "client_error_examples": errors[:5],
    }


def measure(
    stack: BenchStack,
    data: Dataset,
    clients: int = 1000,
    rate: float = 200.0,
    seconds: float = 30.0,
    gap_s: float = 2.0,
) -> dict[str, Any]:
    """The ``push`` result on ``stack`` (Kafka and Serve up): its own lane, worker and API."""
    lane = stack.lane("push")
    worker = lane.start_worker("worker")
    try:
        asyncio.run(publish_catalog(lane.settings, data.items, "push catalog"))
        asyncio.run(wait_indexed(worker, len(data.items), 900))
        api = deploy_api(lane, worker, clients)
        try:
            result = asyncio.run(load(lane, api, data, clients, rate, seconds, gap_s))
        finally:
            delete_api(lane)
    finally:
        lane.stop_all()
    log.info("push: %s", result)
    return result


def summary(push: dict[str, Any]) -> str:
    lat = push["latency_ms"]
    return f"{lat['p50']} / {lat['p99']} ms, {push['lost']} lost, {push['duplicated']} dup"


def on_own_stack(clients: int, rate: float, seconds: float, gap_s: float) -> dict[str, Any]:
    """:func:`measure` on a stack of its own (temporary var dir, free ports), torn down after."""
    var_dir = Path(tempfile.mkdtemp(prefix="scenerec-push-"))
    os.environ.update(base_env(var_dir))  # read by Settings() here and inherited by workers
    settings = Settings()
    stack = BenchStack(settings, var_dir)
    try:
        stack.kafka_up()
        stack.serve_up()
        return measure(stack, load_ml100k(settings.data_dir), clients, rate, seconds, gap_s)
    finally:
        stack.down()
        for lane in stack.lanes:  # Faust makes "<app id>-data" in the worker's cwd
            shutil.rmtree(PROJECT_ROOT / f"{lane.env['SCENEREC_APP_ID']}-data", ignore_errors=True)
        shutil.rmtree(var_dir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.push_bench",
        description="Feed streams (SSE) under load on a private stack (see the module doc).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--clients", type=int, default=1000, help="concurrent stream clients")
    p.add_argument("--rate", type=float, default=200.0, help="clicks per second offered")
    p.add_argument("--seconds", type=float, default=30.0, help="seconds of clicks")
    p.add_argument("--gap-seconds", type=float, default=2.0, help="away between drop and reconnect")
    p.add_argument("--out", type=Path, default=Path("results/bench.json"), help="merged into")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    t0 = time.monotonic()
    result = on_own_stack(args.clients, args.rate, args.seconds, args.gap_seconds)
    result["run_seconds"] = round(time.monotonic() - t0, 1)
    result["machine"] = machine()
    result["command"] = "python -m bench.push_bench " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    old = json.loads(args.out.read_text()) if args.out.is_file() else {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**old, "push": result}, indent=2) + "\n")
    print(f"push: {summary(result)}; wrote the push key of {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Scale-out: two workers, one consumer group, every event's effect applied exactly once.

Each run gets its own lane (topic prefix and app id) and two workers, each with its own var
dir (embedded vector store) and web port. ``U`` new users click ``K`` distinct ml-100k
items each (K at most the length of a user's ``recent`` list), interleaved round by
round. When the stream is done, every user's state is read from the workers'
``/users/{id}/state`` (from each worker that answers, the copy with the most events, so a
stale standby copy never hides a duplicate) and compared with what was published:

* lost: published items that the user's ``recent`` list does not hold;
* duplicated: ``n_events`` beyond the distinct published items applied, or an item that
  appears twice in ``recent`` (a click on an item is applied once per event).

The kill run does the same and ``kill -9``s the second worker once 40% of the stream is
processed; the first takes over its partitions (after the group's session timeout) and
restores their table state from the changelog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from collections import Counter
from typing import Any

import aiohttp
import orjson

from bench.load import new_user_clicks, publish, publish_catalog
from bench.stack import CLICK_TOPIC, BenchStack, Lane, Worker, events_counted, items_indexed
from embeddings.user_model import RECENT_ITEMS
from scenerec.datasets import Dataset

log = logging.getLogger("bench.scale_out")


async def _user_state(
    session: aiohttp.ClientSession, workers: list[Worker], user_id: str
) -> dict[str, Any] | None:
    best: dict[str, Any] | None = None
    for w in workers:
        try:
            async with session.get(f"{w.url}/users/{user_id}/state") as resp:
                if resp.status != 200:
                    continue
                body = orjson.loads(await resp.read())
        except (aiohttp.ClientError, TimeoutError):
            continue
        if best is None or int(body.get("n_events", 0)) > int(best.get("n_events", 0)):
            best = body
    return best


async def read_states(workers: list[Worker], users: list[str]) -> dict[str, dict[str, Any] | None]:
    sem = asyncio.Semaphore(16)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(u: str) -> tuple[str, dict[str, Any] | None]:
            async with sem:
                return u, await _user_state(session, workers, u)

        return dict(await asyncio.gather(*(one(u) for u in users)))


def audit(
    published: dict[str, list[str]], states: dict[str, dict[str, Any] | None]
) -> dict[str, int]:
    lost = duplicated = missing_users = 0
    for user, items in published.items():
        st = states.get(user)
        if st is None:
            missing_users += 1
            lost += len(items)
            continue
        recent = [str(i) for i in st.get("recent", [])]
        wanted = set(items)
        applied = {i for i in recent if i in wanted}
        repeats = sum(n - 1 for i, n in Counter(recent).items() if i in wanted and n > 1)
        lost += len(wanted - applied)
        duplicated += max(int(st.get("n_events", 0)) - len(applied), repeats)
    return {"lost": lost, "duplicated": duplicated, "users_without_state": missing_users}


async def _stream(
    lane: Lane,
    data: Dataset,
    users: int,
    per_user: int,
    kill_at: float | None,
    timeout_s: float,
) -> dict[str, Any]:
    tag = f"so{uuid.uuid4().hex[:5]}"
    messages = new_user_clicks(data, users, per_user, tag)
    published: dict[str, list[str]] = {}
    for key, value in messages:
        published.setdefault(key.decode(), []).append(str(value["item_id"]))
    total = len(messages)
    t0 = time.monotonic()
    publish_task = asyncio.create_task(publish(lane.settings, CLICK_TOPIC, messages))
    live = list(lane.workers)
    killed: dict[str, Any] | None = None
    done_at: float | None = None
    last_sum, stable_since = -1.0, time.monotonic()
    last_counts: dict[str, float] = {}
    while time.monotonic() - t0 < timeout_s:
        await asyncio.sleep(0.5)
        for w in live:
            with contextlib.suppress(RuntimeError):  # a worker between death and rebalance
                last_counts[w.name] = await events_counted(w)
        processed = sum(last_counts.values())
        if kill_at is not None and killed is None and processed >= kill_at * total:
            victim = live[-1]
            lane.stop_worker(victim, sig=signal.SIGKILL)
            live = live[:-1]
            killed = {
                "worker": victim.name,
                "at_s": round(time.monotonic() - t0, 1),
                "processed_before_kill": processed,
            }
            log.info("kill -9 %s after %.0f of %d events", victim.name, processed, total)
            continue
        if killed is None and processed >= total:
            done_at = time.monotonic()
            break
        if processed != last_sum:
            last_sum, stable_since = processed, time.monotonic()
        elif killed is not None and time.monotonic() - stable_since > 20:
            # After the kill the survivor's counter cannot reach ``total`` (some events were
            # applied by the dead worker): done once it has not moved for a while and the
            # users' states say everything arrived.
            states = await read_states(live, list(published))
            if audit(published, states)["lost"] == 0 or time.monotonic() - stable_since > 150:
                done_at = time.monotonic()
                break
        elif killed is None and time.monotonic() - stable_since > 120:
            log.warning("scale-out: counters stuck at %.0f of %d", processed, total)
            break
    await publish_task
    elapsed = (done_at or time.monotonic()) - t0
    states = await read_states(live, list(published))
    result: dict[str, Any] = {
        **audit(published, states),
        "events": total,
        "users": users,
        "events_per_user": per_user,
        "seconds": round(elapsed, 1),
        "events_per_s": round(total / elapsed, 1) if done_at else None,
        "processed_by_worker": dict(last_counts),
        "completed": done_at is not None,
    }
    if killed is not None:
        result["killed"] = killed
    return result


def run(
    stack: BenchStack,
    data: Dataset,
    users: int,
    per_user: int,
    kill: bool,
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """One scale-out run on a fresh lane with two workers (one killed if ``kill``)."""
    per_user = min(per_user, RECENT_ITEMS)
    lane = stack.lane("kill" if kill else "scale")
    try:
        for name in ("w1", "w2"):
            lane.start_worker(name)
        asyncio.run(publish_catalog(lane.settings, data.items, "catalog (scale-out)"))
        catalog = asyncio.run(_wait_catalog(lane.workers, len(data.items), 180.0))
        result = asyncio.run(_stream(lane, data, users, per_user, 0.4 if kill else None, timeout_s))
        result["catalog_items_per_worker"] = catalog
        return result
    finally:
        lane.stop_all()


async def _wait_catalog(workers: list[Worker], n_items: int, timeout_s: float) -> dict[str, int]:
    """Items each worker indexed: all of them, or what it had when ``timeout_s`` ran out."""
    t0 = time.monotonic()
    counts: dict[str, int] = {}
    while time.monotonic() - t0 < timeout_s:
        counts = {w.name: await items_indexed(w) for w in workers}
        if all(c >= n_items for c in counts.values()):
            break
        await asyncio.sleep(1.0)
    return counts

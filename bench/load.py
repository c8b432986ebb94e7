"""Load generators and meters of the pipeline benchmark: Kafka ceiling, throughput,
latency at fixed offered rates, the highest rate under a p99 bound, cold start, and users
with state for the memory footprint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client.samples import Sample
from tqdm import tqdm

from bench.stack import CLICK_TOPIC, Worker, events_counted, metric_families, percentiles
from scenerec.config import Settings
from scenerec.datasets import Dataset
from scenerec.kafka import client_kwargs, consumer, producer

log = logging.getLogger("bench.load")

#: Published-but-unprocessed clicks allowed during a throughput window: enough to keep
#: the worker busy, small enough that the backlog drains in seconds afterwards.
MAX_BACKLOG = 10_000
P99_BOUND_MS = 1000.0


# --- Kafka ceiling ---------------------------------------------------------------------------


async def kafka_ceiling(
    settings: Settings, n_events: int, clicks: list[dict[str, Any]]
) -> dict[str, float]:
    """N / (produce seconds + consume seconds) of click-sized JSON on this broker."""
    topic = settings.topic(f"bench.ceiling.{uuid.uuid4().hex[:6]}")
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name=topic, num_partitions=settings.partitions, replication_factor=1)]
        )
    finally:
        await admin.close()
    values = [orjson.dumps(c) for c in clicks[: min(len(clicks), 10_000)]]
    keys = [str(c["user_id"]).encode() for c in clicks[: len(values)]]
    prod = AIOKafkaProducer(
        **client_kwargs(settings), acks="all", linger_ms=20, max_batch_size=512 * 1024
    )
    await prod.start()
    try:
        t0 = time.perf_counter()
        for i in range(n_events):
            j = i % len(values)
            await prod.send(topic, key=keys[j], value=values[j])
        await prod.flush()
        produce_s = time.perf_counter() - t0
    finally:
        await prod.stop()
    cons = consumer(
        settings,
        topic,
        group_id=None,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await cons.start()
    got = 0
    try:
        t1 = time.perf_counter()
        async with asyncio.timeout(300):
            while got < n_events:
                batch = await cons.getmany(timeout_ms=500, max_records=50_000)
                for records in batch.values():
                    for r in records:
                        orjson.loads(r.value)  # a consumer that looks at what it gets
                    got += len(records)
        consume_s = time.perf_counter() - t1
    finally:
        await cons.stop()
    return {
        "events": float(n_events),
        "bytes_per_event": float(sum(len(v) for v in values) / len(values)),
        "produce_events_per_s": n_events / produce_s,
        "consume_events_per_s": n_events / consume_s,
        "events_per_s": n_events / (produce_s + consume_s),
    }


# --- sources -----------------------------------------------------------------------------------


class EventSource(Protocol):
    """A stream of events to offer: ``(topic, event)``, the event keyed by its ``user_id``."""

    def next_event(self, phase: str) -> tuple[str, dict[str, Any]]: ...


class ClickSource:
    """ml-100k clicks in time order, cycled; every published click gets a fresh event id."""

    def __init__(self, data: Dataset, tag: str) -> None:
        self._clicks = data.clicks
        self._tag = tag
        self._i = 0

    def next(self, phase: str) -> dict[str, Any]:
        base = self._clicks[self._i % len(self._clicks)]
        self._i += 1
        return {**base, "event_id": f"{self._tag}-{phase}-{self._i}"}

    def next_event(self, phase: str) -> tuple[str, dict[str, Any]]:
        return CLICK_TOPIC, self.next(phase)


async def paced(
    prod: AIOKafkaProducer,
    settings: Settings,
    source: EventSource,
    rate: float,
    seconds: float,
    phase: str,
    on_send: Callable[[str, dict[str, Any], float], None] | None = None,
    hold: Callable[[], bool] | None = None,
) -> dict[str, float]:
    """Offer ``source``'s events at ``rate``/s for ``seconds`` (open loop: the schedule does
    not wait for the worker); ``on_send(topic, event, time)`` is told of each one first.

    ``hold()`` true pauses the schedule (a bounded backlog); the events not sent meanwhile
    are skipped, not sent in a burst afterwards.
    """
    topics = {t: settings.topic(t) for t in (CLICK_TOPIC, "events.comment", "events.social")}
    sent = 0
    t0 = time.monotonic()
    due = 0.0
    while due < seconds:
        if hold is not None and hold():
            await asyncio.sleep(0.05)
            due = max(due, time.monotonic() - t0)
            continue
        topic, event = source.next_event(phase)
        now = time.monotonic()
        if on_send is not None:
            on_send(topic, event, now)
        full = topics.get(topic) or settings.topic(topic)
        await prod.send(full, key=str(event["user_id"]).encode(), value=orjson.dumps(event))
        sent += 1
        due += 1.0 / rate
        ahead = due - (time.monotonic() - t0)
        if ahead > 0:
            await asyncio.sleep(ahead)
        elif sent % 256 == 0:  # behind schedule: still let the loop's other tasks run
            await asyncio.sleep(0)
    offered_s = time.monotonic() - t0
    return {"events": float(sent), "seconds": offered_s, "achieved_rate": sent / offered_s}


async def publish(
    settings: Settings,
    topic: str,
    messages: Sequence[tuple[bytes, dict[str, Any]]],
    what: str | None = None,
) -> float:
    """Publish ``(key, value)`` messages to ``topic`` (settings' prefix); seconds taken."""
    prod = producer(settings, max_batch_size=256 * 1024)
    await prod.start()
    t0 = time.monotonic()
    try:
        full = settings.topic(topic)
        for key, value in tqdm(messages, desc=what, unit="msg", disable=what is None):
            await prod.send(full, key=key, value=orjson.dumps(value))
        await prod.flush()
    finally:
        await prod.stop()
    return time.monotonic() - t0


async def publish_catalog(settings: Settings, items: Sequence[dict[str, Any]], what: str) -> float:
    return await publish(
        settings, "catalog.items", [(str(i["item_id"]).encode(), i) for i in items], what
    )


# --- throughput --------------------------------------------------------------------------------


async def throughput(
    settings: Settings, worker: Worker, source: ClickSource, warmup_s: float, window_s: float
) -> dict[str, Any]:
    """Clicks processed per second by one worker with a bounded backlog ahead of it.

    Counted by the worker's ``scenerec_events_total{topic="events.click",outcome="ok"}``.
    """
    prod = producer(settings)
    await prod.start()
    topic = settings.topic(CLICK_TOPIC)
    base = await events_counted(worker)
    published = 0
    processed = 0.0
    done = asyncio.Event()

    async def count() -> float:
        return await events_counted(worker) - base

    async def pump() -> None:
        nonlocal published
        while not done.is_set():
            if published - processed >= MAX_BACKLOG:
                await asyncio.sleep(0.05)
                continue
            for _ in range(500):
                click = source.next("tp")
                await prod.send(topic, key=click["user_id"].encode(), value=orjson.dumps(click))
                published += 1
            await asyncio.sleep(0)

    async def watch() -> None:
        nonlocal processed
        while not done.is_set():
            processed = await count()
            await asyncio.sleep(0.5)

    tasks = [asyncio.create_task(pump()), asyncio.create_task(watch())]
    try:
        await asyncio.sleep(warmup_s)
        start_count, t0 = await count(), time.monotonic()
        shape0 = await batch_shape(worker)
        await asyncio.sleep(window_s)
        end_count, t1 = await count(), time.monotonic()
        shape1 = await batch_shape(worker)
    finally:
        done.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await prod.flush()
        await prod.stop()
    drain_s = await drain(worker, base + published)
    handled = end_count - start_count
    batches = shape1["batches"] - shape0["batches"]
    return {
        "events_per_s": handled / (t1 - t0),
        "window_s": t1 - t0,
        "events_in_window": handled,
        "published": float(published),
        "drain_s": drain_s,
        # What the rate depends on besides code: how many clicks a batch held, and how
        # many users' lists were ranked per click (one per user touched by a batch).
        "mean_batch_events": (shape1["events"] - shape0["events"]) / batches if batches else 0.0,
        "lists_per_event": (shape1["lists"] - shape0["lists"]) / handled if handled else 0.0,
        # The share of the window the worker's event loop stood still in Python's GC.
        "gc_share": (shape1["gc_s"] - shape0["gc_s"]) / (t1 - t0),
    }


#: The metric families :func:`shape_of` reads.
SHAPE_FAMILIES = ("scenerec_batch_events", "scenerec_recommendations", "scenerec_gc_pause_seconds")


async def batch_shape(worker: Worker) -> dict[str, float]:
    """Click batches handled, the events in them, recommendation lists emitted and seconds
    spent in garbage collection, so far."""
    return shape_of(await metric_families(worker, *SHAPE_FAMILIES))


def shape_of(families: dict[str, list[Sample]]) -> dict[str, float]:
    """:func:`batch_shape` from families already read (they hold :data:`SHAPE_FAMILIES`)."""
    batch, recs, gc_pauses = SHAPE_FAMILIES
    hist = {
        s.name: float(s.value)
        for s in families[batch]
        if s.labels.get("topic") == CLICK_TOPIC and s.name.endswith(("_count", "_sum"))
    }
    lists = sum(float(s.value) for s in families[recs] if s.name == f"{recs}_total")
    gc_s = sum(float(s.value) for s in families[gc_pauses] if s.name == f"{gc_pauses}_sum")
    return {
        "batches": hist.get("scenerec_batch_events_count", 0.0),
        "events": hist.get("scenerec_batch_events_sum", 0.0),
        "lists": lists,
        "gc_s": gc_s,
    }


async def drain(worker: Worker, target: float, timeout_s: float = 300.0) -> float:
    """Wait until the worker's click counter reaches ``target`` or stops moving (DLQ)."""
    t0 = time.monotonic()
    last, stable_since = -1.0, time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        now = await events_counted(worker)
        if now >= target:
            break
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since > 30:
            log.warning("click counter stuck at %.0f of %.0f", now, target)
            break
        await asyncio.sleep(0.5)
    return time.monotonic() - t0


# --- latency and cold start --------------------------------------------------------------------


class RecWatcher:
    """Reads the recommendations topic from its end and matches lists to published events.

    Rule: a user's published events wait in publish order, one queue per stream (input
    topic). A message for that user whose ``trigger_event_id`` is one of them reflects that
    event and every earlier pending event of the same user and stream (the worker applies a
    user's events of one batch together and names only the last; the topics are handled
    by separate agents, so a list after a click says nothing of an earlier comment); each
    gets latency = arrival of that message - its publish time.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: (user, stream) -> that user's events of that stream not yet reflected
        self.pending: dict[tuple[str, str], deque[tuple[str, float]]] = defaultdict(deque)
        #: event id -> its stream, for the events still pending
        self._stream_of: dict[str, str] = {}
        #: (publish time, latency in ms) of every reflected event
        self.samples: list[tuple[float, float]] = []
        self.first_seen: dict[str, float] = {}
        self._cons: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        topic = self.settings.topic("recommendations")
        cons = consumer(self.settings, group_id=None, enable_auto_commit=False)
        await cons.start()
        tps = [TopicPartition(topic, p) for p in range(self.settings.partitions)]
        cons.assign(tps)
        await cons.seek_to_end(*tps)
        for tp in tps:
            await cons.position(tp)  # resolve the end offsets now, before publishing
        self._cons = cons
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._cons is not None:
            await self._cons.stop()

    def expect(self, user_id: str, event_id: str, published_at: float, stream: str = "") -> None:
        self.pending[user_id, stream].append((event_id, published_at))
        self._stream_of[event_id] = stream

    @property
    def latencies_ms(self) -> list[float]:
        return [lat for _, lat in self.samples]

    def unreflected(self) -> int:
        return sum(len(q) for q in self.pending.values())

    async def _run(self) -> None:
        assert self._cons is not None
        while True:
            batch = await self._cons.getmany(timeout_ms=200)
            arrived = time.monotonic()
            for records in batch.values():
                for r in records:
                    if r.value is None:  # a tombstone (a forgotten user)
                        continue
                    msg = orjson.loads(r.value)
                    self._on_message(str(msg.get("user_id")), msg.get("trigger_event_id"), arrived)

    def _on_message(self, user_id: str, trigger: object, arrived: float) -> None:
        self.first_seen.setdefault(user_id, arrived)
        stream = self._stream_of.get(trigger) if isinstance(trigger, str) else None
        queue = None if stream is None else self.pending.get((user_id, stream))
        if not queue or not any(eid == trigger for eid, _ in queue):
            return
        while queue:
            eid, published_at = queue.popleft()
            self._stream_of.pop(eid, None)
            self.samples.append((published_at, (arrived - published_at) * 1000))
            if eid == trigger:
                break

    def percentiles(self, wanted: Sequence[int]) -> dict[str, float | None]:
        """Latency percentiles over every expected event: one never reflected counts as
        slower than all (its percentile is None, not the best of those that came back)."""
        return percentiles(self.latencies_ms + [math.inf] * self.unreflected(), wanted)


async def latency_at(
    settings: Settings, source: EventSource, rate: int, seconds: float, grace_s: float
) -> dict[str, Any]:
    """Events at ``rate``/s for ``seconds``; publish -> first list reflecting each.

    An event not reflected within ``grace_s`` after the last one was sent counts as slower
    than every reflected one in the percentiles (see :meth:`RecWatcher.percentiles`).
    """
    watcher = RecWatcher(settings)
    await watcher.start()
    prod = producer(settings)
    await prod.start()

    def expect(topic: str, event: dict[str, Any], now: float) -> None:
        watcher.expect(event["user_id"], event["event_id"], now, topic)

    try:
        t0 = time.monotonic()
        sent = await paced(prod, settings, source, rate, seconds, f"lat{rate}", expect)
        n, offered_s = int(sent["events"]), sent["seconds"]
        await prod.flush()
        deadline = time.monotonic() + grace_s
        while watcher.unreflected() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
    finally:
        await prod.stop()
        await watcher.stop()
    # Worst latency per second of publishing: shows whether a bad tail is one stall or a
    # steady queue.
    by_second: dict[int, float] = {}
    for published_at, lat in watcher.samples:
        sec = int(published_at - t0)
        by_second[sec] = max(by_second.get(sec, 0.0), lat)
    return {
        **watcher.percentiles((50, 95, 99)),
        "max_ms_by_second": [round(by_second.get(i, 0.0)) for i in range(int(seconds))],
        "events": n,
        "reflected": len(watcher.latencies_ms),
        "not_reflected": watcher.unreflected(),
        "achieved_offered_rate": round(n / offered_s, 1),
    }


def under_bound(lat: dict[str, Any]) -> bool:
    p99 = lat.get("p99")
    return p99 is not None and p99 < P99_BOUND_MS and lat.get("not_reflected", 1) == 0


async def max_rate_under_bound(
    settings: Settings,
    source: ClickSource,
    start: int,
    limit: int,
    seconds: float,
    measured: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Highest offered rate whose p99 stays under 1 s: double from ``start``, bisect once.

    ``measured`` (rate -> latency result, e.g. the fixed-rate runs) is reused and extended.
    """

    async def at(rate: int) -> bool:
        if str(rate) not in measured:
            log.info("max-rate search: %d events/s for %.0fs", rate, seconds)
            measured[str(rate)] = await latency_at(settings, source, rate, seconds, grace_s=60)
            log.info("  -> %s", measured[str(rate)])
        return under_bound(measured[str(rate)])

    best, rate, worst = 0, start, None
    while rate <= limit:
        if await at(rate):
            best, rate = rate, rate * 2
        else:
            worst = rate
            break
    if best and worst is not None and worst - best > best // 4:
        mid = (best + worst) // 2
        if await at(mid):
            best = mid
    # On a noisy machine a rate can fail while a higher one passes: the answer is the
    # highest passing rate below the lowest failing one of every rate measured (the fixed
    # latency runs included), never a rate above a measured failure.
    rates = sorted(int(k) for k in measured)
    failing = [r for r in rates if not under_bound(measured[str(r)])]
    bound = min(failing) if failing else None
    passing = [r for r in rates if under_bound(measured[str(r)]) and (bound is None or r < bound)]
    return {
        "rate": max(passing, default=0),
        "search_result": best,
        "lowest_failing_rate": bound,
        "tried_p99_ms": {r: measured[str(r)].get("p99") for r in rates},
    }


async def cold_start(
    settings: Settings, data: Dataset, users: int, spacing_s: float, grace_s: float
) -> dict[str, dict[str, Any]]:
    """New users: a profile (or a first click) published -> their first list consumed."""
    watcher = RecWatcher(settings)
    await watcher.start()
    prod = producer(settings)
    await prod.start()
    tag = uuid.uuid4().hex[:6]
    sent: dict[str, dict[str, float]] = {"profile": {}, "first_click": {}}
    try:
        for i in range(users):
            prof = data.profiles[i % len(data.profiles)]
            uid = f"cold-p-{tag}-{i}"
            sent["profile"][uid] = time.monotonic()
            await prod.send_and_wait(
                settings.topic("users.profiles"),
                key=uid.encode(),
                value=orjson.dumps({**prof, "user_id": uid}),
            )
            await asyncio.sleep(spacing_s)
            click = data.clicks[(i * 977) % len(data.clicks)]
            uid = f"cold-c-{tag}-{i}"
            sent["first_click"][uid] = time.monotonic()
            await prod.send_and_wait(
                settings.topic(CLICK_TOPIC),
                key=uid.encode(),
                value=orjson.dumps({**click, "user_id": uid, "event_id": f"{uid}-e0"}),
            )
            await asyncio.sleep(spacing_s)
        deadline = time.monotonic() + grace_s
        everyone = [u for kind in sent.values() for u in kind]
        while time.monotonic() < deadline and any(u not in watcher.first_seen for u in everyone):
            await asyncio.sleep(0.2)
    finally:
        await prod.stop()
        await watcher.stop()
    out: dict[str, dict[str, Any]] = {}
    for kind, users_sent in sent.items():
        lat = [
            (watcher.first_seen[u] - t) * 1000
            for u, t in users_sent.items()
            if u in watcher.first_seen
        ]
        out[kind] = {**percentiles(lat, (50, 95)), "users": len(users_sent), "answered": len(lat)}
    return out


# --- users with state (memory) -----------------------------------------------------------------


def new_user_clicks(
    data: Dataset, n_users: int, per_user: int, tag: str
) -> list[tuple[bytes, dict[str, Any]]]:
    """``per_user`` clicks on distinct ml-100k items for each of ``n_users`` new users.

    Interleaved round by round (every user's first click, then every second one), so each
    worker batch touches many users, as a real stream with many users does.
    """
    items = data.items
    out: list[tuple[bytes, dict[str, Any]]] = []
    for r in range(per_user):
        for u in range(n_users):
            uid = f"{tag}-u{u}"
            item = items[(u * 7919 + r * 104_729) % len(items)]
            out.append(
                (
                    uid.encode(),
                    {
                        "event_id": f"{uid}-e{r}",
                        "user_id": uid,
                        "item_id": item["item_id"],
                        "scene": item["scenes"][0],
                        "ts": 893_000_000.0 + r,
                    },
                )
            )
    return out

"""The recommendations topic into a :class:`~serving.feed_hub.FeedHub`, and out as SSE.

:func:`follow` reads every partition of the compacted topic from the beginning into the hub,
forever. :func:`reread` reads one partition again for a stream that resumes from further
back than the hub's ring reaches. :func:`sse_events` is the body of one
``GET /users/{id}/feed/stream``: a ``retry`` hint, the backlog, then each new list as it
lands, a heartbeat comment when nothing did for a while, and the end after ``forget``'s
tombstone (or when the client stopped reading: it resumes from its ``Last-Event-ID``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any

import orjson
from aiokafka import ConsumerRecord, TopicPartition

from scenerec.config import Settings
from scenerec.kafka import assigned_partitions, consumer
from serving.feed_hub import FeedHub, FeedRecord, Subscription
from streams.topics import RECOMMENDATIONS

logger = logging.getLogger(__name__)

HEARTBEAT = b": heartbeat\n\n"
#: Milliseconds an EventSource waits before it reconnects (the SSE ``retry`` field).
RETRY_MS = 1000
#: Topic re-reads running at once on a replica (each is a Kafka consumer of its own).
REREADS = asyncio.Semaphore(4)


def keep_running(
    task: asyncio.Task[None] | None, start: Callable[[], Coroutine[Any, Any, None]], what: str
) -> asyncio.Task[None]:
    """``task``, or a new one from ``start`` if it is not running (logging why it ended)."""
    if task is not None and not task.done():
        return task
    if task is not None and (exc := task.exception()) is not None:
        logger.error("%s stopped: %r; restarting", what, exc)
    return asyncio.get_running_loop().create_task(start())


def record_of(r: ConsumerRecord[bytes, bytes]) -> FeedRecord | None:
    if r.key is None:
        return None
    return FeedRecord(
        partition=r.partition,
        offset=r.offset,
        user_id=r.key.decode("utf-8", errors="replace"),
        value=r.value,
        timestamp_ms=r.timestamp,
    )


async def follow(settings: Settings, hub: FeedHub, on_caught_up: Callable[[], None]) -> None:
    """Read the whole topic into ``hub`` and keep following it (never returns)."""
    topic = settings.topic(RECOMMENDATIONS.name)
    cons = consumer(settings, enable_auto_commit=False, group_id=None)
    await cons.start()
    try:
        # Every partition, from the start: the topic is compacted, so that is the latest
        # list of every user (or a tombstone).
        tps = await assigned_partitions(cons, topic)
        await cons.seek_to_beginning(*tps)
        end = await cons.end_offsets(tps)
        caught_up = False
        while True:
            batches = await cons.getmany(timeout_ms=200, max_records=5000)
            for records in batches.values():
                for r in records:
                    if (record := record_of(r)) is not None:
                        hub.apply(record)
            if not caught_up:
                positions = [await cons.position(tp) for tp in tps]
                caught_up = all(p >= end[tp] for p, tp in zip(positions, tps, strict=True))
                if caught_up:
                    on_caught_up()
    finally:
        await cons.stop()


async def reread(
    settings: Settings, user_id: str, partition: int, after: int, upto: int
) -> list[FeedRecord]:
    """The user's records in ``partition`` with ``after`` < offset < ``upto``, from Kafka."""
    if after + 1 >= upto:
        return []
    tp = TopicPartition(settings.topic(RECOMMENDATIONS.name), partition)
    key = user_id.encode()
    found: list[FeedRecord] = []
    async with REREADS:
        cons = consumer(
            settings, enable_auto_commit=False, group_id=None, auto_offset_reset="earliest"
        )
        await cons.start()
        try:
            cons.assign([tp])
            cons.seek(tp, after + 1)
            async with asyncio.timeout(30):
                while await cons.position(tp) < upto:
                    batch = await cons.getmany(tp, timeout_ms=500, max_records=5000)
                    for r in batch.get(tp, []):
                        record = record_of(r) if r.key == key else None
                        if record is not None and after < record.offset < upto:
                            found.append(record)
        finally:
            await cons.stop()
    logger.info(
        "stream of %r resumed from %d-%d by reading the topic again: %d lists",
        user_id,
        partition,
        after,
        len(found),
    )
    return found


def view(payload: dict[str, Any], scene: str | None, k: int, whole: bool) -> dict[str, Any] | None:
    """A list as the pull API shows it: one scene or all, at most ``k`` items each. A
    message that did not change ``scene`` has nothing for its stream (None), unless it is
    the ``whole`` state a stream starts with."""
    scenes: dict[str, list[Any]] = payload.get("scenes", {})
    if scene and scene not in scenes and not whole:
        return None
    chosen = {scene: scenes.get(scene, [])} if scene else scenes
    return {**payload, "scenes": {s: items[:k] for s, items in chosen.items()}}


def sse(event: str, data: dict[str, Any], event_id: str | None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    # orjson writes no newline, so the payload is one data line.
    return f"{head}event: {event}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"


def event_of(record: FeedRecord, scene: str | None, k: int) -> bytes | None:
    event_id = record.event_id if record.offset >= 0 else None
    if record.value is None:
        return sse("forgotten", {"user_id": record.user_id}, event_id)
    data = view(orjson.loads(record.value), scene, k, record.snapshot)
    return None if data is None else sse("feed", data, event_id)


async def sse_events(
    hub: FeedHub,
    sub: Subscription,
    backlog: Sequence[FeedRecord],
    scene: str | None,
    k: int,
    heartbeat_s: float,
    on_event: Callable[[str], None] = lambda kind: None,
) -> AsyncIterator[bytes]:
    """The stream's bytes; unsubscribes when it ends or the client goes away."""
    sent: dict[int, int] = {}  # partition -> last offset sent (the queue may repeat a backlog)

    def fresh(record: FeedRecord) -> bool:
        if record.offset < 0:
            return True
        if record.offset <= sent.get(record.partition, -1):
            return False
        sent[record.partition] = record.offset
        return True

    pending = deque(backlog)
    try:
        yield f"retry: {RETRY_MS}\n\n".encode()
        while pending or not (sub.overflowed and sub.queue.empty()):
            if pending:
                record = pending.popleft()
            else:
                try:
                    record = await asyncio.wait_for(sub.queue.get(), heartbeat_s)
                except TimeoutError:
                    yield HEARTBEAT
                    on_event("heartbeat")
                    continue
            if not fresh(record) or (chunk := event_of(record, scene, k)) is None:
                continue
            yield chunk
            on_event("forgotten" if record.value is None else "feed")
            if record.value is None:
                return
        logger.info("stream of %r ended: the client fell behind (it resumes)", sub.user_id)
    finally:
        hub.unsubscribe(sub)

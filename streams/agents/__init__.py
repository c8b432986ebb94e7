"""The agents: one per partitioned input topic (:data:`ROUTES`), each taking batches off its
topic and handing them to a :class:`Pipeline` method. :func:`register_agents` declares them
on an app it is given; nothing here builds an app or reads the settings itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import AgentT

from scenerec.config import Settings
from streams.errors import BadEvent
from streams.metrics import WorkerMetrics
from streams.patches.batching import take_batches
from streams.pipeline import Incoming, Pipeline
from streams.topics import CLICKS, COMMENTS, ITEM_DELTAS, PROFILES, SOCIAL, Topics, TopicSpec

log = logging.getLogger(__name__)

Handler = Callable[[Pipeline, Sequence[Incoming]], Awaitable[None]]

#: Attempts for a batch that fails for a reason other than bad input (store, encoder).
RETRIES = 3

#: A batch that took longer than this many short windows to handle counts as slow, and the
#: next window grows, up to ``SCENEREC_BATCH_WITHIN_MAX_S`` (by default the short window
#: itself: no growth; scenerec/config.py says why): where batches are slow, small ones
#: rank the same users again and again; where they are fast, a longer window only waits.
SLOW_BATCH_WINDOWS = 5


@dataclass(frozen=True)
class Route:
    """An input topic and the pipeline method its batches go to."""

    spec: TopicSpec
    handler: Handler
    #: The click deltas of the shared item statistics: gathered longer than events
    #: (``SCENEREC_STATS_BATCH_WITHIN_S``), so a popular item's row is written to the table
    #: once per batch, not once per click batch; and retried until they apply, never
    #: dead-lettered (a dead-lettered delta is a click every worker never learns).
    item_stats: bool = False


#: One agent per partitioned input topic (the catalog is read outside the consumer group,
#: streams/catalog_reader.py).
ROUTES = (
    Route(CLICKS, Pipeline.on_clicks),
    Route(COMMENTS, Pipeline.on_comments),
    Route(SOCIAL, Pipeline.on_social),
    Route(PROFILES, Pipeline.on_profiles),
    Route(ITEM_DELTAS, Pipeline.on_item_deltas, item_stats=True),
)


def register_agents(
    app: faust.App,
    topics: Topics,
    settings: Settings,
    metrics: WorkerMetrics,
    get_pipeline: Callable[[], Awaitable[Pipeline]],
) -> dict[str, AgentT[Any]]:
    """Declare one agent per route on ``app``; returns them by topic spec name."""
    agents: dict[str, AgentT[Any]] = {}
    for route in ROUTES:
        process = _processor(route, settings, metrics, get_pipeline)
        # Named per topic: Faust keeps its agents by name.
        agent = app.agent(topics[route.spec], name=f"{__name__}.{route.spec.name}")(process)
        agents[route.spec.name] = agent
    return agents


def _processor(
    route: Route,
    settings: Settings,
    metrics: WorkerMetrics,
    get_pipeline: Callable[[], Awaitable[Pipeline]],
) -> Callable[[faust.StreamT[bytes]], Awaitable[None]]:
    if route.item_stats:
        within_s = within_max_s = settings.stats_batch_within_s
        max_users, retries = None, None
    else:
        within_s, within_max_s = settings.batch_within_s, settings.batch_within_max_s
        max_users, retries = settings.batch_max_users, RETRIES

    async def process(stream: faust.StreamT[bytes]) -> None:
        await consume(
            stream,
            route.spec.name,
            route.handler,
            get_pipeline,
            metrics,
            settings.batch_max,
            within_s,
            within_max_s,
            max_users,
            retries,
        )

    return process


def incoming(event: faust.EventT[bytes]) -> Incoming:
    msg = event.message
    value = event.value if isinstance(event.value, bytes) or event.value is None else msg.value
    key = msg.key if isinstance(msg.key, bytes) else None
    return Incoming(
        value=value,
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        key=key,
        timestamp=msg.timestamp,
    )


def batch_window(
    handled_s: float, within_s: float, within_max_s: float, flushed_s: float = 0.0
) -> float:
    """The next gathering window after a batch that took ``handled_s`` to handle, the last
    ``flushed_s`` of it waiting for the broker to acknowledge its output.

    After a slow batch, gather for as long as it took (at most ``within_max_s``): handling
    outweighs gathering then. Otherwise the short window, for latency
    (streams/patches/batching.py says why). Either way less the flush: events gathered while the
    broker acknowledged (the event loop reads them meanwhile) have waited that long already.
    At 1,000 clicks/s the flush took 3-6 ms of a 10 ms window (docs/benchmarks.md).
    """
    window = within_s
    if handled_s > SLOW_BATCH_WINDOWS * within_s:
        window = min(max(within_s, within_max_s), handled_s)
    return max(0.0, window - flushed_s)


async def consume(
    stream: faust.StreamT[bytes],
    topic: str,
    handler: Handler,
    get_pipeline: Callable[[], Awaitable[Pipeline]],
    metrics: WorkerMetrics,
    batch_max: int,
    within_s: float,
    within_max_s: float,
    batch_max_users: int | None = None,
    retries: int | None = RETRIES,
) -> None:
    """Batches off ``stream`` into ``handler``; a batch is acked only once handled.

    Acked means: state written to the table, its changelog records, recommendations and
    dead letters all flushed to Kafka (``emitter.flush``), so a worker that dies after the
    ack loses nothing; one that dies before it sees the batch again, and the per-user
    ``event_id`` record makes the replay a no-op.

    A batch that keeps failing (encoder or store down past its retries) is not dropped:
    every message of it goes to the dead-letter topic with the error as reason.
    """
    ended = time.perf_counter()
    handled_s = flush_s = 0.0

    def window() -> float:
        return batch_window(handled_s, within_s, within_max_s, flush_s)

    async for events in take_batches(stream, batch_max, window, batch_max_users):
        started = time.perf_counter()
        metrics.batch_gather_seconds.labels(topic).observe(started - ended)
        metrics.batch_events.labels(topic).observe(len(events))
        batch = [incoming(e) for e in events]
        oldest = min((m.timestamp for m in batch if m.timestamp), default=None)
        if oldest is not None:  # Kafka timestamps are wall-clock seconds
            metrics.batch_oldest_age_seconds.labels(topic).observe(max(0.0, time.time() - oldest))
        pipe = await get_pipeline()
        flush_s = await handle(pipe, batch, handler, topic, retries)
        ended = time.perf_counter()
        handled_s = ended - started
        metrics.processing_seconds.labels(topic).observe(handled_s)


async def handle(
    pipe: Pipeline,
    batch: Sequence[Incoming],
    handler: Handler,
    topic: str,
    retries: int | None = RETRIES,
) -> float:
    """``handler(pipe, batch)`` then flush, retried; dead-letter the batch if it keeps failing
    ``retries`` times (None: retry until it succeeds, for input whose loss would skew what
    every worker learns, such as click deltas; the lag shows the stall).

    Returns how many seconds the flush took (0 for a batch that was dead-lettered).
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            await handler(pipe, batch)
            flushing = time.perf_counter()
            await pipe.emitter.flush()
            flushed_s = time.perf_counter() - flushing
            pipe.metrics.flush_seconds.labels(topic).observe(flushed_s)
            return flushed_s
        except Exception as exc:
            log.exception("batch of %d from %s failed (attempt %d)", len(batch), topic, attempt)
            if attempt == retries:
                for msg in batch:
                    await pipe.dead_letter(msg, BadEvent("processing_error", repr(exc)))
                await pipe.emitter.flush()
                return 0.0
            await asyncio.sleep(min(30.0, 0.5 * 2**attempt))

"""One agent per input topic; each takes batches and hands them to the pipeline."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import faust

from streams.errors import BadEvent
from streams.metrics import WorkerMetrics
from streams.pipeline import Incoming, Pipeline

log = logging.getLogger(__name__)

Handler = Callable[[Pipeline, Sequence[Incoming]], Awaitable[None]]

#: Attempts for a batch that fails for a reason other than bad input (store, encoder).
RETRIES = 3


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


async def consume(
    stream: faust.StreamT[bytes],
    topic: str,
    handler: Handler,
    get_pipeline: Callable[[], Awaitable[Pipeline]],
    metrics: WorkerMetrics,
    batch_max: int,
    within_s: float,
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
    # take_events is on faust.Stream (faust-streaming >= 0.10), not on the StreamT protocol.
    async for events in stream.take_events(batch_max, within=within_s):  # type: ignore[attr-defined]
        started = time.perf_counter()
        metrics.batch_gather_seconds.labels(topic).observe(started - ended)
        metrics.batch_events.labels(topic).observe(len(events))
        batch = [incoming(e) for e in events]
        pipe = await get_pipeline()
        await handle(pipe, batch, handler, topic)
        ended = time.perf_counter()
        metrics.processing_seconds.labels(topic).observe(ended - started)


async def handle(pipe: Pipeline, batch: Sequence[Incoming], handler: Handler, topic: str) -> None:
    """``handler(pipe, batch)`` then flush, retried; dead-letter the batch if it keeps failing."""
    for attempt in range(1, RETRIES + 1):
        try:
            await handler(pipe, batch)
            await pipe.emitter.flush()
            return
        except Exception as exc:
            log.exception("batch of %d from %s failed (attempt %d)", len(batch), topic, attempt)
            if attempt == RETRIES:
                for msg in batch:
                    await pipe.dead_letter(msg, BadEvent("processing_error", repr(exc)))
                await pipe.emitter.flush()
            else:
                await asyncio.sleep(0.5 * 2**attempt)

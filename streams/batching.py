"""Batches off a Faust stream with a gathering window that can change from batch to batch.

``Stream.take_events(max_, within)`` fixes the window for the life of the agent, and no
fixed window suits every load (docs/benchmarks.md). At 1,000 clicks/s on the ml-100k
catalog, 10 ms kept the latency tail near 100 ms where 50 ms built a standing queue. At
100,000 items, where ranking one user costs tens of ms, 10 ms batches rank the same users
again and again, and the worker took 311 clicks/s against 594 with 50 ms.

:func:`take_batches` is ``take_events`` with the window read again before every wait,
from a callable. The agents (``streams/agents``) keep ``SCENEREC_BATCH_WITHIN_S`` while
batches are cheap to handle. After a slow batch (more than ``SLOW_BATCH_WINDOWS`` windows)
they gather for as long as that batch took, at most ``SCENEREC_BATCH_WITHIN_MAX_S``, so
handling does not outweigh gathering.

Acks are Faust's: a batch's events are acked when the caller asks for the next batch,
that is, after it has handled them. The body mirrors ``Stream.take_events`` of
faust-streaming 0.15 and uses the same private hooks: a buffering processor and passive
draining.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import faust


async def take_batches(
    stream: faust.StreamT[Any], max_: int, window: Callable[[], float]
) -> AsyncIterator[list[faust.EventT[Any]]]:
    """Lists of at most ``max_`` events, each after ``window()`` seconds or when full."""
    s: Any = stream  # the hooks below are on faust.Stream, not on the StreamT protocol
    events: list[faust.EventT[Any]] = []
    full = asyncio.Event()
    consumed = asyncio.Event()
    consuming: asyncio.Future[None] | None = None

    async def add_to_batch(value: Any) -> Any:
        nonlocal consuming
        if consuming is not None:  # a batch is being handled: wait until it is acked
            try:
                await consuming
            finally:
                consuming = None
        event = s.current_event
        if event is None:
            raise RuntimeError("take_batches: no current event")
        events.append(event)
        if len(events) >= max_:
            full.set()
            # Strictly at most max_ per batch: hold this event's stream until it is out.
            consumed.clear()
            await s.wait(consumed)
        return value

    acks_were = s.enable_acks
    s.enable_acks = False  # events are acked below, once handled
    s.add_processor(add_to_batch)
    s._enable_passive(s.channel.__aiter__())
    try:
        while not s.should_stop:
            await s.wait_for_stopped(full, timeout=window())
            if not events:
                continue
            consuming = asyncio.get_running_loop().create_future()
            batch = list(events)
            try:
                yield batch
            finally:
                events.clear()
                for event in batch:
                    await s.ack(event)
                if not consuming.done():
                    consuming.set_result(None)
                full.clear()
                consumed.set()
    finally:
        s.enable_acks = acks_were
        s._processors.remove(add_to_batch)

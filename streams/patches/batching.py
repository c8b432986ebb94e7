"""Batches straight off a Faust agent's channel queue, with a window that can change.

**Why not iterate the stream.** Faust's conductor decodes each fetched message into an
event and puts it on the agent channel's queue; ``Stream.__aiter__`` then takes the events
one at a time, with an event-loop turn (``await sleep(0)``), the processors, the sensors
and a context variable per event. In the profiles of ``make bench`` that per-event path
was a quarter of the worker's main thread at 1,682 items (docs/benchmarks.md, "Where the
time goes"), more than ranking. :func:`take_batches` takes the events off the same queue
itself, many per wake-up, and leaves everything before the queue to Faust: the consumer
group, fetching, decoding, flow control, the pause of partitions whose queue is full, the
clearing of the queues at a rebalance, commits and the table's changelog.

**What it keeps from the stream.**

* A message is *tracked* (put in the consumer's set of unacked messages) when it is taken
  off the queue, as the stream does, and *acked* through ``Stream.ack`` once its batch is
  handled: when the caller asks for the next batch. Faust commits only runs of acked
  offsets, so a batch that was never handled (the worker died, or the generator was closed
  at the ``yield``) is fetched again. ``streams.patches.healing`` reads the same set.
* A message fetched before the last rebalance (``generation_id`` behind the app's), or
  taken while flow control is paused, is skipped as the stream skips it. Unlike the stream,
  it is not acked: Faust seeks to the committed offset after a rebalance and fetches it
  again, and an ack here would let the commit pass that offset before the new copy is
  handled.

**Window.** No fixed gathering window suits every load (docs/benchmarks.md). At 1,000
clicks/s on the ml-100k catalog, 10 ms kept the latency tail near 100 ms where 50 ms built a
standing queue; at 100,000 items, where ranking one user costs tens of ms, 10 ms batches
rank the same users again and again. So the window is a callable, read when a batch's first
event arrives; the agents (``streams/agents``) lengthen it after a slow batch, and count the
last batch's flush (waiting for the broker's acks) as part of it. It runs from the end of
the previous batch, so under load a batch gathers what queued while the last one was
handled plus the rest of the window, and after a quiet spell an event goes at once. A
batch also goes out as soon as it holds ``max_`` events, or events of ``max_keys``
distinct keys: the agents key by user, and a batch's handling costs per user it touches
(each is ranked once), so the second bound keeps a batch of many users from stalling the
event loop for seconds, while one of a few users' many clicks can grow to ``max_``. While
the queue is empty nothing wakes up.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import faust

#: While a batch gathers, its size is checked this often (a full batch goes out at once).
POLL_S = 0.002


async def take_batches(
    stream: faust.StreamT[Any],
    max_: int,
    window: Callable[[], float],
    max_keys: int | None = None,
) -> AsyncIterator[list[faust.EventT[Any]]]:
    """Lists of 1 to ``max_`` events: out ``window()`` s after the last batch was handled
    (at once after a quiet spell), or as soon as ``max_`` are in, or as soon as they hold
    ``max_keys`` distinct message keys (users: what a batch's handling costs per)."""
    s: Any = stream  # the channel queue and the consumer are not on the StreamT protocol
    await s.maybe_start()
    queue = s.channel.queue
    app = s.app
    loop = asyncio.get_running_loop()
    events: list[faust.EventT[Any]] = []
    keys: set[bytes | None] = set()
    key_cap = max_keys if max_keys is not None else math.inf
    handled = -math.inf  # when the last batch was handed back

    def full() -> bool:
        return len(events) >= max_ or len(keys) >= key_cap

    def take(item: Any) -> None:
        if not isinstance(item, faust.EventT):
            raise TypeError(f"take_batches: {type(item).__name__} on an agent channel")
        message = item.message
        if not app.flow_control.is_active() or message.generation_id != app.consumer_generation_id:
            return  # from before a rebalance: skipped, not acked (module docstring)
        if not message.tracked and app.topics.acks_enabled_for(message.topic):
            message.tracked = True
            app.consumer.track_message(message)
        events.append(item)
        keys.add(message.key)

    while not s.should_stop:
        try:
            take(await queue.get())
            # The window runs from the end of the last batch: events that queued while it
            # was handled wait out the rest of it; one that comes after a quiet spell
            # longer than the window goes at once.
            deadline = max(loop.time(), handled + window())
            while True:
                while not full() and not queue.empty():
                    # As many as are queued at once: ``empty()`` per event showed in the
                    # profile. (Not empty with nothing queued: an error to raise, so one.)
                    for _ in range(min(max_ - len(events), queue.qsize()) or 1):
                        take(queue.get_nowait())
                        if full():  # the user cap (the count already bounds max_)
                            break
                left = deadline - loop.time()
                if full() or left <= 0:
                    break
                await asyncio.sleep(min(left, POLL_S))
        except StopAsyncIteration:
            # How Faust ends the iteration of a channel when the worker stops (it throws
            # this into the queue). What was gathered is not acked: it is fetched again.
            return
        if not events:  # all skipped
            continue
        batch = list(events)
        events.clear()
        keys.clear()
        yield batch
        # Only once the caller asks for the next batch: it has handled this one.
        for event in batch:
            await s.ack(event)
        handled = loop.time()

"""``streams.patches.batching.take_batches`` on a real Faust agent channel (``test_context``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import faust
import pytest

from streams.patches.batching import take_batches

app = faust.App("test-batching", store="memory://", autodiscover=False)


@dataclass
class Plan:
    max_: int = 10
    max_keys: int | None = None
    windows: list[float] = field(default_factory=lambda: [0.05])  # one per batch, last repeats
    handle_s: float = 0.0  # time the "handler" takes per batch
    batches: list[list[Any]] = field(default_factory=list)
    acked_before_next: list[bool] = field(default_factory=list)
    waits: int = 0

    def window(self) -> float:
        w = self.windows[min(self.waits, len(self.windows) - 1)]
        self.waits += 1
        return w


plan = Plan()


@app.agent()
async def batcher(stream: faust.StreamT[Any]) -> None:
    previous: list[Any] = []
    async for events in take_batches(stream, plan.max_, plan.window, plan.max_keys):
        # The previous batch's events are acked once this one is asked for, not before.
        plan.acked_before_next.append(all(e.message.acked for e in previous))
        assert not any(e.message.acked for e in events)
        plan.batches.append([e.value for e in events])
        await asyncio.sleep(plan.handle_s)
        previous = list(events)


async def seen(n: int, timeout: float = 10.0) -> None:
    async def wait() -> None:
        while sum(map(len, plan.batches)) < n:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(wait(), timeout)


async def test_batches_hold_at_most_max_and_are_acked_after_they_are_handled() -> None:
    global plan
    plan = Plan(max_=10, windows=[5.0])
    async with batcher.test_context() as ctx:
        t0 = asyncio.get_running_loop().time()
        for i in range(25):
            await ctx.put(i, wait=False)
        await seen(20)
        # Two full batches went out at once, without waiting for the 5 s window.
        assert asyncio.get_running_loop().time() - t0 < 2.0
        assert plan.batches[:2] == [list(range(10)), list(range(10, 20))]
        await seen(25)  # the last 5 when the window ends
    assert plan.batches[2] == list(range(20, 25))
    assert all(plan.acked_before_next[1:])


async def test_the_window_is_read_again_for_every_batch() -> None:
    global plan
    # A 10 ms window, then a 1 s one from the second batch on (the agents lengthen it
    # after a batch that took long to handle).
    plan = Plan(max_=100, windows=[0.01, 1.0])
    async with batcher.test_context() as ctx:
        await ctx.put("a", wait=False)
        await seen(1)
        await asyncio.sleep(0.1)  # idle: no window runs, none is read
        await ctx.put("b", wait=False)  # opens a 1 s window
        await asyncio.sleep(0.2)
        await ctx.put("c", wait=False)  # 200 ms later: same window, same batch
        await seen(3)
    assert plan.batches == [["a"], ["b", "c"]]
    assert plan.waits == 2


async def test_with_a_short_window_events_apart_go_in_separate_batches() -> None:
    global plan
    plan = Plan(max_=100, windows=[0.01])
    async with batcher.test_context() as ctx:
        await ctx.put("a", wait=False)
        await seen(1)
        await ctx.put("b", wait=False)
        await asyncio.sleep(0.2)
        await ctx.put("c", wait=False)
        await seen(3)
    assert plan.batches == [["a"], ["b"], ["c"]]


def test_the_window_grows_only_after_a_slow_batch_and_up_to_its_bound() -> None:
    from streams.agents import SLOW_BATCH_WINDOWS, batch_window

    within, upper = 0.01, 0.1
    assert batch_window(0.0, within, upper) == within  # idle
    assert batch_window(0.03, within, upper) == within  # a cheap batch: latency first
    slow = SLOW_BATCH_WINDOWS * within + 0.01
    assert batch_window(slow, within, upper) == slow  # gather as long as handling took
    assert batch_window(0.5, within, upper) == upper  # never past the bound


def test_the_flush_counts_toward_the_window() -> None:
    from streams.agents import SLOW_BATCH_WINDOWS, batch_window

    within, upper = 0.01, 0.3
    assert batch_window(0.02, within, upper, flushed_s=0.004) == pytest.approx(0.006)
    assert batch_window(0.02, within, upper, flushed_s=0.05) == 0.0  # never negative
    slow = SLOW_BATCH_WINDOWS * within + 0.1
    assert batch_window(slow, within, upper, flushed_s=0.01) == pytest.approx(slow - 0.01)


async def test_a_message_from_before_a_rebalance_is_skipped_and_not_acked() -> None:
    global plan
    plan = Plan(max_=100, windows=[0.01])
    async with batcher.test_context() as ctx:
        channel: Any = ctx.stream().channel
        stale_msg = ctx.to_message(None, "stale", offset=0)
        stale_msg.generation_id = app.consumer_generation_id - 1
        stale = await channel.decode(stale_msg)
        await channel.put(stale)
        await ctx.put("fresh", wait=False)
        await seen(1)
        await asyncio.sleep(0.1)
    # Faust fetches it again from the committed offset after the rebalance; acking this
    # copy could let the commit pass it before the new copy is handled.
    assert plan.batches == [["fresh"]]
    assert not stale_msg.acked


async def test_a_batch_not_handled_is_not_acked() -> None:
    got: list[faust.EventT[Any]] = []

    @app.agent()
    async def closes_early(stream: faust.StreamT[Any]) -> None:
        batches = take_batches(stream, 10, lambda: 0.01)
        async for events in batches:
            got.extend(events)
            break  # as if the worker stopped while handling it
        await batches.aclose()  # type: ignore[attr-defined]

    async with closes_early.test_context() as ctx:
        await ctx.put("a", wait=False)
        for _ in range(200):
            if got:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
    assert [e.value for e in got] == ["a"]
    assert not got[0].message.acked


async def test_the_batches_end_when_faust_ends_the_channel() -> None:
    ended: list[bool] = []

    @app.agent()
    async def until_stopped(stream: faust.StreamT[Any]) -> None:
        async for _ in take_batches(stream, 10, lambda: 0.01):
            pass
        ended.append(True)

    async with until_stopped.test_context() as ctx:
        await ctx.put("a", wait=False)
        await asyncio.sleep(0.05)
        # What Faust does to every channel when the worker stops.
        await ctx.stream().channel.throw(StopAsyncIteration())
        for _ in range(100):
            if ended:
                break
            await asyncio.sleep(0.01)
    assert ended == [True]


async def test_after_a_quiet_spell_an_event_goes_at_once() -> None:
    global plan
    plan = Plan(max_=100, windows=[1.0])
    async with batcher.test_context() as ctx:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await ctx.put("a", wait=False)
        await seen(1)
        first = loop.time() - t0
        await asyncio.sleep(1.2)  # longer than the window since the batch was handled
        t1 = loop.time()
        await ctx.put("b", wait=False)
        await seen(2)
        second = loop.time() - t1
    assert plan.batches == [["a"], ["b"]]
    assert first < 0.5 and second < 0.5  # neither waited out the 1 s window


async def test_a_batch_closes_once_it_holds_max_keys_users() -> None:
    global plan
    plan = Plan(max_=100, max_keys=3, windows=[5.0])
    users = [b"a", b"a", b"b", b"a", b"c", b"c", b"a", b"d"]
    async with batcher.test_context() as ctx:
        t0 = asyncio.get_running_loop().time()
        for i, user in enumerate(users):
            await ctx.put(i, key=user, wait=False)
        await seen(5)
        # Out at once, with the third user's first event: not after the 5 s window.
        assert asyncio.get_running_loop().time() - t0 < 2.0
        assert plan.batches[0] == [0, 1, 2, 3, 4]
        await seen(8)  # c, a, d: three users again
        assert asyncio.get_running_loop().time() - t0 < 2.0
    assert plan.batches[1] == [5, 6, 7]

"""The consumer's eager hand-off of fetched messages (streams/patches/eager.py)."""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import pytest
from mode import Service

from streams.patches.eager import EagerFirst, Resumed, first_step


async def answer(value: int) -> int:
    return value


async def waits_for(fut: asyncio.Future[int], log: list[str]) -> int:
    try:
        got = await fut
        if got < 0:
            raise ValueError("negative")
        return got + 1
    finally:
        log.append("finally")


async def test_a_coroutine_that_never_suspends_finishes_in_its_first_step() -> None:
    assert first_step(answer(7)) == (True, 7)


async def test_the_rest_of_a_suspended_coroutine_runs_in_a_task() -> None:
    loop = asyncio.get_running_loop()
    for sent, expected in ((4, 5), (-1, ValueError)):
        fut: asyncio.Future[int] = loop.create_future()
        log: list[str] = []
        done, rest = first_step(waits_for(fut, log))
        assert not done and isinstance(rest, Resumed) and log == []
        task = asyncio.ensure_future(rest)
        await asyncio.sleep(0)
        assert not task.done()  # waiting on the future the first step yielded
        fut.set_result(sent)
        if expected is ValueError:
            with pytest.raises(ValueError, match="negative"):
                await task
        else:
            assert await task == expected
        assert log == ["finally"]


async def test_a_cancellation_reaches_the_resumed_coroutine() -> None:
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    log: list[str] = []
    _, rest = first_step(waits_for(fut, log))
    task = asyncio.ensure_future(rest)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["finally"] and fut.cancelled()


class Fetcher(EagerFirst, Service):
    """What the fetch loop's consumer brings: mode's Service and a suspend_flow event."""

    def __init__(self) -> None:
        super().__init__()
        self.suspend_flow = asyncio.Event()


async def test_wait_first_returns_the_callback_that_finished_at_once() -> None:
    s = Fetcher()
    tasks_before = len(asyncio.all_tasks())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine ... was never awaited" would fail here
        callback = answer(3)
        res = await s.wait_first(callback, s.suspend_flow.wait())
    assert res.done == [callback] and res.results == [3] and not res.stopped
    assert len(asyncio.all_tasks()) == tasks_before  # no task was made for it


async def test_a_suspended_callback_is_still_interrupted_by_suspend_flow() -> None:
    s = Fetcher()
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    log: list[str] = []
    waiting = asyncio.ensure_future(s.wait_first(waits_for(fut, log), s.suspend_flow.wait()))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    s.suspend_flow.set()  # what a rebalance does
    res: Any = await waiting
    assert res.results == [True] and not res.stopped
    await asyncio.sleep(0)
    assert log == ["finally"]  # the callback's rest was cancelled, as mode cancels losers


async def test_other_calls_take_modes_path() -> None:
    s = Fetcher()
    s.suspend_flow.set()
    # With flow suspended the eager path is not taken; mode's wait_first answers as before.
    callback = answer(5)
    res = await s.wait_first(callback, s.suspend_flow.wait())
    # mode's answer: every argument done by then is a winner (here both, in order).
    assert res.done[0] is callback and res.results[0] == 5 and not res.stopped

"""Hand each fetched message to Faust's conductor without four asyncio tasks per message.

Faust's fetch loop (``Consumer._drain_messages``) passes every message on with
``await self.wait_first(callback(message), self.suspend_flow.wait())``. mode's
``Service.wait_first`` wraps each argument, and the service's ``stopped`` and ``crashed``
events, in a task, waits for the first with ``asyncio.wait`` and cancels the other three:
four tasks, a wait and three cancellations for every message. In the worker's profile at
1,682 items (docs/benchmarks.md) that machinery was about a tenth of the event loop.

The callback almost never suspends: it takes the flow-control lock, checks the producer's
buffer and puts the event on the agent's queue, all of which return at once unless flow is
paused or a buffer is full. :class:`EagerFirst` runs its first step right away, in the
fetch loop's task. When it finishes there (the common case) its result is returned as
``wait_first`` would return it, and the unstarted ``suspend_flow.wait()`` is closed. When it
does suspend (paused flow, a full queue), the rest of it goes to the normal ``wait_first``,
which races it against ``suspend_flow`` as before: a rebalance still interrupts a wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any

from mode.services import WaitResults


class Resumed:
    """The rest of a coroutine whose first step already ran, as an awaitable.

    What ``yield from coro`` would do, from the second step on: what the coroutine yields
    (a future it waits for) goes to the task that awaits this, and what the task sends or
    throws in (a result, a cancellation) goes back to the coroutine.
    """

    __slots__ = ("_coro", "_yielded")

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self._coro = coro
        self._yielded = yielded

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self._coro, self._yielded
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancellation (or anything) thrown into the task
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


def first_step(coro: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    """Run ``coro`` until it first suspends: ``(True, result)`` if it finished without
    suspending, else ``(False, Resumed)`` to await for the rest. Its exceptions propagate."""
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        return True, stop.value
    return False, Resumed(coro, yielded)


class EagerFirst:
    """A ``wait_first`` for Faust's consumer that first runs the callback eagerly.

    Mixed into the worker's consumer (``streams.patches.transport.Consumer``); the other
    attributes come from ``faust.transport.consumer.Consumer`` and mode's ``Service``.
    """

    suspend_flow: Any
    _stopped: Any
    _crashed: Any

    async def wait_first(self, *coros: Any, timeout: Any = None) -> WaitResults:
        # Only the fetch loop's call has this shape: a coroutine and suspend_flow's wait.
        if (
            timeout is None
            and len(coros) == 2
            and asyncio.iscoroutine(coros[0])
            and asyncio.iscoroutine(coros[1])
            and not self.suspend_flow.is_set()
            and not self._stopped.is_set()
            and not self._crashed.is_set()
        ):
            first, other = coros
            try:
                done, value = first_step(first)
            except BaseException:
                other.close()
                raise
            if done:
                other.close()  # never started: nothing to wait for or to cancel
                return WaitResults([first], [value], False)
            coros = (value, other)
        parent: Any = super()
        results: WaitResults = await parent.wait_first(*coros, timeout=timeout)
        return results

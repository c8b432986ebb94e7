"""Spotting messages Faust read but dropped, and the parked re-seek (streams/patches/healing.py)."""

from __future__ import annotations

import asyncio
from collections import deque
from types import SimpleNamespace
from typing import Any, NamedTuple

from streams.patches.healing import STUCK_CHECKS, HoleWatch, PartitionView, has_hole, reseek, view


class TP(NamedTuple):
    topic: str
    partition: int


def test_a_hole_is_a_read_partition_committed_behind_with_nothing_in_flight() -> None:
    assert has_hole(PartitionView(committed=2, fetched=100, in_flight=0))
    assert has_hole(PartitionView(committed=None, fetched=5, in_flight=0))
    assert not has_hole(PartitionView(committed=100, fetched=100, in_flight=0))  # all done
    assert not has_hole(PartitionView(committed=2, fetched=100, in_flight=3))  # still working
    assert not has_hole(PartitionView(committed=None, fetched=0, in_flight=0))  # nothing yet
    assert not has_hole(PartitionView(committed=None, fetched=None, in_flight=0))


def test_only_a_hole_that_stays_the_same_is_stuck() -> None:
    watch = HoleWatch()
    hole = {"p0": PartitionView(2, 100, 0)}
    for _ in range(STUCK_CHECKS - 1):
        assert watch.stuck(hole) == []
    assert watch.stuck(hole) == ["p0"]
    # Progress in between (the commit moved) starts the count again.
    watch = HoleWatch()
    assert watch.stuck(hole) == []
    assert watch.stuck({"p0": PartitionView(50, 100, 0)}) == []
    assert watch.stuck({"p0": PartitionView(50, 100, 0)}) == []
    assert watch.stuck({"p0": PartitionView(100, 100, 0)}) == []  # caught up: no hole
    assert watch.seen == {}


async def test_view_reads_the_consumers_bookkeeping_for_stream_topics_only() -> None:
    tp_a, tp_b, tp_c, tp_log = TP("clicks", 0), TP("clicks", 1), TP("social", 0), TP("log", 0)
    positions = {tp_a: 100, tp_b: 10, tp_c: 6}

    async def position(tp: TP) -> int:
        return positions[tp]

    consumer = SimpleNamespace(
        assignment=lambda: {tp_a, tp_b, tp_c, tp_log},
        _unacked_messages=[
            SimpleNamespace(tp=tp_b, acked=False),
            # Acked but left in Faust's set (offset below the commit): not in flight.
            SimpleNamespace(tp=tp_c, acked=True),
        ],
        _committed_offset={tp_a: 2, tp_b: 7, tp_c: 3},
        position=position,
    )
    got = await view(consumer, ["clicks", "social"])
    # A message of clicks[1] in flight: the clicks agent is busy, so clicks[0] may be
    # waiting in its queue (no hole); social has nothing in flight.
    assert got == {
        tp_a: PartitionView(2, 100, 1),
        tp_b: PartitionView(7, 10, 1),
        tp_c: PartitionView(3, 6, 0),
    }
    assert [has_hole(got[tp]) for tp in (tp_a, tp_b, tp_c)] == [False, False, True]


class FakeConsumer:
    """The fetch loop parks on ``can_resume_flow`` once flow is stopped."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.can_resume_flow = SimpleNamespace(_waiters=deque())
        self.parked_before_seek = False

    def stop_flow(self) -> None:
        self.calls.append("stop")

        async def park() -> None:  # the fetch loop gets there a moment later
            await asyncio.sleep(0.1)
            self.can_resume_flow._waiters.append(object())

        self._park = asyncio.ensure_future(park())

    async def perform_seek(self) -> None:
        self.parked_before_seek = bool(self.can_resume_flow._waiters)
        self.calls.append("seek")
        # Faust: what aiokafka reports committed; aiokafka seeks only where it is not 0/None.
        self._committed_offset = {"a": 12, "b": None}

    async def earliest_offsets(self, *tps: str) -> dict[str, int]:
        return {tp: 3 for tp in tps}

    async def seek(self, tp: str, offset: int) -> None:
        self.calls.append(f"seek {tp} {offset}")

    def resume_flow(self) -> None:
        self.calls.append("resume")


async def test_reseek_waits_for_the_fetch_loop_to_park_then_seeks_and_resumes() -> None:
    consumer: Any = FakeConsumer()
    await reseek(consumer, ["a"])
    assert consumer.calls == ["stop", "seek", "resume"] and consumer.parked_before_seek


async def test_reseek_sends_a_stuck_partition_with_nothing_committed_to_its_start() -> None:
    consumer: Any = FakeConsumer()
    await reseek(consumer, ["a", "b"])
    assert consumer.calls == ["stop", "seek", "seek b 3", "resume"]


def test_lag_is_unknown_until_the_partition_has_a_highwater() -> None:
    from streams.runtime import partition_lag

    # Just after a rebalance: assigned, nothing fetched yet. Must not raise (it once
    # crashed the surviving worker of the bench's kill -9 takeover).
    assert partition_lag(None, 120) is None
    assert partition_lag(500, None) is None
    assert partition_lag(500, 120) == 380
    assert partition_lag(100, 120) == 0

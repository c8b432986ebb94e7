"""Find messages Faust read but dropped, and fetch them again.

faust-streaming 0.15.3 can lose messages around a rebalance, in two ways seen here:

* table recovery seeks the stream partitions to their committed offsets while the fetcher
  runs, then calls ``flow_control.resume()``, which clears every stream queue (they are
  ``clear_on_resume``): what was fetched in between is never processed;
* a fetch batch still being delivered when a seek moves the position back overwrites the
  consumer's "read offset" after the seek, so the records fetched again below it are
  dropped as already read.

Either way the messages are never acked, so the partition's commit stops at the first of
them and stays there (Faust commits only a run of consecutive acked offsets), while the
consumer's position is at the end of the partition: nothing is in flight, nothing moves.
Until the next rebalance they are lost. The ``kill -9`` fault test caught both.

"Nothing in flight" must count only messages not acked yet. Faust's ``Consumer.ack`` marks
a message acked but leaves it in ``_unacked_messages`` when its offset is below the
committed one (a replayed message, after a restart or a re-seek), and that set is weak, so
the message stays there for as long as anything holds it: the agent holds its last batch
until the next one. Counted as in flight, two such messages hid a hole for the whole 120 s
of a failed fault test, with the fetch wait at 20 ms (docs/benchmarks.md).

:func:`view` and :class:`HoleWatch` spot that state from the consumer's bookkeeping; :func:`reseek`
fetches from the committed offsets again with the fetch loop parked, so no batch in
delivery can overwrite the read offsets afterwards. Messages processed twice are no-ops
(every change to a user's state is idempotent by event id, or by topic, partition and
offset for records without one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

#: Checks in a row a partition must look stuck before it is fetched again.
STUCK_CHECKS = 3


@dataclass(frozen=True)
class PartitionView:
    """What the consumer knows of one stream partition.

    ``fetched`` is the Kafka position (the next offset to fetch), not Faust's "read offset":
    after a restart the fault test saw Faust keep no read offset at all for partitions whose
    messages it had fetched and dropped.
    """

    committed: int | None
    fetched: int | None
    #: Messages of the partition's topic taken by a stream and not acked yet. Per topic, not
    #: per partition: one agent takes batches across all partitions of its topic, so while
    #: it works on one (an encoder outage can hold a batch for a minute), the others'
    #: messages wait in its queue, read and not committed, and that is no hole.
    in_flight: int


async def view(consumer: Any, stream_topics: Iterable[str]) -> dict[Any, PartitionView]:
    """Position, Faust's committed offset and work in flight per assigned stream partition."""
    topics = set(stream_topics)
    in_flight: dict[str, int] = {}
    for message in list(consumer._unacked_messages):
        if message.acked:  # acked, but kept in the set (module docstring)
            continue
        in_flight[message.tp.topic] = in_flight.get(message.tp.topic, 0) + 1
    out = {}
    for tp in consumer.assignment():
        if tp.topic in topics:
            out[tp] = PartitionView(
                consumer._committed_offset.get(tp),
                await consumer.position(tp),
                in_flight.get(tp.topic, 0),
            )
    return out


def has_hole(v: PartitionView) -> bool:
    """Fetched past the committed offset with nothing of its topic in flight: a drop.

    A healthy partition is committed up to its position within a commit interval once its
    streams have acked everything they took.
    """
    if v.fetched is None or v.in_flight:
        return False
    return v.fetched > (v.committed or 0)


@dataclass
class HoleWatch:
    """Partitions that showed the same hole ``STUCK_CHECKS`` checks in a row."""

    seen: dict[Any, tuple[PartitionView, int]] = field(default_factory=dict)

    def stuck(self, views: Mapping[Any, PartitionView]) -> list[Any]:
        out = []
        seen: dict[Any, tuple[PartitionView, int]] = {}
        for tp, v in views.items():
            if not has_hole(v):
                continue
            before = self.seen.get(tp)
            count = before[1] + 1 if before is not None and before[0] == v else 1
            seen[tp] = (v, count)
            if count >= STUCK_CHECKS:
                out.append(tp)
        self.seen = seen
        return out


async def reseek(consumer: Any, stuck: Iterable[Any], park_timeout_s: float = 10.0) -> None:
    """Seek every partition to its committed offset with the fetch loop parked.

    ``stop_flow`` makes the fetch loop stop delivering at its next record and wait for
    ``can_resume_flow``; once it waits there, seeking cannot race a batch in delivery.

    aiokafka's ``seek_to_committed`` leaves a partition with nothing committed where it is,
    so a hole there would stay: the ``kill -9`` fault test once saw two click partitions
    with no commit stuck for two minutes, healing firing every 15 s to no effect. Of the
    ``stuck`` partitions, those go back to their first offset (the worker's
    ``auto_offset_reset`` is earliest).
    """
    consumer.stop_flow()
    try:
        deadline = time.monotonic() + park_timeout_s
        while not consumer.can_resume_flow._waiters and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await consumer.perform_seek()
        never_committed = [tp for tp in stuck if not consumer._committed_offset.get(tp)]
        if never_committed:
            earliest = await consumer.earliest_offsets(*never_committed)
            for tp in never_committed:
                await consumer.seek(tp, earliest[tp])
    finally:
        consumer.resume_flow()

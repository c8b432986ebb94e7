"""The worker's Faust app: a Kafka fetch wait it chooses, Faust's pauses told to aiokafka,
a send-soon buffer it can drain.

**Fetch wait** (``SCENEREC_FETCH_MAX_WAIT_MS``). Faust's aiokafka driver builds its
consumer with ``fetch_max_wait_ms=1500`` and no setting to change it. aiokafka sends one
fetch at a time to a broker, and leaves out of it every partition whose last records are
still buffered, not yet taken by Faust. When a busy worker has not taken the click records
within aiokafka's 0.1 s prefetch backoff, the next fetch asks only for partitions with
nothing in them (comments, social, profiles), and the broker holds that fetch for up to
1.5 s. No click reaches the worker until it returns. At 1,000 clicks/s that showed as a
stall every 1-5 s, 0.5-1.7 s long, and a latency p99 of 1.6-3.0 s in the runs that had
them (docs/benchmarks.md, "The fetch stall"). A short wait bounds the stall; an idle
worker pays with one empty fetch per wait. The worker sets 20 ms. (It was opt-in for a
while: with it the ``kill -9`` fault test failed in 2 of 4 runs, because acked messages
Faust keeps in its unacked set hid a hole from ``streams.patches.healing``; healing now counts only
messages not acked.) The override sets the consumer's private
``_fetch_max_wait_ms`` between its construction and its start (``AIOKafkaConsumer.start``
builds the fetcher from it), the one point Faust leaves open; a unit test checks that the
worker consumer gets the value.

**Pauses** (:func:`mirror_pauses`). Partitions Faust leaves out of its reads (the table's
changelog once recovered) are paused in aiokafka too, before every fetch: records of them
waiting unread in aiokafka's buffer held back every fetch for 0.1 s.

**Send-soon buffer.** :func:`count_sends` lets :func:`flush_producer` see the record
Faust's buffer has in hand, so a batch is acked only once its table changelog
records are with aiokafka.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import faust
from faust import transport
from faust.transport.drivers import aiokafka as driver
from faust.types import ProducerT, TransportT

from streams.patches.eager import EagerFirst

log = logging.getLogger(__name__)


class ConsumerThread(driver.AIOKafkaConsumerThread):
    async def _fetch_records(
        self,
        consumer: Any,
        active_partitions: set[Any],
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Any:
        # In the consumer's own thread: aiokafka's pause makes a future on this loop.
        mirror_pauses(consumer, active_partitions)
        return await super()._fetch_records(
            consumer, active_partitions, timeout=timeout, max_records=max_records
        )

    def _create_worker_consumer(self, transport: driver.Transport) -> Any:
        consumer = super()._create_worker_consumer(transport)
        wait_ms = getattr(self.app, "fetch_max_wait_ms", None)
        if wait_ms is not None:
            if not hasattr(consumer, "_fetch_max_wait_ms"):  # an aiokafka that renamed it
                raise RuntimeError("aiokafka's consumer has no _fetch_max_wait_ms to set")
            consumer._fetch_max_wait_ms = int(wait_ms)
        return consumer


def mirror_pauses(consumer: Any, active: set[Any] | None) -> None:
    """Pause in aiokafka every assigned partition Faust is not reading, resume the rest.

    Faust pauses a partition only in its own books (``Consumer.pause_partitions``: left
    out of the partitions it asks ``getmany`` for). aiokafka, not told, goes on fetching
    it. The table's changelog partitions stay so paused once recovery is done, and the
    worker writes to them: their records come back in fetches and wait in aiokafka's
    buffer, which nothing reads. aiokafka sends no fetch to a broker while any of its
    partitions has records waiting, for up to ``prefetch_backoff`` (0.1 s). So the first
    state write to each changelog partition stopped all fetching for 0.1 s: a stall per
    changelog partition early in a fresh worker's life, three of them traced in the first
    0.6 s of a 1,000 clicks/s run (docs/benchmarks.md, "The changelog stall"). A partition
    paused in aiokafka is not fetched. Records of it fetched before the pause stay in the
    buffer as they did without it and come out once it is resumed (aiokafka drops them,
    and fetches again, if a seek moved the position meanwhile).

    ``active`` is Faust's set of partitions to read (None: a client-only app, which reads
    everything). It is copied first: Faust's thread changes it.
    """
    if active is None:
        return
    wanted = set(active)
    paused = consumer.paused()
    for tp in consumer.assignment():
        if tp in wanted:
            if tp in paused:
                consumer.resume(tp)
        elif tp not in paused:
            consumer.pause(tp)


def commit_blocked(acked: Sequence[int], committed: int | None) -> bool:
    """True when the lowest acked offset is past the committed one: a hole at the front.

    ``committed`` is Kafka's: the next offset to handle. Faust's ``_new_offset`` lets a
    commit go ahead when the lowest acked offset is ``committed + 1`` (skipping the message
    at ``committed``), and checks nothing when ``committed`` is 0 or None. On a topic whose
    offsets have no holes of their own, either way a message that was never handled would
    be committed over.
    """
    return bool(acked) and committed is not None and min(acked) > committed


class Consumer(EagerFirst, driver.Consumer):
    """Faust's consumer, which never counts an offset of a gap-free topic as done unhandled,
    and hands each fetched message on without a task per message (``streams.patches.eager``).

    Faust's fetch loop treats a jump in the offsets it delivers (``offset > read offset +
    1``) as a gap, and its commits count a gap as handled. On a compacted topic that is
    right: compaction leaves holes. On the click, comment and social topics there are no
    holes, and a jump means records were skipped: a seek to the committed offsets (table
    recovery after a rebalance, or ``streams.patches.healing``) raced a fetch still being
    delivered, which moved the read offset past records the new fetch then drops as
    already read. Counted as a gap, those records were committed over and lost: the
    ``kill -9`` fault test lost 10 clicks of one partition that way, with its commit at the
    end and nothing for healing to see. Here such a jump is logged and not counted; the
    commit stops before it, and ``streams.patches.healing`` fetches the records again.
    ``app.contiguous_topics`` names the topics (the app's non-compacted input topics).
    """

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _contiguous(self, topic: str) -> bool:
        return topic in getattr(self.app, "contiguous_topics", ())

    async def _add_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
        if not self._contiguous(tp.topic):
            await super()._add_gap(tp, offset_from, offset_to)
            return
        log.warning(
            "offsets %d-%d of %s[%d] were skipped by the fetch (a seek raced a fetch in"
            " delivery): not counted as handled; the commit waits for them",
            offset_from,
            offset_to - 1,
            tp.topic,
            tp.partition,
        )

    def _new_offset(self, tp: Any) -> int | None:
        if self._contiguous(tp.topic) and commit_blocked(
            self._acked[tp], self._committed_offset[tp]
        ):
            return None
        offset: int | None = super()._new_offset(tp)
        return offset


class Transport(driver.Transport):
    Consumer = Consumer


def count_sends(buffer: Any) -> None:
    """Keep ``buffer.sending``: records taken off Faust's send-soon buffer, not yet handed over.

    ``ProducerBuffer.size`` counts only the records still queued. The one its task has taken
    may still be waiting for room in aiokafka's batch for its partition, in no batch that
    an aiokafka flush waits for. :func:`flush_producer` waits for both. Must
    run before the buffer starts: its task reads ``_send_pending`` once, when it starts.
    """
    send = buffer._send_pending
    buffer.sending = 0

    async def counted(fut: Any) -> None:
        buffer.sending += 1
        try:
            await send(fut)
        finally:
            buffer.sending -= 1

    buffer._send_pending = counted


async def flush_producer(producer: Any) -> None:
    """Hand every record sent so far to Kafka and wait for the broker's acks.

    The table's changelog records wait in Faust's send-soon buffer (``producer.buffer``).
    Faust's ``Producer.flush`` drains it with ``ProducerBuffer.flush``, which returns as
    soon as one record takes over 0.1 s to go out (``flush_atmost``), with records still
    in the buffer; the aiokafka flush after it cannot see those. A batch acked then has a
    user's state change only in this process's memory, and a ``kill -9`` before the buffer
    drains loses it once the offset is committed. So drain until the buffer is empty, and
    the record its task took off it is handed to aiokafka (``buffer.sending``, kept by
    :func:`count_sends`), before the aiokafka flush.
    """
    buffer = producer.buffer
    while buffer.size or getattr(buffer, "sending", 0):
        if buffer.size:
            await buffer.flush()
        else:
            await asyncio.sleep(0.001)
    await producer.flush()


class App(faust.App):
    """``faust.App`` whose Kafka consumer waits at most ``fetch_max_wait_ms`` per fetch,
    and whose producer counts the send-soon records in hand (:func:`count_sends`)."""

    def __init__(
        self,
        *args: Any,
        fetch_max_wait_ms: int | None = None,
        contiguous_topics: frozenset[str] = frozenset(),
        **kwargs: Any,
    ) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms
        #: Topics whose offsets have no holes of their own (:class:`Consumer`).
        self.contiguous_topics = contiguous_topics
        super().__init__(*args, **kwargs)

    def _new_producer(self) -> ProducerT:
        producer = super()._new_producer()
        count_sends(producer.buffer)
        return producer

    def _new_transport(self) -> TransportT:
        if transport.by_url(self.conf.broker_consumer[0]) is driver.Transport:
            return Transport(self.conf.broker_consumer, self)
        return super()._new_transport()

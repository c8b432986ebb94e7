"""Every worker reads the whole item-stats table into the statistics it ranks with.

The item-stats agent of each partition writes its rows to the ``item-stats`` table; the
table's changelog (compacted, keyed by item) is what every worker reads, all partitions,
with its own group-less consumer, as it reads the catalog (``streams/catalog_reader.py``).
The ranking statistics live in memory, so a (re)started worker reads the changelog from
the beginning: the latest row of every item, counted by every worker's clicks.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer

from embeddings.itemstats import loads_row
from scenerec.kafka import assigned_partitions
from streams.itemstats import key_of
from streams.pipeline import Pipeline

log = logging.getLogger(__name__)


class StatsReader:
    """Reads every partition of the item-stats changelog into the pipeline, forever."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        topic: str,
        get_pipeline: Callable[[], Awaitable[Pipeline]],
        batch_max: int = 2000,
    ) -> None:
        self._consumer = consumer
        self._topic = topic
        self._get_pipeline = get_pipeline
        self._batch_max = batch_max

    async def run(self) -> None:
        pipe = await self._get_pipeline()
        tps = await assigned_partitions(self._consumer, self._topic)
        for tp in tps:
            await self._consumer.seek_to_beginning(tp)
        log.info(
            "item-stats reader: %d partitions of %s, from the beginning", len(tps), self._topic
        )
        while True:
            batches = await self._consumer.getmany(timeout_ms=500, max_records=self._batch_max)
            for records in batches.values():
                for record in records:
                    if record.key is None or record.value is None:
                        continue  # rows are never deleted; nothing else is written there
                    try:
                        row = loads_row(record.value)
                    except ValueError:
                        log.exception(
                            "unreadable item-stats row at %s[%d]@%d: skipped",
                            record.topic,
                            record.partition,
                            record.offset,
                        )
                        continue
                    pipe.receive_stats(key_of(record.key), row)

"""Every worker indexes the whole catalog.

Events are partitioned by user, so a worker sees only its users; but any user may click any
item, so every worker needs every item. A Faust agent would split ``catalog.items``
partitions across the consumer group. Instead each worker reads all partitions of the
(compacted) topic with its own group-less consumer and feeds :meth:`Pipeline.on_catalog`.

The positions it reached are saved in the worker's var dir after the items are durable in
the vector store, so a restart resumes there instead of re-encoding the whole catalog; when
the store holds no item (new or wiped), it starts from the beginning.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from scenerec.kafka import assigned_partitions
from streams.agents import handle
from streams.pipeline import Incoming, Pipeline

log = logging.getLogger(__name__)


def load_positions(path: Path) -> dict[int, int]:
    try:
        raw = json.loads(path.read_text())
        return {int(p): int(o) for p, o in raw.items()}
    except FileNotFoundError:
        return {}
    except (ValueError, AttributeError) as exc:
        log.warning("ignoring unreadable catalog positions %s: %s", path, exc)
        return {}


def save_positions(path: Path, positions: dict[int, int]) -> None:
    # Write-then-rename: a crash mid-write leaves the old file, never a torn one.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({str(p): o for p, o in sorted(positions.items())}))
    os.replace(tmp, path)


def to_incoming(record: ConsumerRecord[bytes, bytes]) -> Incoming:
    return Incoming(
        value=record.value,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        timestamp=record.timestamp / 1000.0 if record.timestamp is not None else None,
    )


class CatalogReader:
    """Reads every partition of the catalog topic into the pipeline, forever."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        topic: str,
        positions_path: Path,
        get_pipeline: Callable[[], Awaitable[Pipeline]],
        batch_max: int = 500,
    ) -> None:
        self._consumer = consumer
        self._topic = topic
        self._path = positions_path
        self._get_pipeline = get_pipeline
        self._batch_max = batch_max

    async def _assign(self, resume: bool) -> list[TopicPartition]:
        tps = await assigned_partitions(self._consumer, self._topic)
        saved = load_positions(self._path) if resume else {}
        for tp in tps:
            if tp.partition in saved:
                self._consumer.seek(tp, saved[tp.partition])
            else:
                await self._consumer.seek_to_beginning(tp)
        return tps

    async def run(self) -> None:
        pipe = await self._get_pipeline()
        resume = len(pipe.index) > 0
        tps = await self._assign(resume)
        end = await self._consumer.end_offsets(tps)
        log.info(
            "catalog reader: %d partitions of %s, %s",
            len(tps),
            self._topic,
            "resuming from saved positions" if resume else "from the beginning",
        )
        caught_up = False  # only for the log line below
        while True:
            if not caught_up and all(
                await asyncio.gather(*(self._at_end(tp, end[tp]) for tp in tps))
            ):
                caught_up = True
                log.info("catalog reader caught up: %d items indexed", len(pipe.index))
            batches = await self._consumer.getmany(timeout_ms=500, max_records=self._batch_max)
            records = [r for part in batches.values() for r in part]
            if not records:
                continue
            await handle(pipe, [to_incoming(r) for r in records], Pipeline.on_catalog, self._topic)
            # The store holds the items before the positions move past them.
            pipe.store.flush()
            reached = {tp.partition: await self._consumer.position(tp) for tp in tps}
            save_positions(self._path, reached)

    async def _at_end(self, tp: TopicPartition, end: int) -> bool:
        return bool(await self._consumer.position(tp) >= end)

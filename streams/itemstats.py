"""The item-stats stage: every worker's click deltas, re-keyed by item, into one shared table.

A worker turns each click into deltas addressed to items (``embeddings.itemstats``) and
sends them to ``items.deltas``, one message per partition per batch, the partition being
the one Kafka's default partitioner gives the item's key (:func:`partition_of`). The
item-stats agent that owns the partition applies them (:class:`ItemStatsStage`) to the
``item-stats`` table, keyed by item and backed by its changelog topic, so a restarted or
rebalanced worker keeps every count; every worker reads that changelog, all partitions
(``streams/stats_reader.py``), into the statistics it ranks with. Each delta names the
click it came from (input topic and partition, offset), and a row applies a source's
deltas only past the last offset it applied: a click replayed after a crash counts once.
"""

from __future__ import annotations

import struct
from collections.abc import MutableMapping
from dataclasses import dataclass, field

import numpy as np
from aiokafka.partitioner import murmur2

from embeddings.collaborative import Collaborative
from embeddings.itemstats import (
    START,
    DeltaBatch,
    SparseRow,
    StatsConfig,
    StatsRow,
    apply,
    dumps_row,
    loads_row,
)
from embeddings.ranking import ItemIndex

_KEY = struct.Struct("<q")
#: Delta sources are ``topic code * SOURCE_SPAN + partition``.
SOURCE_SPAN = 1 << 16
#: The input topics whose events count as clicks, and their source codes.
SOURCE_TOPICS = {"events.click": 1, "events.comment": 2}


def key_bytes(key: int) -> bytes:
    """The table and message key of an item-stats row."""
    return _KEY.pack(key)


def key_of(raw: bytes) -> int:
    (key,) = _KEY.unpack(raw)
    return int(key)


def source_of(topic: str, partition: int) -> int:
    """The delta source of a message of ``topic`` (its base name) and ``partition``."""
    return SOURCE_TOPICS[topic] * SOURCE_SPAN + partition


@dataclass
class Partitioner:
    """Kafka's default partitioner (murmur2 of the key bytes), remembered per key."""

    partitions: int
    _cache: dict[int, int] = field(default_factory=dict)

    def __call__(self, key: int) -> int:
        p = self._cache.get(key)
        if p is None:
            p = self._cache[key] = (murmur2(key_bytes(key)) & 0x7FFFFFFF) % self.partitions
        return p


def split_by_partition(deltas: DeltaBatch, partition_of: Partitioner) -> dict[int, DeltaBatch]:
    """One batch of deltas per destination partition, each in the order given."""
    positions: dict[int, list[int]] = {}
    for i, key in enumerate(deltas.key):
        positions.setdefault(partition_of(key), []).append(i)
    return {p: deltas.select(pos) for p, pos in sorted(positions.items())}


class ItemStatsStage:
    """Applies deltas to rows kept as bytes (the Faust table, or a dict in-process)."""

    def __init__(self, rows: MutableMapping[bytes, bytes], config: StatsConfig) -> None:
        self.rows, self.config = rows, config

    def apply(self, deltas: DeltaBatch) -> dict[int, StatsRow]:
        """Apply a batch; every row it changed, written back once."""
        changed: dict[int, StatsRow] = {}
        for key, positions in deltas.groups().items():
            raw = self.rows.get(key_bytes(key))
            row = StatsRow() if raw is None else loads_row(raw)
            if apply(row, deltas, positions, self.config):
                changed[key] = row
        for key, row in changed.items():
            self.rows[key_bytes(key)] = dumps_row(row)
        return changed


class SharedStats:
    """Rows of the shared item statistics (keyed by :func:`~embeddings.itemstats.item_key`)
    into a worker's :class:`Collaborative` (keyed by its item rows).

    A row that names an item this worker has not indexed yet (the catalog and the
    statistics arrive on separate topics) waits, and is taken in again by :meth:`retry`.
    """

    def __init__(self, index: ItemIndex, stats: Collaborative) -> None:
        self.index, self.stats = index, stats
        self._pending: dict[int, StatsRow] = {}

    @property
    def pending(self) -> int:
        return len(self._pending)

    def receive(self, key: int, row: StatsRow) -> None:
        """The latest row of ``key`` (it replaces what was there)."""
        if not self._take(key, row):
            self._pending[key] = row
        else:
            self._pending.pop(key, None)

    def retry(self) -> None:
        """Take in the rows that waited for items now indexed."""
        for key, row in list(self._pending.items()):
            if self._take(key, row):
                del self._pending[key]

    def _take(self, key: int, row: StatsRow) -> bool:
        if key == START:
            at = START
        else:
            found = int(self.index.rows_of_keys(np.array([key], np.int64))[0])
            if found < 0:
                return False
            at = found
        trans, t_ok = self._mapped(row.trans)
        cooc, c_ok = self._mapped(row.cooc)
        self.stats.put(at, StatsRow(row.log_pop, row.ts, row.first_click, row.count, trans, cooc))
        return t_ok and c_ok

    def _mapped(self, row: SparseRow) -> tuple[SparseRow, bool]:
        keys, weights = row.items()
        rows = self.index.rows_of_keys(keys)
        known = rows >= 0
        return SparseRow(rows[known].astype(np.int64), weights[known].copy()), bool(known.all())

"""Item statistics as bounded sparse rows: counting, exactly-once replays, the wire formats,
the stage that applies every worker's deltas and the rows a worker reads back."""

from __future__ import annotations

import math

import numpy as np
import pytest
from aiokafka.partitioner import DefaultPartitioner

from embeddings.collaborative import Collaborative
from embeddings.itemstats import (
    START,
    DeltaBatch,
    SparseRow,
    StatsConfig,
    StatsRow,
    apply,
    click_deltas,
    dumps_deltas,
    dumps_row,
    item_key,
    loads_deltas,
    loads_row,
)
from embeddings.ranking import ItemIndex
from streams.itemstats import (
    ItemStatsStage,
    Partitioner,
    SharedStats,
    key_bytes,
    key_of,
    source_of,
    split_by_partition,
)

CFG = StatsConfig(window=2, step_decay=0.5, cooc_history=3, neighbours=4, half_life_s=100.0)


def clicks(stage: ItemStatsStage, source: int, first_offset: int, n: int) -> DeltaBatch:
    """``n`` clicks of one user walking items 1, 2, 3, ... from ``source``."""
    out = DeltaBatch()
    for k in range(n):
        item = first_offset + k + 1
        recent = list(range(1, item))
        click_deltas(out, item, float(item), recent, recent, CFG, source, first_offset + k)
    return out


def test_a_click_counts_popularity_transitions_and_cooccurrence() -> None:
    rows: dict[int, StatsRow] = {}
    out = DeltaBatch()
    click_deltas(out, 7, 10.0, [], [], CFG)  # a first click: the start row
    click_deltas(out, 8, 20.0, [5, 6, 7], [6, 7], CFG)  # credited to 7 (1) and 6 (0.5)
    for key, pos in out.groups().items():
        apply(rows.setdefault(key, StatsRow()), out, pos, CFG)
    assert dict(zip(*[a.tolist() for a in rows[START].trans.items()], strict=True)) == {7: 1.0}
    assert rows[7].trans.get([8]).tolist() == [1.0] and rows[6].trans.get([8]).tolist() == [0.5]
    assert 5 not in rows  # outside the window of 2, and not among the distinct items
    assert rows[8].count == 1.0 and rows[8].cooc.get([6, 7]).tolist() == [1.0, 1.0]
    assert rows[7].cooc.get([8]).tolist() == [1.0]
    assert rows[8].log_pop == pytest.approx(CFG.rate * 20.0) and rows[8].first_click == 20.0


def test_popularity_decays_with_its_half_life_and_not_without_one() -> None:
    row = StatsRow()
    out = DeltaBatch()
    click_deltas(out, 1, 0.0, [1], None, CFG)
    click_deltas(out, 1, 100.0, [1], None, CFG)
    apply(row, out, [0, 2], CFG)  # the two clicks, not their transitions
    assert math.exp(row.log_pop - CFG.rate * 100.0) == pytest.approx(1.5)  # 0.5 + 1
    flat = StatsConfig(half_life_s=math.inf)
    row = StatsRow()
    apply(row, out, [0, 2], flat)
    assert math.exp(row.log_pop) == pytest.approx(2.0)


def test_a_replayed_click_counts_once() -> None:
    stage = ItemStatsStage({}, CFG)
    source = source_of("events.click", 3)
    stage.apply(clicks(stage, source, 0, 6))
    clean = dict(stage.rows)
    # Offsets 2..5 again (a crash before the commit), then 6..7 new: the new ones count.
    stage.apply(clicks(stage, source, 2, 4))
    assert stage.rows == clean
    stage.apply(clicks(stage, source, 2, 6))
    once = ItemStatsStage({}, CFG)
    once.apply(clicks(once, source, 0, 8))
    assert stage.rows == once.rows
    # The first deltas and the replay in one batch of the stage (separate messages).
    together = ItemStatsStage({}, CFG)
    together.apply(clicks(together, source, 0, 6), clicks(together, source, 2, 6))
    assert together.rows == once.rows
    # Another source's offsets are its own.
    other = clicks(stage, source_of("events.comment", 3), 0, 1)
    assert stage.apply(other)


def test_rows_stay_bounded_and_keep_the_strongest() -> None:
    row = SparseRow()
    for k in range(100):
        row.add(k, float(k % 10))
        row.prune(4)
        assert len(row) <= 8
    _, weights = row.items()
    assert sorted(weights.tolist(), reverse=True)[:4] == [9.0, 9.0, 9.0, 9.0]
    assert row.get([99, 12345]).tolist() == [9.0, 0.0]


def test_wire_formats_round_trip() -> None:
    stage = ItemStatsStage({}, CFG)
    deltas = clicks(stage, source_of("events.click", 1), 10, 5)
    back = loads_deltas(dumps_deltas(deltas))
    for name in DeltaBatch.__slots__:
        assert getattr(back, name) == getattr(deltas, name)
    changed = stage.apply(deltas)
    for key, row in changed.items():
        again = loads_row(dumps_row(row))
        assert dumps_row(again) == dumps_row(row) and again.marks == row.marks
        assert key_of(key_bytes(key)) == key
    with pytest.raises(ValueError, match="delta batch"):
        loads_deltas(b"nonsense")
    with pytest.raises(ValueError, match="magic"):
        loads_row(b"xyz")


def test_deltas_go_to_the_partition_kafka_gives_their_key() -> None:
    partition_of = Partitioner(4)
    deltas = DeltaBatch()
    for k in range(50):
        click_deltas(deltas, item_key(f"i{k}"), float(k), [item_key(f"i{k - 1}")], [], CFG)
    parts = split_by_partition(deltas, partition_of)
    assert sum(len(p) for p in parts.values()) == len(deltas)
    for p, part in parts.items():
        for key in part.key:
            assert DefaultPartitioner()(key_bytes(key), [0, 1, 2, 3], [0, 1, 2, 3]) == p


def test_shared_rows_map_keys_to_rows_and_wait_for_items_not_indexed() -> None:
    index = ItemIndex(2)
    index.upsert("a", np.array([1, 0], np.float32), ["s"], "A")
    stats = Collaborative()
    shared = SharedStats(index, stats)
    stage = ItemStatsStage({}, stats.stats)
    deltas = DeltaBatch()
    ka, kb = item_key("a"), item_key("b")
    click_deltas(deltas, kb, 1.0, [ka], [ka], stats.stats)
    for key, row in stage.apply(deltas).items():
        shared.receive(key, row)
    assert shared.pending == 2  # b's row (b unknown), a's row (names b)
    assert stats.transition_feature([0], 1).tolist() == [0.0]
    index.upsert("b", np.array([0, 1], np.float32), ["s"], "B")
    shared.retry()
    assert shared.pending == 0
    assert np.expm1(stats.transition_feature([0], 2))[1] == pytest.approx(1.0)
    assert stats.popularity(1) > 0.0

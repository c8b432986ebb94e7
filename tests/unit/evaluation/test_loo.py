"""Protocol L, the search space for any data set, social and comments in SceneRec, the
dense-count pre-flight, SASRec."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from evaluation import loo
from evaluation.baselines import DAY_S, ItemKNN, MostPopular
from evaluation.cli import main as evaluate
from evaluation.data import Catalog, Dataset, Event, Item, SocialEdge, Split, split_loo
from evaluation.memory import DenseEstimate, MemoryLimitError, check_dense
from evaluation.metrics import loo_metrics
from evaluation.sasrec import SASRec, SASRecConfig
from evaluation.scenerec_model import SOCIAL, SceneRec, SceneRecConfig
from evaluation.tuning import (
    TIE_BREAK,
    WEIGHT_GRID,
    scenerec_space,
    tune_scenerec,
    with_social,
)
from tests.unit.helpers.files import write


def _vecs(n: int, dim: int = 8) -> np.ndarray:
    v = np.random.default_rng(1).standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _items(n: int) -> list[Item]:
    return [Item(f"i{k}", ("a",), f"item {k}", f"I{k}") for k in range(n)]


def _seqs(seqs: dict[str, list[int]]) -> list[Event]:
    """Interleaved by position, timestamps as event steps (as the loader does)."""
    out: list[Event] = []
    longest = max(len(s) for s in seqs.values())
    for pos in range(longest):
        for user, seq in seqs.items():
            if pos < len(seq):
                out.append(Event(user, f"i{seq[pos]}", "a", "click", float(len(out))))
    return out


def test_loo_metrics_at_5_10_20() -> None:
    m = loo_metrics(7.0)
    assert m["hit@5"] == 0.0 and m["hit@10"] == 1.0 and m["hit@20"] == 1.0
    assert m["ndcg@10"] == pytest.approx(1 / math.log2(8.0))
    assert m["mrr@20"] == pytest.approx(1 / 7)


def test_rank_targets_leaves_out_earlier_items_but_not_the_target() -> None:
    catalog = Catalog(_items(4))
    train = [Event("u", "i0", "a", "click", 0.0), Event("v", "i1", "a", "click", 1.0)]
    train += [Event("v", "i1", "a", "click", 2.0), Event("w", "i1", "a", "click", 3.0)]
    model = MostPopular(catalog)
    model.fit(train)
    # u had i0 and now i0 again: i1 (3 clicks) is above it, i0 itself stays in the ranking.
    recs, lists = loo.rank_targets(model, [Event("u", "i0", "a", "click", 9.0)], {"u": {"i0"}})
    assert recs[0][1]["mrr@10"] == pytest.approx(1 / 2)
    assert lists["u"][:2] == ["i1", "i0"]


def test_the_space_fits_any_clock_and_contains_the_baselines() -> None:
    time_space = scenerec_space(quick=False, clock="time")
    hls = {hl for hl, _ in time_space.variants}
    assert min(hls) == 1.0 and math.inf in hls and 7.0 in hls  # a day to no decay
    steps = scenerec_space(quick=False, clock="order", n_train=100_000)
    assert steps.structures[0].clock_unit_s == 1.0
    assert {hl for hl, _ in steps.variants} == {300.0, 3000.0, 30000.0, math.inf}
    assert {hl for hl, _ in scenerec_space(False, "none").variants} == {math.inf}
    # Most-popular (popularity alone, no decay) and item-kNN (co-occurrence, popularity
    # as tie-breaker) are rows of every grid.
    assert (1.0, 0.0, 0.0, 0.0, 0.0) in WEIGHT_GRID
    assert (TIE_BREAK, 0.0, 0.0, 1.0, 0.0) in WEIGHT_GRID
    social = scenerec_space(False, "time", social=True).grid
    assert len(social) == 3 * len(WEIGHT_GRID) and social == with_social(WEIGHT_GRID)


def test_without_decay_scenerec_popularity_is_most_popular_and_knn_is_contained() -> None:
    catalog = Catalog(_items(6))
    events = _seqs({"u1": [0, 1, 2], "u2": [0, 1, 3], "u3": [4, 0, 1], "u4": [2, 5, 0]})
    cfg = SceneRecConfig(half_life_days=math.inf, learn_gate=False, clock_unit_s=1.0)
    model = SceneRec(catalog, _vecs(6), {}, cfg)
    model.fit(events)
    popular = MostPopular(catalog)
    popular.fit(events)
    pop_row = model.components("u9")[0]
    assert list(np.argsort(-pop_row, kind="stable")) == list(
        np.argsort(-popular.score("u9"), kind="stable")
    )
    knn = ItemKNN(catalog)
    knn.fit(events)
    w = np.array([TIE_BREAK, 0.0, 0.0, 1.0, 0.0])
    ours = w @ model.components("u4")
    theirs = knn.score("u4")
    seen = [catalog.row(i) for i in ("i2", "i5", "i0")]
    rest = [r for r in range(6) if r not in seen]
    assert list(np.argsort(-ours[rest], kind="stable")) == list(
        np.argsort(-theirs[rest], kind="stable")
    )


def test_popularity_row_is_the_component_of_that_model() -> None:
    catalog = Catalog(_items(5))
    events = [Event(f"u{k % 3}", f"i{k % 5}", "a", "click", k * DAY_S / 2) for k in range(40)]
    tuner = SceneRec(catalog, _vecs(5), {}, SceneRecConfig(half_life_days=7.0, learn_gate=False))
    tuner.track_half_lives([1.0, 7.0, math.inf])
    tuner.fit(events)
    for hl, age in ((1.0, 0.25), (math.inf, 0.0), (7.0, 0.25)):
        own = SceneRec(
            catalog,
            _vecs(5),
            {},
            SceneRecConfig(half_life_days=hl, age_weight=age, learn_gate=False),
        )
        own.fit(events)
        # The tuner's own clock exactly; another clock's up to float rounding.
        np.testing.assert_allclose(
            tuner.popularity_row(hl, age), own.components("u0")[0], rtol=1e-9, atol=1e-9
        )
    assert np.array_equal(tuner.popularity_row(7.0, 0.0), tuner.components("u0")[0])


def test_social_component_reads_what_followed_users_had() -> None:
    catalog = Catalog(_items(5))
    social = (SocialEdge("u1", "u2", "friend"), SocialEdge("u1", "u3", "friend"))
    model = SceneRec(catalog, _vecs(5), {}, SceneRecConfig(learn_gate=False), social)
    events = [Event("u2", "i3", "a", "click", 0.0), Event("u3", "i3", "a", "click", 1.0)]
    events += [Event("u3", "i4", "a", "click", 2.0), Event("u1", "i0", "a", "click", 3.0)]
    model.fit(events)
    comps = model.components("u1")
    assert comps.shape == (6, 5) and model.n_components == 6
    assert comps[SOCIAL][3] > comps[SOCIAL][4] > 0 == comps[SOCIAL][1]
    assert np.all(model.components("u2")[SOCIAL] == 0)  # u2 follows no one
    # A blend that weighs the social term cannot be served by the worker's blend yet.
    weighted = model.config.with_blend(model.config.blend.uniform((1, 1, 1, 1, 0, 1)))
    model.config = weighted
    assert model.feed_blend() is None


def test_a_comment_moves_the_user_by_its_text() -> None:
    catalog = Catalog(_items(3))
    text = _vecs(4)[3]
    events = [Event("u", "i0", "a", "comment", 0.0, text="lovely")]
    plain = SceneRec(catalog, _vecs(3), {}, SceneRecConfig(learn_gate=False))
    commented = SceneRec(
        catalog, _vecs(3), {}, SceneRecConfig(learn_gate=False), comment_vectors={"lovely": text}
    )
    for m in (plain, commented):
        m.fit(events)
    assert not np.allclose(plain.state("u").global_vec, commented.state("u").global_vec)


def test_tuning_on_loo_picks_transitions_when_sequences_repeat() -> None:
    catalog = Catalog(_items(18))
    # Each of three groups walks x, 3+x, 6+x, 9+x, 12+x; the short walkers' valid target
    # (9+x) follows 6+x only in the long walkers' train: transitions know it, popularity
    # (other groups' early items are more popular) does not.
    seqs = {f"u{k}": [k % 3 + 3 * p for p in range(5 + k % 2)] for k in range(24)}
    ds = Dataset("toy", tuple(_items(18)), split_loo(_seqs(seqs)), clock="order", protocol="loo")
    space = scenerec_space(True, "order", len(ds.split.train))

    def make(cfg: SceneRecConfig) -> SceneRec:
        return SceneRec(catalog, _vecs(18), {}, cfg)

    tuned = tune_scenerec(make, space, ds.split.train, ds.split.valid, False, ("loo",))
    chosen = tuned.chosen["loo"]
    assert any(w[1] > 0 or w[3] > 0 for w in chosen.blend.weights), chosen.blend
    assert max(tuned.valid["loo"].values()) > 0.5  # the short walkers: half the users


def test_dense_counts_are_refused_before_allocation() -> None:
    big = DenseEstimate(100_000, 0, 2)
    assert big.total_bytes > 70 * 1024**3
    with pytest.raises(MemoryLimitError, match=r"100,000 items: .* Nothing was allocated"):
        check_dense(big)
    assert check_dense(DenseEstimate(1_682, 1, 1))["n_items"] == 1_682
    with pytest.raises(MemoryLimitError, match="--max-dense-gb"):
        check_dense(DenseEstimate(12_101, 0, 1), limit_gb=0.5)


def test_sasrec_learns_a_deterministic_next_item() -> None:
    catalog = Catalog(_items(6))
    seqs = {f"u{k}": [0, 1, 2, 3, 4, 5] if k % 2 else [5, 4, 3, 2, 1, 0] for k in range(40)}
    split = split_loo(_seqs(seqs))
    model = SASRec(catalog, SASRecConfig(dim=16, max_epochs=30, eval_every=5, minutes=2.0))
    model.fit_with_valid(split.train, split.valid)
    assert model.best_valid > 0.6
    for e in split.valid:
        model.update(e)
    scores = model.score("u1")  # 0..4 seen: 5 is next
    assert int(np.argmax(scores[:6])) in (5, 4)  # ranked above the rest (4 is excluded later)


def test_cli_runs_protocol_l_on_a_folder(tmp_path: Path) -> None:
    lines = [f"{u} " + " ".join(str(1 + (u + k) % 9) for k in range(6)) for u in range(1, 31)]
    src = write(tmp_path / "Toy.txt", "\n".join(lines) + "\n")
    from scenerec.convert import Options, convert

    convert("s3rec", src, tmp_path / "toy", Options())
    out = tmp_path / "toy.json"
    code = evaluate(
        [
            "--dataset",
            str(tmp_path / "toy"),
            "--protocol",
            "loo",
            "--quick",
            "--no-sasrec",
            "--no-progress",
            "--out",
            str(out),
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    assert code == 0
    import json

    payload = json.loads(out.read_text())
    assert set(payload["loo"]) >= {"most-popular", "item-knn", "bpr-mf", "scenerec"}
    row = payload["loo"]["scenerec"]
    assert {"ndcg@10", "ndcg@10_lo", "ndcg@10_hi", "hit@20", "mrr@5"} <= set(row)
    assert row["n_users"] == 30.0
    # Each user walks 1..9 cyclically: the next item follows from the last one.
    assert row["ndcg@10"] > payload["loo"]["most-popular"]["ndcg@10"]
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert meta["counts"]["items"] == 9 and "chosen" in meta["scenerec"]["scenerec"]


def test_loo_refuses_data_without_order(tmp_path: Path) -> None:
    write(tmp_path / "d" / "d.inter", "user_id:token\titem_id:token\nu\ti\n")
    assert evaluate(["--dataset", str(tmp_path / "d"), "--protocol", "loo"]) == 1


def test_split_keeps_a_user_with_two_events_out_of_train() -> None:
    events = [Event("u", "i0", "a", "click", 0.0), Event("u", "i1", "a", "click", 1.0)]
    split = split_loo(events)
    assert split == Split((), (events[0],), (events[1],))


def test_an_item_without_text_takes_its_train_comments_direction() -> None:
    from evaluation.encoding import commented_items

    items = [Item("a", ("s",), "", "a"), Item("b", ("s",), "text", "b"), Item("c", ("s",), "", "c")]
    vecs = np.zeros((3, 8), np.float32)
    vecs[1] = _vecs(1)[0]
    comments = {"nice": _vecs(2)[1]}
    train = [
        Event("u", "a", "s", "comment", 0.0, text="nice"),
        Event("u", "b", "s", "comment", 1.0, text="nice"),
    ]
    out = commented_items(items, vecs, train, comments)
    np.testing.assert_allclose(
        out[0], comments["nice"] / np.linalg.norm(comments["nice"]), rtol=1e-6
    )
    assert np.array_equal(out[1], vecs[1])  # its own text stays
    assert not np.any(out[2])  # never commented on in train: still no vector

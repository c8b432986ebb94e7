"""The evaluation harness: metric definitions, the split, calibration, model contracts."""

from __future__ import annotations

import csv
import itertools
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from embeddings.blend import TenureBlend, tenure_bucket, top_k
from embeddings.collaborative import CollabConfig, Collaborative
from embeddings.popularity import DecayedPopularity
from evaluation import per_scene
from evaluation.baselines import DAY_S, ItemKNN, MostPopular, RecentPopular
from evaluation.cli import main
from evaluation.data import Catalog, Dataset, Event, Item, Split, load_lastfm2k, load_ml100k
from evaluation.metrics import (
    HIT,
    MRR,
    NDCG,
    RECALL,
    bootstrap,
    catalog_coverage,
    intra_list_diversity,
    list_metrics,
    midrank,
    summarize,
    target_metrics,
)
from evaluation.protocols import Contender, cold_start, run_frozen, run_prequential
from evaluation.scenerec_model import COMPONENTS, SceneRec, SceneRecConfig
from evaluation.tuning import _BucketScores

DATA_DIR = Path(os.environ.get("SCENEREC_DATA_DIR", Path(__file__).parents[4] / "shared" / "data"))
needs_data = pytest.mark.skipif(
    not (DATA_DIR / "ml-100k" / "ml-100k.inter").is_file(), reason="../shared/data not present"
)


@pytest.fixture(scope="module")
def ml100k() -> Dataset:
    return load_ml100k(DATA_DIR, with_kg=False)


def mean_metrics(result_metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    return {m: est.mean for m, est in summarize(result_metrics.items()).items()}


# --- metric definitions on hand-made cases ------------------------------------------------


def test_list_metrics_single_hit_at_rank_two() -> None:
    got = list_metrics(["a", "b", "c"], {"b", "z"}, k=10)
    idcg = 1.0 + 1.0 / math.log2(3)
    assert got[HIT] == 1.0
    assert got[NDCG] == pytest.approx((1.0 / math.log2(3)) / idcg)
    assert got[RECALL] == pytest.approx(0.5)
    assert got[MRR] == pytest.approx(0.5)


def test_list_metrics_ideal_dcg_counts_at_most_k_hits() -> None:
    truth = {f"t{i}" for i in range(12)}
    ranked = sorted(truth)[:10]
    got = list_metrics(ranked, truth, k=10)
    assert got[NDCG] == pytest.approx(1.0)  # 10 hits out of an ideal of min(12, 10)
    assert got[RECALL] == pytest.approx(10 / 12)


def test_list_metrics_miss_and_cutoff() -> None:
    got = list_metrics([f"x{i}" for i in range(10)] + ["hit"], {"hit"}, k=10)
    assert got == {HIT: 0.0, NDCG: 0.0, RECALL: 0.0, MRR: 0.0}
    with pytest.raises(ValueError):
        list_metrics(["a"], set())


def test_midrank_ties_take_the_middle_of_their_group() -> None:
    scores = np.array([5.0, 3.0, 3.0, 3.0, 1.0])
    assert midrank(scores, 1) == pytest.approx(3.0)  # 1 better + (3 tied + 1) / 2
    assert midrank(scores, 0) == 1.0
    assert midrank(scores, 4) == 5.0
    assert midrank(np.zeros(20), 7) == pytest.approx(10.5)  # a constant scorer


def test_midrank_ignores_excluded_items_and_refuses_an_excluded_target() -> None:
    scores = np.array([9.0, 3.0, 3.0, 1.0])
    excluded = np.array([True, False, True, False])
    assert midrank(scores, 1, excluded) == 1.0
    with pytest.raises(ValueError):
        midrank(scores, 0, excluded)


def test_target_metrics_at_whole_and_fractional_ranks() -> None:
    assert target_metrics(1.0) == {HIT: 1.0, NDCG: 1.0, RECALL: 1.0, MRR: 1.0}
    third = target_metrics(3.0)
    assert third[NDCG] == pytest.approx(0.5) and third[MRR] == pytest.approx(1 / 3)
    assert target_metrics(2.5)[NDCG] == pytest.approx(1 / math.log2(3.5))
    assert target_metrics(10.0)[HIT] == 1.0
    assert target_metrics(10.5)[HIT] == 0.0


def test_bootstrap_is_seeded_and_brackets_the_mean() -> None:
    sums = np.array([1.0, 0.0, 3.0, 2.0, 0.0, 5.0])
    counts = np.array([1.0, 1.0, 2.0, 2.0, 1.0, 3.0])
    mean, lo, hi = bootstrap(sums, counts)
    assert mean == pytest.approx(11 / 10)
    assert lo <= mean <= hi
    assert bootstrap(sums, counts) == (mean, lo, hi)
    const = bootstrap(np.full(5, 0.25), np.ones(5))
    assert const == pytest.approx((0.25, 0.25, 0.25))


def test_summarize_averages_events_and_counts_users() -> None:
    recs = [("u1", {HIT: 1.0}), ("u1", {HIT: 0.0}), ("u2", {HIT: 1.0})]
    est = summarize(recs, metrics=(HIT,))[HIT]
    assert est.mean == pytest.approx(2 / 3)
    assert (est.n_users, est.n_events) == (2, 3)


def test_coverage_and_intra_list_diversity() -> None:
    assert catalog_coverage([["a", "b"], ["b", "c"]], 6) == pytest.approx(0.5)
    vecs = np.eye(3, dtype=np.float32)
    assert intra_list_diversity([[0, 1, 2]], vecs) == pytest.approx(1.0)
    assert intra_list_diversity([[0, 0]], vecs) == pytest.approx(0.0)


# --- model building blocks ------------------------------------------------------------------


def test_decayed_popularity_halves_every_half_life() -> None:
    pop = DecayedPopularity(2, half_life_s=10.0)
    pop.add(0, 0.0)
    pop.add(1, 10.0)
    assert pop.counts()[0] == pytest.approx(0.5) and pop.counts()[1] == pytest.approx(1.0)
    pop.add(0, 0.0)  # late event: counted at its decayed weight
    assert pop.counts()[0] == pytest.approx(1.0)


def test_transitions_credit_recent_items_and_start_row() -> None:
    stats = Collaborative(CollabConfig(window=2, step_decay=0.5, recent=1))
    stats.observe([], None, 0, 0.0)
    stats.observe([0, 1, 2], None, 3, 1.0)  # credited to 2 (weight 1) and 1 (0.5), not 0
    assert np.expm1(stats.transition_feature([], 4)).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert np.expm1(stats.transition_feature([2], 4))[3] == pytest.approx(1.0)
    assert np.expm1(stats.transition_feature([1], 4))[3] == pytest.approx(0.5)
    assert stats.transition_feature([0], 4)[3] == 0.0


def test_cooccurrence_is_item_item_cosine_over_the_history() -> None:
    stats = Collaborative()
    stats.observe([], [], 0, 0.0)
    stats.observe([0], [0], 1, 1.0)  # one user: 0 then 1
    stats.observe([], [], 0, 2.0)
    stats.observe([0], [0], 2, 3.0)  # another: 0 then 2
    # cos(0, 1) = 1 / sqrt(2 * 1): item 0 has two users, item 1 one, sharing one.
    mass = np.expm1(stats.cooccurrence_feature([0], 3))
    assert mass.tolist() == pytest.approx([0.0, 1 / math.sqrt(2), 1 / math.sqrt(2)])
    assert np.expm1(stats.cooccurrence_feature([1, 2], 3))[0] == pytest.approx(
        2 / math.sqrt(2) / math.sqrt(2)
    )
    assert not stats.cooccurrence_feature([], 3).any()


def test_tenure_blend_and_top_k_tie_order() -> None:
    assert [tenure_bucket(n) for n in (0, 1, 2, 3, 9, 10, 500)] == [0, 1, 1, 2, 2, 3, 3]
    blend = TenureBlend(((1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (2.0, 0.0)))
    comps = np.array([[1.0, 2.0], [10.0, 20.0]])
    assert blend.score(comps, 0).tolist() == [1.0, 2.0]
    assert blend.score(comps, 5).tolist() == [11.0, 22.0]
    assert top_k(np.array([1.0, 3.0, 3.0, 2.0]), 3, exclude_rows=[3]) == [1, 2, 0]


def test_bucket_scores_pick_the_best_weights_per_bucket() -> None:
    grid = np.array([[1.0, 0.0], [0.0, 1.0]])
    acc = _BucketScores(2)
    acc.add(0, np.array([0.9, 0.1]))
    acc.add(5, np.array([0.2, 0.6]))
    blend, total = acc.best(grid)
    assert blend.weights[0] == (1.0, 0.0) and blend.weights[2] == (0.0, 1.0)
    assert total == pytest.approx((0.9 + 0.6) / 2)


# --- tiny synthetic data: the contract and the protocols ---------------------------------


def _clicks(seq: Sequence[tuple[str, str]], scene_of: dict[str, str]) -> list[Event]:
    """One click per day, in order, each in its item's scene."""
    return [
        Event(user=u, item=i, scene=scene_of[i], kind="click", timestamp=float(t) * DAY_S)
        for t, (u, i) in enumerate(seq)
    ]


def _unit_vectors(n: int) -> np.ndarray:
    vecs = np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def tiny() -> tuple[Catalog, list[Event], np.ndarray]:
    items = [Item(id=f"i{k}", scenes=("a",), text=f"item {k}", title=f"Item {k}") for k in range(6)]
    seq = [("u1", "i0"), ("u1", "i1"), ("u2", "i0"), ("u2", "i1"), ("u3", "i0"), ("u1", "i2")]
    return Catalog(items), _clicks(seq, {it.id: "a" for it in items}), _unit_vectors(6)


def test_scenerec_follows_the_contract_and_learns_online() -> None:
    catalog, events, vecs = tiny()
    profiles = {"u9": vecs[5]}
    model = SceneRec(catalog, vecs, profiles, SceneRecConfig())
    model.fit(events[:5])
    assert model.components("u3").shape == (len(COMPONENTS), 6)
    assert "i0" not in model.recommend("u3", k=3, exclude={"i0"})
    before = model.score("u3")
    model.update(events[5])
    assert not np.allclose(before, model.score("u3"))  # popularity moved
    # After i0, users went on to i1: the transition component must say so.
    assert model.recommend("u3", k=1, exclude={"i0"}) == ["i1"]
    # A brand-new user with a profile is scored through it; without one, similarity is 0.
    assert np.any(model.components("u9")[2] != 0)
    assert np.all(model.components("nobody")[2] == 0)


def test_prequential_scores_before_ingesting_and_frozen_never_learns() -> None:
    catalog, events, _ = tiny()
    online, frozen = ItemKNN(catalog), ItemKNN(catalog)
    online.fit(events[:2])
    frozen.fit(events[:2])
    out = run_prequential(
        {"on": Contender(online, True), "off": Contender(frozen, False)},
        catalog,
        events[:2],
        (),
        events[2:],
    )
    assert [r.user_event for r in out["on"]] == [0, 1, 0, 2]
    # u2's second event (i1 after i0) is predictable only from what u1 did: both know it.
    assert out["on"][1].metrics[HIT] == 1.0 and out["on"][1].recs[0] == "i1"
    assert "i0" not in out["on"][1].recs  # u2's earlier item is left out
    cold = cold_start(out["on"], train_users={"u1"})
    assert [len(cold[b]) for b in ("1st", "2nd-3rd", "4th-10th")] == [2, 1, 0]


def test_freshness_lifts_a_new_item_over_an_old_one_as_popular() -> None:
    items = [Item(id=f"i{k}", scenes=("a",), text=f"item {k}", title=f"I{k}") for k in range(2)]
    catalog = Catalog(items)
    # i0 clicked 20 days ago, i1 now: the age term is the only difference between the two
    # models' popularity components.
    events = [Event("u1", "i0", "a", "click", 0.0), Event("u2", "i1", "a", "click", 20 * DAY_S)]
    plain, fresh = (
        SceneRec(catalog, _unit_vectors(2), {}, SceneRecConfig(age_weight=w, learn_gate=False))
        for w in (0.0, 0.25)
    )
    for model in (plain, fresh):
        model.fit(events)
    gap_plain = np.diff(plain.components("x")[0])[0]  # pop(i1) - pop(i0)
    gap_fresh = np.diff(fresh.components("x")[0])[0]
    # i0 has been around for 20 days: freshness widens i1's lead by 0.25 * log(21).
    assert gap_fresh - gap_plain == pytest.approx(0.25 * math.log(21.0))


def two_scene_data() -> tuple[Catalog, list[Event], np.ndarray]:
    """Six items in two scenes; u1..u4 alternate scenes, u5 arrives later."""
    items = [
        Item(id=f"i{k}", scenes=("a",) if k < 3 else ("b",), text=f"item {k}", title=f"I{k}")
        for k in range(6)
    ]
    seq = [
        ("u1", "i0"), ("u1", "i3"), ("u2", "i0"), ("u2", "i4"), ("u3", "i1"), ("u3", "i3"),
        ("u4", "i0"), ("u1", "i1"), ("u2", "i1"), ("u4", "i3"), ("u5", "i0"), ("u5", "i3"),
    ]  # fmt: skip
    events = _clicks(seq, {it.id: it.scenes[0] for it in items})
    return Catalog(items), events, _unit_vectors(6)


def test_per_scene_feeds_rank_only_the_scene_and_report_every_family() -> None:
    catalog, events, vecs = two_scene_data()
    train, valid, test = events[:6], events[6:9], events[9:]
    feeds = per_scene.SceneFeeds(
        catalog, vecs, per_scene.variants(quick=True), per_scene.relations_from(train)
    )
    model = SceneRec(catalog, vecs, {}, SceneRecConfig())
    per_scene.fit_with_feeds(model, feeds, train)
    # Co-learning has a query before every event; the independent scene vector exists only
    # from a user's second click in a scene, which never happens in this train: no gate.
    assert [feeds.variants[n].family for n in feeds.gates] == ["colearn"]
    rows, comps = feeds.components(model, "u1", "b", list(feeds.variants))
    assert list(rows) == [3, 4, 5] and all(c.shape == (4, 3) for c in comps.values())
    grid = per_scene.QUICK_SCENE_GRID
    counts = per_scene.train_event_counts(train)
    tuned = per_scene.tune(model, feeds, train, valid, grid, False)
    frozen = per_scene.score_test(model, feeds, train + valid, test, tuned, counts, False)
    assert set(frozen.estimates) == set(per_scene.FAMILIES)
    assert frozen.scenes == ["a", "b"]  # by train events (3 each), then by name
    tuning = per_scene.tune(model, feeds, train, valid, grid, True)
    online = per_scene.score_test(model, feeds, train + valid, test, tuning, counts, True)
    # Every test event is scored once per family, in its own scene.
    assert {s: len(r) for s, r in online.records["colearn"].items()} == {"a": 1, "b": 2}
    payload = per_scene.to_json(online)
    assert payload["sparsest"] == ["a", "b"]
    assert "colearn_minus_independent" in payload["b"]


class _Reversed(MostPopular):
    """Most-popular that lists its top-k in reverse: scored by its list, not its scores."""

    def rerank(self, scores: np.ndarray, k: int, exclude_rows: Sequence[int]) -> list[int]:
        return top_k(scores, k, exclude_rows)[::-1]


def test_a_reranked_list_is_scored_by_position_in_protocol_b() -> None:
    catalog, events, _ = tiny()
    model = _Reversed(catalog)
    model.fit(events[:4])  # i0 and i1 twice each: i0 first by row order
    out = run_prequential({"r": Contender(model, False)}, catalog, events[:4], (), events[4:5])
    record = out["r"][0]  # u3 clicks i0: listed last of 6 (k=10), i.e. position 6
    assert record.recs[-1] == "i0"
    assert record.metrics[MRR] == pytest.approx(1 / 6)
    assert model.recommend("u3", k=2) == ["i1", "i0"]


def test_recent_popular_forgets_events_older_than_the_window() -> None:
    catalog, events, _ = tiny()
    model = RecentPopular(catalog, window_days=2.0)
    model.fit(events)  # timestamps 0..5 days: only days 4 and 5 remain
    assert model.score("any")[catalog.row("i0")] == 1.0
    assert model.score("any")[catalog.row("i2")] == 1.0
    assert model.score("any")[catalog.row("i1")] == 0.0


# --- real data: the split and the calibration numbers ----------------------------------------


@needs_data
def test_ml100k_split_follows_evaluation_md(ml100k: Dataset) -> None:
    split = ml100k.split
    assert (len(split.train), len(split.valid), len(split.test)) == (80_000, 10_000, 10_000)
    ts = [e.timestamp for e in ml100k.events]
    assert all(a <= b for a, b in itertools.pairwise(ts))
    # Stable sort: equal timestamps keep the file's order.
    with (DATA_DIR / "ml-100k" / "ml-100k.inter").open(newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))[1:]
    expected = sorted(((r[0], r[1], float(r[3])) for r in rows), key=lambda r: r[2])
    assert [(e.user, e.item) for e in ml100k.events] == [(u, i) for u, i, _ in expected]
    test_users = {e.user for e in split.test}
    assert len(test_users) == 166
    assert len(test_users & {e.user for e in split.train}) == 69


@needs_data
def test_most_popular_reproduces_the_calibration_numbers(ml100k: Dataset) -> None:
    catalog, split = Catalog(ml100k.items), ml100k.split
    model = MostPopular(catalog)
    model.fit(split.train)
    got = mean_metrics(run_frozen(model, split.train + split.valid, split.test).metrics)
    expected = {HIT: 0.6928, NDCG: 0.2826, RECALL: 0.0615, MRR: 0.4227}
    for metric, value in expected.items():
        assert got[metric] == pytest.approx(value, abs=0.002), metric


@needs_data
def test_recent_popular_14_days_reproduces_its_anchor(ml100k: Dataset) -> None:
    catalog, split = Catalog(ml100k.items), ml100k.split
    model = RecentPopular(catalog, window_days=14.0)
    model.fit(split.train)
    got = mean_metrics(run_frozen(model, split.train + split.valid, split.test).metrics)
    assert got[NDCG] == pytest.approx(0.3564, abs=0.002)
    assert got[HIT] == pytest.approx(0.7831, abs=0.002)


@needs_data
def test_most_popular_protocol_b_anchors(ml100k: Dataset) -> None:
    """Frozen and online most-popular against EVALUATION.md's Protocol B anchors."""
    catalog, split = Catalog(ml100k.items), ml100k.split
    frozen, online = MostPopular(catalog), MostPopular(catalog)
    frozen.fit(split.train)
    online.fit(split.train)
    out = run_prequential(
        {"frozen": Contender(frozen, False), "online": Contender(online, True)},
        catalog,
        split.train,
        split.valid,
        split.test,
    )
    got = {
        name: {m: e.mean for m, e in summarize([(r.user, r.metrics) for r in recs]).items()}
        for name, recs in out.items()
    }
    assert got["frozen"][NDCG] == pytest.approx(0.0316, abs=0.002)
    assert got["frozen"][HIT] == pytest.approx(0.0671, abs=0.002)
    assert got["online"][NDCG] == pytest.approx(0.0329, abs=0.002)
    assert got["online"][HIT] == pytest.approx(0.0705, abs=0.002)


@needs_data
def test_lastfm_loader_sizes_and_seeded_split() -> None:
    ds = load_lastfm2k(DATA_DIR)
    assert len(ds.items) == 17_632
    assert (len(ds.split.train), len(ds.split.valid), len(ds.split.test)) == (74_267, 0, 18_567)
    assert len(ds.social) == 25_434
    again = load_lastfm2k(DATA_DIR)
    assert ds.split.test[:5] == again.split.test[:5]
    assert isinstance(ds.split, Split) and ds.split.train[0].kind == "listen"


# --- the CLI ---------------------------------------------------------------------------------


def test_cli_help_and_bad_protocol(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "--dump-recs" in capsys.readouterr().out
    assert main(["--protocols", "nonsense"]) == 2

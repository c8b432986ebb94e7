"""The ranker: exact lists are the blend's full sort, candidates find the same lists when
they cover the catalog, and the speed paths (GEMM, threads) change no list."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from embeddings import ranking
from embeddings.blend import TenureBlend
from embeddings.blended import CandidateConfig
from embeddings.collaborative import COMPONENTS, CollabConfig, FeedBlend
from embeddings.model import SceneRecModel
from embeddings.ranking import GLOBAL, GatedScenes, ItemIndex, _stable_top_k
from embeddings.scenes import SceneGates
from embeddings.user_model import UserState
from embeddings.vectors import normalize

SCENES = ("a", "b", "c")
DIM = 24
#: Every component weighed, and a learned gate on one scene.
BLEND = FeedBlend(
    TenureBlend(
        (
            (1.0, 2.0, 1.0, 0.0, 0.0),
            (1.0, 1.0, 2.0, 1.0, 0.0),
            (1.0, 4.0, 0.0, 2.0, 8.0),
            (1.0, 8.0, 4.0, 4.0, 2.0),
        )
    ),
    CollabConfig(age_weight=0.25),
    global_gate=np.linspace(0.5, 1.5, DIM).astype(np.float32),
)


def world(
    n_items: int, n_users: int, candidates: CandidateConfig | None = None, seed: int = 0
) -> tuple[SceneRecModel, list[UserState]]:
    """A catalog, users who clicked in runs (transitions) and popular items (ties: many
    items are never clicked), the statistics learned from those clicks."""
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n_items, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    index = ItemIndex(DIM)
    for i in range(n_items):
        scenes = list(rng.choice(SCENES, size=int(rng.integers(1, 3)), replace=False))
        index.upsert(f"i{i}", vecs[i], scenes, f"Item {i}")
    gates = SceneGates(DIM)
    gates.set_gate("b", np.linspace(1.5, 0.5, DIM).astype(np.float32))
    model = SceneRecModel(index, BLEND, GatedScenes(gates), 10, candidates)
    users = []
    ts = 1.6e9
    for u in range(n_users):
        st = UserState()
        if u % 4 == 0:
            st.apply_profile(normalize(rng.standard_normal(DIM).astype(np.float32)))
        pos = int(rng.integers(0, n_items))
        for _ in range(int(rng.integers(0 if u % 5 == 0 else 1, 30))):
            pos = (pos + 1) % n_items if rng.random() < 0.5 else int(rng.integers(0, n_items // 3))
            item = f"i{pos}"
            model.learn_click(st, item, ts)
            st.apply_item(item, vecs[pos], str(rng.choice(SCENES)))
            ts += 600.0
        users.append(st)
    return model, users


def reference(model: SceneRecModel, st: UserState, scene: str | None) -> list[str]:
    """The blend over every item from the statistics' dense features, one full stable sort."""
    index, stats = model.index, model.stats
    n = len(index)
    w = BLEND.blend.weights_for(st.n_events)
    recent = index.rows(st.recent).tolist()
    seen = index.rows(st.seen)
    vec = model.scene_model.scene_vector(st, scene)
    gate = BLEND.global_gate if scene is None else model.scene_model.gates.gate(scene)
    mat = index.vectors_at(np.arange(n))
    sim = np.zeros(n) if vec is None else (mat @ vec).astype(np.float64)
    gated = np.zeros(n)
    if vec is not None and gate is not None:
        gated = (mat @ (vec * gate).astype(np.float32)).astype(np.float64)
    comps = np.stack(
        [
            stats.log_popularity()[:n],
            stats.transition_feature(recent, n),
            sim,
            stats.cooccurrence_feature(seen, n),
            gated,
        ]
    )
    scores = w @ comps
    valid = np.ones(n, np.bool_) if scene is None else index.scene_rows(scene).copy()
    valid[seen] = False
    rows = np.flatnonzero(valid)
    top = rows[np.argsort(-scores[rows], kind="stable")[:10]]
    return [index.item_at(int(r)) for r in top]


def feeds(st: UserState) -> list[str | None]:
    return [None, *st.active_scenes]


@pytest.mark.parametrize("n_items", [37, 1682, 9001])  # 9001: more than two row blocks
def test_exact_lists_are_the_blend_sorted_over_every_item(n_items: int) -> None:
    model, users = world(n_items, 12, CandidateConfig(exact_max_items=10**6))
    assert len(COMPONENTS) == 5
    lists = model.rank([(st, feeds(st)) for st in users])
    for st, got in zip(users, lists, strict=True):
        assert set(got) == {GLOBAL, *st.active_scenes}
        for scene in feeds(st):
            assert [s.item_id for s in got[scene or GLOBAL]] == reference(model, st, scene)


def test_candidates_that_cover_the_catalog_give_the_exact_lists() -> None:
    n = 300
    exact, users = world(n, 20, CandidateConfig(exact_max_items=n))
    everything = CandidateConfig(
        neighbours=n, nearest=n, popular=n, start=n, exact_max_items=0, popular_refresh=1
    )
    cand, _ = world(n, 20, everything)
    assert not cand.ranker.exact() and exact.ranker.exact()
    want = exact.rank([(st, feeds(st)) for st in users])
    got = cand.rank([(st, feeds(st)) for st in users])
    for a, b in zip(want, got, strict=True):
        assert a.keys() == b.keys()
        for feed in a:
            assert [s.item_id for s in b[feed]] == [s.item_id for s in a[feed]]
            assert [s.score for s in b[feed]] == pytest.approx([s.score for s in a[feed]])
    # The harness's view: -inf outside the candidates, the same order inside.
    st = users[1]
    scores = cand.ranker.global_scores(st)
    assert np.isfinite(scores).all()
    small = CandidateConfig(neighbours=5, nearest=5, popular=5, start=5, exact_max_items=0)
    few, _ = world(n, 20, small)
    limited = few.ranker.global_scores(st)
    assert 5 <= np.isfinite(limited).sum() < n


def test_top_k_is_the_stable_sort() -> None:
    rng = np.random.default_rng(3)
    n = 100_000
    lumpy = np.full(n, -6.9)
    lumpy[rng.choice(n, 1700, replace=False)] = np.log(rng.integers(1, 9, 1700))
    strided = rng.standard_normal(n)
    strided[::16] += 100.0
    tied_sample = rng.standard_normal(n)
    tied_sample[::16] = 5.0
    shapes: list[npt.NDArray[np.float64]] = [lumpy, strided, -strided, tied_sample, np.zeros(n)]
    shapes += [rng.integers(0, 4, m).astype(np.float64) for m in (1, 7, 1682, 4097)]
    for x in shapes:
        for k in (1, 3, 10, 100):
            assert np.array_equal(_stable_top_k(-x, k), np.argsort(-x, kind="stable")[:k])
    with_nan = rng.standard_normal(n)
    with_nan[rng.choice(n, n - 5, replace=False)] = np.nan  # fewer comparable keys than k
    assert np.array_equal(_stable_top_k(with_nan, 10), np.argsort(with_nan, kind="stable")[:10])


def test_above_gemm_min_rows_the_ranking_matches_to_the_rounding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One matrix-matrix product for a batch's queries (large catalogs): the same lists,
    scores equal to about 1e-6, and bit for bit again below the threshold."""
    model, users = world(9001, 12, CandidateConfig(exact_max_items=10**6))
    requests = [(st, feeds(st)) for st in users]
    exact = model.rank(requests)
    monkeypatch.setattr(ranking, "GEMM_MIN_ROWS", 1000)
    fast = model.rank(requests)
    differs = 0
    for want, got in zip(exact, fast, strict=True):
        assert want.keys() == got.keys()
        for feed, lst in want.items():
            assert [s.item_id for s in got[feed]] == [s.item_id for s in lst]
            for a, b in zip(lst, got[feed], strict=True):
                assert b.score == pytest.approx(a.score, rel=1e-5, abs=1e-5)
                differs += a.score != b.score
    assert differs  # it is the fast path: not bit for bit
    monkeypatch.setattr(ranking, "GEMM_MIN_ROWS", 10_000)
    assert model.rank(requests) == exact


@pytest.mark.parametrize("gemm_min_rows", [10_000, 1000])  # per-query products, then GEMM
def test_threads_share_the_blocks_bit_for_bit(
    monkeypatch: pytest.MonkeyPatch, gemm_min_rows: int
) -> None:
    """Blocks dealt among threads: the same similarities and lists as one thread, on both
    product paths, and the threads really run (a block computed off the caller's thread)."""
    monkeypatch.setattr(ranking, "GEMM_MIN_ROWS", gemm_min_rows)
    model, users = world(9001, 12, CandidateConfig(exact_max_items=10**6))  # 3 row blocks
    index = model.index
    vecs = index.vectors_at(np.arange(14))
    queries = [normalize(v) for v in vecs]
    one = index.similarities(queries)
    requests = [(st, feeds(st)) for st in users]
    lists = model.rank(requests)
    callers: set[str] = set()
    real = ranking.np.matmul

    def spy(*args: Any, **kwargs: Any) -> Any:
        callers.add(threading.current_thread().name)
        return real(*args, **kwargs)

    for threads in (2, 3, 5):
        index.set_threads(threads)
        monkeypatch.setattr(ranking.np, "matmul", spy)
        got = index.similarities(queries)
        monkeypatch.setattr(ranking.np, "matmul", real)
        assert np.array_equal(got, one)
        assert model.rank(requests) == lists
    assert any(name.startswith("scenerec-rank") for name in callers)
    with pytest.raises(ValueError, match="threads"):
        index.set_threads(0)


class RecordingNearest:
    """Exact nearest items that keep every query they were asked."""

    def __init__(self, index: ItemIndex) -> None:
        from embeddings.blended import ExactNearest

        self.exact = ExactNearest(index)
        self.queries: list[npt.NDArray[np.float32]] = []

    def nearest(self, queries: Any, scenes: Any, k: int) -> list[npt.NDArray[np.intp]]:
        self.queries += list(queries)
        return self.exact.nearest(queries, scenes, k)


def test_candidates_search_once_per_feed_along_both_similarity_terms() -> None:
    """With both similarity terms weighed, a feed's one search is along
    ``u ⊙ (w_sim + w_gated g)``: its scores are the blend's similarity part exactly."""
    model, users = world(300, 12, CandidateConfig(exact_max_items=0))
    recorder = RecordingNearest(model.index)
    model.ranker.nearest = recorder
    both = [st for st in users if all(BLEND.blend.weights_for(st.n_events)[[2, 4]])]
    assert both, "the world must hold users whose blend weighs both similarity terms"
    st = both[0]
    model.rank([(st, [None])])
    assert len(recorder.queries) == 1
    w = BLEND.blend.weights_for(st.n_events)
    vec = model.scene_model.scene_vector(st, None)
    assert vec is not None and BLEND.global_gate is not None
    mat = model.index.vectors_at(np.arange(len(model.index)))
    expected = w[2] * (mat @ vec) + w[4] * (mat @ (vec * BLEND.global_gate))
    np.testing.assert_allclose(mat @ recorder.queries[0], expected, rtol=1e-4, atol=1e-4)

"""The vector math: updates, co-learning fallback, ranking, reasons, state codec."""

from __future__ import annotations

import numpy as np

from embeddings import user_model
from embeddings.colearn import CoLearnConfig, CoLearner, SceneRelations
from embeddings.collaborative import Collaborative
from embeddings.kg import HashedEntityEmbedding
from embeddings.ranking import ItemIndex, fact_label
from embeddings.scenes import SceneGates
from embeddings.user_model import APPLIED_EVENTS, SCENE_PRIOR, UserState
from embeddings.vectors import move_toward, normalize
from streams import state as codec
from tests.unit.streams.ranking_world import POP_AND_SIM, click, ranker, recommend

DIM = 8


def unit(i: int) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[i] = 1.0
    return v


def index_with(n: int = 6) -> ItemIndex:
    idx = ItemIndex(DIM)
    for i in range(n):
        idx.upsert(f"i{i}", unit(i), ["a" if i % 2 == 0 else "b"], f"Item {i}")
    return idx


def test_normalize_keeps_zero_vector_finite() -> None:
    assert np.all(normalize(np.zeros(DIM, dtype=np.float32)) == 0)
    assert np.isclose(np.linalg.norm(normalize(np.ones(DIM, dtype=np.float32))), 1.0)


def test_move_toward_adopts_target_when_empty_and_blends_otherwise() -> None:
    assert np.allclose(move_toward(None, unit(0) * 3, 0.2), unit(0))
    v = move_toward(unit(0), unit(1), 0.5)
    assert np.isclose(v[0], v[1]) and np.isclose(np.linalg.norm(v), 1.0)
    away = move_toward(normalize(unit(0) + unit(1)), unit(1), -0.5)
    assert away[1] < away[0]


def test_first_click_sets_vectors_and_later_clicks_average() -> None:
    s = UserState()
    s.apply_item("i0", unit(0), "a")
    assert np.allclose(s.global_vec, unit(0)) and np.allclose(s.scene_vecs["a"], unit(0))
    s.apply_item("i1", unit(1), "b")
    assert np.isclose(s.global_vec[0], s.global_vec[1])  # plain mean of two events
    assert list(s.recent) == ["i0", "i1"] and set(s.seen) == {"i0", "i1"}


def test_sparse_scene_borrows_from_global() -> None:
    s = UserState()
    for _ in range(5):
        s.apply_item("i0", unit(0), "a")
    s.apply_item("i1", unit(1), "b")
    mixed = s.scene_vector("b")
    assert mixed is not None and mixed[0] > 0 and mixed[1] > 0  # one click does not erase
    assert s.scene_vector("never") is s.global_vec


def test_follow_moves_toward_target_and_unfollow_away() -> None:
    s = UserState()
    s.apply_item("i0", unit(0), "a")
    target = {"global": unit(1), "a": unit(1)}
    s.apply_social("follow", "v", target)
    assert s.global_vec[1] > 0 and s.scene_vecs["a"][1] > 0 and "v" in s.following
    before = s.global_vec[1]
    s.apply_social("unfollow", "v", target)
    assert s.global_vec[1] < before and "v" not in s.following


def test_profile_seeds_new_user() -> None:
    s = UserState()
    s.apply_profile(unit(2))
    assert np.allclose(s.global_vec, unit(2))


def test_ranking_filters_seen_and_scene_and_explains() -> None:
    idx = index_with()
    s = UserState()
    s.apply_item("i0", normalize(unit(0) + 0.5 * unit(2)), "a")
    recs = recommend(s, idx, SceneGates(DIM), k=3)
    assert set(recs) == {"global", "a"}
    for lst in recs.values():
        assert "i0" not in [r.item_id for r in lst]
    assert recs["a"][0].item_id == "i2"
    assert all(r.item_id in {"i2", "i4"} for r in recs["a"])  # only scene-a items
    assert "in a" in recs["a"][0].reason and "Item 0" in recs["a"][0].reason


def test_cold_user_without_vector_gets_popular_items() -> None:
    idx = index_with()
    stats = Collaborative()
    for _ in range(3):
        click(stats, idx, "i5")
    s = UserState()
    recs = recommend(s, idx, SceneGates(DIM), k=2, stats=stats)
    assert recs["global"][0].item_id == "i5" and "popular" in recs["global"][0].reason


def test_scene_gate_changes_the_score() -> None:
    gates = SceneGates(DIM)
    gate = np.ones(DIM, dtype=np.float32)
    gate[0] = 0.0
    gates.set_gate("a", gate)
    assert gates.apply("a", unit(0))[0] == 0.0
    assert gates.apply("b", unit(0))[0] == 1.0


def test_kg_embedding_shared_entities_are_similar() -> None:
    kg = HashedEntityEmbedding(64)
    a = kg.embed([("actor", "x"), ("director", "y")])
    b = kg.embed([("actor", "x"), ("director", "z")])
    c = kg.embed([("actor", "q"), ("director", "r")])
    assert a is not None and b is not None and c is not None
    assert float(a @ b) > float(a @ c) + 0.3
    assert kg.embed([]) is None


def test_state_codec_round_trip() -> None:
    s = UserState()
    s.apply_profile(unit(3))
    s.apply_item("i0", unit(0), "a")
    s.apply_social("follow", "v", None)
    s.mark_applied("e1")
    back = codec.loads(codec.dumps(s))
    assert np.allclose(back.global_vec, s.global_vec)
    assert np.allclose(back.profile_vec, s.profile_vec)
    assert np.allclose(back.scene_vecs["a"], s.scene_vecs["a"])
    assert back.already_applied("e1") and back.last_event_id == "e1"
    assert list(back.recent) == ["i0"] and "v" in back.following
    assert codec.loads(codec.dumps(UserState())).global_vec is None


def test_popular_now_lifts_items_and_the_reason_says_so() -> None:
    idx = index_with()
    s = UserState()
    s.apply_item("i0", unit(0), "a")
    stats = Collaborative()
    for _ in range(3):
        click(stats, idx, "i3", ts=100.0)
    recs = recommend(s, idx, SceneGates(DIM), k=3, stats=stats)
    first = recs["global"][0]
    assert first.item_id == "i3" and first.reason.startswith("popular now")


def test_old_clicks_count_less_than_recent_ones() -> None:
    idx = index_with()
    stats = Collaborative(half_life_s=POP_AND_SIM.half_life_s)
    click(stats, idx, "i1", ts=0.0)
    click(stats, idx, "i1", ts=0.0)
    click(stats, idx, "i2", ts=30 * 86_400.0)  # a month later, after four half-lives
    assert stats.popularity(2) > stats.popularity(1)
    ranked = ranker(idx, SceneGates(DIM), stats=stats, k=2).rank([(UserState(), [None])])
    assert [r.item_id for r in ranked[0]["global"]] == ["i2", "i1"]


def test_equal_scores_rank_in_a_stable_order() -> None:
    idx = index_with()
    ranked = ranker(idx, SceneGates(DIM), k=6).rank([(UserState(), [None])])
    assert [r.item_id for r in ranked[0]["global"]] == [f"i{i}" for i in range(6)]


def test_reason_names_the_followed_user_whose_taste_lifted_the_item() -> None:
    idx = index_with()
    s = UserState()
    s.apply_item("i0", unit(0), "a")
    # "v" likes item 4's direction; following v pulls s there.
    s.apply_social("follow", "v", {"global": unit(4)})
    s.apply_social("follow", "w", {"global": unit(5)})
    recs = recommend(s, idx, SceneGates(DIM), k=6)
    by_item = {r.item_id: r.reason for r in recs["global"]}
    assert by_item["i4"] == "across scenes: close to the taste of v, whom you follow"
    assert by_item["i5"] == "across scenes: close to the taste of w, whom you follow"
    s.apply_social("unfollow", "v", {"global": unit(4)})
    assert "v" not in s.pulled_by and "w" in s.pulled_by


def test_pulled_by_keeps_only_the_latest_followed_users() -> None:
    s = UserState()
    for k in range(user_model.FOLLOWED_KEPT + 3):
        s.apply_social("follow", f"u{k}", {"global": unit(k % DIM)})
    assert len(s.pulled_by) == user_model.FOLLOWED_KEPT
    assert next(iter(s.pulled_by)) == "u3" and "u0" not in s.pulled_by


def test_reason_names_the_rarest_kg_fact_shared_with_the_history_item() -> None:
    idx = ItemIndex(DIM)
    idx.upsert("seen", unit(0), ["a"], "Seen Film", facts=["film.film.genre g1", "~d.x.film p"])
    idx.upsert("cand", normalize(unit(0) + unit(1)), ["a"], "Cand", facts=["film.film.genre g1"])
    idx.upsert("other", unit(2), ["a"], "Other", facts=["film.film.genre g1", "~d.x.film p"])
    idx.upsert("far", unit(3), ["a"], "Far")
    s = UserState()
    s.apply_item("seen", unit(0), "a")
    recs = recommend(s, idx, SceneGates(DIM), k=3)
    reasons = {r.item_id: r.reason for r in recs["a"]}
    # cand shares only the genre (3 items have it); the reason says which.
    assert reasons["cand"] == (
        "in a: similar to 'Seen Film' you engaged with; both have the KG fact film.film.genre g1"
    )
    # "other" shares the genre and the rarer inverse fact (2 items): the rarer one is named.
    assert idx.shared_fact("other", "seen") == "~d.x.film p"
    assert fact_label("~d.x.film p") == "the KG fact p d.x.film"
    assert idx.shared_fact("far", "seen") is None
    # Replacing an item's facts updates the counts.
    idx.upsert("other", unit(2), ["a"], "Other", facts=[])
    assert idx.shared_fact("cand", "seen") == "film.film.genre g1"


def test_colearner_is_a_scene_model_for_the_ranking() -> None:
    idx = index_with()
    s = UserState()
    for _ in range(5):
        s.apply_item("i1", unit(1), "b")
    s.apply_item("i0", unit(0), "a")
    plain = recommend(s, idx, SceneGates(DIM), k=2)
    # Same as the plain model when it borrows from the global vector only.
    same = CoLearner(SceneGates(DIM), None, CoLearnConfig(prior=SCENE_PRIOR, global_share=1.0))
    assert recommend(s, idx, same, k=2) == plain
    # Scene a borrowing all from scene b (strongly related) ranks b's direction higher in a.
    rel = SceneRelations(["a", "b"], np.array([[0.0, 1.0], [1.0, 0.0]]))
    borrow = CoLearner(SceneGates(DIM), rel, CoLearnConfig(prior=100.0, global_share=0.0))
    vec = borrow.scene_vector(s, "a")
    assert vec is not None and float(vec @ unit(1)) > 0.9


def test_state_codec_keeps_the_followed_users_vectors() -> None:
    s = UserState()
    s.apply_item("i0", unit(0), "a")
    s.apply_social("follow", "v:1", {"global": unit(2)})
    back = codec.loads(codec.dumps(s))
    assert list(back.pulled_by) == ["v:1"] and np.allclose(back.pulled_by["v:1"], unit(2))
    assert set(back.scene_vecs) == {"a"}


def _normalize_reference(v: np.ndarray) -> np.ndarray:
    """The formula ``normalize`` had before it skipped ``np.linalg.norm``'s overhead."""
    norm = float(np.linalg.norm(v))
    if norm < 1e-12:
        return np.zeros_like(v, dtype=np.float32)
    return (v / norm).astype(np.float32, copy=False)


def test_normalize_and_move_toward_equal_the_linalg_formula_bit_for_bit() -> None:
    rng = np.random.default_rng(7)
    for t in range(3000):
        v = (rng.standard_normal(384) * 10.0 ** rng.integers(-8, 4)).astype(np.float32)
        if t % 100 == 0:
            v[:] = 0.0  # stays zero, not NaN
        if t % 7 == 0:
            v = v.astype(np.float64)  # the general path
        got, want = normalize(v), _normalize_reference(v)
        assert got.dtype == want.dtype == np.float32 and np.array_equal(got, want)
        target = rng.standard_normal(384).astype(np.float32)
        rate = float(rng.uniform(-1.5, 1.5))  # clamped to [-1, 1]
        clamped = min(max(rate, -1.0), 1.0)
        step = ((1.0 - abs(clamped)) * v + clamped * target).astype(np.float32)
        assert np.array_equal(move_toward(v, target, rate), _normalize_reference(step))
    m = rng.standard_normal((5, 384)).astype(np.float32)
    assert np.array_equal(normalize(m), _normalize_reference(m))


def test_applied_ids_are_a_window_of_the_last_1024() -> None:
    s = UserState()
    for i in range(APPLIED_EVENTS + 3):
        assert not s.already_applied(f"e{i}")
        s.mark_applied(f"e{i}")
    # The oldest three fell out of the window (as the deque alone let them), the rest are in.
    assert [s.already_applied(f"e{i}") for i in range(4)] == [False, False, False, True]
    assert s.already_applied(f"e{APPLIED_EVENTS + 2}") and len(s.applied) == APPLIED_EVENTS
    s.mark_applied("e5")  # marked again: still one entry, still the last event
    assert len(s.applied) == APPLIED_EVENTS and s.last_event_id == "e5"
    assert s.applied.count("e5") == 1
    # Decoded from the changelog, the window is the same.
    back = codec.loads(codec.dumps(s))
    assert [back.already_applied(f"e{i}") for i in range(4)] == [False, False, False, True]

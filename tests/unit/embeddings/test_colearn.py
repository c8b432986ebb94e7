"""Co-learning math: borrowed scene vectors, scene relations, BPR-fitted gates, MMR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embeddings.blend import top_k
from embeddings.colearn import (
    CoLearnConfig,
    CoLearner,
    GateFitConfig,
    GateSamples,
    SceneRelations,
    colearned_scene_vector,
    fit_colearner,
    fit_gates,
    independent_scene_vector,
    scene_candidates,
)
from embeddings.diversity import mmr
from embeddings.scenes import SceneGates
from embeddings.user_model import UserState

DIM = 8


def unit(i: int) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    v[i] = 1.0
    return v


def relations() -> SceneRelations:
    # a and b are visited by the same users, c by others.
    counts = {
        "u1": {"a": 5, "b": 4},
        "u2": {"a": 3, "b": 3},
        "u3": {"c": 6},
        "u4": {"a": 1, "c": 1},
    }
    return SceneRelations.from_activity(counts)


def test_relations_follow_shared_activity_and_have_no_self_weight() -> None:
    rel = relations()
    assert rel.scenes == ("a", "b", "c")
    w = rel.weights
    assert np.allclose(np.diag(w), 0.0)
    assert w[0, 1] > w[0, 2] and w[1, 0] > w[1, 2]
    back = SceneRelations.from_dict(rel.to_dict())
    assert np.allclose(back.weights, rel.weights, atol=1e-6)


def test_unvisited_scene_borrows_from_related_scenes_and_global() -> None:
    s = UserState()
    for _ in range(4):
        s.apply_item("x", unit(0), "a")
    s.apply_item("y", unit(2), "c")
    assert independent_scene_vector(s, "b") is None
    only_scenes = colearned_scene_vector(s, "b", relations(), CoLearnConfig(3.0, 0.0))
    assert only_scenes is not None
    # b shares users with a, none with c: the borrowed vector is a's, nothing of c's.
    assert only_scenes[0] > 0.99 and only_scenes[2] == 0
    only_global = colearned_scene_vector(s, "b", relations(), CoLearnConfig(3.0, 1.0))
    assert only_global is not None and np.allclose(only_global, s.global_vec)


def test_own_events_take_over_as_they_accumulate() -> None:
    cfg = CoLearnConfig(prior=3.0, global_share=0.5)
    s = UserState()
    for _ in range(3):
        s.apply_item("x", unit(0), "a")
    s.apply_item("y", unit(1), "b")
    one = colearned_scene_vector(s, "b", relations(), cfg)
    for _ in range(50):
        s.apply_item("y", unit(1), "b")
    many = colearned_scene_vector(s, "b", relations(), cfg)
    assert one is not None and many is not None
    assert one[0] > 0.3  # one click in b: still mostly what is known from a
    assert many[1] > 0.95  # fifty clicks in b: b's own vector


def _samples(n: int, scene: str, signal_dim: int, rng: np.random.Generator) -> GateSamples:
    """Users whose clicks agree with them on ``signal_dim`` only; other dims are noise."""
    out = GateSamples(DIM)
    for _ in range(n):
        q = rng.standard_normal(DIM).astype(np.float32)
        out.add(scene, q, 2 * signal_dim + int(q[signal_dim] > 0))
    return out


def _items() -> np.ndarray:
    # Items 2d and 2d+1 point to -e_d and +e_d, with noise on the other dimensions.
    rng = np.random.default_rng(1)
    mat = rng.standard_normal((2 * DIM, DIM)).astype(np.float32) * 0.3
    for d in range(DIM):
        mat[2 * d, d], mat[2 * d + 1, d] = -1.0, 1.0
    return mat / np.linalg.norm(mat, axis=1, keepdims=True)


def test_bpr_gate_weights_up_the_dimension_that_separates_clicks() -> None:
    rng = np.random.default_rng(0)
    samples = _samples(3000, "a", 3, rng)
    items = _items()
    cands = {"a": np.arange(len(items))}
    gate = fit_gates(samples, items, cands, GateFitConfig("independent", reg=1e-5, epochs=6))["a"]
    assert gate.shape == (DIM,) and np.isclose(gate.mean(), 1.0, atol=1e-5)
    assert int(np.argmax(gate)) == 3
    assert gate[3] > 2 * np.median(gate)


def test_shared_gates_let_a_sparse_scene_use_what_the_dense_one_learned() -> None:
    rng = np.random.default_rng(0)
    samples = _samples(3000, "dense", 3, rng)
    for _ in range(15):  # the sparse scene: few events, same signal
        q = rng.standard_normal(DIM).astype(np.float32)
        samples.add("sparse", q, 6 + int(q[3] > 0))
    items = _items()
    cands = {"dense": np.arange(len(items)), "sparse": np.arange(len(items))}
    fit = GateFitConfig(reg=1e-2, shared_reg=1e-5, epochs=6)
    shared = fit_gates(samples, items, cands, fit)["sparse"]
    alone = fit_gates(samples, items, cands, GateFitConfig("independent", 1e-2, epochs=6))
    assert shared[3] > alone["sparse"][3]
    assert int(np.argmax(shared)) == 3
    with pytest.raises(ValueError, match="mode"):
        fit_gates(samples, items, cands, GateFitConfig("other"))


def test_colearner_round_trip_and_query(tmp_path: Path) -> None:
    gates = SceneGates(DIM)
    gates.set_gate("a", np.arange(1, DIM + 1, dtype=np.float32))
    learner = CoLearner(gates, relations(), CoLearnConfig(2.0, 0.25))
    path = tmp_path / "colearn.json"
    learner.save(path)
    back = CoLearner.load(path)
    assert back.config == learner.config and dict(back.gates.items()).keys() == {"a"}
    s = UserState()
    s.apply_item("x", unit(1), "a")
    q = back.query(s, "a")
    assert q is not None and np.isclose(q[1], 2.0)  # u_a = e1, gate_a[1] = 2
    assert np.allclose(back.query(s, None), s.global_vec)  # no global gate: all ones
    assert back.query(UserState(), "a") is None


def test_scene_candidates_cover_every_scene_and_the_global_feed() -> None:
    cands = scene_candidates([("a",), ("a", "b"), ("b",)])
    assert list(cands["a"]) == [0, 1] and list(cands["b"]) == [1, 2]
    assert list(cands["global"]) == [0, 1, 2]


def test_mmr_lambda_one_is_top_k_and_lower_lambda_diversifies() -> None:
    # Items 0-2 are near-copies with the best scores; item 3 differs and scores a bit less.
    vecs = np.array([[1, 0], [0.999, 0.045], [0.998, 0.063], [0, 1], [0.7, 0.7]], dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    scores = np.array([1.0, 0.99, 0.98, 0.9, 0.1])
    assert mmr(scores, vecs, 3, 1.0) == top_k(scores, 3) == [0, 1, 2]
    diverse = mmr(scores, vecs, 3, 0.5)
    assert diverse[0] == 0 and 3 in diverse[:2]
    assert 1 not in mmr(scores, vecs, 3, 0.5, exclude_rows=[1])
    with pytest.raises(ValueError, match="lam"):
        mmr(scores, vecs, 3, 1.5)


def test_fit_colearner_from_an_event_log_gives_every_scene_and_the_global_feed_a_gate(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(3)
    items = [f"i{k}" for k in range(2 * DIM)]
    mat = _items()
    scenes = [("a",) if k < DIM else ("b",) for k in range(2 * DIM)]
    log = []
    for u in range(40):
        for _ in range(6):
            k = int(rng.integers(2 * DIM))
            log.append((f"u{u}", items[k], scenes[k][0]))
    log.append(("u0", "unknown-item", "a"))  # skipped, not an error
    learner = fit_colearner(log, items, mat, scenes)
    assert {s for s, _ in learner.gates.items()} == {"a", "b", "global"}
    assert learner.relations is not None and learner.relations.scenes == ("a", "b")
    learner.save(tmp_path / "c.json")
    state = UserState()
    state.apply_item("i0", mat[0], "a")
    again = CoLearner.load(tmp_path / "c.json").query(state, "b")
    assert again is not None and np.allclose(again, learner.query(state, "b"), atol=1e-5)

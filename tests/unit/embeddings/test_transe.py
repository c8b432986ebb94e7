"""TransE (embeddings/transe.py): learns h + r ≈ t on a tiny graph, seeded, cached."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embeddings.transe import (
    TransEModel,
    TransEParams,
    cached_transe,
    project_vectors,
    read_links,
    read_triples,
    train_transe,
)

N_ENTITIES = 20


def _synthetic_triples(seed: int = 7) -> list[tuple[str, str, str]]:
    """Each relation is a translation of a hidden 8-d layout: tail = nearest to h + r."""
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((N_ENTITIES, 8))
    triples = []
    for k in range(3):
        shift = rng.standard_normal(8)
        for h in range(N_ENTITIES):
            dist = np.linalg.norm(points - (points[h] + shift), axis=1)
            dist[h] = np.inf
            triples.append((f"e{h}", f"r{k}", f"e{int(dist.argmin())}"))
    return triples


@pytest.fixture(scope="module")
def triples() -> list[tuple[str, str, str]]:
    return _synthetic_triples()


@pytest.fixture(scope="module")
def model(triples: list[tuple[str, str, str]]) -> TransEModel:
    return train_transe(triples, dim=16, epochs=300, seed=3, lr=0.02, batch_size=64, margin=0.5)


def test_learns_translations(model: TransEModel, triples: list[tuple[str, str, str]]) -> None:
    ranks = [model.tail_rank(h, r, t) for h, r, t in triples]
    assert len(model.entities) <= N_ENTITIES
    # Random vectors would put the true tail in the top 3 of 20 for ~15% of the triples.
    assert np.mean([rank <= 3 for rank in ranks]) >= 0.7
    assert model.losses[-1] < model.losses[0]


def test_entities_unit_norm(model: TransEModel) -> None:
    np.testing.assert_allclose(np.linalg.norm(model.entity_matrix, axis=1), 1.0, atol=1e-5)


def test_deterministic_with_seed(triples: list[tuple[str, str, str]]) -> None:
    a = train_transe(triples, dim=8, epochs=5, seed=11, batch_size=16)
    b = train_transe(triples, dim=8, epochs=5, seed=11, batch_size=16)
    c = train_transe(triples, dim=8, epochs=5, seed=12, batch_size=16)
    np.testing.assert_array_equal(a.entity_matrix, b.entity_matrix)
    np.testing.assert_array_equal(a.relation_matrix, b.relation_matrix)
    assert not np.array_equal(a.entity_matrix, c.entity_matrix)


def test_unknown_entity_is_none(model: TransEModel) -> None:
    assert model.entity_vector("no-such-entity") is None
    vec = model.entity_vector("e0")
    assert vec is not None and vec.shape == (16,)


def test_l1_and_bad_arguments(triples: list[tuple[str, str, str]]) -> None:
    l1 = train_transe(triples, dim=8, epochs=2, norm=1)
    assert l1.params.norm == 1
    with pytest.raises(ValueError):
        train_transe(triples, norm=3)
    with pytest.raises(ValueError):
        train_transe([])


def test_projection_to_text_space(model: TransEModel) -> None:
    vecs = project_vectors(model, {"1": "e0", "2": "e1", "3": "unlinked"}, out_dim=384)
    assert vecs["3"] is None
    v1, v2 = vecs["1"], vecs["2"]
    assert v1 is not None and v2 is not None
    assert v1.shape == (384,) and v1.dtype == np.float32
    assert abs(float(np.linalg.norm(v1)) - 1.0) < 1e-5
    # Johnson-Lindenstrauss: cosines between entities survive the projection (roughly).
    e0, e1 = model.entity_vector("e0"), model.entity_vector("e1")
    assert e0 is not None and e1 is not None
    assert abs(float(v1 @ v2) - float(e0 @ e1)) < 0.25
    again = project_vectors(model, {"1": "e0"}, out_dim=384)["1"]
    assert again is not None
    np.testing.assert_array_equal(v1, again)


def test_cache_round_trip(tmp_path: Path, triples: list[tuple[str, str, str]]) -> None:
    kg = tmp_path / "g.kg"
    kg.write_text(
        "head_id:token\trelation_id:token\ttail_id:token\n"
        + "".join(f"{h}\t{r}\t{t}\n" for h, r, t in triples)
    )
    link = tmp_path / "g.link"
    link.write_text("item_id:token\tentity_id:token\n1\te0\n2\te5\n")
    assert read_triples(kg) == triples
    assert read_links(link) == {"1": "e0", "2": "e5"}
    params = TransEParams(dim=8, epochs=3, batch_size=16)
    first = cached_transe(kg, tmp_path / "cache", params)
    assert len(list((tmp_path / "cache").glob("transe-*.npz"))) == 1
    second = cached_transe(kg, tmp_path / "cache", params)
    assert second.entities == first.entities and second.params == params
    np.testing.assert_array_equal(first.entity_matrix, second.entity_matrix)
    np.testing.assert_array_equal(first.relation_matrix, second.relation_matrix)
    assert second.losses == pytest.approx(first.losses)
    cached_transe(kg, tmp_path / "cache", TransEParams(dim=8, epochs=4, batch_size=16))
    assert len(list((tmp_path / "cache").glob("transe-*.npz"))) == 2

"""Social influence math, the lastfm-2k loader, and the social experiment on a tiny graph."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from embeddings.social import SocialGraph, social_mix, socialize_rows
from evaluation.data import Catalog, Event, Item
from evaluation.lastfm import LastfmModel, Setting, _evaluate, holdout
from scenerec.datasets import LASTFM_SCENE, load_lastfm2k

DATA_DIR = Path(os.environ.get("SCENEREC_DATA_DIR", Path(__file__).parents[4] / "shared" / "data"))


def unit(i: int, dim: int = 4) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[i] = 1.0
    return v


def test_graph_drops_self_loops_and_repeats() -> None:
    g = SocialGraph([("a", "b"), ("a", "b"), ("a", "a"), ("b", "c")])
    assert g.followed("a") == ["b"] and g.followed("c") == [] and len(g) == 2


def test_social_mix_moves_toward_the_friends_mean_by_strength() -> None:
    own = unit(0)
    friends = [unit(1), unit(1) * 3]  # normalized first: scale does not matter
    assert social_mix(own, friends, 0.0) is own
    half = social_mix(own, friends, 0.5)
    assert half is not None and np.isclose(half[0], half[1])
    assert np.allclose(social_mix(None, friends, 0.2), unit(1))  # no own vector yet
    assert social_mix(own, [], 0.7) is own  # follows nobody
    with pytest.raises(ValueError, match="strength"):
        social_mix(own, friends, 1.5)


def test_socialize_rows_skips_empty_friends_and_fills_empty_users() -> None:
    mat = np.stack([unit(0), unit(1), np.zeros(4, dtype=np.float32)])
    rows = {"a": 0, "b": 1, "c": 2}
    g = SocialGraph([("a", "b"), ("a", "c"), ("c", "a")])
    out = socialize_rows(mat, rows, g, 0.5)
    assert out[0, 1] > 0 and np.isclose(out[0, 0], out[0, 1])  # c has no vector: only b
    assert np.allclose(out[1], mat[1])  # b follows nobody
    assert np.allclose(out[2], unit(0))  # c had nothing: takes a's vector
    assert np.allclose(mat[2], 0)  # input untouched


def test_friends_items_reach_a_user_only_with_social_strength() -> None:
    items = [Item(f"a{k}", (LASTFM_SCENE,), f"artist {k}", f"A{k}") for k in range(6)]
    catalog = Catalog(items)
    pairs = [("u", "a0"), ("u", "a1"), ("f", "a4"), ("f", "a5"), ("g", "a0"), ("g", "a2")]
    pairs += [("h", "a2"), ("h", "a3"), ("i", "a3"), ("i", "a1")]
    events = [Event(u, i, LASTFM_SCENE, "listen", 0.0) for u, i in pairs]
    text = np.eye(6, 8, dtype=np.float32)
    model = LastfmModel(catalog, text, SocialGraph([("u", "f")]), events, ["u", "f"])
    seen = {"u": {"a0", "a1"}}
    truth = {"u": {"a4"}}
    plain = _evaluate(model, Setting(0.0, 0.0, 64.0), ["u"], seen, truth)[0][1]
    social = _evaluate(model, Setting(0.5, 0.0, 64.0), ["u"], seen, truth)[0][1]
    # Nothing connects u's artists to a4 except the friend: without social strength a4
    # comes after the two artists u's neighbours share (3rd); with it, the friend's
    # artists lead.
    assert social["ndcg@10"] > plain["ndcg@10"] and social["mrr@10"] == 1.0


def test_holdout_is_seeded_and_disjoint() -> None:
    events = [Event(f"u{k}", f"i{k}", LASTFM_SCENE, "listen", 0.0) for k in range(100)]
    fit, valid = holdout(events)
    assert len(valid) == 10 and len(fit) == 90 and not set(fit) & set(valid)
    assert holdout(events) == (fit, valid)


@pytest.mark.skipif(
    not (DATA_DIR / "lastfm-2k" / "user_artists.dat").is_file(), reason="no lastfm-2k data"
)
def test_lastfm_raw_loader_keeps_file_order_and_every_friendship() -> None:
    raw = load_lastfm2k(DATA_DIR)
    assert len(raw.items) == 17_632 and len(raw.clicks) == 92_834 and len(raw.social) == 25_434
    first = raw.clicks[0]
    assert (first["user_id"], first["item_id"], first["weight"], first["ts"]) == (
        "2",
        "51",
        13883.0,
        0.0,
    )
    assert raw.social[0] == {"source": "2", "target": "275", "kind": "friend", "ts": None}
    assert raw.profiles == []

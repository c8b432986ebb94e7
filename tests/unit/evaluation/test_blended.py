"""The worker ranks with the harness's model: same clicks in, same global lists out.

The evaluation harness's SceneRec (``evaluation/scenerec_model.py``) and the streaming
worker's ``Pipeline`` are fed the same click stream; before every scored click the
worker's global feed must be the harness's top-10 for that user, item for item. The
worker's blend is the harness model's own (``SceneRec.feed_blend``: weights, freshness,
transition settings and the gate it learned on the first clicks).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson
import pytest

from embeddings.collaborative import DEFAULT_FEED_BLEND, FeedBlend
from evaluation.data import Catalog, Event, Item
from evaluation.scenerec_model import SceneRec, SceneRecConfig
from streams.pipeline import Incoming, Pipeline, PipelineConfig
from tests.conftest import local_pipeline
from tests.unit.helpers.emitters import Collect

SCENES = ("scifi", "family", "drama")
N_ITEMS, N_USERS, N_TRAIN, N_SCORED = 60, 30, 400, 200
T0, STEP_S = 1.6e9, 1800.0


class HashEncoder:
    """Deterministic text vectors (unit length) without a model: fast, same every run."""

    async def encode(self, texts: Sequence[str]) -> np.ndarray:
        rows = []
        for text in texts:
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
            rows.append(np.random.default_rng(seed).standard_normal(384))
        mat = np.asarray(rows, dtype=np.float32)
        return mat / np.linalg.norm(mat, axis=1, keepdims=True)


def _items() -> list[dict[str, object]]:
    return [
        {
            "item_id": f"i{j}",
            "scenes": [SCENES[j % 3]] + ([SCENES[(j + 1) % 3]] if j % 4 == 0 else []),
            "title": f"Item {j}",
            "description": f"A {SCENES[j % 3]} title number {j} of group {j // 6}",
        }
        for j in range(N_ITEMS)
    ]


def _clicks(items: list[dict[str, object]]) -> list[dict[str, object]]:
    """Users walk the catalog in short runs (sequels: j -> j+1), with popular items mixed in,
    so transitions, co-occurrence, popularity and similarity all shape the lists."""
    rng = np.random.default_rng(7)
    pos = {u: int(rng.integers(N_ITEMS)) for u in range(N_USERS)}
    out = []
    for n in range(N_TRAIN + N_SCORED):
        u = int(rng.integers(N_USERS))
        if rng.random() < 0.3:
            j = int(rng.zipf(1.6)) % N_ITEMS
        else:
            j = (pos[u] + int(rng.integers(1, 3))) % N_ITEMS
        pos[u] = j
        scenes = items[j]["scenes"]
        assert isinstance(scenes, list)
        out.append(
            {
                "event_id": f"e{n}",
                "user_id": f"u{u}",
                "item_id": f"i{j}",
                "scene": scenes[0],
                "ts": T0 + n * STEP_S,
            }
        )
    return out


def _pipeline(tmp_path: Path, name: str, model_path: Path | None) -> Pipeline:
    config = PipelineConfig(
        scenes=SCENES,
        unknown_item_wait_s=0.0,
        model_path=None if model_path is None else str(model_path),
    )
    return local_pipeline(tmp_path / name, config, HashEncoder(), Collect())


def _messages(topic: str, records: Sequence[dict[str, object]], first: int) -> list[Incoming]:
    return [
        Incoming(orjson.dumps(r), topic, 0, first + k, None, None) for k, r in enumerate(records)
    ]


async def test_worker_global_feed_is_the_harness_top_10(tmp_path: Path) -> None:
    items = _items()
    clicks = _clicks(items)
    # The item vectors the worker builds (text + KG fusion), in catalog order.
    probe = _pipeline(tmp_path, "probe", None)
    await probe.on_catalog(_messages("catalog.items", items, 0))
    ids = [str(it["item_id"]) for it in items]
    vectors = probe.index.vectors_of(ids)
    probe.store.close()

    catalog = Catalog(
        [Item(str(it["item_id"]), tuple(it["scenes"]), "", str(it["title"])) for it in items]  # type: ignore[arg-type]
    )
    config = SceneRecConfig(
        half_life_days=7.0,
        start_half_life_days=28.0,
        age_weight=0.25,
        use_profiles=False,
        blend=DEFAULT_FEED_BLEND.blend,
    )
    harness = SceneRec(catalog, vectors, {}, config)
    events = [
        Event(str(c["user_id"]), str(c["item_id"]), str(c["scene"]), "click", float(c["ts"]))  # type: ignore[arg-type]
        for c in clicks
    ]
    harness.fit(events[:N_TRAIN])
    blend = harness.feed_blend()
    assert blend.global_gate is not None  # the gated component is exercised too
    model_path = tmp_path / "model.json"
    blend.save(model_path)
    assert FeedBlend.load(model_path).to_dict() == blend.to_dict()

    pipe = _pipeline(tmp_path, "worker", model_path)
    await pipe.on_catalog(_messages("catalog.items", items, 0))
    assert np.array_equal(pipe.index.vectors_of(ids), vectors)
    for start in range(0, N_TRAIN, 50):  # the train clicks in worker-sized batches
        await pipe.on_clicks(_messages("events.click", clicks[start : start + 50], start))

    compared, with_collab = 0, 0
    for n in range(N_TRAIN, N_TRAIN + N_SCORED):
        user = str(clicks[n]["user_id"])
        payload = pipe.recommend_now(user)
        if payload is not None:
            scenes = payload["scenes"]
            assert isinstance(scenes, dict)
            worker = [r["item_id"] for r in scenes["global"]]
            seen = set(harness.known_state(user).seen)
            assert worker == harness.recommend(user, 10, exclude=seen), f"event {n}, {user}"
            compared += 1
            reasons = " ".join(r["reason"] for r in scenes["global"])
            with_collab += "went on to this" in reasons or "the same people" in reasons
        await pipe.on_clicks(_messages("events.click", [clicks[n]], n))
        harness.update(events[n])
    assert compared >= N_SCORED - N_USERS
    assert with_collab > 0  # reasons name the transitions / co-occurrence source
    pipe.store.close()


@pytest.mark.parametrize("n", [1, 5, 70])
def test_grown_statistics_keep_what_they_had(n: int) -> None:
    from embeddings.collaborative import Collaborative

    small, big = Collaborative(), Collaborative()
    big.grow(n + 30)
    rng = np.random.default_rng(n)
    for t in range(200):
        hist = [int(x) for x in rng.integers(0, n, size=int(rng.integers(0, 4)))]
        row = int(rng.integers(0, n))
        for c in (small, big):
            c.observe(hist, sorted(set(hist)), row, T0 + t)
    small.grow(n + 30)
    hist = [int(x) for x in rng.integers(0, n, size=3)]
    for feature in ("transition_feature", "cooccurrence_feature"):
        for h in (hist, []):
            a, b = getattr(small, feature)(h, n + 30), getattr(big, feature)(h, n + 30)
            assert np.array_equal(a, b)
    assert np.array_equal(small.log_popularity()[: n + 30], big.log_popularity()[: n + 30])


def test_reasons_name_the_click_a_recommendation_follows_from() -> None:
    from embeddings.blend import TenureBlend
    from embeddings.model import SceneRecModel
    from embeddings.ranking import GatedScenes, ItemIndex
    from embeddings.scenes import SceneGates
    from embeddings.user_model import UserState

    index = ItemIndex(4)
    blend = FeedBlend(TenureBlend.uniform((1.0, 8.0, 0.0, 0.0, 0.0)))  # transitions lead
    for j, title in enumerate(["Alpha", "Beta", "Gamma", "Delta"]):
        index.upsert(f"i{j}", np.eye(4, dtype=np.float32)[j], ["a"], title)
    model = SceneRecModel(index, blend, GatedScenes(SceneGates(4)), 2)
    ts = T0
    for _ in range(5):  # everyone starts with Alpha, then goes on to Gamma
        state = UserState()
        for item in ("i0", "i2"):
            model.learn_click(state, item, ts)
            state.apply_item(item, index.vector(item), "a")  # type: ignore[arg-type]
            ts += 60.0
    fan = UserState()
    model.learn_click(fan, "i0", ts)
    fan.apply_item("i0", index.vector("i0"), "a")  # type: ignore[arg-type]
    newcomer, known = model.rank([(UserState(), [None]), (fan, [None])])
    assert newcomer["global"][0].item_id == "i0"
    assert "what new users have been starting with" in newcomer["global"][0].reason
    assert known["global"][0].item_id == "i2"  # Alpha itself is seen: left out
    assert "people who engaged with 'Alpha', as you did, went on to this" in (
        known["global"][0].reason
    )


def _expected_lead(sim: float, pop: float, trans: float, co: float, has_vector: bool) -> str:
    """The rule, one item at a time: the largest lift among similarity (with a vector),
    popularity, and transitions and co-occurrence where positive; ties to the earlier."""
    terms = [("similarity", sim)] if has_vector else []
    terms.append(("popularity", pop))
    terms += [(n, x) for n, x in (("transitions", trans), ("cooccurrence", co)) if x > 0]
    return max(terms, key=lambda t: t[1])[0]


@pytest.mark.parametrize("has_vector", [True, False])
def test_leading_terms_at_once_match_one_at_a_time(has_vector: bool) -> None:
    from embeddings.ranking import Ranked, leading_term, leading_terms

    rng = np.random.default_rng(3)
    # Rounded lifts: ties between terms, and zero or negative collaborative lifts, happen.
    lifts = np.round(rng.normal(size=(4, 500)), 1)
    at_once = leading_terms(lifts, has_vector)
    for j, lead in enumerate(at_once):
        sim, pop, trans, co = (float(x) for x in lifts[:, j])
        expected = _expected_lead(sim, pop, trans, co, has_vector)
        assert lead == expected, (j, lifts[:, j])
        one = leading_term(Ranked("i", 0.0, pop, sim, trans, co), has_vector)
        assert one == expected, (j, lifts[:, j])


@pytest.mark.parametrize("m", [1, 2, 7, 1682, 1683])
def test_row_medians_are_numpys_median(m: int) -> None:
    from embeddings.ranking import medians

    rng = np.random.default_rng(m)
    x = np.round(rng.normal(size=(4, m)), 1)  # rounded: equal values in the middle too
    assert medians(x).tolist() == [float(np.median(row)) for row in x]
    x = rng.normal(size=(100, m))  # distinct values: the lower half is not in order
    assert medians(x).tolist() == [float(np.median(row)) for row in x]

"""The benchmark's own logic, and the speed work it drove: batched ranking must rank exactly
as one product per query did, the state codec must round-trip, the audits must count."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import urllib.request
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest

from bench import pipeline_bench, profiling, scale_out
from bench.encoder_cache import CachingEncoderProxy, _key
from bench.load import max_rate_under_bound, new_user_clicks, under_bound
from embeddings import ranking
from embeddings.ranking import (
    ItemIndex,
    Ranked,
    _median,
    _repeated_kth,
    _stable_top_k,
    recommend_many,
)
from embeddings.scenes import SceneGates
from embeddings.user_model import UserState
from embeddings.vectors import normalize
from scenerec.datasets import Dataset
from streams import state as codec

SCENES = ("a", "b", "c")


def reference_rank(
    index: ItemIndex,
    query: npt.NDArray[np.float32] | None,
    k: int,
    scene: str | None,
    exclude: npt.NDArray[np.intp],
) -> list[Ranked]:
    """The per-query ranking as it was before batching: one product over the whole matrix,
    a full stable sort, numpy's median."""
    n = len(index)
    pop = index._pop.log_scores()[:n]
    sim = (
        np.zeros(n)
        if query is None
        else (index._mat[:n] @ query.astype(np.float32)).astype(np.float64)
    )
    scores = pop + ranking.SIM_WEIGHT * sim
    valid = np.ones(n, dtype=np.bool_)
    if scene is not None:
        valid &= index._scene_mask(scene)[:n]
    valid[exclude] = False
    cand = np.flatnonzero(valid)
    if cand.size == 0:
        return []
    top = cand[np.argsort(-scores[cand], kind="stable")[:k]]
    pm, sm = float(np.median(pop[cand])), float(np.median(sim[cand]))
    return [
        Ranked(
            index._ids[r],
            float(scores[r]),
            float(pop[r] - pm),
            float(ranking.SIM_WEIGHT * (sim[r] - sm)),
        )
        for r in top
    ]


def random_world(
    n_items: int, dim: int, n_users: int, seed: int = 0
) -> tuple[ItemIndex, list[UserState], npt.NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n_items, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    index = ItemIndex(dim)
    for i in range(n_items):
        scenes = list(rng.choice(SCENES, size=int(rng.integers(1, 3)), replace=False))
        index.upsert(f"i{i}", vecs[i], scenes, f"Item {i}")
    for _ in range(3 * n_items):  # popularity with ties (many items never clicked)
        index.count_click(f"i{int(rng.integers(0, n_items // 3))}", float(rng.integers(0, 50)))
    users = []
    for u in range(n_users):
        st = UserState()
        if u % 4 == 0:
            st.apply_profile(normalize(rng.standard_normal(dim).astype(np.float32)))
        for _ in range(int(rng.integers(0 if u % 5 == 0 else 1, 30))):
            i = int(rng.integers(0, n_items))
            st.apply_item(f"i{i}", vecs[i], str(rng.choice(SCENES)))
        users.append(st)
    return index, users, vecs


@pytest.mark.parametrize("n_items", [37, 1682, 9001])  # 9001: more than two row blocks
def test_batched_ranking_is_the_per_query_ranking_bit_for_bit(n_items: int) -> None:
    index, users, _ = random_world(n_items, 24, 12)
    gates = SceneGates(24)
    gate = np.linspace(0.5, 1.5, 24).astype(np.float32)
    gates.set_gate("b", gate)  # a learned gate on one scene, ones elsewhere
    batched = recommend_many(users, index, gates, k=10)
    for st, got in zip(users, batched, strict=True):
        assert got == ranking.recommend(st, index, gates, k=10)
        seen = index.rows(st.seen)
        for scene in [None, *st.active_scenes]:
            user_vec = st.global_vec if scene is None else st.scene_vector(scene)
            query = None if user_vec is None else gates.apply(scene or "global", user_vec)
            want = reference_rank(index, query, 10, scene, seen)
            have = index.rank(query, 10, scene=scene, exclude_rows=seen)
            assert have == want  # ids, scores and both lifts: exactly equal floats
            assert [s.item_id for s in got[scene or "global"]] == [r.item_id for r in want]


def test_median_and_top_k_match_numpy() -> None:
    rng = np.random.default_rng(3)
    for m in [*range(1, 30), 1682, 4097, 100_000, 100_001]:
        # Many equal values (the middle ones too), and all distinct, at odd and even lengths.
        for x in (rng.integers(0, 4, m).astype(np.float64), rng.standard_normal(m)):
            assert _median(x) == float(np.median(x))
            for k in (1, 3, 10, m + 2):
                assert np.array_equal(_stable_top_k(-x, k), np.argsort(-x, kind="stable")[:k])
    # After one partition at the middle the lower half is unordered: its last value is not
    # always the other middle one. Draws where it is not, so that case is covered.
    lower_unordered = 0
    for _ in range(100):
        x = rng.standard_normal(1000)
        assert _median(x) == float(np.median(x))
        part = np.partition(x, 500)
        lower_unordered += bool(part[499] != part[:500].max())
    assert lower_unordered > 0
    # Long arrays take the sampled selections: shapes where the sample brackets the answer,
    # where most values are equal (log popularity of a large catalog), and where the sample
    # is unrepresentative (every 16th value the largest, or the smallest): the fallbacks.
    n = 100_000
    lumpy = np.full(n, -6.9)
    lumpy[rng.choice(n, 1700, replace=False)] = np.log(rng.integers(1, 9, 1700))
    strided = rng.standard_normal(n)
    strided[::16] += 100.0
    # The sample sees one value repeated where the middle is not (every 16th value is 5.0);
    # or the middle is the first of a run of equal values (so the lower middle value is not).
    tied_sample = rng.standard_normal(n)
    tied_sample[::16] = 5.0
    run_at_middle = np.zeros(n)
    unsampled = np.flatnonzero(np.arange(n) % 16)[: n // 2]
    run_at_middle[unsampled] = -1.0 - rng.random(n // 2)
    shapes = (lumpy, strided, -strided, tied_sample, -tied_sample, run_at_middle, np.zeros(n))
    for x in (*shapes, np.round(rng.standard_normal(n), 2)):
        for m in (n, n - 1):
            y = x[:m]
            assert _median(y) == float(np.median(y))
            for k in (1, 10, 100):
                want = np.argsort(-y, kind="stable")[:k]
                assert np.array_equal(_stable_top_k(-y, k), want)
                assert np.array_equal(_stable_top_k(y, k), np.argsort(y, kind="stable")[:k])
            for q in (0, 1, m // 3, m // 2, m - 1):
                repeated = _repeated_kth(y, q)
                if repeated is not None:
                    value, below = repeated
                    assert value == np.partition(y, q)[q]
                    assert below == np.count_nonzero(y < value)
    with_nan = rng.standard_normal(n)
    with_nan[rng.choice(n, n - 5, replace=False)] = np.nan  # fewer comparable keys than k
    assert np.array_equal(_stable_top_k(with_nan, 10), np.argsort(with_nan, kind="stable")[:10])
    with_nan = rng.standard_normal(n)
    with_nan[7] = np.nan
    assert np.array_equal(_stable_top_k(with_nan, 10), np.argsort(with_nan, kind="stable")[:10])
    assert np.isnan(_median(with_nan))
    for x in ([1.0, np.nan, 3.0], [np.nan, 1.0], [2.0, 1.0, np.nan, np.nan], [np.nan] * 3):
        assert np.isnan(_median(np.array(x)))


def test_state_codec_round_trips_every_field() -> None:
    st = UserState()
    st.apply_profile(normalize(np.arange(1, 9, dtype=np.float32)))
    for i in range(60):
        st.apply_item(
            f"i{i % 45}", normalize(np.ones(8, dtype=np.float32) + i), "a" if i % 2 else "b"
        )
        st.mark_applied(f"e{i}")
    st.apply_social("follow", "u9", None)
    st.apply_social("like", "u8", {"global": normalize(np.arange(8, dtype=np.float32))})
    back = codec.loads(codec.dumps(st))
    for name in ("scene_counts", "n_events", "seen", "following", "last_event_id"):
        assert getattr(back, name) == getattr(st, name)
    assert list(back.recent) == list(st.recent) and list(back.applied) == list(st.applied)
    assert back.recent.maxlen == st.recent.maxlen and back.applied.maxlen == st.applied.maxlen
    assert np.array_equal(back.global_vec, st.global_vec)
    assert np.array_equal(back.profile_vec, st.profile_vec)
    assert back.scene_vecs.keys() == st.scene_vecs.keys()
    assert all(np.array_equal(back.scene_vecs[s], v) for s, v in st.scene_vecs.items())
    assert back.pulled_by.keys() == st.pulled_by.keys() == {"u8"}
    assert np.array_equal(back.pulled_by["u8"], st.pulled_by["u8"])
    back.mark_applied("new")  # the decoded state is a normal, writable one
    back.apply_item("i1", back.global_vec, "a")


def test_scale_out_audit_counts_lost_and_duplicated() -> None:
    published = {"u1": ["1", "2", "3"], "u2": ["4", "5"], "u3": ["6"]}
    states = {
        "u1": {"n_events": 3, "recent": ["1", "2", "3"]},  # exactly once
        "u2": {"n_events": 3, "recent": ["4", "5", "5"]},  # 5 applied twice
        "u3": None,  # never reached a worker
    }
    assert scale_out.audit(published, states) == {
        "lost": 1,
        "duplicated": 1,
        "users_without_state": 1,
    }
    states["u1"] = {"n_events": 3, "recent": ["1", "3", "9"]}  # 2 lost, an extra event
    got = scale_out.audit(published, states)
    assert got["lost"] == 2 and got["duplicated"] == 2


def test_new_user_clicks_are_distinct_items_per_user() -> None:
    items = [{"item_id": str(i), "scenes": ["a"]} for i in range(1682)]
    data = Dataset("t", items, [], [])
    msgs = new_user_clicks(data, 50, 20, "t")
    per_user: dict[str, list[str]] = {}
    for key, value in msgs:
        assert key.decode() == value["user_id"]
        per_user.setdefault(value["user_id"], []).append(value["item_id"])
    assert len(per_user) == 50
    assert all(len(set(v)) == 20 for v in per_user.values())
    assert len({v["event_id"] for _, v in msgs}) == 1000


def test_p99_bound_needs_every_event_reflected() -> None:
    assert under_bound({"p99": 999.0, "not_reflected": 0})
    assert not under_bound({"p99": 1000.0, "not_reflected": 0})
    assert not under_bound({"p99": 10.0, "not_reflected": 3})
    assert not under_bound({"p99": None, "not_reflected": 0})


def test_max_rate_is_never_above_a_measured_failure() -> None:
    ok, bad = {"p99": 50.0, "not_reflected": 0}, {"p99": 1900.0, "not_reflected": 0}
    measured: dict[str, dict[str, Any]] = {
        "100": ok,
        "200": ok,
        "400": ok,
        "800": ok,
        "1000": bad,  # a fixed-rate run that hit a stall
        "1600": bad,
        "1200": ok,  # the search's bisection step passed above the 1000 failure
    }
    got = asyncio.run(
        max_rate_under_bound(cast(Any, None), cast(Any, None), 100, 12_800, 1.0, measured)
    )
    assert got["search_result"] == 1200
    assert got["rate"] == 800 and got["lowest_failing_rate"] == 1000


def test_profile_buckets_use_the_main_thread_and_priority_rules(tmp_path: Path) -> None:
    raw = tmp_path / "p.raw"
    raw.write_text(
        "thread (1): MainThread;run (faust/worker.py:1);on_clicks (streams/pipeline.py:3);"
        "rank (embeddings/ranking.py:9) 20\n"
        "thread (1): MainThread;on_clicks (streams/pipeline.py:3);"
        "recommend_blended (embeddings/blended.py:7) 10\n"
        "thread (1): MainThread;on_clicks (streams/pipeline.py:3);"
        "ItemIndex.record_click (embeddings/ranking.py:2);"
        "observe (embeddings/collaborative.py:1) 5\n"
        "thread (1): MainThread;run (faust/worker.py:1);send (aiokafka/producer/producer.py:2) 10\n"
        "thread (1): MainThread;run (faust/worker.py:1) 10\n"
        "thread (2): AIOKafkaConsumerThread;fetch (aiokafka/consumer/fetcher.py:5) 50\n"
    )
    s = profiling.summarize(profiling.read_collapsed(raw), seconds=1.0, rate=100)
    buckets = {b["name"]: b["samples"] for b in s["buckets"]}
    assert buckets["ranking (ranking.py, blended.py, item-item terms)"] == 30
    assert buckets["item statistics (ItemIndex.record_click)"] == 5
    assert buckets["produce: faust topic send + aiokafka producer"] == 10
    assert s["active_share"] == 0.55 and s["threads_busy_share"]["AIOKafkaConsumerThread"] == 0.5
    assert "ranking" in profiling.text_report(s, "t")


def test_caching_proxy_answers_the_encoder_contract_from_the_cache() -> None:
    vecs = {_key(t): np.full(4, i, dtype=np.float32) for i, t in enumerate(["x", "y"])}
    proxy = CachingEncoderProxy(vecs, upstream="http://127.0.0.1:9/none")
    proxy.start()
    try:
        req = urllib.request.Request(
            proxy.url,
            data=json.dumps({"texts": ["y", "x", "y"]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = json.loads(resp.read())
    finally:
        proxy.stop()
    mat = np.frombuffer(base64.b64decode(body["vectors_b64"]), dtype="<f4").reshape(3, 4)
    assert body["n"] == 3 and body["dim"] == 4
    assert mat[:, 0].tolist() == [1.0, 0.0, 1.0] and proxy.hits == 3 and proxy.misses == 0


def test_cli_checks_phases_and_prints_a_table() -> None:
    args = pipeline_bench.parse_args(["--only", "throughput,latency", "--catalog-sizes", "1682"])
    assert args.phases == ["throughput", "latency"] and args.catalogs == [1682]
    with pytest.raises(SystemExit):
        pipeline_bench.parse_args(["--only", "nonsense"])
    text = pipeline_bench.table(
        {
            "kafka_ceiling_events_per_s": 1000.0,
            "throughput_events_per_s": {"1682": 10.0},
            "throughput_ratio": {"1682": 0.01},
            "latency_ms": {"100": {"p50": 1.0, "p95": 2.0, "p99": 3.0}},
            "scale_out": {"lost": 0},
        }
    )
    assert "throughput, catalog 1682" in text and "1.0 / 2.0 / 3.0" in text


def test_histogram_deltas_count_slow_observations_from_bucket_bounds() -> None:
    # Every bucket is in every reading (cumulative counts, as Prometheus exposes them).
    before = {
        "worker_batch": {"count": 10.0, "sum": 0.5, "le_0.01": 4.0, "le_0.1": 10.0, "le_1.0": 10.0}
    }
    after = {
        "worker_batch": {
            "count": 14.0,
            "sum": 2.5,
            "le_0.01": 5.0,
            "le_0.1": 12.0,
            "le_1.0": 14.0,
        }
    }
    d = pipeline_bench.histogram_deltas(before, after)["worker_batch"]
    # 4 new observations, 2 s in all; 3 of them at or above 10 ms, 2 at or above 100 ms.
    assert d == {
        "n": 4.0,
        "mean_ms": 500.0,
        "n_10ms_or_more": 3.0,
        "n_100ms_or_more": 2.0,
        "n_1000ms_or_more": 0.0,
    }


def test_above_gemm_min_rows_the_ranking_matches_to_the_rounding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One matrix-matrix product for a batch's queries (large catalogs): the same lists,
    scores equal to about 1e-6, and bit for bit again below the threshold."""
    index, users, _ = random_world(9001, 24, 12)
    gates = SceneGates(24)
    exact = recommend_many(users, index, gates, k=10)
    monkeypatch.setattr(ranking, "GEMM_MIN_ROWS", 1000)
    fast = recommend_many(users, index, gates, k=10)
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
    assert recommend_many(users, index, gates, k=10) == exact


@pytest.mark.parametrize("gemm_min_rows", [10_000, 1000])  # per-query products, then GEMM
def test_threads_share_the_blocks_bit_for_bit(
    monkeypatch: pytest.MonkeyPatch, gemm_min_rows: int
) -> None:
    """Blocks dealt among threads: the same similarities and lists as one thread, on both
    product paths, and the threads really run (a block computed off the caller's thread)."""
    monkeypatch.setattr(ranking, "GEMM_MIN_ROWS", gemm_min_rows)
    index, users, vecs = random_world(9001, 24, 12)  # three row blocks
    queries = [normalize(v) for v in vecs[:7] + vecs[7:14]]
    one = index.similarities(queries)
    lists = recommend_many(users, index, SceneGates(24), k=10)
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
        assert recommend_many(users, index, SceneGates(24), k=10) == lists
    assert any(name.startswith("scenerec-rank") for name in callers)
    with pytest.raises(ValueError, match="threads"):
        index.set_threads(0)

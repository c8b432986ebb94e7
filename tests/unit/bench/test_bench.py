"""The benchmark's own logic: the state codec must round-trip, the audits must count."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.request
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from bench import pipeline_bench, profiling, scale_out
from bench.encoder_cache import CachingEncoderProxy, _key
from bench.load import max_rate_under_bound, new_user_clicks, under_bound
from embeddings.user_model import UserState
from embeddings.vectors import normalize
from scenerec.datasets import Dataset
from streams import state as codec

SCENES = ("a", "b", "c")


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
    st.ranked_at = {"global": 60, "a": 59}
    back = codec.loads(codec.dumps(st))
    for name in ("scene_counts", "n_events", "seen", "following", "last_event_id", "ranked_at"):
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
        "rank (embeddings/blended.py:7) 10\n"
        "thread (1): MainThread;on_clicks (streams/pipeline.py:3);"
        "click_deltas (embeddings/model.py:2);"
        "click_deltas (embeddings/itemstats.py:1) 5\n"
        "thread (1): MainThread;run (faust/worker.py:1);send (aiokafka/producer/producer.py:2) 10\n"
        "thread (1): MainThread;run (faust/worker.py:1) 10\n"
        "thread (2): AIOKafkaConsumerThread;fetch (aiokafka/consumer/fetcher.py:5) 50\n"
    )
    s = profiling.summarize(profiling.read_collapsed(raw), seconds=1.0, rate=100)
    buckets = {b["name"]: b["samples"] for b in s["buckets"]}
    assert buckets["ranking (ranking.py, blended.py, item-item terms)"] == 30
    assert buckets["item statistics (deltas, stage, shared rows)"] == 5
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

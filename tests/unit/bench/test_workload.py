"""The many-users benchmark's own logic: the workload's distribution (Zipf exponent, mix,
uniform users, determinism), the events the worker accepts, the sustained-rate rules,
per-stream latency matching and the synthetic catalog vectors. No timing is asserted."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, cast

import numpy as np
import orjson
import pytest

from bench import many_users, sustained
from bench.encoder_cache import SyntheticVectors
from bench.load import RecWatcher
from bench.stack import percentiles
from bench.workload import (
    CLICK,
    COMMENT,
    SOCIAL,
    Workload,
    WorkloadConfig,
    describe,
    fitted_zipf_exponent,
    zipf_cdf,
)
from streams.records import ClickEvent, CommentEvent, SocialEvent, UserProfile, parse_event

SCENES = ("action", "comedy", "drama", "family", "scifi", "thriller")


def catalog(n: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(5)
    return [
        {"item_id": f"i{i}", "scenes": list(rng.choice(SCENES, int(rng.integers(1, 4)), False))}
        for i in range(n)
    ]


def fixed_clock() -> float:
    return 1_700_000_000.0


def workload(n_items: int = 1682, **config: Any) -> Workload:
    return Workload(catalog(n_items), WorkloadConfig(**config), "t", clock=fixed_clock)


@pytest.mark.parametrize("exponent", [1.1, 0.8])
def test_items_follow_zipf_with_the_given_exponent(exponent: float) -> None:
    w = workload(zipf_exponent=exponent)
    events = w.events(200_000)
    got = describe(w, events)
    assert got["zipf_exponent_fitted"] == pytest.approx(exponent, abs=0.05)
    # The most popular rank's share against its probability under Zipf.
    p_top = float(zipf_cdf(1682, exponent)[0])
    assert got["top_item_share"] == pytest.approx(p_top, rel=0.03)
    # The ranks are a shuffle of the catalog: the most drawn item is not the first one.
    top_item = Counter(e["item_id"] for t, e in events if t != SOCIAL).most_common(1)[0][0]
    assert top_item == w.item_ids[int(w.by_rank[0])] != w.item_ids[0]


def test_fitted_exponent_reads_a_known_power_law() -> None:
    counts = np.round(1e6 * np.arange(1, 301, dtype=np.float64) ** -1.3).astype(np.int64)
    assert fitted_zipf_exponent(counts) == pytest.approx(1.3, abs=0.01)


def test_mix_shares_and_users_drawn_uniformly() -> None:
    w = workload()
    events = w.events(200_000)
    got = describe(w, events)
    assert got["shares"][CLICK] == pytest.approx(0.90, abs=0.005)
    assert got["shares"][COMMENT] == pytest.approx(0.07, abs=0.005)
    assert got["shares"][SOCIAL] == pytest.approx(0.03, abs=0.002)
    assert got["distinct_users"] == 10_000 and len(w.users) == 10_000
    per_user = np.array(list(Counter(e["user_id"] for _, e in events).values()))
    # Uniform users: per-user counts are Poisson(20), whose coefficient of variation is 0.224.
    assert per_user.std() / per_user.mean() == pytest.approx(1 / math.sqrt(20), rel=0.1)
    assert len(got["scenes"]) >= 6


def test_the_stream_is_deterministic_whatever_the_pieces() -> None:
    a, b = workload(users=500), workload(users=500)
    whole = a.events(9000)  # more than two of the generator's chunks
    pieces = [b.next_event() for _ in range(3000)] + b.events(6000)
    assert whole == pieces
    assert a.profiles() == b.profiles()
    assert a.new_user() == b.new_user()
    other = workload(users=500, seed=21).events(9000)
    assert [e["item_id"] for t, e in other if t != SOCIAL] != [
        e["item_id"] for t, e in whole if t != SOCIAL
    ]


def test_every_event_is_one_the_worker_accepts() -> None:
    w = workload(n_items=300, users=50)
    records = {CLICK: ClickEvent, COMMENT: CommentEvent, SOCIAL: SocialEvent}
    scenes_of = {i["item_id"]: set(i["scenes"]) for i in catalog(300)}
    ids = set()
    for topic, event in w.events(5000, phase="p"):
        parsed = parse_event(
            orjson.dumps(event),
            records[topic],
            max_bytes=65536,
            max_text_chars=4096,
        )
        ids.add(parsed.event_id)
        if topic == SOCIAL:
            social = cast(SocialEvent, parsed)
            assert social.target_user_id != social.user_id
            assert social.target_user_id in w.users and social.kind in {"follow", "like", "share"}
        else:
            click = cast(ClickEvent, parsed)
            assert click.scene in scenes_of[click.item_id]
    assert len(ids) == 5000
    for key, profile in w.profiles():
        assert (
            key.decode()
            == parse_event(
                orjson.dumps(profile), UserProfile, max_bytes=65536, max_text_chars=4096
            ).user_id
        )
    profile, click = w.new_user()
    assert profile["user_id"] == click["user_id"] not in w.users
    assert parse_event(orjson.dumps(click), ClickEvent, max_bytes=65536, max_text_chars=4096)


def test_bad_configurations_are_refused() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        WorkloadConfig(click_share=0.9, comment_share=0.2, social_share=0.0)
    with pytest.raises(ValueError, match="users"):
        WorkloadConfig(users=1)
    with pytest.raises(ValueError, match="catalog"):
        Workload([])


def test_lag_slope_and_what_counts_as_sustained() -> None:
    flat = [(float(t), 500.0 + (40 if t % 2 else -40)) for t in range(60)]
    growing = [(float(t), 100.0 + 25.0 * t) for t in range(60)]
    assert abs(sustained.lag_slope(flat)) < 2.0
    assert sustained.lag_slope(growing) == pytest.approx(25.0)
    assert sustained.is_sustained(1000, 995, sustained.lag_slope(flat))
    assert not sustained.is_sustained(1000, 995, 25.0)  # lag grows by 2.5% of the rate
    assert not sustained.is_sustained(1000, 900, 0.0)  # the bench could not offer it
    assert sustained.is_sustained(50, 50, 1.9) and not sustained.is_sustained(50, 50, 2.1)


def test_the_search_steps_up_down_and_bisects() -> None:
    assert sustained.nice(1234.5) == 1200 and sustained.nice(87.9) == 87 and sustained.nice(0) == 1
    assert sustained.next_rate(1000, None, {}) == 1100  # sustained: 15% up, rounded down
    assert sustained.next_rate(None, 1000, {"processed_per_s": 700}) == 660
    assert sustained.next_rate(None, 1000, {"processed_per_s": 990}) == 800
    assert sustained.next_rate(1000, 1400, {}) == 1200
    assert sustained.next_rate(1000, 1050, {}) is None  # within 8%: done


def test_latency_matching_keeps_each_stream_apart() -> None:
    w = RecWatcher(cast(Any, None))
    w.expect("u", "c1", 10.0, "events.comment")
    w.expect("u", "k1", 10.5, "events.click")
    w.expect("u", "k2", 10.6, "events.click")
    w._on_message("u", "k2", 11.0)  # the click agent's list: says nothing of the comment
    assert [round(lat) for _, lat in w.samples] == [500, 400] and w.unreflected() == 1
    w._on_message("u", "unknown", 11.1)
    w._on_message("u", "c1", 12.0)
    assert w.unreflected() == 0 and round(w.samples[-1][1]) == 2000
    w.expect("v", "x", 20.0)
    # One of four never answered: it is the slowest, so p99 is unknown, not the best others.
    assert w.percentiles((50, 99)) == {"p50": 500.0, "p99": None}


def test_percentiles_of_unanswered_events_are_none() -> None:
    assert percentiles([10.0, math.inf], (50, 99)) == {"p50": 10.0, "p99": None}
    assert percentiles([], (50,)) == {"p50": None}


def test_synthetic_vectors_are_deterministic_and_keep_word_overlap() -> None:
    texts = [
        "The Golden River (1990). A jazz drummer must win a championship. Synthetic item 1.",
        "The Golden River (1991). A jazz drummer must win a championship. Synthetic item 2.",
        "Iron Circus (1961). An android must decode an alien message. Synthetic item 3.",
    ]
    vecs = SyntheticVectors(texts)
    a, b, c = (vecs(t) for t in texts)
    assert a is not None and b is not None and c is not None
    again = SyntheticVectors(texts)(texts[0])
    assert again is not None and np.array_equal(a, again)
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-5) and a.shape == (384,)
    assert float(a @ b) > 0.5 > float(a @ c)
    assert vecs("a profile text the catalog does not hold") is None


def test_table_rows_print_targets_and_failures() -> None:
    row = {
        "events_per_s": 450.0,
        "sustained": True,
        "lag_slope_per_s": 0.4,
        "lists_per_click": 0.98,
        "latency_ms": {"1000": {"p50": 30.0, "p95": 80.0, "p99": None}},
        "new_users_ms": {"profile_to_first_list": {"p50": 200.0, "p95": 900.0}},
        "worker_rss_mb": 800.0,
        "index_seconds": 3.2,
    }
    rows = dict(
        many_users.table_rows(
            {"many_users": {"1682": row, "1000000": {"error": "worker w: timed out\nmore"}}}
        )
    )
    assert rows["many users, 1682 items, 1 worker: events/s (sustained)"].endswith(
        "(target >= 5,000: missed)"
    )
    assert (
        "not measured"
        in rows["many users, 1682 items, 1 worker: latency @ 1000/s p50/p95/p99 (ms)"]
    )
    assert rows["many users, 1000000 items, 1 worker"] == "FAILED: worker w: timed out"
    new = rows["many users, 1682 items, 1 worker: new users, profile to first list p50/p95 (ms)"]
    assert new == "200.0 / 900.0 (target < 1,000: met)"


def test_cli_takes_the_many_users_phases_and_sizes() -> None:
    from bench import pipeline_bench

    args = pipeline_bench.parse_args(
        ["--only", "many_users,many_users_2_workers", "--mu-catalog-sizes", "1682,100000"]
    )
    assert args.phases == ["many_users", "many_users_2_workers"]
    assert args.mu_catalogs == [1682, 100_000] and args.mu_2_workers_catalog == 100_000
    with pytest.raises(SystemExit):
        pipeline_bench.parse_args(["--mu-catalog-sizes", "big"])


def test_window_rates_come_from_the_snapshots_own_times() -> None:
    # A worker busy with a long batch answers late: snapshots 1.0 s, then 3.5 s apart.
    snaps = [
        sustained.Snapshot(t, 100.0 * t, 100.0 * t - 50, 0.9 * 100 * t, 0.9 * 100 * t, t, 9 * t, 0)
        for t in (9.0, 10.0, 11.0, 14.5, 15.5, 16.5, 70.5, 71.5)
    ]
    got = sustained.window_stats(snaps, 10.0, 70.0, 100.0)
    # From 10.0 to the first snapshot at or after the end (70.5): both rates are 100/s.
    assert got["window_s"] == 60.5 and got["snapshots"] == 6
    assert got["achieved_offered_rate"] == 100.0 and got["processed_per_s"] == 100.0
    assert got["lag_slope_per_s"] == 0.0 and got["sustained"]
    assert got["lists_per_click"] == 1.0 and got["mean_click_batch"] == 9.0
    assert sustained.window_stats(snaps[:1], 10.0, 70.0, 100.0)["sustained"] is False

"""End to end on the real broker, Ray Serve encoder, Faust worker and vector store."""

from __future__ import annotations

import json
import urllib.request
import uuid
from typing import Any

import numpy as np
import pytest

from tests.integration.conftest import (
    N_ITEMS,
    Bus,
    Services,
    click,
    get_json,
    uid,
    user_vec,
    wait_for,
)

pytestmark = pytest.mark.integration


def recs_for(user: str):  # type: ignore[no-untyped-def]
    return lambda msgs: any(m["user_id"] == user for m in msgs)


async def test_click_leads_to_recommendations_without_the_clicked_item(
    services: Services, bus: Bus, catalog: dict[str, dict[str, Any]]
) -> None:
    user, item = uid(), "1"
    scene = catalog[item]["scenes"][0]
    ev = click(user, item, scene)
    await bus.send("events.click", user, ev)
    msgs = await bus.collect("recommendations", recs_for(user), timeout_s=30)
    mine = [m for m in msgs if m["user_id"] == user]
    assert mine, "no recommendations message for the user within 30 s"
    rec = mine[0]
    assert rec["trigger_event_id"] == ev["event_id"]
    assert set(rec["scenes"]) == {"global", scene}
    for items in rec["scenes"].values():
        assert 0 < len(items) <= 10
        assert item not in [r["item_id"] for r in items]
        assert all(r["reason"] for r in items)


async def test_comment_changes_the_users_vector(
    services: Services, bus: Bus, catalog: dict[str, dict[str, Any]]
) -> None:
    user = uid()
    await bus.send("events.click", user, click(user, "2", catalog["2"]["scenes"][0]))
    await wait_for(lambda: user_vec(services, user) is not None)
    before = user_vec(services, user)
    comment = {
        **click(user, "3", catalog["3"]["scenes"][0]),
        "text": "Loved the soundtrack and the quiet, melancholic ending.",
    }
    await bus.send("events.comment", user, comment)
    await wait_for(lambda: not np.allclose(user_vec(services, user), before))  # type: ignore[arg-type]
    after = user_vec(services, user)
    assert after is not None and before is not None
    assert float(np.linalg.norm(after - before)) > 1e-3


async def test_follow_moves_follower_toward_followee(
    services: Services, bus: Bus, catalog: dict[str, dict[str, Any]]
) -> None:
    fan, star = uid(), uid()
    await bus.send("events.click", fan, click(fan, "1", catalog["1"]["scenes"][0]))
    await bus.send("events.click", star, click(star, "50", catalog["50"]["scenes"][0]))
    await wait_for(lambda: user_vec(services, fan) is not None)
    await wait_for(lambda: user_vec(services, star) is not None)
    fan_before, star_vec = user_vec(services, fan), user_vec(services, star)
    assert fan_before is not None and star_vec is not None
    follow = {
        "event_id": uuid.uuid4().hex,
        "user_id": fan,
        "target_user_id": star,
        "kind": "follow",
        "ts": 880000001.0,
    }
    await bus.send("events.social", fan, follow)
    await wait_for(lambda: get_json(f"{services.worker_url}/users/{fan}/state")[1]["following"])
    fan_after = user_vec(services, fan)
    assert fan_after is not None
    assert float(fan_after @ star_vec) > float(fan_before @ star_vec) + 1e-3


async def test_profile_only_user_gets_recommendations(
    services: Services, bus: Bus, catalog: dict[str, dict[str, Any]]
) -> None:
    user = uid()
    profile = {
        "user_id": user,
        "profile_text": "A 10 year old student who loves animated films",
        "attributes": {"age": 10},
    }
    await bus.send("users.profiles", user, profile)
    msgs = await bus.collect("recommendations", recs_for(user), timeout_s=30)
    mine = [m for m in msgs if m["user_id"] == user]
    assert mine, "a profile-only user got no recommendations"
    feed = mine[0]["scenes"]["global"]
    assert len(feed) == 10 and all(r["item_id"] in catalog for r in feed)
    # Items other tests clicked are popular now (or were other new users' first clicks);
    # the rest are ranked by the profile.
    assert all(
        "profile" in r["reason"]
        or r["reason"].startswith("popular now")
        or "what new users have been starting with" in r["reason"]
        for r in feed
    )
    assert any("profile" in r["reason"] for r in feed)


async def test_malformed_events_go_to_dlq_while_good_ones_are_processed(
    services: Services, bus: Bus, catalog: dict[str, dict[str, Any]]
) -> None:
    user = uid()
    good_before, good_after = (
        click(user, "4", catalog["4"]["scenes"][0]),
        click(user, "5", catalog["5"]["scenes"][0]),
    )
    marker = uuid.uuid4().hex
    bad: list[tuple[str, bytes, str]] = [
        ("events.click", b"{oops " + marker.encode(), "not_json"),
        (
            "events.click",
            json.dumps({"event_id": marker + "m", "user_id": user}).encode(),
            "missing_field",
        ),
        (
            "events.click",
            json.dumps({**click(user, "6", "drama", marker + "t"), "ts": "x"}).encode(),
            "invalid_field",
        ),
        (
            "events.social",
            json.dumps(
                {
                    "event_id": marker + "k",
                    "user_id": user,
                    "target_user_id": "v",
                    "kind": "poke",
                    "ts": 1,
                }
            ).encode(),
            "unknown_kind",
        ),
        (
            "events.comment",
            json.dumps(
                {**click(user, "6", catalog["6"]["scenes"][0], marker + "l"), "text": "x" * 5000}
            ).encode(),
            "text_too_long",
        ),
        (
            "events.click",
            json.dumps(click(user, "6", "cooking", marker + "s")).encode(),
            "unknown_scene",
        ),
    ]
    await bus.send("events.click", user, good_before)
    for topic, raw, _ in bad:
        await bus.send(topic, user, raw)
    await bus.send("events.click", user, good_after)

    def all_dead(msgs: list[dict[str, Any]]) -> bool:
        return sum(marker in (m.get("original_text") or "") for m in msgs) >= len(bad)

    dead = [
        m
        for m in await bus.collect("events.dlq", all_dead, 40)
        if marker in (m.get("original_text") or "")
    ]
    assert sorted(m["reason"] for m in dead) == sorted(r for _, _, r in bad)
    for m in dead:
        assert m["error"] and m["topic"].endswith(
            ("events.click", "events.social", "events.comment")
        )
        assert m["partition"] >= 0 and m["offset"] >= 0 and m["original_b64"]
    msgs = await bus.collect(
        "recommendations",
        lambda ms: any(m.get("trigger_event_id") == good_after["event_id"] for m in ms),
        30,
    )
    triggers = {m["trigger_event_id"] for m in msgs if m["user_id"] == user}
    assert good_after["event_id"] in triggers
    state = get_json(f"{services.worker_url}/users/{user}/state")[1]
    assert state["n_events"] == 2


def scrape(services: Services) -> dict[str, float]:
    """The worker's /metrics, parsed into ``{'name{labels}': value}``."""
    with urllib.request.urlopen(f"{services.worker_url}/metrics", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def test_metrics_exist_and_move(
    services: Services, bus: Bus, catalog: dict[str, dict[str, Any]]
) -> None:
    dlq = 'scenerec_dlq_total{reason="not_json"}'

    def clicks_ok(samples: dict[str, float]) -> float:
        # summed over the scene label
        return sum(
            v
            for k, v in samples.items()
            if k.startswith("scenerec_events_total{")
            and 'outcome="ok"' in k
            and 'topic="events.click"' in k
        )

    before = scrape(services)
    assert before["scenerec_items_indexed"] >= N_ITEMS
    assert "scenerec_encoder_batch_size_count" in before  # the catalog went through it
    user = uid()
    await bus.send("events.click", user, click(user, "7", catalog["7"]["scenes"][0]))
    await bus.send("events.click", user, b"{not json")
    await wait_for(lambda: scrape(services).get(dlq, 0) > before.get(dlq, 0))
    await wait_for(lambda: clicks_ok(scrape(services)) > clicks_ok(before))
    after = scrape(services)
    assert after["scenerec_recommendations_total"] > before["scenerec_recommendations_total"]
    hist = 'scenerec_processing_seconds_count{topic="events.click"}'
    assert after[hist] > before.get(hist, 0)
    # the lag gauge is set every 5 s for each partition the worker owns
    await wait_for(
        lambda: any(k.startswith("scenerec_consumer_lag_messages{") for k in scrape(services)),
        timeout_s=15,
    )

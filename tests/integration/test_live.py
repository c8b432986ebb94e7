"""What a person or an operator meets, on the real stack: feed streams through Ray Serve's
proxy, the demo page in a real browser (Debian's Chromium driven by Playwright), and a real
Prometheus scraping the worker and Ray, asked every dashboard and alert query."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from deploy.ports import free_port
from deploy.prometheus_local import (
    LocalPrometheus,
    config_for,
    grafana_to_promql,
    panel_queries,
    rule_queries,
)
from scenerec.config import PROJECT_ROOT
from scenerec.forget import forget
from scenerec.kafka import assigned_partitions, consumer
from serving.feed_stream import reread
from serving.sse_client import HEARTBEAT, SseEvent, read_events
from tests.integration.conftest import Bus, Services, click, get_json, uid, wait_for

pytestmark = pytest.mark.integration
log = logging.getLogger("scenerec.tests")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = PROJECT_ROOT / "results" / "screenshots"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        yield session


async def next_event(events: AsyncIterator[SseEvent], timeout_s: float = 30) -> SseEvent:
    async with asyncio.timeout(timeout_s):
        async for event in events:
            if event is not HEARTBEAT:
                return event
    raise AssertionError("the stream ended")


async def user_with_a_list(services: Services, bus: Bus, catalog: dict[str, Any]) -> str:
    user = uid()
    await bus.send("events.click", user, click(user, "7", catalog["7"]["scenes"][0]))
    await wait_for(
        lambda: get_json(f"{services.api_url}/users/{user}/recommendations")[0] == 200, 60
    )
    return user


async def topic_records(bus: Bus, user: str) -> list[tuple[int, int, bytes | None]]:
    """(partition, offset, value) of every record of ``user`` on the recommendations topic."""
    settings = bus.settings
    cons = consumer(settings, enable_auto_commit=False, group_id=None)
    await cons.start()
    out: list[tuple[int, int, bytes | None]] = []
    try:
        tps = await assigned_partitions(cons, settings.topic("recommendations"))
        await cons.seek_to_beginning(*tps)
        end = await cons.end_offsets(tps)
        while any([await cons.position(tp) < end[tp] for tp in tps]):
            for records in (await cons.getmany(timeout_ms=500)).values():
                out += [(r.partition, r.offset, r.value) for r in records if r.key == user.encode()]
    finally:
        await cons.stop()
    return out


async def lists_until(
    bus: Bus, user: str, done: Any, timeout_s: float = 60
) -> list[tuple[int, int, bytes | None]]:
    """The user's records once ``done`` holds for the triggers of their lists so far."""
    async with asyncio.timeout(timeout_s):
        while True:
            records = await topic_records(bus, user)
            triggers = [orjson.loads(v)["trigger_event_id"] for _, _, v in records if v]
            if done(triggers):
                return records
            await asyncio.sleep(0.3)


async def test_stream_through_serve_resumes_without_a_gap_and_ends_on_forget(
    services: Services, bus: Bus, catalog: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    user = await user_with_a_list(services, bus, catalog)
    url = f"{services.api_url}/users/{user}/feed/stream"
    scene = catalog["7"]["scenes"][0]
    async with http.get(url) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
        events = read_events(resp)
        first = await next_event(events)
        assert first.event == "feed" and orjson.loads(first.data)["user_id"] == user
        e2 = click(user, "8", scene)
        sent = time.time()
        await bus.send("events.click", user, e2)
        second = await next_event(events)
        while orjson.loads(second.data)["trigger_event_id"] != e2["event_id"]:
            second = await next_event(events)
        log.info("stream: click -> event at the client %.0f ms", 1000 * (second.received - sent))
    last_id = second.id
    assert last_id is not None
    # Disconnected: two more lists land meanwhile.
    missed = [click(user, item, scene) for item in ("9", "10")]
    for e in missed:
        await bus.send("events.click", user, e)

    # One list or two: the worker ranks a user once per batch, for all of their clicks in it.
    await lists_until(bus, user, lambda lists: missed[-1]["event_id"] in lists)
    on_topic = [
        f"{p}-{o}"
        for p, o, _ in await topic_records(bus, user)
        if int(str(last_id).split("-")[1]) < o
    ]
    async with http.get(url, headers={"Last-Event-ID": last_id}) as resp:
        events = read_events(resp)
        resumed = [await next_event(events) for _ in on_topic]
        assert [e.id for e in resumed] == on_topic  # every list after the last one seen, once
        assert await asyncio.to_thread(forget, services.settings, user, 60.0)
        end = await next_event(events)
        assert end.event == "forgotten" and orjson.loads(end.data) == {"user_id": user}
        async with asyncio.timeout(10):
            rest = [e async for e in events if e is not HEARTBEAT]
        assert rest == []  # the stream ended after the tombstone
    async with http.get(url) as resp:
        assert resp.status == 404


async def test_unknown_user_and_scene_are_404_through_serve(
    services: Services, bus: Bus, catalog: dict[str, Any], http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{services.api_url}/users/{uid()}/feed/stream") as resp:
        assert resp.status == 404 and "unknown user" in (await resp.json())["detail"]
    user = await user_with_a_list(services, bus, catalog)
    async with http.get(f"{services.api_url}/users/{user}/feed/stream?scene=cart") as resp:
        assert resp.status == 404 and "unknown scene" in (await resp.json())["detail"]


async def test_reread_finds_what_the_topic_holds(
    services: Services, bus: Bus, catalog: dict[str, Any]
) -> None:
    """A resume older than the replica's ring reads the partition again (serving.feed_stream)."""
    user = await user_with_a_list(services, bus, catalog)
    for item in ("11", "12"):
        await bus.send("events.click", user, click(user, item, catalog[item]["scenes"][0]))
    records = await lists_until(bus, user, lambda lists: len(lists) >= 3)
    partition = records[0][0]
    first, last = records[0][1], records[-1][1]
    got = await reread(services.settings, user, partition, first, last + 1)
    assert [(r.partition, r.offset, r.value) for r in got] == records[1:]
    assert await reread(services.settings, user, partition, last, last + 1) == []


# --- the demo page in Chromium ------------------------------------------------------------------


async def test_demo_page_new_user_clicks_and_the_feed_changes(
    services: Services, catalog: dict[str, Any]
) -> None:
    from playwright.async_api import async_playwright

    user = f"web-{uuid.uuid4().hex[:6]}"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 1000})
            await page.goto(f"{services.api_url}/demo/")
            await page.fill("#user-id", user)
            await page.fill("#profile-text", "I love science fiction, space and robots.")
            await page.click("#start")
            items = page.locator('.feed[data-scene="global"] .item')
            await items.first.wait_for(timeout=60_000)  # served from the profile text alone
            changes = []
            for _ in range(3):
                before = await items.evaluate_all("els => els.map(e => e.dataset.itemId)")
                generation = await page.get_attribute("body", "data-generation")
                chosen = await items.first.get_attribute("data-item-id")
                await items.first.click()
                await page.wait_for_function(
                    f"document.body.dataset.generation !== '{generation}'"
                    " && document.body.dataset.lastChangeMs !== undefined",
                    timeout=30_000,
                )
                after = await items.evaluate_all("els => els.map(e => e.dataset.itemId)")
                assert after != before and chosen not in after  # the clicked item is seen now
                changes.append(int(await page.get_attribute("body", "data-last-change-ms") or 0))
                await page.evaluate("delete document.body.dataset.lastChangeMs")
            scenes = await page.locator(".feed").evaluate_all(
                "els => els.map(e => e.dataset.scene)"
            )
            assert scenes[0] == "global" and len(scenes) >= 2  # and the scenes clicked in
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(SCREENSHOTS / "demo-page.png"), full_page=True)
        finally:
            await browser.close()
    log.info("demo page: click -> feed changed on the page in %s ms", changes)
    assert statistics.median(changes) < 1000, changes


# --- a real Prometheus ---------------------------------------------------------------------------

_COMPARISON = re.compile(r"\s*(==|!=|>=|<=|>|<)\s*(-?[0-9.eE+]+)\s*$")
_BY = re.compile(r"\bby\s*\(([^)]*)\)")


def as_series_query(kind: str, expr: str) -> str:
    """An alert's expression with its threshold as ``bool``: the same series, all of them,
    with 0 or 1, so "returns series" also holds while nothing is wrong."""
    promql = grafana_to_promql(expr, "1m")
    return _COMPARISON.sub(r" \1 bool \2", promql) if kind == "alert" else promql


async def traffic(services: Services, bus: Bus, catalog: dict[str, Any]) -> None:
    """A little of everything the panels show: clicks in scenes, a new user's profile and
    first click, a dead letter, a forgotten user, pull requests (200, 404, 422), a stream."""
    user, newcomer, gone = uid(), uid(), uid()
    for item in ("20", "21", "22"):
        await bus.send("events.click", user, click(user, item, catalog[item]["scenes"][0]))
    await bus.send("users.profiles", newcomer, {"user_id": newcomer, "profile_text": "a pilot"})
    await bus.send("events.click", gone, click(gone, "23", catalog["23"]["scenes"][0]))
    await bus.send("events.click", user, b"{not json")
    await wait_for(lambda: get_json(f"{services.worker_url}/users/{gone}/state")[0] == 200, 60)
    await asyncio.to_thread(forget, services.settings, gone, 30.0)
    for path in (
        f"/users/{user}/recommendations",
        f"/users/{uid()}/recommendations",
        "/users/x/recommendations?k=0",
    ):
        get_json(f"{services.api_url}{path}")
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{services.api_url}/users/{user}/feed/stream") as resp,
    ):
        await next_event(read_events(resp))


def answers(prom: LocalPrometheus, kind: str, expr: str) -> list[str]:
    """What is wrong with one query's answer: no series, no finite value, or a label it
    groups by on none of them (empty: it answers)."""
    result = prom.query(as_series_query(kind, expr))
    if not result:
        return ["no series"]
    if not any(math.isfinite(float(s["value"][1])) for s in result):
        return ["only NaN"]
    problems = []
    for group in _BY.findall(expr):
        for label in (x.strip() for x in group.split(",") if x.strip()):
            if label != "le" and not any(label in s["metric"] for s in result):
                problems.append(f"no series has the label {label!r} it groups by")
    return problems


async def test_every_panel_and_rule_returns_series_from_a_real_prometheus(
    services: Services, bus: Bus, catalog: dict[str, Any], tmp_path: Path
) -> None:
    port = free_port()
    host = lambda url: url.split("//")[1].split("/")[0]  # noqa: E731
    prom = LocalPrometheus(tmp_path / "prometheus", port)
    prom.start(
        config_for(
            {
                "prometheus": [f"127.0.0.1:{port}"],
                "scenerec-worker": [host(services.worker_url)],
                "ray": [host(services.ray_metrics_url)],
            },
            interval_s=1,
        )
    )
    try:
        queries = [
            (q.where.split()[0], q.where, q.expr) for q in [*panel_queries(), *rule_queries()]
        ]
        assert len(queries) > 40
        wrong: dict[str, list[str]] = {}
        deadline = time.monotonic() + 180
        # Rounds of traffic until every query answers: rates need two scrapes of a change,
        # and Ray exports the Serve apps' metrics every few seconds.
        while time.monotonic() < deadline:
            await traffic(services, bus, catalog)
            await asyncio.sleep(6)
            wrong = {w: p for kind, w, e in queries if (p := answers(prom, kind, e))}
            log.info("prometheus: %d of %d queries answer", len(queries) - len(wrong), len(queries))
            if not wrong:
                break
        assert wrong == {}
        targets = prom.api("targets")["activeTargets"]
        assert {t["labels"]["job"] for t in targets if t["health"] == "up"} == {
            "prometheus",
            "scenerec-worker",
            "ray",
        }
        groups = prom.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert len(rules) == len(rule_queries()) and all(r["health"] == "ok" for r in rules)
        # The check can fail: a misspelt metric and a label no series has are noticed.
        assert answers(prom, "panel", "rate(scenerec_event_total[1m])") == ["no series"]
        assert answers(prom, "panel", "sum by (tenant) (rate(scenerec_events_total[1m]))") == [
            "no series has the label 'tenant' it groups by"
        ]
    finally:
        prom.stop()

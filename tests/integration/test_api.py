"""The pull API on Ray Serve, ``scenerec forget`` and the metrics of every process."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.error
import urllib.request
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from prometheus_client.parser import text_string_to_metric_families
from schemathesis import GenerationMode

from scenerec.forget import forget
from serving.metrics import SERVE_METRICS
from streams.metrics import WorkerMetrics
from tests.integration.conftest import Bus, Services, click, get_json, uid, wait_for

pytestmark = pytest.mark.integration
log = logging.getLogger("scenerec.tests")


def api_get(services: Services, path: str) -> tuple[int, Any]:
    return get_json(f"{services.api_url}{path}")


async def clicked_user(services: Services, bus: Bus, catalog: dict[str, Any]) -> str:
    """A new user with one click, once the API serves the list the worker emitted.

    Until the API's follower has read that message, the API answers from the worker
    (``source: on_demand``); that path has its own test below.
    """
    user = uid()
    event = click(user, "7", catalog["7"]["scenes"][0])
    await bus.send("events.click", user, event)

    def streamed() -> bool:
        status, body = api_get(services, f"/users/{user}/recommendations")
        return status == 200 and body["source"] == "stream"

    await wait_for(streamed, timeout_s=60)
    return user


async def test_latest_recommendations_with_scene_and_k(
    services: Services, bus: Bus, catalog: dict[str, Any]
) -> None:
    user = await clicked_user(services, bus, catalog)
    status, body = api_get(services, f"/users/{user}/recommendations?k=3")
    assert status == 200 and body["source"] == "stream" and body["user_id"] == user
    assert body["trigger_event_id"] is not None
    assert "global" in body["scenes"] and 0 < len(body["scenes"]["global"]) <= 3
    assert all(r["item_id"] != "7" for r in body["scenes"]["global"])  # seen item left out
    scene = catalog["7"]["scenes"][0]
    status, body = api_get(services, f"/users/{user}/recommendations?scene={scene}&k=2")
    assert status == 200 and list(body["scenes"]) == [scene] and len(body["scenes"][scene]) <= 2


async def test_unknown_user_404_and_bad_parameters_422(
    services: Services, catalog: dict[str, Any]
) -> None:
    status, _ = api_get(services, f"/users/{uid()}/recommendations")
    assert status == 404
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{services.api_url}/users/{uid()}/recommendations", timeout=5)
    assert "unknown user" in json.loads(err.value.read())["detail"]
    for query in ("k=0", "k=101", "k=ten", "scene=nowhere", "scene="):
        status, _ = api_get(services, f"/users/x/recommendations?{query}")
        assert status == 422, query
    status, body = api_get(services, "/healthz")
    assert status == 200 and body["status"] == "ok"


async def test_known_user_without_a_list_is_computed_on_demand(
    services: Services, bus: Bus, catalog: dict[str, Any]
) -> None:
    user = await clicked_user(services, bus, catalog)
    # A tombstone on the recommendations topic alone (as if the list were compacted away):
    # the API no longer holds a list, but the worker still holds the user's state.
    await bus.send_tombstone("recommendations", user)
    await wait_for(
        lambda: api_get(services, f"/users/{user}/recommendations")[1]["source"] == "on_demand",
        timeout_s=30,
    )
    status, body = api_get(services, f"/users/{user}/recommendations")
    assert status == 200 and body["scenes"]["global"]


async def test_forget_leaves_nothing_queryable(
    services: Services, bus: Bus, catalog: dict[str, Any]
) -> None:
    user = await clicked_user(services, bus, catalog)
    assert get_json(f"{services.worker_url}/users/{user}/state")[0] == 200
    assert await asyncio.to_thread(forget, services.settings, user, 60.0)
    status, body = get_json(f"{services.worker_url}/users/{user}/state")
    assert status == 404 and body["stored_vectors"] is False
    assert get_json(f"{services.worker_url}/users/{user}/recommendations")[0] == 404
    await wait_for(
        lambda: api_get(services, f"/users/{user}/recommendations")[0] == 404, timeout_s=30
    )
    # The last record for the user on the compacted recommendations topic is a tombstone.
    last = await bus.last_value("recommendations", user)
    assert last is None


def scrape(url: str) -> dict[str, float]:
    """``{'name{labels}': value}`` of a Prometheus text endpoint."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def total(samples: dict[str, float], name: str) -> float:
    return sum(v for k, v in samples.items() if k.startswith(name + "{"))


async def test_every_endpoint_exports_its_metrics_and_they_move(
    services: Services, bus: Bus, catalog: dict[str, Any]
) -> None:
    worker_url = f"{services.worker_url}/metrics"
    before = scrape(worker_url)
    user = await clicked_user(services, bus, catalog)
    await bus.send("users.profiles", u2 := uid(), {"user_id": u2, "profile_text": "a nurse"})
    await bus.send("events.click", u2, b"{not json")  # one dead letter
    await wait_for(lambda: get_json(f"{services.worker_url}/users/{u2}/state")[0] == 200)
    # Labelled metrics appear with their first sample: the DLQ counter once a letter went
    # out, the lag gauge once its 5 s timer ran.
    await wait_for(
        lambda: (
            total(scrape(worker_url), "scenerec_dlq_total") > total(before, "scenerec_dlq_total")
            and total(scrape(worker_url), "scenerec_consumer_lag_messages") >= 0
            and any(k.startswith("scenerec_consumer_lag_messages{") for k in scrape(worker_url))
        ),
        timeout_s=30,
    )
    after = scrape(worker_url)
    # Every metric the worker declares is exported.
    declared = {m.name for m in WorkerMetrics.create().registry.collect()}
    exported = {k.split("{")[0] for k in after}
    missing = {n for n in declared if not any(e.startswith(n) for e in exported)}
    assert not missing, missing
    for name in (
        "scenerec_events_total",
        "scenerec_event_to_recommendation_seconds_count",
        "scenerec_vectorstore_call_seconds_count",
        "scenerec_recommendations_total",
    ):
        assert total(after, name) > total(before, name), name
    scene = catalog["7"]["scenes"][0]
    assert any(f'scene="{scene}"' in k for k in after if k.startswith("scenerec_events_total"))
    assert total(after, "scenerec_cold_start_seconds_count") >= 2  # a first click, a profile

    # Ray's export: Serve's own metrics and the apps' custom ones (exported every few s).
    api_get(services, f"/users/{user}/recommendations")
    api_get(services, "/users/x/recommendations?k=0")
    stream = urllib.request.urlopen(f"{services.api_url}/users/{user}/feed/stream", timeout=10)
    with stream:
        while not stream.readline().startswith(b"data:"):  # one feed event sent
            pass

    def ray_ok() -> bool:
        try:
            names = {k.split("{")[0] for k in scrape(services.ray_metrics_url)}
        except OSError:
            return False
        wanted = {n + ("_count" if t == "histogram" else "") for n, t in SERVE_METRICS.items()}
        return wanted <= names and any(n.startswith("ray_serve_") for n in names)

    await wait_for(ray_ok, timeout_s=90)
    ray = scrape(services.ray_metrics_url)
    assert any('status="422"' in k for k in ray if k.startswith("ray_scenerec_api_requests_total"))


def test_api_conforms_to_its_own_spec(services: Services) -> None:
    """schemathesis against the served OpenAPI spec: no 5xx, statuses, headers and bodies
    as declared, valid input accepted and invalid input refused (its default checks).

    Driven through schemathesis' Python API with hypothesis rather than its pytest plugin,
    whose fixture loader fails on pytest 9 (`'Function' object has no attribute '_nodeid'`).
    """
    schema = schemathesis.openapi.from_url(f"{services.api_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} == {
        "/healthz",
        "/users/{user_id}/recommendations",
        "/users/{user_id}/feed/stream",
        "/items",
        "/users/{user_id}/profile",
        "/users/{user_id}/clicks",
    }
    # A stream of a known user never ends by itself: tests/integration/test_live.py reads it.
    operations = [op for op in operations if not op.path.endswith("/feed/stream")]
    cases: list[str] = []
    for op in operations:
        strategy = op.as_strategy(GenerationMode.POSITIVE) | op.as_strategy(GenerationMode.NEGATIVE)

        @given(case=strategy)
        @settings(
            max_examples=60,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        def check(case: Any) -> None:
            case.call_and_validate(base_url=services.api_url)
            cases.append(case.path)

        check()
    log.info("schemathesis: %d cases over %d operations", len(cases), len(operations))
    assert len(cases) >= len(operations) * 10

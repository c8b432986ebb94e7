"""The pull API's FastAPI app in-process (the integration tests run it on Ray Serve)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from scenerec.config import Settings
from serving.api_app import Service, make_api
from serving.feed_hub import FeedRecord

LIST = {
    "user_id": "x",
    "generated_at": 1.0,
    "trigger_event_id": "e1",
    "model_version": "m",
    "scenes": {
        "global": [{"item_id": str(i), "score": 1.0 - i / 10, "reason": "r"} for i in range(5)],
        "drama": [{"item_id": "9", "score": 0.5, "reason": "because"}],
    },
}


@pytest.fixture
def client() -> TestClient:
    # No worker listens on port 9: the on-demand path answers 503, not a crash.
    settings = Settings(
        kafka_bootstrap="127.0.0.1:9",
        worker_url="http://127.0.0.1:9",
        scenes=("drama", "news"),
        api_demo=False,
    )
    service = Service(settings)
    service.start = lambda: None  # type: ignore[method-assign]  # no Kafka follower here
    service.hub.apply(FeedRecord(0, 0, "x", orjson.dumps(LIST)))
    service.hub.apply(FeedRecord(0, 1, "gone", orjson.dumps({**LIST, "user_id": "gone"})))
    service.hub.apply(FeedRecord(0, 2, "gone", None))  # a tombstone: forgotten
    return TestClient(make_api(service))


def test_latest_list_with_scene_and_k(client: TestClient) -> None:
    body: dict[str, Any] = client.get("/users/x/recommendations?k=2").json()
    assert body["source"] == "stream" and [i["item_id"] for i in body["scenes"]["global"]] == [
        "0",
        "1",
    ]
    body = client.get("/users/x/recommendations?scene=drama").json()
    assert list(body["scenes"]) == ["drama"] and body["scenes"]["drama"][0]["reason"] == "because"
    body = client.get("/users/x/recommendations?scene=news").json()
    assert body["scenes"] == {"news": []}  # a declared scene the user has no list in


@pytest.mark.parametrize("query", ["k=0", "k=101", "k=two", "scene=nowhere", "scene="])
def test_bad_parameters_are_422(client: TestClient, query: str) -> None:
    assert client.get(f"/users/x/recommendations?{query}").status_code == 422


def test_unknown_or_forgotten_user_without_a_worker_is_503_with_reason(
    client: TestClient,
) -> None:
    resp = client.get("/users/gone/recommendations")
    assert resp.status_code == 503 and "no worker reachable" in resp.json()["detail"]


def test_spec_lists_the_scenes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    params = spec["paths"]["/users/{user_id}/recommendations"]["get"]["parameters"]
    scene = next(p for p in params if p["name"] == "scene")
    assert scene["schema"]["anyOf"][0] == {"$ref": "#/components/schemas/Scene"}
    assert spec["components"]["schemas"]["Scene"]["enum"] == ["drama", "global", "news"]


@pytest.fixture
def demo() -> tuple[TestClient, list[tuple[str, str, dict[str, Any]]]]:
    """The demo routes, with the catalog fed by hand and publishing recorded (the browser
    test in tests/integration/test_live.py publishes through Kafka)."""
    settings = Settings(kafka_bootstrap="127.0.0.1:9", scenes=("drama", "news"))
    service = Service(settings)
    service.start = lambda: None  # type: ignore[method-assign]
    assert service.demo is not None
    sent: list[tuple[str, str, dict[str, Any]]] = []

    async def publish(topic: str, key: str, value: dict[str, Any]) -> None:
        sent.append((topic, key, value))

    service.demo.publish = publish  # type: ignore[method-assign]
    service.demo.start = lambda: None  # type: ignore[method-assign]  # no catalog follower
    service.demo.apply(b"7", orjson.dumps({"title": "Heat", "scenes": ["drama", "news"]}))
    service.demo.apply(b"8", b"{broken")
    return TestClient(make_api(service)), sent


def test_demo_page_and_titles(demo: tuple[TestClient, list[Any]]) -> None:
    client, _ = demo
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/users/{user_id}/feed/stream", "/items", "/users/{user_id}/clicks"} <= set(paths)
    assert "/demo/" not in paths  # the page is not part of the API
    page = client.get("/demo/")
    assert page.status_code == 200 and "EventSource" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched elsewhere
    body = client.get("/items?ids=7,8,7").json()
    assert body == {
        "items": [{"item_id": "7", "title": "Heat", "scenes": ["drama", "news"]}],
        "unknown": ["8"],
    }


def test_demo_publishes_validated_profiles_and_clicks(demo: tuple[TestClient, list[Any]]) -> None:
    client, sent = demo
    resp = client.post("/users/w1/profile", json={"profile_text": "likes heists"})
    assert resp.status_code == 202
    assert sent[-1] == (
        "users.profiles",
        "w1",
        {"user_id": "w1", "profile_text": "likes heists", "attributes": {}},
    )
    resp = client.post("/users/w1/clicks", json={"item_id": "7"})
    assert resp.status_code == 202
    topic, key, click = sent[-1]
    assert (topic, key, click["item_id"], click["scene"]) == ("events.click", "w1", "7", "drama")
    assert click["event_id"] == resp.json()["event_id"] and click["ts"] > 1e9
    clicks = "/users/w1/clicks"
    assert client.post(clicks, json={"item_id": "7", "scene": "news"}).status_code == 202
    assert sent[-1][2]["scene"] == "news"
    missing = client.post("/users/w1/clicks", json={"item_id": "nope"})
    assert missing.status_code == 404 and "unknown item" in missing.json()["detail"]
    assert client.post(clicks, json={"item_id": "7", "scene": "cart"}).status_code == 422
    assert client.post("/users/w1/profile", json={"profile_text": ""}).status_code == 422
    assert len(sent) == 3

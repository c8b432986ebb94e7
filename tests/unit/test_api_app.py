"""The pull API's FastAPI app in-process (the integration tests run it on Ray Serve)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from scenerec.config import Settings
from serving.api_app import Service, make_api

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
        kafka_bootstrap="127.0.0.1:9", worker_url="http://127.0.0.1:9", scenes=("drama", "news")
    )
    service = Service(settings)
    service.start = lambda: None  # type: ignore[method-assign]  # no Kafka follower here
    service.cache.apply(b"x", orjson.dumps(LIST))
    service.cache.apply(b"gone", orjson.dumps({**LIST, "user_id": "gone"}))
    service.cache.apply(b"gone", None)  # a tombstone: forgotten
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

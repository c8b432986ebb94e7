"""The pull API: a FastAPI ingress on Ray Serve.

``GET /users/{user_id}/recommendations?scene=&k=`` returns the user's latest
recommendations as the workers last emitted them to the ``recommendations`` topic (each
replica follows the compacted topic into memory; a tombstone from ``scenerec forget`` drops
the user). A user the workers know but who has no list yet gets one computed on demand by
the worker that owns the user's state (``/users/{id}/recommendations`` on any worker, routed
to the owner). Unknown users get 404, bad parameters 422; ``/healthz`` and the OpenAPI spec
(``/openapi.json``, ``/docs``) come with FastAPI.

The replica builds its settings from explicit non-secret overrides (bootstrap, topic prefix,
worker URL, scenes) plus its own environment, so secrets (SASL password) reach it from the
cluster's environment and never travel in the Serve app's config.
"""

# No ``from __future__ import annotations`` here: FastAPI must resolve the parameter
# annotations (Path/Query constraints) at import time, which postponed strings break.
import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Annotated, Any
from urllib.parse import quote

import aiohttp
import orjson
from fastapi import FastAPI, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, Field
from ray import serve
from ray.serve import Application

from scenerec.config import Settings
from scenerec.kafka import assigned_partitions, consumer
from serving.metrics import api_metrics
from streams.records import Recommendations as StreamRecommendations
from streams.records import RecommendedItem
from streams.topics import RECOMMENDATIONS

logger = logging.getLogger(__name__)

MAX_K = 100


class Recommendations(StreamRecommendations):
    """A worker's list (``streams.records.Recommendations``) and where this answer came from."""

    source: str = Field(description="'stream' (last emitted) or 'on_demand' (computed now)")


class Health(BaseModel):
    status: str
    users_cached: int
    caught_up: bool


class LatestRecommendations:
    """The last list per user from the recommendations topic, read from the beginning."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.latest: dict[str, dict[str, Any]] = {}
        self.caught_up = False

    async def follow(self) -> None:
        topic = self._settings.topic(RECOMMENDATIONS.name)
        cons = consumer(self._settings, enable_auto_commit=False, group_id=None)
        await cons.start()
        try:
            # Every partition, from the start: the topic is compacted, so that is the
            # latest list of every user (or a tombstone).
            tps = await assigned_partitions(cons, topic)
            await cons.seek_to_beginning(*tps)
            end = await cons.end_offsets(tps)
            while True:
                batches = await cons.getmany(timeout_ms=200, max_records=5000)
                for records in batches.values():
                    for r in records:
                        self.apply(r.key, r.value)
                if not self.caught_up:
                    positions = [await cons.position(tp) for tp in tps]
                    self.caught_up = all(p >= end[tp] for p, tp in zip(positions, tps, strict=True))
        finally:
            await cons.stop()

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        user_id = key.decode("utf-8", errors="replace")
        if value is None:  # tombstone: the user was forgotten
            self.latest.pop(user_id, None)
            return
        try:
            payload = orjson.loads(value)
        except orjson.JSONDecodeError:
            logger.warning("skipping an unreadable recommendations message for %r", user_id)
            return
        # A message carries the feeds its event changed; the others keep their last list.
        before = self.latest.get(user_id)
        if before is not None:
            payload["scenes"] = {**before.get("scenes", {}), **payload.get("scenes", {})}
        self.latest[user_id] = payload


def select(payload: dict[str, Any], scene: str | None, k: int, source: str) -> Recommendations:
    scenes: dict[str, list[Any]] = payload.get("scenes", {})
    chosen = {scene: scenes.get(scene, [])} if scene else scenes
    return Recommendations(
        user_id=payload["user_id"],
        generated_at=payload["generated_at"],
        trigger_event_id=payload.get("trigger_event_id"),
        model_version=payload["model_version"],
        source=source,
        scenes={s: [RecommendedItem(**i) for i in items[:k]] for s, items in chosen.items()},
    )


_metrics: tuple[Any, Any] | None = None


async def measure(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Count every request by route template and status, 422s from validation included."""
    global _metrics
    if _metrics is None:
        _metrics = api_metrics()
    started = time.perf_counter()
    response = await call_next(request)
    route = request.scope.get("route")
    template = getattr(route, "path", "unmatched")
    _metrics[0].inc(tags={"route": template, "status": str(response.status_code)})
    _metrics[1].observe(time.perf_counter() - started, tags={"route": template})
    return response


class Service:
    """What the routes do, independent of FastAPI and Serve."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cache = LatestRecommendations(settings)
        self._follower: asyncio.Task[None] | None = None

    def start(self) -> None:
        # Started lazily on the replica's event loop (the constructor may not run on it).
        if self._follower is None or self._follower.done():
            if self._follower is not None and (exc := self._follower.exception()) is not None:
                logger.error("recommendations follower stopped: %r; restarting", exc)
            self._follower = asyncio.get_running_loop().create_task(self.cache.follow())

    async def on_demand(self, user_id: str) -> dict[str, Any] | None:
        # A session per call: the on-demand path is rare (a user with no list yet).
        url = f"{self.settings.worker_base_url}/users/{quote(user_id, safe='')}/recommendations"
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
                session.get(url) as resp,
            ):
                if resp.status == 404:
                    return None
                if resp.status != 200:
                    raise HTTPException(503, f"worker answered HTTP {resp.status}")
                body: dict[str, Any] = await resp.json()
                return body
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise HTTPException(503, f"no worker reachable to compute a list: {exc}") from exc

    async def recommendations(self, user_id: str, scene: str | None, k: int) -> Recommendations:
        self.start()
        payload = self.cache.latest.get(user_id)
        if payload is not None and (scene is None or scene in payload.get("scenes", {})):
            return select(payload, scene, k, "stream")
        try:
            computed = await self.on_demand(user_id)
        except HTTPException:
            if payload is None:
                raise
            computed = None  # no worker to ask: the stream's lists, without that scene
        if computed is not None:
            return select(computed, scene, k, "on_demand")
        if payload is not None:
            return select(payload, scene, k, "stream")
        raise HTTPException(404, f"unknown user {user_id!r}: no state and no recommendations")


def make_api(service: Service) -> FastAPI:
    """The FastAPI app, built once the scenes are known so the spec can enumerate them."""
    api = FastAPI(
        title="SceneRec pull API",
        version="0.1.0",
        description="The latest per-scene recommendations of a user.",
    )
    api.middleware("http")(measure)
    scenes = sorted({"global", *service.settings.scenes})
    # An Enum: the OpenAPI spec lists the valid scenes, and FastAPI answers 422 for others.
    Scene = Enum("Scene", {s: s for s in scenes}, type=str)  # type: ignore[misc]

    @api.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        service.start()
        cache = service.cache
        return Health(status="ok", users_cached=len(cache.latest), caught_up=cache.caught_up)

    @api.get(
        "/users/{user_id}/recommendations",
        response_model=Recommendations,
        responses={404: {"description": "unknown user"}},
    )
    async def recommendations(
        user_id: Annotated[str, Path(min_length=1, max_length=256)],
        scene: Annotated[Scene | None, Query()] = None,
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
    ) -> Recommendations:
        return await service.recommendations(user_id, scene.value if scene else None, k)

    return api


@serve.deployment(
    name="RecommendationsApi", ray_actor_options={"num_cpus": 0.1}, health_check_period_s=10
)
@serve.ingress()
class RecommendationsApi:
    """The replica: one :class:`Service`; the app is built after the constructor (Serve's
    late-bound ingress) because its spec depends on the configured scenes."""

    def __init__(self, overrides: dict[str, Any]) -> None:
        self.service = Service(Settings(**overrides))

    def __serve_build_asgi_app__(self) -> FastAPI:
        return make_api(self.service)

    async def check_health(self) -> None:
        self.service.start()


def build_api_app(overrides: dict[str, Any]) -> Application:
    app: Application = RecommendationsApi.bind(overrides)  # type: ignore[attr-defined]
    return app

"""The pull API: a FastAPI ingress on Ray Serve.

``GET /users/{user_id}/recommendations?scene=&k=`` returns the user's latest
recommendations as the workers last emitted them to the ``recommendations`` topic (each
replica follows the compacted topic into memory; a tombstone from ``scenerec forget`` drops
the user). A user the workers know but who has no list yet gets one computed on demand by
the worker that owns the user's state (``/users/{id}/recommendations`` on any worker, routed
to the owner). Unknown users get 404, bad parameters 422; ``/healthz`` and the OpenAPI spec
(``/openapi.json``, ``/docs``) come with FastAPI.

``GET /users/{user_id}/feed/stream?scene=&k=`` pushes the same lists as Server-Sent Events
as they land (``serving.feed_stream``; docs/api.md). With ``SCENEREC_API_DEMO`` the replica
also serves the demo page at ``/demo/`` and the endpoints it publishes with
(``serving.demo_api``).

The replica builds its settings from explicit non-secret overrides (bootstrap, topic prefix,
worker URL, scenes) plus its own environment, so secrets (SASL password) reach it from the
cluster's environment and never travel in the Serve app's config.
"""

# No ``from __future__ import annotations`` here: FastAPI must resolve the parameter
# annotations (Path/Query constraints) at import time, which postponed strings break.
import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import Enum
from typing import Annotated, Any
from urllib.parse import quote

import aiohttp
import orjson
from fastapi import FastAPI, Header, HTTPException, Path, Query, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from ray import serve
from ray.serve import Application

from scenerec.config import Settings
from serving.demo_api import DemoBackend, add_demo_routes
from serving.feed_hub import FeedHub, FeedRecord, HubLimits, StreamLimitError, parse_event_id
from serving.feed_stream import follow, keep_running, reread, sse_events
from serving.metrics import api_metrics, stream_metrics
from streams.records import Recommendations as StreamRecommendations
from streams.records import RecommendedItem

logger = logging.getLogger(__name__)

MAX_K = 100


class Recommendations(StreamRecommendations):
    """A worker's list (``streams.records.Recommendations``) and where this answer came from."""

    source: str = Field(description="'stream' (last emitted) or 'on_demand' (computed now)")


class Health(BaseModel):
    status: str
    users_cached: int
    caught_up: bool


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


class FeedResponse(StreamingResponse):
    """An SSE response that closes its stream however the connection ends: also when the
    client leaves before the body is first read (its generator then never runs)."""

    def __init__(self, body: AsyncIterator[bytes], close: Callable[[], None]) -> None:
        super().__init__(
            body,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._close = close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._close()


class Service:
    """What the routes do, independent of FastAPI and Serve."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hub = FeedHub(
            HubLimits(
                max_open=settings.stream_max_open,
                max_per_user=settings.stream_max_per_user,
                replay_records=settings.stream_replay_records,
            )
        )
        self.caught_up = False
        self.demo = DemoBackend(settings) if settings.api_demo else None
        self._follower: asyncio.Task[None] | None = None

    def start(self) -> None:
        # Started lazily on the replica's event loop (the constructor may not run on it).
        self._follower = keep_running(
            self._follower,
            lambda: follow(self.settings, self.hub, self._caught_up),
            "recommendations follower",
        )
        if self.demo is not None:
            self.demo.start()

    def _caught_up(self) -> None:
        self.caught_up = True

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
        payload = self.hub.latest.get(user_id)
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

    async def open_stream(
        self, user_id: str, scene: str | None, k: int, last_event_id: str | None
    ) -> FeedResponse:
        """The SSE response for one client; HTTPException (400, 404, 429, 503) before it."""
        self.start()
        if scene is not None and scene not in {"global", *self.settings.scenes}:
            known = ", ".join(sorted({"global", *self.settings.scenes}))
            raise HTTPException(404, f"unknown scene {scene!r}; the scenes are {known}")
        try:
            after = parse_event_id(last_event_id) if last_event_id else None
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
        try:
            sub = self.hub.subscribe(user_id)
        except StreamLimitError as exc:
            raise HTTPException(exc.status, exc.detail, headers={"Retry-After": "5"}) from None
        gauge, counter = _stream_metrics()

        def close() -> None:
            self.hub.unsubscribe(sub)
            gauge.set(self.hub.open_streams)

        try:
            backlog = await self._backlog(user_id, after)
        except BaseException:
            close()
            raise
        gauge.set(self.hub.open_streams)
        heartbeat = self.settings.stream_heartbeat_s
        body = sse_events(
            self.hub,
            sub,
            backlog,
            scene,
            k,
            heartbeat,
            lambda kind: counter.inc(tags={"kind": kind}),
        )
        return FeedResponse(body, close)

    async def _backlog(self, user_id: str, after: tuple[int, int] | None) -> list[FeedRecord]:
        """What a new stream sends first: the lists after ``after`` (a resume), or the
        latest list; 404 for a user no list and no worker knows."""
        if after is not None:
            partition, offset = after
            upto = self.hub.next_offset.get(partition, 0)
            replayed = self.hub.replay(user_id, partition, offset)
            if replayed is None:
                # Lists from ``upto`` on reach the stream's queue, which it joined first.
                replayed = await reread(self.settings, user_id, partition, offset, upto)
            if replayed or user_id in self.hub.latest:
                return replayed
        elif (payload := self.hub.latest.get(user_id)) is not None:
            partition, offset = self.hub.latest_at[user_id]
            return [FeedRecord(partition, offset, user_id, orjson.dumps(payload), snapshot=True)]
        if (payload := await self.on_demand(user_id)) is not None:
            # Not from the topic: no event id, so a resume starts from the next list.
            return [FeedRecord(-1, -1, user_id, orjson.dumps(payload), snapshot=True)]
        raise HTTPException(404, f"unknown user {user_id!r}: no state and no recommendations")


_streams: tuple[Any, Any] | None = None


def _stream_metrics() -> tuple[Any, Any]:
    global _streams
    if _streams is None:
        _streams = stream_metrics()
    return _streams


def make_api(service: Service) -> FastAPI:
    """The FastAPI app, built once the scenes are known so the spec can enumerate them."""
    api = FastAPI(
        title="SceneRec pull API",
        version="0.1.0",
        description="The latest per-scene recommendations of a user, pulled or pushed (SSE).",
    )
    api.middleware("http")(measure)
    if service.settings.cors_origins:
        api.add_middleware(
            CORSMiddleware,
            allow_origins=list(service.settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", "Last-Event-ID"],
            max_age=600,
        )
    scenes = sorted({"global", *service.settings.scenes})
    # An Enum: the OpenAPI spec lists the valid scenes, and FastAPI answers 422 for others.
    Scene = Enum("Scene", {s: s for s in scenes}, type=str)  # type: ignore[misc]

    @api.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        service.start()
        hub = service.hub
        return Health(status="ok", users_cached=len(hub.latest), caught_up=service.caught_up)

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

    add_stream_route(api, service)
    if service.demo is not None:
        add_demo_routes(api, service.demo)
    return api


STREAM_DOC = """Server-Sent Events: an ``event: feed`` each time a message for the user lands
on the recommendations topic, with the feeds it changed (the first event has all of them);
its ``id`` is the message's ``<partition>-<offset>``. A ``: heartbeat`` comment on a quiet
stream; ``event: forgotten`` after ``scenerec forget``, which ends the stream. A reconnect
with ``Last-Event-ID`` (the header EventSource sends, or the ``last_event_id`` parameter)
resumes after that message."""


def add_stream_route(api: FastAPI, service: Service) -> None:
    @api.get(
        "/users/{user_id}/feed/stream",
        response_class=FeedResponse,
        status_code=200,  # FastAPI reads it from the response class's __init__ otherwise
        description=STREAM_DOC,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "the stream"},
            400: {"description": "a Last-Event-ID that is not <partition>-<offset>"},
            404: {"description": "unknown user or unknown scene"},
            429: {"description": "too many streams open for this user"},
            503: {"description": "too many streams open on this replica, or no worker"},
        },
    )
    async def feed_stream(
        user_id: Annotated[str, Path(min_length=1, max_length=256)],
        scene: Annotated[
            str | None, Query(max_length=256, description="one scene, or 'global'")
        ] = None,
        k: Annotated[int, Query(ge=1, le=MAX_K)] = 10,
        last_event_id: Annotated[str | None, Header(max_length=64)] = None,
        from_id: Annotated[
            str | None, Query(alias="last_event_id", max_length=64, description="as the header")
        ] = None,
    ) -> FeedResponse:
        return await service.open_stream(user_id, scene, k, last_event_id or from_id)


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
    # Every open stream is an ongoing request of its replica: room for all of them, plus
    # the pull requests, before Serve would queue one.
    limit = Settings(**overrides).stream_max_open + 100
    deployment = RecommendationsApi.options(max_ongoing_requests=limit)  # type: ignore[attr-defined]
    app: Application = deployment.bind(overrides)
    return app

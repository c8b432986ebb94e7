"""The demo page (``/demo/``) and what it needs from the API to publish like an app.

``POST /users/{id}/profile`` and ``POST /users/{id}/clicks`` validate the event with the
worker's own records (``streams.records``) and publish it to ``users.profiles`` and
``events.click``, the topics apps write, keyed by user; the worker's answer arrives on
the user's feed stream. ``GET /items?ids=`` gives titles and scenes from ``catalog.items``,
which the replica follows for that. All of it exists only with ``SCENEREC_API_DEMO``.
"""

# No ``from __future__ import annotations``: FastAPI reads the annotations at import time.
import asyncio
import logging
import time
import uuid
from pathlib import Path as FilePath
from typing import Annotated, Any

import orjson
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI, HTTPException, Path, Query
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field, ValidationError

from scenerec.config import Settings
from scenerec.kafka import assigned_partitions, consumer, producer
from serving.feed_stream import keep_running
from streams.records import ClickEvent, UserProfile
from streams.topics import CATALOG, CLICKS, PROFILES

logger = logging.getLogger(__name__)

PAGE = FilePath(__file__).with_name("static") / "demo.html"
UserId = Annotated[str, Path(min_length=1, max_length=256)]


class ProfileIn(BaseModel):
    profile_text: str = Field(min_length=1, description="who the user is, in their words")
    attributes: dict[str, str | int | float | bool] = {}


class ClickIn(BaseModel):
    item_id: str = Field(min_length=1, max_length=256)
    scene: str | None = Field(default=None, description="default: the item's first scene")
    dwell_ms: int | None = Field(default=None, ge=0)


class Published(BaseModel):
    topic: str
    user_id: str
    event_id: str | None = None


class CatalogEntry(BaseModel):
    item_id: str
    title: str
    scenes: list[str]


class Items(BaseModel):
    items: list[CatalogEntry]
    unknown: list[str]


class DemoBackend:
    """The replica's catalog titles (followed from ``catalog.items``) and its producer."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.items: dict[str, CatalogEntry] = {}
        self._follower: asyncio.Task[None] | None = None
        self._producer: AIOKafkaProducer | None = None
        self._producer_lock = asyncio.Lock()

    def start(self) -> None:
        self._follower = keep_running(self._follower, self._follow, "catalog follower")

    async def _follow(self) -> None:
        cons = consumer(self.settings, enable_auto_commit=False, group_id=None)
        await cons.start()
        try:
            tps = await assigned_partitions(cons, self.settings.topic(CATALOG.name))
            await cons.seek_to_beginning(*tps)
            while True:
                for records in (await cons.getmany(timeout_ms=500, max_records=5000)).values():
                    for r in records:
                        self.apply(r.key, r.value)
        finally:
            await cons.stop()

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        item_id = key.decode("utf-8", errors="replace")
        if value is None:
            self.items.pop(item_id, None)
            return
        try:
            raw = orjson.loads(value)
            self.items[item_id] = CatalogEntry(
                item_id=item_id, title=raw["title"], scenes=list(raw["scenes"])
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValidationError):
            pass  # the worker sends a bad catalog message to the DLQ; the page skips it

    async def publish(self, topic: str, key: str, value: dict[str, Any]) -> None:
        async with self._producer_lock:
            if self._producer is None:
                prod = producer(self.settings)
                await prod.start()
                self._producer = prod
        try:
            await self._producer.send_and_wait(
                self.settings.topic(topic), key=key.encode(), value=orjson.dumps(value)
            )
        except Exception as exc:
            raise HTTPException(503, f"publishing to {topic} failed: {exc}") from exc

    def click(self, user_id: str, body: ClickIn) -> ClickEvent:
        item = self.items.get(body.item_id)
        if item is None:
            raise HTTPException(404, f"unknown item {body.item_id!r}: not in catalog.items")
        scene = body.scene or item.scenes[0]
        if scene not in self.settings.scenes:
            raise HTTPException(422, f"unknown scene {scene!r}")
        try:
            return ClickEvent(
                event_id=uuid.uuid4().hex,
                user_id=user_id,
                item_id=body.item_id,
                scene=scene,
                ts=time.time(),
                dwell_ms=body.dwell_ms,
            )
        except ValidationError as exc:
            raise HTTPException(422, str(exc)) from None


def add_demo_routes(api: FastAPI, demo: DemoBackend) -> None:
    @api.get("/demo/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        demo.start()
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    @api.get("/items", response_model=Items)
    async def items(
        # 1,000 characters: URL-encoded they stay within the proxy's 16 KB request head.
        ids: Annotated[str, Query(max_length=1000, description="comma-separated item ids")],
    ) -> Items:
        demo.start()
        wanted = [i for i in dict.fromkeys(ids.split(",")) if i]
        known = [demo.items[i] for i in wanted if i in demo.items]
        return Items(items=known, unknown=[i for i in wanted if i not in demo.items])

    not_json: dict[int | str, dict[str, Any]] = {400: {"description": "a body that is not JSON"}}

    @api.post(
        "/users/{user_id}/profile", status_code=202, response_model=Published, responses=not_json
    )
    async def profile(user_id: UserId, body: ProfileIn) -> Published:
        text_limit = demo.settings.max_text_chars
        if len(body.profile_text) > text_limit:
            raise HTTPException(422, f"profile_text is longer than {text_limit} characters")
        try:
            event = UserProfile(user_id=user_id, **body.model_dump())
        except ValidationError as exc:
            raise HTTPException(422, str(exc)) from None
        await demo.publish(PROFILES.name, user_id, event.model_dump())
        return Published(topic=PROFILES.name, user_id=user_id)

    @api.post(
        "/users/{user_id}/clicks",
        status_code=202,
        response_model=Published,
        responses={**not_json, 404: {"description": "unknown item"}},
    )
    async def click(user_id: UserId, body: ClickIn) -> Published:
        demo.start()
        event = demo.click(user_id, body)
        await demo.publish(CLICKS.name, user_id, event.model_dump(exclude_none=True))
        return Published(topic=CLICKS.name, user_id=user_id, event_id=event.event_id)

"""Publish a data set to the input topics: catalog, social edges, then events in order.

A user's profile is published just before their first event, so the stream shows the
cold-start path the way an app would produce it. Social edges go before the events (the
data sets here give them no time, or a time the stream could not honour interleaved with
a rate-limited replay); an event with text is a comment (``events.comment``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from tqdm import tqdm

from scenerec.config import Settings
from scenerec.datasets import Dataset, stream_social_kind
from scenerec.kafka import producer

log = logging.getLogger(__name__)


@dataclass
class PublishStats:
    items: int = 0
    profiles: int = 0
    clicks: int = 0
    comments: int = 0
    social: int = 0
    seconds: float = 0.0


async def send_all(
    prod: AIOKafkaProducer, topic: str, key_field: str, records: Iterable[dict[str, Any]]
) -> int:
    n = 0
    for rec in records:
        await prod.send(topic, key=str(rec[key_field]).encode(), value=orjson.dumps(rec))
        n += 1
    await prod.flush()
    return n


async def publish_dataset(
    settings: Settings,
    data: Dataset,
    rate: float = 0.0,
    limit: int | None = None,
    profiles: bool = True,
    progress: bool = True,
    on_click: Callable[[dict[str, Any]], None] | None = None,
    stop: asyncio.Event | None = None,
) -> PublishStats:
    """Catalog, then clicks (at ``rate`` per second, 0 = as fast as possible)."""
    stats = PublishStats()
    started = time.monotonic()
    prod = producer(settings)
    await prod.start()
    try:
        stats.items = await send_all(prod, settings.topic("catalog.items"), "item_id", data.items)
        log.info("published %d catalog items", stats.items)
        stats.social = await send_all(
            prod, settings.topic("events.social"), "user_id", social_events(data)
        )
        if stats.social:
            log.info("published %d social edges", stats.social)
        profile_of = {p["user_id"]: p for p in data.profiles} if profiles else {}
        clicks = data.clicks[:limit] if limit is not None else data.clicks
        bar = tqdm(total=len(clicks), unit="ev", desc="events", disable=not progress)
        t0 = time.monotonic()
        for i, click in enumerate(clicks):
            if stop is not None and stop.is_set():
                break
            prof = profile_of.pop(click["user_id"], None)
            if prof is not None:
                await prod.send(
                    settings.topic("users.profiles"),
                    key=prof["user_id"].encode(),
                    value=orjson.dumps(prof),
                )
                stats.profiles += 1
            comment = "text" in click
            if comment and len(click["text"]) > settings.max_text_chars:
                # The worker refuses longer texts; a review's start carries its gist.
                click = {**click, "text": click["text"][: settings.max_text_chars]}
            await prod.send(
                settings.topic("events.comment" if comment else "events.click"),
                key=click["user_id"].encode(),
                value=orjson.dumps(click),
            )
            if comment:
                stats.comments += 1
            else:
                stats.clicks += 1
            bar.update()
            if on_click is not None:
                on_click(click)
            if rate > 0:
                # pace against the wall clock so the average rate is exact
                ahead = (i + 1) / rate - (time.monotonic() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        bar.close()
        await prod.flush()
    finally:
        await prod.stop()
    stats.seconds = time.monotonic() - started
    return stats


def social_events(data: Dataset) -> list[dict[str, Any]]:
    """The data set's edges as ``events.social`` records (by time where they have one)."""
    edges = sorted(data.social, key=lambda e: e["ts"] or 0.0)
    return [
        {
            "event_id": f"{data.name}-social-{k}",
            "user_id": e["source"],
            "target_user_id": e["target"],
            "kind": stream_social_kind(e["kind"]),
            "ts": e["ts"] or 0.0,
        }
        for k, e in enumerate(edges)
    ]

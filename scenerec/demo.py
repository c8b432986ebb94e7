"""The live demo: stream ml-100k through the running stack and watch recommendations change."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from scenerec.config import Settings
from scenerec.datasets import Dataset
from scenerec.kafka import client_kwargs, consumer
from scenerec.publish import publish_dataset

log = logging.getLogger(__name__)

WATCHED_USERS = 4
INPUT_TOPICS = ("events.click", "users.profiles", "catalog.items")


@dataclass
class DemoState:
    started: float = field(default_factory=time.monotonic)
    published: int = 0
    recs: int = 0
    first_rec_s: float | None = None
    lag: int | None = None
    pub_times: deque[float] = field(default_factory=lambda: deque(maxlen=5000))
    rec_times: deque[float] = field(default_factory=lambda: deque(maxlen=5000))
    watched: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_click: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def rate(times: deque[float], window: float = 3.0) -> float:
        now = time.monotonic()
        return sum(1 for t in times if now - t <= window) / window


def status_line(state: DemoState) -> str:
    return (
        f"published {state.published} ({state.rate(state.pub_times):.0f}/s), "
        f"recommendations {state.recs} ({state.rate(state.rec_times):.0f}/s), "
        f"consumer lag {state.lag if state.lag is not None else '?'}"
    )


def render(state: DemoState, titles: dict[str, str]) -> Group:
    stats = Table.grid(padding=(0, 3))
    elapsed = time.monotonic() - state.started
    first = f"{state.first_rec_s:.1f}s" if state.first_rec_s is not None else "waiting..."
    stats.add_row(
        f"[b]elapsed[/b] {elapsed:.0f}s",
        f"[b]published[/b] {state.published} ({state.rate(state.pub_times):.0f}/s)",
        f"[b]recommendations[/b] {state.recs} ({state.rate(state.rec_times):.0f}/s)",
        f"[b]consumer lag[/b] {state.lag if state.lag is not None else '?'}",
        f"[b]first rec[/b] {first}",
    )
    users = Table(title="recommendations as they arrive (global feed, top 3)", expand=True)
    users.add_column("user")
    users.add_column("last click")
    users.add_column("recommended now")
    users.add_column("why (first item)")
    for uid, rec in list(state.watched.items())[-WATCHED_USERS:]:
        feed = rec["scenes"].get("global", [])[:3]
        users.add_row(
            uid,
            titles.get(state.last_click.get(uid, ""), "-"),
            "\n".join(titles.get(r["item_id"], r["item_id"]) for r in feed),
            feed[0]["reason"] if feed else "-",
        )
    return Group(Panel(stats, title="SceneRec live demo (Ctrl-C to stop)"), users)


async def _watch_recs(settings: Settings, state: DemoState, stop: asyncio.Event) -> None:
    cons = consumer(settings, settings.topic("recommendations"), auto_offset_reset="latest")
    await cons.start()
    try:
        while not stop.is_set():
            batch = await cons.getmany(timeout_ms=200)
            for records in batch.values():
                for rec in records:
                    msg = orjson.loads(rec.value)
                    state.recs += 1
                    state.rec_times.append(time.monotonic())
                    if state.first_rec_s is None:
                        state.first_rec_s = time.monotonic() - state.started
                    uid = msg["user_id"]
                    if uid in state.watched or len(state.watched) < WATCHED_USERS:
                        state.watched[uid] = msg
    finally:
        await cons.stop()


async def consumer_lag(
    settings: Settings, admin: AIOKafkaAdminClient, cons: AIOKafkaConsumer
) -> int:
    """Messages the worker's consumer group has not committed yet, over the input topics."""
    committed = await admin.list_consumer_group_offsets(settings.app_id)
    tps = [
        TopicPartition(settings.topic(t), p)
        for t in INPUT_TOPICS
        for p in range(settings.partitions)
    ]
    ends = await cons.end_offsets(tps)
    return sum(
        max(0, end - (committed[tp].offset if tp in committed else 0)) for tp, end in ends.items()
    )


async def _watch_lag(settings: Settings, state: DemoState, stop: asyncio.Event) -> None:
    # One admin client and one (unsubscribed) consumer for the whole demo, not one per poll.
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    cons = consumer(settings)
    await admin.start()
    await cons.start()
    try:
        while not stop.is_set():
            with contextlib.suppress(Exception):  # lag is informative; never stop the demo
                state.lag = await consumer_lag(settings, admin, cons)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=2.0)
    finally:
        await cons.stop()
        await admin.close()


async def run_demo(
    settings: Settings, data: Dataset, rate: float, events: int | None, seconds: float | None
) -> DemoState:
    state = DemoState()
    stop = asyncio.Event()
    titles = {i["item_id"]: i["title"] for i in data.items}

    def on_click(click: dict[str, Any]) -> None:
        state.published += 1
        state.pub_times.append(time.monotonic())
        state.last_click[click["user_id"]] = click["item_id"]

    watchers = [
        asyncio.create_task(_watch_recs(settings, state, stop)),
        asyncio.create_task(_watch_lag(settings, state, stop)),
    ]
    publisher = asyncio.create_task(
        publish_dataset(
            settings, data, rate=rate, limit=events, progress=False, on_click=on_click, stop=stop
        )
    )
    deadline = state.started + seconds if seconds else None
    console = Console()
    next_line = time.monotonic()
    try:
        with Live(render(state, titles), console=console, refresh_per_second=4) as live:
            while True:
                live.update(render(state, titles))
                if not console.is_terminal and time.monotonic() >= next_line:
                    # Not a terminal (CI, a pipe): Live shows nothing until the end, so say
                    # how it goes in one line every few seconds.
                    log.info(status_line(state))
                    next_line = time.monotonic() + 5.0
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if publisher.done():
                    publisher.result()  # surface a publishing error
                    if state.lag == 0 or time.monotonic() - state.started > 3600:
                        break  # everything published has been processed
                await asyncio.sleep(0.25)
            live.update(render(state, titles))
    finally:
        stop.set()
        await asyncio.gather(publisher, *watchers, return_exceptions=True)
    return state

"""The live demo: stream ml-100k through the running stack and watch recommendations change.

The view shows a few users' global and scene feeds as their lists arrive, and one new user
who has only a profile text (published once the catalog is indexed), served from that text.
Progress is told apart: the consumer group's lag on the topics it commits, and the catalog
reader's, which every worker runs outside the group (so the group never commits
``catalog.items``), as items indexed out of the catalog's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from scenerec.config import Settings
from scenerec.datasets import Dataset
from scenerec.kafka import client_kwargs, consumer, producer
from scenerec.publish import publish_dataset
from streams.topics import PROFILES, STREAM_TOPICS

log = logging.getLogger(__name__)

WATCHED_USERS = 4
SCENE_FEEDS = 3  # scene feeds shown per watched user, besides the global one
#: What the worker's consumer group reads and commits. ``catalog.items`` is not among them:
#: every worker reads all of it outside the group (streams/catalog_reader.py).
GROUP_TOPICS = tuple(t.name for t in STREAM_TOPICS)
NEWCOMER_TEXT = "A retired nurse who loves old musicals, westerns and a good courtroom drama."


@dataclass
class DemoState:
    started: float = field(default_factory=time.monotonic)
    published: int = 0
    recs: int = 0
    first_rec_s: float | None = None
    lag: int | None = None
    catalog_total: int = 0
    catalog_indexed: int | None = None
    newcomer: str = field(default_factory=lambda: f"demo-newcomer-{int(time.time()) % 100000}")
    newcomer_sent: float | None = None
    newcomer_first_s: float | None = None
    newcomer_list: dict[str, Any] | None = None
    pub_times: deque[float] = field(default_factory=lambda: deque(maxlen=5000))
    rec_times: deque[float] = field(default_factory=lambda: deque(maxlen=5000))
    watched: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_click: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def rate(times: deque[float], window: float = 3.0) -> float:
        now = time.monotonic()
        return sum(1 for t in times if now - t <= window) / window


def progress(state: DemoState) -> str:
    lag = state.lag if state.lag is not None else "?"
    indexed = state.catalog_indexed if state.catalog_indexed is not None else "?"
    return f"consumer lag {lag}, catalog {indexed}/{state.catalog_total} items indexed"


def status_line(state: DemoState) -> str:
    newcomer = (
        f"; {state.newcomer} (profile only) got a list {state.newcomer_first_s:.2f}s after it"
        if state.newcomer_first_s is not None
        else ""
    )
    return (
        f"published {state.published} ({state.rate(state.pub_times):.0f}/s), "
        f"recommendations {state.recs} ({state.rate(state.rec_times):.0f}/s), "
        f"{progress(state)}{newcomer}"
    )


def titled(items: list[dict[str, Any]], titles: dict[str, str], n: int) -> str:
    return "\n".join(titles.get(r["item_id"], r["item_id"]) for r in items[:n])


def scene_feeds(scenes: dict[str, list[dict[str, Any]]], titles: dict[str, str]) -> str:
    """The user's scene feeds (not the global one), fullest first, two titles each."""
    shown = sorted((s for s in scenes if s != "global"), key=lambda s: -len(scenes[s]))
    return (
        "\n".join(
            f"[b]{scene}[/b]: {titled(scenes[scene], titles, 2).replace(chr(10), ', ')}"
            for scene in shown[:SCENE_FEEDS]
        )
        or "-"
    )


def render(state: DemoState, titles: dict[str, str]) -> Group:
    stats = Table.grid(padding=(0, 3))
    elapsed = time.monotonic() - state.started
    first = f"{state.first_rec_s:.1f}s" if state.first_rec_s is not None else "waiting..."
    stats.add_row(
        f"[b]elapsed[/b] {elapsed:.0f}s",
        f"[b]published[/b] {state.published} ({state.rate(state.pub_times):.0f}/s)",
        f"[b]recommendations[/b] {state.recs} ({state.rate(state.rec_times):.0f}/s)",
        f"[b]first rec[/b] {first}",
    )
    stats.add_row(
        f"[b]consumer lag[/b] {'?' if state.lag is None else state.lag}",
        f"[b]catalog indexed[/b] {'?' if state.catalog_indexed is None else state.catalog_indexed}"
        f"/{state.catalog_total}",
        f"(lag: the group's {', '.join(GROUP_TOPICS)}; the catalog is read outside it)",
    )
    users = Table(title="recommendations as they arrive", expand=True)
    for column in ("user", "last click", "global feed (top 3)", "scene feeds", "why (first item)"):
        users.add_column(column)
    for uid, rec in list(state.watched.items())[-WATCHED_USERS:]:
        feed = rec["scenes"].get("global", [])
        users.add_row(
            uid,
            titles.get(state.last_click.get(uid, ""), "-"),
            titled(feed, titles, 3),
            scene_feeds(rec["scenes"], titles),
            feed[0]["reason"] if feed else "-",
        )
    return Group(
        Panel(stats, title="SceneRec live demo (Ctrl-C to stop)"),
        users,
        newcomer_panel(state, titles),
    )


def newcomer_panel(state: DemoState, titles: dict[str, str]) -> Panel:
    title = f"new user {state.newcomer}, from a profile text alone: {NEWCOMER_TEXT!r}"
    if state.newcomer_list is None:
        waiting = (
            "published, waiting for the first list"
            if state.newcomer_sent
            else "waiting for the catalog"
        )
        return Panel(waiting, title=title)
    feed = state.newcomer_list["scenes"].get("global", [])
    body = Table.grid(padding=(0, 3))
    body.add_row(titled(feed, titles, 5), feed[0]["reason"] if feed else "-")
    after = (
        f"first list {state.newcomer_first_s:.2f}s after the profile"
        if state.newcomer_first_s
        else ""
    )
    return Panel(body, title=title, subtitle=after)


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
                    if uid == state.newcomer:
                        if state.newcomer_list is None and state.newcomer_sent is not None:
                            state.newcomer_first_s = time.monotonic() - state.newcomer_sent
                        state.newcomer_list = msg
                    elif uid in state.watched or len(state.watched) < WATCHED_USERS:
                        state.watched[uid] = msg
    finally:
        await cons.stop()


async def consumer_lag(
    settings: Settings, admin: AIOKafkaAdminClient, cons: AIOKafkaConsumer
) -> int:
    """Messages the worker's consumer group has not committed yet, over the topics it reads."""
    committed = await admin.list_consumer_group_offsets(settings.app_id)
    tps = [
        TopicPartition(settings.topic(t), p)
        for t in GROUP_TOPICS
        for p in range(settings.partitions)
    ]
    ends = await cons.end_offsets(tps)
    return sum(
        max(0, end - (committed[tp].offset if tp in committed else 0)) for tp, end in ends.items()
    )


async def items_indexed(session: aiohttp.ClientSession, settings: Settings) -> int | None:
    """Items in the worker's index (its ``/ready``), None while no worker answers."""
    try:
        async with session.get(f"{settings.worker_base_url}/ready") as resp:
            return int((await resp.json())["items"]) if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, KeyError, ValueError):
        return None


async def publish_newcomer(settings: Settings, state: DemoState) -> None:
    prod = producer(settings)
    await prod.start()
    try:
        profile = {"user_id": state.newcomer, "profile_text": NEWCOMER_TEXT}
        await prod.send_and_wait(
            settings.topic(PROFILES.name), key=state.newcomer.encode(), value=orjson.dumps(profile)
        )
    finally:
        await prod.stop()
    state.newcomer_sent = time.monotonic()


async def _watch_progress(settings: Settings, state: DemoState, stop: asyncio.Event) -> None:
    # One admin client, one (unsubscribed) consumer and one HTTP session for the whole demo.
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    cons = consumer(settings)
    await admin.start()
    await cons.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while not stop.is_set():
                with contextlib.suppress(Exception):  # progress is informative; never stop
                    state.lag = await consumer_lag(settings, admin, cons)
                state.catalog_indexed = await items_indexed(session, settings)
                if (
                    state.newcomer_sent is None
                    and (state.catalog_indexed or 0) >= state.catalog_total
                ):
                    with contextlib.suppress(Exception):
                        await publish_newcomer(settings, state)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=2.0)
    finally:
        await cons.stop()
        await admin.close()


async def run_demo(
    settings: Settings, data: Dataset, rate: float, events: int | None, seconds: float | None
) -> DemoState:
    state = DemoState(catalog_total=len({i["item_id"] for i in data.items}))
    stop = asyncio.Event()
    titles = {i["item_id"]: i["title"] for i in data.items}

    def on_click(click: dict[str, Any]) -> None:
        state.published += 1
        state.pub_times.append(time.monotonic())
        state.last_click[click["user_id"]] = click["item_id"]

    watchers = [
        asyncio.create_task(_watch_recs(settings, state, stop)),
        asyncio.create_task(_watch_progress(settings, state, stop)),
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
                    caught_up = state.lag == 0 and state.catalog_indexed == state.catalog_total
                    if caught_up or time.monotonic() - state.started > 3600:
                        break  # everything published has been processed
                await asyncio.sleep(0.25)
            live.update(render(state, titles))
    finally:
        stop.set()
        await asyncio.gather(publisher, *watchers, return_exceptions=True)
    return state

"""Feed streams (SSE) of the pull API, in-process: the hub, and the app behind a real HTTP
server (uvicorn) read by a real client (aiohttp). The topic follower and a resume that reads
Kafka again run in tests/integration/test_live.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
import uvicorn

from deploy.ports import free_port
from scenerec.config import Settings
from serving.api_app import Service, make_api
from serving.feed_hub import FeedHub, FeedRecord, HubLimits, StreamLimitError, parse_event_id
from serving.sse_client import HEARTBEAT, SseEvent, read_events


def a_list(user: str, trigger: str, items: tuple[str, ...] = ("1", "2", "3")) -> bytes:
    return orjson.dumps(
        {
            "user_id": user,
            "generated_at": 1.0,
            "trigger_event_id": trigger,
            "model_version": "m",
            "scenes": {
                "global": [{"item_id": i, "score": 1.0, "reason": "r"} for i in items],
                "drama": [{"item_id": "9", "score": 0.5, "reason": "because"}],
            },
        }
    )


def record(offset: int, user: str = "u", partition: int = 1, value: Any = "list") -> FeedRecord:
    if value == "list":
        value = a_list(user, f"e{offset}")
    return FeedRecord(partition, offset, user, value)


# --- the hub ----------------------------------------------------------------------------------


def test_event_ids_parse_or_say_what_is_expected() -> None:
    assert parse_event_id("3-1207") == (3, 1207)
    for bad in ("1207", "a-1", "-1", "1-2-3", ""):
        with pytest.raises(ValueError, match="<partition>-<offset>"):
            parse_event_id(bad)


async def test_hub_keeps_latest_and_pushes_to_the_users_streams() -> None:
    hub = FeedHub()
    mine, other = hub.subscribe("u"), hub.subscribe("v")
    hub.apply(record(5))
    hub.apply(record(6, user="w"))
    assert hub.latest["u"]["trigger_event_id"] == "e5" and hub.latest_at["u"] == (1, 5)
    assert (await mine.queue.get()).offset == 5
    assert other.queue.empty()
    hub.apply(record(7, value=None))  # forget: the latest list goes, the stream is told
    assert "u" not in hub.latest and (await mine.queue.get()).value is None
    assert hub.next_offset == {1: 8}
    hub.unsubscribe(mine)
    hub.unsubscribe(mine)  # twice is harmless
    assert hub.open_streams == 1


def test_hub_limits_answer_503_and_429() -> None:
    hub = FeedHub(HubLimits(max_open=3, max_per_user=2))
    hub.subscribe("u"), hub.subscribe("u")
    with pytest.raises(StreamLimitError) as per_user:
        hub.subscribe("u")
    assert per_user.value.status == 429
    hub.subscribe("v")
    with pytest.raises(StreamLimitError) as total:
        hub.subscribe("w")
    assert total.value.status == 503 and "limit" in total.value.detail


def test_replay_from_the_ring_until_it_no_longer_reaches_back() -> None:
    hub = FeedHub(HubLimits(replay_records=4))
    for off in range(10, 16):
        hub.apply(record(off, user="u" if off % 2 else "v"))
    # The ring holds offsets 12..15; 10 and 11 were pushed out.
    assert [r.offset for r in hub.replay("u", 1, 12) or []] == [13, 15]
    assert [r.offset for r in hub.replay("u", 1, 11) or []] == [13, 15]
    assert hub.replay("u", 1, 10) is None  # offset 11 is gone: read the topic again
    assert hub.replay("u", 2, 0) == []  # nothing of that partition was ever pushed out


async def test_a_stream_that_does_not_read_is_marked_and_bounded() -> None:
    hub = FeedHub(HubLimits(queue_size=2))
    sub = hub.subscribe("u")
    for off in range(5):
        hub.apply(record(off))
    assert sub.overflowed and sub.queue.qsize() == 2


# --- the app over HTTP ------------------------------------------------------------------------


@dataclass
class Sse:
    events: list[SseEvent] = field(default_factory=list)
    heartbeats: int = 0


async def read_sse(resp: aiohttp.ClientResponse, want: int, timeout_s: float = 10) -> Sse:
    """Read until ``want`` events arrived or the stream ended."""
    out = Sse()
    async with asyncio.timeout(timeout_s):
        async for event in read_events(resp):
            if event is HEARTBEAT:
                out.heartbeats += 1
                continue
            out.events.append(event)
            if len(out.events) >= want:
                break
    return out


@pytest.fixture
async def api() -> AsyncIterator[tuple[str, Service]]:
    settings = Settings(
        kafka_bootstrap="127.0.0.1:9",
        worker_url="http://127.0.0.1:9",
        scenes=("drama", "news"),
        stream_heartbeat_s=0.3,
        stream_max_open=3,
        stream_max_per_user=2,
        cors_origins=("http://app.example",),
        api_demo=False,
    )
    service = Service(settings)
    service.start = lambda: None  # type: ignore[method-assign]  # no Kafka follower here

    async def nobody(user_id: str) -> None:
        return None  # what a worker answers for a user it does not know

    service.on_demand = nobody  # type: ignore[assignment, method-assign]
    port = free_port()
    config = uvicorn.Config(make_api(service), port=port, log_level="warning", lifespan="off")
    config.timeout_graceful_shutdown = 1
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}", service
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


async def test_stream_sends_latest_then_each_new_list_then_forgotten(
    api: tuple[str, Service], http: aiohttp.ClientSession
) -> None:
    url, service = api
    service.hub.apply(record(5))
    async with http.get(f"{url}/users/u/feed/stream?k=2") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        first = await read_sse(resp, 1)
        assert first.events[0].id == "1-5" and first.events[0].event == "feed"
        data = orjson.loads(first.events[0].data)
        assert data["trigger_event_id"] == "e5" and len(data["scenes"]["global"]) == 2
        service.hub.apply(record(6, user="someone-else"))
        service.hub.apply(record(7))
        service.hub.apply(record(8, value=None))
        rest = await read_sse(resp, 5)  # ends by itself after the tombstone
    assert [(e.id, e.event) for e in rest.events] == [("1-7", "feed"), ("1-8", "forgotten")]
    assert orjson.loads(rest.events[1].data) == {"user_id": "u"}
    await asyncio.sleep(0.1)
    assert service.hub.open_streams == 0


async def test_scene_filter_and_heartbeats(
    api: tuple[str, Service], http: aiohttp.ClientSession
) -> None:
    url, service = api
    service.hub.apply(record(5))
    async with http.get(f"{url}/users/u/feed/stream?scene=drama") as resp:
        got = await read_sse(resp, 1)
        assert list(orjson.loads(got.events[0].data)["scenes"]) == ["drama"]
        await asyncio.sleep(1.0)
        service.hub.apply(record(6))
        later = await read_sse(resp, 1)
    assert later.heartbeats >= 2  # ": heartbeat" every 0.3 s while nothing landed
    assert later.events[0].id == "1-6"


async def test_resume_after_last_event_id_misses_nothing(
    api: tuple[str, Service], http: aiohttp.ClientSession
) -> None:
    url, service = api
    for off in (5, 6, 7, 8):
        service.hub.apply(record(off, user="u" if off != 6 else "v"))
    headers = {"Last-Event-ID": "1-5"}
    async with http.get(f"{url}/users/u/feed/stream", headers=headers) as resp:
        got = await read_sse(resp, 2)
    assert [e.id for e in got.events] == ["1-7", "1-8"]
    async with http.get(f"{url}/users/u/feed/stream?last_event_id=1-7") as resp:
        got = await read_sse(resp, 1)
    assert [e.id for e in got.events] == ["1-8"]


async def test_clear_errors_and_limits(
    api: tuple[str, Service], http: aiohttp.ClientSession
) -> None:
    url, service = api
    service.hub.apply(record(5))
    service.hub.apply(record(6, user="v"))

    async def status(path: str, **kw: Any) -> tuple[int, str]:
        async with http.get(f"{url}{path}", **kw) as resp:
            return resp.status, (await resp.json())["detail"]

    code, detail = await status("/users/nobody/feed/stream")
    assert code == 404 and "unknown user" in detail
    code, detail = await status("/users/u/feed/stream?scene=cart")
    assert code == 404 and "unknown scene 'cart'" in detail and "drama" in detail
    code, detail = await status("/users/u/feed/stream", headers={"Last-Event-ID": "five"})
    assert code == 400 and "<partition>-<offset>" in detail
    async with (
        http.get(f"{url}/users/u/feed/stream") as a,
        http.get(f"{url}/users/u/feed/stream") as b,
    ):
        assert a.status == b.status == 200
        code, detail = await status("/users/u/feed/stream")
        assert code == 429 and "already has 2 streams" in detail
        async with http.get(f"{url}/users/v/feed/stream") as c:
            assert c.status == 200
            async with http.get(f"{url}/users/v/feed/stream") as d:
                assert d.status == 503 and d.headers["Retry-After"] == "5"


async def test_cors_for_the_configured_origin_only(
    api: tuple[str, Service], http: aiohttp.ClientSession
) -> None:
    url, _ = api
    preflight = {
        "Origin": "http://app.example",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "last-event-id",
    }
    async with http.options(f"{url}/users/u/feed/stream", headers=preflight) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == "http://app.example"
        assert "last-event-id" in resp.headers["Access-Control-Allow-Headers"].lower()
    other = {**preflight, "Origin": "http://evil.example"}
    async with http.options(f"{url}/users/u/feed/stream", headers=other) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_a_resume_older_than_the_ring_reads_the_topic_again(
    api: tuple[str, Service], http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, service = api
    service.hub.limits.replay_records = 2
    for off in range(10, 15):
        service.hub.apply(record(off))
    asked: list[tuple[str, int, int, int]] = []

    async def from_kafka(
        settings: Settings, user_id: str, partition: int, after: int, upto: int
    ) -> list[FeedRecord]:
        asked.append((user_id, partition, after, upto))
        return [record(off) for off in range(after + 1, upto)]  # the user's lists there

    monkeypatch.setattr("serving.api_app.reread", from_kafka)
    async with http.get(f"{url}/users/u/feed/stream", headers={"Last-Event-ID": "1-10"}) as resp:
        got = await read_sse(resp, 4)
        assert asked == [("u", 1, 10, 15)]  # up to the next offset the replica will apply
        service.hub.apply(record(15))
        more = await read_sse(resp, 1)
    assert [e.id for e in got.events] == ["1-11", "1-12", "1-13", "1-14"]
    assert [e.id for e in more.events] == ["1-15"]


async def test_a_client_that_leaves_closes_its_stream(
    api: tuple[str, Service], http: aiohttp.ClientSession
) -> None:
    url, service = api
    service.hub.apply(record(5))
    for _ in range(3):  # more than the per-user limit: each leaving frees its slot
        async with http.get(f"{url}/users/u/feed/stream") as resp:
            assert resp.status == 200
            await read_sse(resp, 1)
            assert service.hub.open_streams == 1
        await wait_until(lambda: service.hub.open_streams == 0)
    # And one that leaves before reading anything.
    reader, writer = await asyncio.open_connection("127.0.0.1", int(url.rsplit(":", 1)[1]))
    writer.write(b"GET /users/u/feed/stream HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await reader.readline()
    writer.close()
    await wait_until(lambda: service.hub.open_streams == 0)


async def wait_until(cond: Any, timeout_s: float = 5) -> None:
    async with asyncio.timeout(timeout_s):
        while not cond():
            await asyncio.sleep(0.05)


def partial(offset: int, scenes: dict[str, list[str]], user: str = "u") -> FeedRecord:
    """A message with only the feeds its event changed (streams/pipeline.py)."""
    body = {
        "user_id": user,
        "generated_at": 1.0,
        "trigger_event_id": f"e{offset}",
        "model_version": "m",
        "scenes": {
            s: [{"item_id": i, "score": 1.0, "reason": "r"} for i in ids]
            for s, ids in scenes.items()
        },
    }
    return FeedRecord(1, offset, user, orjson.dumps(body))


def test_hub_merges_messages_that_carry_some_feeds() -> None:
    hub = FeedHub()
    hub.apply(partial(1, {"global": ["1"], "drama": ["2"]}))
    hub.apply(partial(2, {"global": ["3"]}))
    scenes = hub.latest["u"]["scenes"]
    assert [i["item_id"] for i in scenes["global"]] == ["3"]
    assert [i["item_id"] for i in scenes["drama"]] == ["2"]  # kept from the first message


async def test_a_scene_stream_gets_the_messages_that_changed_its_scene(
    api: tuple[str, Service], http: aiohttp.ClientSession
) -> None:
    url, service = api
    service.hub.apply(partial(1, {"global": ["1"]}))
    async with http.get(f"{url}/users/u/feed/stream?scene=news") as resp:
        first = await read_sse(resp, 1)  # all of the user's feeds: none in news yet
        assert orjson.loads(first.events[0].data)["scenes"] == {"news": []}
        service.hub.apply(partial(2, {"global": ["2"]}))  # news unchanged: no event
        service.hub.apply(partial(3, {"global": ["3"], "news": ["4"]}))
        got = await read_sse(resp, 1)
    assert got.events[0].id == "1-3"
    assert orjson.loads(got.events[0].data)["scenes"] == {
        "news": [{"item_id": "4", "score": 1.0, "reason": "r"}]
    }
    async with http.get(f"{url}/users/u/feed/stream") as resp:
        whole = await read_sse(resp, 1)
    assert set(orjson.loads(whole.events[0].data)["scenes"]) == {"global", "news"}

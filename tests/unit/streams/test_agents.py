"""The Faust agents through ``agent.test_context()``: real model, embedded store, no broker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from embeddings.colearn import CoLearnConfig, CoLearner, SceneRelations
from embeddings.ranking import ItemIndex
from embeddings.scenes import SceneGates
from scenerec.config import Settings
from streams import runtime
from streams.agents import ROUTES, handle
from streams.metrics import WorkerMetrics
from streams.pipeline import Incoming, Pipeline, PipelineConfig
from streams.state import loads
from streams.topics import CLICKS, COMMENTS, PROFILES, SOCIAL, TopicSpec
from streams.worker import Worker, create_worker
from tests.conftest import InProcessEncoder, local_pipeline
from tests.unit.helpers.emitters import Collect

ITEMS = [
    {
        "item_id": "1",
        "scenes": ["scifi"],
        "title": "Star Wars (1977)",
        "description": "Space opera with rebels and an evil empire",
    },
    {
        "item_id": "2",
        "scenes": ["scifi"],
        "title": "Alien (1979)",
        "description": "Horror in outer space aboard a starship",
    },
    {
        "item_id": "3",
        "scenes": ["family"],
        "title": "Toy Story (1995)",
        "description": "Animated toys come to life",
    },
    {
        "item_id": "4",
        "scenes": ["drama"],
        "title": "Sense and Sensibility (1995)",
        "description": "Romance and manners in Regency England",
    },
]


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    """A worker for this module (nothing started: the agents run in their test contexts;
    each test installs a pipeline of its own)."""
    worker = create_worker(Settings(), WorkerMetrics.create(CollectorRegistry()))
    yield worker
    # Acking a test event builds the consumer, whose thread's loop never runs.
    worker.app.consumer._thread.thread_loop.close()


@pytest.fixture
async def pipe(
    tmp_path: Path, in_process_encoder: InProcessEncoder, worker: Worker
) -> AsyncIterator[Pipeline]:
    p = local_pipeline(
        tmp_path / "store",
        PipelineConfig(scenes=("scifi", "family", "drama"), unknown_item_wait_s=0.5),
        in_process_encoder,
        Collect(),
    )
    worker.runtime.install(p)
    yield p
    p.store.close()


def agent_of(worker: Worker, spec: TopicSpec) -> Any:
    return worker.agents[spec.name]


def test_one_agent_per_partitioned_input_topic(worker: Worker) -> None:
    assert set(worker.agents) == {route.spec.name for route in ROUTES}
    assert [a.channel for a in worker.agents.values()] == list(worker.topics.stream)


async def until(cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)


async def feed(agent: Any, values: list[bytes], done: Callable[[], bool]) -> None:
    async with agent.test_context() as ctx:
        for v in values:
            await ctx.put(v, key=b"k", wait=False)
        await until(done)


async def load_catalog(pipe: Pipeline) -> None:
    # Every worker reads the whole catalog (streams/catalog_reader.py) and hands its
    # batches to the same retrying handler as the agents.
    batch = [Incoming(orjson.dumps(i), "catalog.items", 0, n) for n, i in enumerate(ITEMS)]
    await handle(pipe, batch, Pipeline.on_catalog, "catalog.items")
    assert len(pipe.index) == 4


async def test_catalog_encodes_in_batches_and_stores(pipe: Pipeline) -> None:
    await load_catalog(pipe)
    assert pipe.store.count("items") == 4
    assert max(pipe.encoder.calls) > 1  # type: ignore[attr-defined]  # batched, not per item
    sw, alien, toy = (pipe.index.vector(i) for i in ("1", "2", "3"))
    assert float(sw @ alien) > float(sw @ toy)


async def test_click_agent_updates_state_and_emits_recs(pipe: Pipeline, worker: Worker) -> None:
    await load_catalog(pipe)
    out: Collect = pipe.emitter  # type: ignore[assignment]
    click = {"event_id": "c1", "user_id": "u1", "item_id": "1", "scene": "scifi", "ts": 1}
    await feed(agent_of(worker, CLICKS), [orjson.dumps(click)], lambda: len(out.recs) == 1)
    rec = out.recs[0]
    assert rec["user_id"] == "u1" and rec["trigger_event_id"] == "c1"
    global_ids = [r["item_id"] for r in rec["scenes"]["global"]]
    assert "1" not in global_ids and global_ids[0] == "2"  # seen item out, closest first
    assert "Star Wars" in rec["scenes"]["scifi"][0]["reason"]
    state = loads(pipe.states["u1"])
    assert state.already_applied("c1")
    # the same event again is a duplicate: no second recommendation, no double count
    await feed(agent_of(worker, CLICKS), [orjson.dumps(click)], lambda: True)
    await asyncio.sleep(0.3)
    assert len(out.recs) == 1 and loads(pipe.states["u1"]).n_events == 1


async def test_comment_and_profile_agents_use_the_encoder(pipe: Pipeline, worker: Worker) -> None:
    await load_catalog(pipe)
    out: Collect = pipe.emitter  # type: ignore[assignment]
    prof = {"user_id": "u2", "profile_text": "A 9 year old who loves cartoons and toys"}
    await feed(agent_of(worker, PROFILES), [orjson.dumps(prof)], lambda: len(out.recs) == 1)
    assert out.recs[0]["scenes"]["global"][0]["item_id"] == "3"
    before = loads(pipe.states["u2"]).global_vec
    comment = {
        "event_id": "m1",
        "user_id": "u2",
        "item_id": "4",
        "scene": "drama",
        "ts": 2,
        "text": "a moving period romance",
    }
    await feed(agent_of(worker, COMMENTS), [orjson.dumps(comment)], lambda: len(out.recs) == 2)
    after = loads(pipe.states["u2"]).global_vec
    assert before is not None and after is not None and not np.allclose(before, after)


async def test_social_agent_moves_follower_toward_followee(pipe: Pipeline, worker: Worker) -> None:
    await load_catalog(pipe)
    out: Collect = pipe.emitter  # type: ignore[assignment]
    clicks = [
        {"event_id": "a", "user_id": "fan", "item_id": "4", "scene": "drama", "ts": 1},
        {"event_id": "b", "user_id": "star", "item_id": "1", "scene": "scifi", "ts": 1},
    ]
    await feed(
        agent_of(worker, CLICKS), [orjson.dumps(c) for c in clicks], lambda: len(out.recs) == 2
    )
    star = loads(pipe.states["star"]).global_vec
    before = loads(pipe.states["fan"]).global_vec
    follow = {
        "event_id": "f",
        "user_id": "fan",
        "target_user_id": "star",
        "kind": "follow",
        "ts": 2,
    }
    await feed(agent_of(worker, SOCIAL), [orjson.dumps(follow)], lambda: len(out.recs) == 3)
    after = loads(pipe.states["fan"]).global_vec
    assert float(after @ star) > float(before @ star)
    # Alien (like Star Wars, which star watched) is recommended to fan because of star.
    alien = next(r for r in out.recs[-1]["scenes"]["global"] if r["item_id"] == "2")
    assert alien["reason"] == "across scenes: close to the taste of star, whom you follow"


async def test_bad_events_go_to_dlq_and_good_ones_still_apply(
    pipe: Pipeline, worker: Worker
) -> None:
    await load_catalog(pipe)
    out: Collect = pipe.emitter  # type: ignore[assignment]
    good = {"event_id": "g", "user_id": "u3", "item_id": "2", "scene": "scifi", "ts": 1}
    values = [
        b"not json",
        orjson.dumps({**good, "event_id": "x1", "scene": "cooking"}),
        orjson.dumps(good),
        orjson.dumps({**good, "event_id": "x2", "item_id": "999"}),
        orjson.dumps({"event_id": "x3", "user_id": "u3"}),
    ]
    await feed(agent_of(worker, CLICKS), values, lambda: len(out.dlq) == 4 and len(out.recs) == 1)
    reasons = sorted(d.reason for d in out.dlq)
    assert reasons == ["missing_field", "not_json", "unknown_item", "unknown_scene"]
    assert all(d.topic and d.offset >= 0 for d in out.dlq)
    assert out.dlq_keys == ["k"] * 4  # keyed like the original message
    assert out.recs[0]["trigger_event_id"] == "g"
    assert out.flushes >= 1  # the batch was flushed before it was acked


async def test_profile_tombstone_forgets_the_user_everywhere(
    pipe: Pipeline, worker: Worker
) -> None:
    await load_catalog(pipe)
    out: Collect = pipe.emitter  # type: ignore[assignment]
    click = {"event_id": "f1", "user_id": "gone", "item_id": "1", "scene": "scifi", "ts": 1}
    await feed(agent_of(worker, CLICKS), [orjson.dumps(click)], lambda: len(out.recs) == 1)
    assert "gone" in pipe.states and pipe.store.get_users(["gone"])
    assert pipe.recommend_now("gone") is not None
    tombstone = Incoming(None, "users.profiles", 0, 7, key=b"gone")
    await handle(pipe, [tombstone], Pipeline.on_profiles, "users.profiles")
    assert "gone" not in pipe.states
    assert pipe.store.get_users(["gone"]) == {}
    assert pipe.recommend_now("gone") is None
    assert out.forgotten == ["gone"] and out.dlq == []  # a tombstone is not bad input


def test_colearn_file_gives_the_pipeline_its_scene_model(tmp_path: Path) -> None:
    rel = SceneRelations(["scifi", "family"], np.array([[0.0, 1.0], [1.0, 0.0]]))
    CoLearner(SceneGates(384), rel, CoLearnConfig(prior=2.0)).save(tmp_path / "c.json")
    CoLearner(SceneGates(8)).save(tmp_path / "small.json")

    def make(path: Path) -> Pipeline:
        return Pipeline(
            config=PipelineConfig(scenes=("scifi", "family"), colearn_path=str(path)),
            store=None,  # type: ignore[arg-type]  # not touched by __post_init__
            index=ItemIndex(384),
            encoder=None,  # type: ignore[arg-type]
            states={},
            emitter=Collect(),
            metrics=WorkerMetrics.create(CollectorRegistry()),
        )

    model = make(tmp_path / "c.json").scene_model
    assert isinstance(model, CoLearner) and model.relations is not None
    assert model.config.prior == 2.0
    with pytest.raises(ValueError, match="dimension 8"):
        make(tmp_path / "small.json")


async def test_await_chain_shows_where_a_task_waits() -> None:
    gate = asyncio.Event()

    async def inner() -> None:
        await gate.wait()

    async def outer() -> None:
        await inner()

    task = asyncio.create_task(outer())
    await asyncio.sleep(0.01)
    chain = runtime.await_chain(task.get_coro())
    names = [line.rsplit(" ", 1)[-1] for line in chain]
    assert names[:3] == ["outer", "inner", "wait"] and chain[-1].startswith("<Future")
    gate.set()
    await task

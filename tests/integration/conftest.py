"""Real services for the integration tests, started once per test module that uses them.

Where they come from, in order (the choice is logged):
1. ``KAFKA_BOOTSTRAP`` / ``QDRANT_URL`` set: an existing cluster is used as it is;
2. a Docker engine answers: testcontainers start Kafka and Qdrant;
3. otherwise (as on the development machines): the project's own local processes.
The encoder is always the project's Ray Serve app and the worker a real Faust process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from deploy.ports import free_port
from scenerec.config import Settings
from scenerec.datasets import load_ml100k
from scenerec.kafka import assigned_partitions, consumer, ensure_topics, producer
from tests.conftest import service_mode

log = logging.getLogger("scenerec.tests")

#: Items of the real ml-100k catalog published by the ``catalog`` fixture.
N_ITEMS = 60

SCENES = "action,comedy,drama,family,scifi,thriller"


@dataclass(frozen=True)
class Services:
    settings: Settings
    env: dict[str, str]
    mode: str
    #: The project's local broker when mode == "local" (fault tests restart it), else None.
    broker: Any = None

    @property
    def worker_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.worker_web_port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.serve_port}"

    @property
    def ray_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.ray_metrics_port}/metrics"


def _kafka(stack: ExitStack, var: Path, env: dict[str, str]) -> tuple[str, Any]:
    mode = service_mode()
    if mode == "existing":
        log.info("integration services: existing Kafka at %s", os.environ["KAFKA_BOOTSTRAP"])
        return mode, None
    if mode == "testcontainers":
        from testcontainers.kafka import KafkaContainer

        kafka = stack.enter_context(KafkaContainer("apache/kafka:4.1.1").with_kraft())
        env["KAFKA_BOOTSTRAP"] = kafka.get_bootstrap_server()
        log.info("integration services: Kafka in a testcontainer at %s", env["KAFKA_BOOTSTRAP"])
        return "testcontainers", None
    from deploy.kafka_local import LocalKafka

    port, ctl = free_port(), free_port()
    broker = LocalKafka(var / "kafka", port=port, controller_port=ctl)
    broker.start()
    stack.callback(broker.stop)
    env["SCENEREC_KAFKA_PORT"] = str(port)
    env["SCENEREC_KAFKA_CONTROLLER_PORT"] = str(ctl)
    log.info("integration services: the project's local Kafka on port %d", port)
    return "local", broker


def _qdrant(stack: ExitStack, env: dict[str, str], docker: bool) -> None:
    if os.environ.get("QDRANT_URL"):
        log.info("integration services: existing Qdrant at %s", os.environ["QDRANT_URL"])
    elif docker:
        from testcontainers.qdrant import QdrantContainer

        qdrant = stack.enter_context(QdrantContainer())
        env["QDRANT_URL"] = f"http://{qdrant.rest_host_address}"
        log.info("integration services: Qdrant in a testcontainer at %s", env["QDRANT_URL"])
    else:
        log.info("integration services: the embedded vector store (Qdrant Edge) in the worker")


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    from deploy.api_config import api_overrides
    from deploy.ray_serve import start_serve, stop_serve
    from deploy.stack import encoder_config, ray_head
    from deploy.worker import start_worker, stop_worker

    var = tmp_path_factory.mktemp("var")
    env: dict[str, str] = {
        "SCENEREC_VAR_DIR": str(var),
        "SCENEREC_SCENES": SCENES,
        "SCENEREC_APP_ID": f"scenerec-test-{uuid.uuid4().hex[:8]}",
        "SCENEREC_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:6]}.",
        "SCENEREC_SERVE_PORT": str(free_port()),
        "SCENEREC_RAY_METRICS_PORT": str(free_port()),
        # A Ray head of this test session's own: other stacks on the machine keep theirs.
        "SCENEREC_RAY_PORT": str(free_port()),
        "SCENEREC_RAY_TEMP_DIR": f"/tmp/scenerec-ray-{uuid.uuid4().hex[:8]}",
        "SCENEREC_WORKER_WEB_PORT": str(free_port()),
        "SCENEREC_UNKNOWN_ITEM_WAIT_S": "5",
        # Tests wait for the shared item statistics: a short window of the item-stats agent.
        "SCENEREC_STATS_BATCH_WITHIN_S": "0.05",
        "SCENEREC_ENCODER_TORCH_THREADS": "1",
    }
    with ExitStack() as stack:
        mode, broker = _kafka(stack, var, env)
        _qdrant(stack, env, docker=mode == "testcontainers")
        settings = Settings(**_settings_kwargs(env))
        asyncio.run(ensure_topics(settings))
        head = ray_head(settings)
        start_serve(
            encoder_config(settings),
            http_port=settings.serve_port,
            api_overrides=api_overrides(settings),
            metrics_port=settings.ray_metrics_port,
            head=head,
        )
        stack.callback(stop_serve, head)
        start_worker(var, settings.worker_web_port, env=env)
        stack.callback(stop_worker, var)
        yield Services(settings=settings, env=env, mode=mode, broker=broker)


def _settings_kwargs(env: dict[str, str]) -> dict[str, Any]:
    # Build the same Settings the worker reads from its environment.
    merged = {**os.environ, **env}
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(merged)
        return Settings().model_dump()
    finally:
        os.environ.clear()
        os.environ.update(saved)


class Bus:
    """Publish events and read output topics of the session's broker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._prod = producer(settings)

    async def __aenter__(self) -> Bus:
        await self._prod.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._prod.stop()

    async def send(self, topic: str, key: str, value: dict[str, Any] | bytes) -> None:
        raw = value if isinstance(value, bytes) else orjson.dumps(value)
        await self._prod.send_and_wait(self.settings.topic(topic), key=key.encode(), value=raw)

    async def send_tombstone(self, topic: str, key: str) -> None:
        await self._prod.send_and_wait(self.settings.topic(topic), key=key.encode(), value=None)

    async def last_value(self, topic: str, key: str, timeout_s: float = 10.0) -> Any:
        """The newest value under ``key`` (None for a tombstone); KeyError if there is none."""
        cons = consumer(self.settings, auto_offset_reset="earliest")
        await cons.start()
        found: list[bytes | None] = []
        try:
            end = await cons.end_offsets(
                await assigned_partitions(cons, self.settings.topic(topic))
            )

            async def behind() -> bool:
                return any([await cons.position(tp) < off for tp, off in end.items()])

            async with asyncio.timeout(timeout_s):
                while await behind():
                    batch = await cons.getmany(timeout_ms=250)
                    found += [r.value for rs in batch.values() for r in rs if r.key == key.encode()]
        finally:
            await cons.stop()
        if not found:
            raise KeyError(key)
        return None if found[-1] is None else orjson.loads(found[-1])

    async def collect(self, topic: str, want: Any, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """Read ``topic`` from the beginning until ``want(messages)`` is true."""
        cons = consumer(
            self.settings,
            self.settings.topic(topic),
            auto_offset_reset="earliest",
            group_id=None,
        )
        await cons.start()
        got: list[dict[str, Any]] = []
        try:
            async with asyncio.timeout(timeout_s):
                while not want(got):
                    batch = await cons.getmany(timeout_ms=250)
                    for records in batch.values():
                        # tombstones (forgotten users) carry no value
                        got.extend(orjson.loads(r.value) for r in records if r.value is not None)
        except TimeoutError:
            pass
        finally:
            await cons.stop()
        return got


@pytest.fixture
async def bus(services: Services) -> AsyncIterator[Bus]:
    async with Bus(services.settings) as b:
        yield b


def get_json(url: str) -> tuple[int, Any]:
    """Status and JSON body (also of an error answer; None when it is not JSON)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        try:
            return err.code, json.loads(err.read())
        except ValueError:
            return err.code, None


async def wait_for(cond: Any, timeout_s: float = 30.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not cond():
            await asyncio.sleep(0.2)


def user_vec(services: Services, user: str) -> np.ndarray | None:
    status, body = get_json(f"{services.worker_url}/users/{user}/state")
    if status != 200 or body["global"] is None:
        return None
    return np.asarray(body["global"], dtype=np.float32)


@pytest.fixture(scope="module")
def catalog(services: Services) -> dict[str, dict[str, Any]]:
    """A slice of the real ml-100k catalog, published once and indexed by the worker."""
    items = load_ml100k(services.settings.data_dir).items[:N_ITEMS]

    async def publish() -> None:
        async with Bus(services.settings) as bus:
            for item in items:
                await bus.send("catalog.items", item["item_id"], item)

    asyncio.run(publish())

    async def indexed() -> None:
        await wait_for(lambda: get_json(f"{services.worker_url}/ready")[1]["items"] >= N_ITEMS, 60)

    asyncio.run(indexed())
    return {i["item_id"]: i for i in items}


def uid() -> str:
    return f"u-{uuid.uuid4().hex[:8]}"


def click(user: str, item: str, scene: str, event_id: str | None = None) -> dict[str, Any]:
    return {
        "event_id": event_id or uuid.uuid4().hex,
        "user_id": user,
        "item_id": item,
        "scene": scene,
        "ts": 880000000.0,
    }

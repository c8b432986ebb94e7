"""Integration test: a real single-node Kafka broker started by deploy.kafka_local."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from deploy.kafka_local import LocalKafka
from deploy.ports import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("mvn") is None
        or (shutil.which("java") is None and not os.environ.get("JAVA_HOME")),
        reason="needs Maven and Java 17+",
    ),
]


@pytest.fixture
def kafka(tmp_path: Path) -> Iterator[LocalKafka]:
    port = free_port()
    controller_port = free_port()
    while controller_port == port:
        controller_port = free_port()
    broker = LocalKafka(tmp_path / "kafka", port=port, controller_port=controller_port)
    try:
        started = time.monotonic()
        broker.start(timeout_s=120)
        print(f"LocalKafka.start() took {time.monotonic() - started:.1f} s")
        yield broker
    finally:
        broker.stop()  # no-op when the test already stopped it


@pytest.mark.timeout(300)
async def test_produce_consume_roundtrip(kafka: LocalKafka) -> None:
    assert kafka.is_running()
    kafka.start()  # idempotent: returns at once while the broker runs
    topic = "scenerec-kafka-local-test"
    sent = [f"message-{i}".encode() for i in range(10)]

    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap, acks="all")
    await producer.start()
    try:
        for value in sent:
            await producer.send_and_wait(topic, value, key=b"k")  # one key -> one partition
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap,
        group_id="scenerec-kafka-local-test",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    received: list[bytes] = []
    try:
        async with asyncio.timeout(60):
            while len(received) < len(sent):
                batches = await consumer.getmany(timeout_ms=1000)
                for records in batches.values():
                    received.extend(r.value for r in records if r.value is not None)
    finally:
        await consumer.stop()

    assert received == sent

    kafka.stop()
    assert not kafka.is_running()
    assert not (kafka.home / "kafka.pid").exists()

"""aiokafka clients for the CLI, the demo and the tests, configured from the settings."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from scenerec.config import Settings
from streams.topics import ALL_TOPICS

log = logging.getLogger(__name__)


def client_kwargs(settings: Settings) -> dict[str, Any]:
    """Connection settings shared by producers, consumers and the admin client."""
    kwargs: dict[str, Any] = {"bootstrap_servers": settings.bootstrap}
    protocol = settings.kafka_security_protocol.upper()
    if protocol != "PLAINTEXT":
        kwargs["security_protocol"] = protocol
        if protocol.endswith("SSL"):
            kwargs["ssl_context"] = settings.ssl_context()
        if protocol.startswith("SASL"):
            kwargs["sasl_mechanism"] = settings.kafka_sasl_mechanism or "PLAIN"
            kwargs["sasl_plain_username"] = settings.kafka_sasl_username
            if settings.kafka_sasl_password is not None:
                kwargs["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return kwargs


def producer(settings: Settings, **extra: Any) -> AIOKafkaProducer:
    return AIOKafkaProducer(**client_kwargs(settings), acks="all", linger_ms=5, **extra)


def consumer(settings: Settings, *topics: str, **extra: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(*topics, **client_kwargs(settings), **extra)


async def ensure_topics(settings: Settings) -> list[str]:
    """Create the topics of ARCHITECTURE.md that do not exist yet; returns those created."""
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(
                name=settings.topic(spec.name),
                num_partitions=settings.partitions,
                replication_factor=1,
                topic_configs={"cleanup.policy": "compact"} if spec.compacted else {},
            )
            for spec in ALL_TOPICS
            if settings.topic(spec.name) not in existing
        ]
        if wanted:
            # another process may win the race to create them: fine
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(wanted)
            log.info("created topics %s", ", ".join(t.name for t in wanted))
        return [t.name for t in wanted]
    finally:
        await admin.close()


async def assigned_partitions(
    consumer: AIOKafkaConsumer, topic: str, timeout_s: float = 120.0
) -> list[TopicPartition]:
    """Subscribe a group-less consumer to ``topic``: it is given every partition.

    The topic may be created moments after the process starts, so this waits for it.
    """
    consumer.subscribe([topic])
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not consumer.assignment():
        if asyncio.get_running_loop().time() > deadline:
            raise RuntimeError(f"topic {topic!r} has no partitions after {timeout_s:.0f} s")
        await asyncio.sleep(0.25)
    return sorted(consumer.assignment())

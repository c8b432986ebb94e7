"""The Faust application: ``faust -A streams.app worker``.

This module is the edge of the worker process: it reads the settings once, declares the
app, its topics and its user-state table, and imports the agents so they register.
"""

from __future__ import annotations

import socket
from typing import Any

import faust
from faust.auth import SASLCredentials, SSLCredentials
from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from scenerec.config import Settings, load_settings
from streams import topics as t
from streams.metrics import WorkerMetrics, watch_gc
from streams.patches.transport import App

settings: Settings = load_settings()
metrics = WorkerMetrics.create()
watch_gc(metrics.gc_pause_seconds)


def _credentials(s: Settings) -> Any:
    """Kafka SASL/SSL from the settings; the password is read here and nowhere else."""
    protocol = s.kafka_security_protocol.upper()
    if protocol == "PLAINTEXT":
        return None
    ctx = s.ssl_context()
    if protocol.startswith("SASL"):
        password = s.kafka_sasl_password.get_secret_value() if s.kafka_sasl_password else None
        return SASLCredentials(
            username=s.kafka_sasl_username,
            password=password,
            mechanism=s.kafka_sasl_mechanism or "PLAIN",
            ssl_context=ctx,
        )
    return SSLCredentials(ctx)


def _canonical_url(s: Settings) -> str:
    host = s.worker_web_host
    if host in ("0.0.0.0", "::", ""):  # listening everywhere: announce the host name
        host = socket.gethostname()
    return f"http://{host}:{s.worker_web_port}"


app = App(
    settings.app_id,
    fetch_max_wait_ms=settings.fetch_max_wait_ms,
    # Not compacted, so a jump in their offsets is records skipped (streams/patches/transport.py).
    contiguous_topics=frozenset(
        settings.topic(spec.name) for spec in (*t.INPUT_TOPICS, t.ITEM_DELTAS) if not spec.compacted
    ),
    broker=f"kafka://{settings.bootstrap}",
    broker_credentials=_credentials(settings),
    store="memory://",
    # Faust's own folder (table metadata) in the data folder, not the current directory.
    datadir=str(settings.var_dir / "faust"),
    topic_partitions=settings.partitions,
    key_serializer="raw",
    value_serializer="raw",
    consumer_auto_offset_reset="earliest",
    web_host=settings.worker_web_host,
    # Where other workers reach this one when they route a user's request to its owner.
    canonical_url=_canonical_url(settings),
    web_port=settings.worker_web_port,
    web_in_thread=False,
    producer_acks=-1,
    autodiscover=False,
)


def topic(spec: t.TopicSpec) -> faust.TopicT:
    return app.topic(
        settings.topic(spec.name),
        key_type=bytes,
        value_type=bytes,
        partitions=settings.partitions,
        compacting=spec.compacted or None,
    )


clicks_topic = topic(t.CLICKS)
comments_topic = topic(t.COMMENTS)
social_topic = topic(t.SOCIAL)
catalog_topic = topic(t.CATALOG)
profiles_topic = topic(t.PROFILES)
recommendations_topic = topic(t.RECOMMENDATIONS)
dlq_topic = topic(t.DLQ)
item_deltas_topic = topic(t.ITEM_DELTAS)
#: The topics the agents consume (the catalog is read outside the consumer group).
STREAM_TOPICS = (clicks_topic, comments_topic, social_topic, profiles_topic, item_deltas_topic)

# Per-user state, backed by its changelog topic. ``use_partitioner``: agents work on
# batches spanning partitions, so the changelog partition must follow the key (the same
# murmur2 partitioner the producers use), not "the current event".
users_table = app.Table(
    "user-state",
    key_type=bytes,
    value_type=bytes,
    partitions=settings.partitions,
    use_partitioner=True,
)
# The item statistics every worker ranks with, keyed by item (streams/itemstats.py): the
# item-stats agent writes it, every worker reads its changelog (streams/stats_reader.py).
item_stats_table = app.Table(
    "item-stats",
    key_type=bytes,
    value_type=bytes,
    partitions=settings.partitions,
    use_partitioner=True,
)


@app.page("/metrics")
class MetricsView(View):
    async def get(self, request: Request) -> Response:
        # As a header: aiohttp refuses a content_type argument that carries a charset.
        return self.bytes(
            generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )


# Registration side effects: the runtime service (which also reads the whole catalog on
# every worker, see streams/catalog_reader.py) and one agent per partitioned input topic.
from streams import runtime  # noqa: E402,F401
from streams.agents import clicks, comments, itemstats, profiles, social  # noqa: E402,F401

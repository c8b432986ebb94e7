"""One worker, built from its settings: :func:`create_worker`.

Everything a worker process runs hangs off the :class:`Worker` this returns: the Faust app,
its topics and tables, the metrics, the runtime service (vector store, encoder, the
pipeline) and the agents. Building one does no I/O and touches nothing process-wide (the
garbage collector's timing is the process edge's, streams/app.py): tests build their own.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any, cast

import faust
from faust.auth import SASLCredentials, SSLCredentials
from faust.types import AgentT, TableT
from faust.web import Request, Response, View
from mode import ServiceT
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from scenerec.config import Settings
from streams import topics as t
from streams.agents import register_agents
from streams.metrics import WorkerMetrics
from streams.patches.transport import App
from streams.runtime import Runtime, register_timers, register_views


@dataclass(frozen=True)
class Worker:
    settings: Settings
    metrics: WorkerMetrics
    app: faust.App
    topics: t.Topics
    #: Per-user state, backed by its changelog topic.
    users_table: TableT[bytes, bytes]
    #: The item statistics every worker ranks with, keyed by item (streams/itemstats.py).
    item_stats_table: TableT[bytes, bytes]
    runtime: Runtime
    #: The agents by input topic name (``streams.agents.ROUTES``).
    agents: dict[str, AgentT[Any]]


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


def create_app(settings: Settings) -> App:
    return App(
        settings.app_id,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        # Not compacted, so a jump in their offsets is records skipped
        # (streams/patches/transport.py).
        contiguous_topics=frozenset(
            settings.topic(spec.name)
            for spec in (*t.INPUT_TOPICS, t.ITEM_DELTAS)
            if not spec.compacted
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


def _table(app: faust.App, settings: Settings, name: str) -> TableT[bytes, bytes]:
    # ``use_partitioner``: agents work on batches spanning partitions, so the changelog
    # partition must follow the key (the same murmur2 partitioner the producers use), not
    # "the current event".
    return app.Table(
        name,
        key_type=bytes,
        value_type=bytes,
        partitions=settings.partitions,
        use_partitioner=True,
    )


def _metrics_page(app: faust.App, metrics: WorkerMetrics) -> None:
    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            # As a header: aiohttp refuses a content_type argument that carries a charset.
            return self.bytes(
                generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )


def create_worker(settings: Settings, metrics: WorkerMetrics | None = None) -> Worker:
    """The worker ``settings`` describe: its app with every topic, table, agent, view, timer
    and the runtime service registered (started when the app starts)."""
    metrics = metrics if metrics is not None else WorkerMetrics.create()
    app = create_app(settings)
    topics = t.Topics(
        {
            spec.name: app.topic(
                settings.topic(spec.name),
                key_type=bytes,
                value_type=bytes,
                partitions=settings.partitions,
                compacting=spec.compacted or None,
            )
            for spec in t.ALL_TOPICS
        }
    )
    users_table = _table(app, settings, "user-state")
    # The item-stats agent writes it, every worker reads its changelog
    # (streams/stats_reader.py).
    item_stats_table = _table(app, settings, "item-stats")
    runtime = Runtime(
        app, settings, metrics, topics, users_table, item_stats_table, beacon=app.beacon
    )
    # Faust starts a registered instance as it is (a class, it would build with the app's
    # beacon). The runtime also reads the whole catalog on every worker
    # (streams/catalog_reader.py).
    app.service(cast(type[ServiceT], runtime))
    _metrics_page(app, metrics)
    register_views(app, runtime, users_table)
    register_timers(app, topics, metrics)
    agents = register_agents(app, topics, settings, metrics, runtime.pipeline)
    return Worker(
        settings=settings,
        metrics=metrics,
        app=app,
        topics=topics,
        users_table=users_table,
        item_stats_table=item_stats_table,
        runtime=runtime,
        agents=agents,
    )

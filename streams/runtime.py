"""The worker's long-lived resources, started and stopped with the Faust app, and its HTTP
views and timers.

Agents wait for :meth:`Runtime.pipeline` until the service has opened the vector store,
loaded the item index from it and reached the encoder; unit tests install a pipeline
directly. streams/worker.py builds the app and hands it here: nothing in this module
declares an app or reads the settings itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Iterator, MutableMapping
from typing import Any

import faust
import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import ConsumerStoppedError
from faust.types import TableT
from faust.web import Request, Response, View
from mode import Service

from embeddings.blended import CandidateConfig
from embeddings.itemstats import DeltaBatch, SparseRow, dumps_deltas
from embeddings.ranking import ItemIndex
from scenerec.config import Settings
from scenerec.diskcheck import check_writable
from scenerec.kafka import consumer, ensure_topics
from serving.client import EncoderClient
from streams import state as state_codec
from streams.catalog_reader import CatalogReader
from streams.itemstats import Partitioner, split_by_partition
from streams.metrics import WorkerMetrics
from streams.nearest import StoreNearest
from streams.patches import healing
from streams.patches.transport import flush_producer
from streams.pipeline import Pipeline, PipelineConfig
from streams.records import DeadLetter
from streams.stats_reader import StatsReader
from streams.topics import CATALOG, DLQ, ITEM_DELTAS, RECOMMENDATIONS, Topics
from vectorstore import open_store
from vectorstore.base import VectorStore

log = logging.getLogger(__name__)

#: A Faust table seen as raw ``key -> value`` bytes (both of the worker's tables).
Table = MutableMapping[bytes, bytes]


def pipeline_config(settings: Settings) -> PipelineConfig:
    return PipelineConfig(
        scenes=settings.scenes,
        top_k=settings.top_k,
        max_text_chars=settings.max_text_chars,
        max_event_bytes=settings.max_event_bytes,
        unknown_item_wait_s=settings.unknown_item_wait_s,
        model_version=settings.model_version,
        max_future_s=settings.max_future_s,
        colearn_path=str(settings.colearn_path) if settings.colearn_path else None,
        model_path=str(settings.model_path) if settings.model_path else None,
        rank_threads=settings.ranking_threads,
        candidates=CandidateConfig(
            neighbours=settings.candidates_neighbours,
            nearest=settings.candidates_nearest,
            popular=settings.candidates_popular,
            exact_max_items=settings.exact_max_items,
        ),
        refresh_events=settings.feed_refresh_events,
    )


class TableStates(MutableMapping[str, bytes]):
    """The Faust table seen as ``user_id -> state bytes`` (its keys are raw bytes)."""

    def __init__(self, table: MutableMapping[bytes, bytes]) -> None:
        self._table = table

    def __getitem__(self, key: str) -> bytes:
        return self._table[key.encode()]

    def __setitem__(self, key: str, value: bytes) -> None:
        self._table[key.encode()] = value

    def __delitem__(self, key: str) -> None:
        del self._table[key.encode()]

    def __iter__(self) -> Iterator[str]:
        return (k.decode() for k in self._table)

    def __len__(self) -> int:
        return len(self._table)


class FaustEmitter:
    def __init__(self, app: faust.App, topics: Topics) -> None:
        self._app = app
        self._recommendations = topics[RECOMMENDATIONS]
        self._dlq = topics[DLQ]

    async def flush(self) -> None:
        # The table's changelog records go out through the same producer: flushing it
        # before the batch is acked means no acknowledged event's effect is only in memory.
        await flush_producer(self._app.producer)

    async def recommendations(self, user_id: str, payload: dict[str, object]) -> None:
        await self._recommendations.send(key=user_id.encode(), value=orjson.dumps(payload))

    async def forget(self, user_id: str) -> None:
        # A tombstone: compaction erases the user's older lists, and readers (the pull
        # API) drop what they cached.
        await self._recommendations.send(key=user_id.encode(), value=None)

    async def dead_letter(self, key: str | None, letter: DeadLetter) -> None:
        await self._dlq.send(
            key=key.encode() if key else None, value=letter.model_dump_json().encode()
        )


class FaustStatsSink:
    """Click deltas to ``items.deltas``: one message per partition, sent to the partition
    of the items it names (the item-stats table's own partitioning), and flushed before
    the pipeline writes the states that count them (``StatsSink.send``)."""

    def __init__(self, app: faust.App, topics: Topics, partitions: int) -> None:
        self._app = app
        self._deltas = topics[ITEM_DELTAS]
        self._partition_of = Partitioner(partitions)

    async def send(self, deltas: DeltaBatch) -> None:
        for partition, part in split_by_partition(deltas, self._partition_of).items():
            await self._deltas.send(value=dumps_deltas(part), partition=partition)
        await flush_producer(self._app.producer)

    def lists_sent(self) -> None:
        """Nothing to do: the stage and the stats reader bring the deltas back."""


def load_index(store: VectorStore, dim: int) -> ItemIndex:
    index = ItemIndex(dim)
    for item in store.iter_items():
        index.upsert(item.item_id, item.vector, item.scenes, item.title, item.facts)
    return index


def tune_gc(freeze: bool, threshold0: int) -> None:
    """Take what the worker holds once started out of the collector's scans (and set the
    young generation's threshold): SCENEREC_GC_FREEZE, SCENEREC_GC_THRESHOLD0."""
    if threshold0:
        gc.set_threshold(threshold0, *gc.get_threshold()[1:])
    if freeze:
        gc.collect()
        gc.freeze()
    log.info(
        "garbage collector: %d objects frozen, thresholds %s",
        gc.get_freeze_count(),
        gc.get_threshold(),
    )


class Runtime(Service):
    """Opens the vector store and the encoder client; closes them on shutdown. Holds the
    pipeline the agents, readers and views use (:meth:`install`, :meth:`pipeline`)."""

    _store: VectorStore | None = None
    _encoder: EncoderClient | None = None
    _catalog: AIOKafkaConsumer | None = None
    _stats: AIOKafkaConsumer | None = None

    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        metrics: WorkerMetrics,
        topics: Topics,
        users_table: Table,
        item_stats_table: TableT[bytes, bytes],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._app = app
        self._settings = settings
        self._metrics = metrics
        self._topics = topics
        self._users_table = users_table
        self._item_stats_table = item_stats_table
        #: The pipeline once installed (None before: the views answer "not ready").
        self.installed: Pipeline | None = None
        self._installed = asyncio.Event()

    def install(self, pipe: Pipeline) -> None:
        """Make ``pipe`` the one the agents use (on_start does this; tests may too)."""
        self.installed = pipe
        self._installed.set()

    async def pipeline(self) -> Pipeline:
        """The pipeline, once installed."""
        await self._installed.wait()
        assert self.installed is not None
        return self.installed

    async def on_start(self) -> None:
        settings, metrics = self._settings, self._metrics
        # Fail at start, with the reason, when the data folder cannot be written (read-only
        # mount, full disk): not later, mid-stream, inside the vector store.
        check_writable(settings.var_dir, settings.min_free_mb)
        loop = asyncio.get_running_loop()
        log.info("event loop: %s.%s", type(loop).__module__, type(loop).__name__)
        await ensure_topics(settings)
        # Retries with backoff up to ~50 s: long enough for Serve to replace a dead replica.
        self._encoder = EncoderClient(settings.encoder_base_url, retries=8)
        probe = await self._encoder.encode(["probe"])
        dim = int(probe.shape[1])
        api_key = settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None
        self._store = open_store(settings.store_dir, url=settings.qdrant_url, api_key=api_key)
        self._store.ensure_collections(dim, settings.scenes)
        index = load_index(self._store, dim)
        metrics.items_indexed.set(len(index))
        log.info(
            "runtime ready: encoder %s (dim %d), store %s, %d items indexed",
            settings.encoder_base_url,
            dim,
            "qdrant server" if settings.qdrant_url else f"embedded at {settings.store_dir}",
            len(index),
        )
        self.install(
            Pipeline(
                config=pipeline_config(settings),
                store=self._store,
                index=index,
                encoder=self._encoder,
                states=TableStates(self._users_table),
                emitter=FaustEmitter(self._app, self._topics),
                metrics=metrics,
                stats_sink=FaustStatsSink(self._app, self._topics, settings.partitions),
                nearest=StoreNearest(self._store, index),
                stats_rows=self._item_stats_table,
            )
        )
        tune_gc(settings.gc_freeze, settings.gc_threshold0)

    @Service.task
    async def _read_catalog(self) -> None:
        await self._installed.wait()
        settings = self._settings
        self._catalog = consumer(
            settings, enable_auto_commit=False, group_id=None, auto_offset_reset="earliest"
        )
        await self._catalog.start()
        reader = CatalogReader(
            self._catalog,
            settings.topic(CATALOG.name),
            settings.var_dir / f"catalog-positions-{settings.app_id}.json",
            self.pipeline,
            settings.catalog_batch_max,
        )
        # on_stop closes the consumer when the worker shuts down: that ends the reader.
        with contextlib.suppress(ConsumerStoppedError):
            await reader.run()

    @Service.task
    async def _read_item_stats(self) -> None:
        await self._installed.wait()
        self._stats = consumer(
            self._settings, enable_auto_commit=False, group_id=None, auto_offset_reset="earliest"
        )
        await self._stats.start()
        changelog = self._item_stats_table.changelog_topic.get_topic_name()
        reader = StatsReader(self._stats, changelog, self.pipeline)
        with contextlib.suppress(ConsumerStoppedError):
            await reader.run()

    async def on_stop(self) -> None:
        if self._stats is not None:
            await self._stats.stop()
        if self._catalog is not None:
            await self._catalog.stop()
        if self._encoder is not None:
            await self._encoder.close()
        if self._store is not None:
            self._store.flush()
            self._store.close()


def register_views(app: faust.App, runtime: Runtime, users_table: Table) -> None:
    """The worker's HTTP views of what ``runtime`` holds (its /metrics page is
    streams/worker.py's), and the diagnosis views of the consumer and the tasks."""

    @app.page("/ready")
    class ReadyView(View):
        """200 once the runtime is up (store open, encoder reached), else 503."""

        async def get(self, request: Request) -> Response:
            pipe = runtime.installed
            if pipe is None:
                return self.json({"ready": False}, status=503)
            return self.json(
                {
                    "ready": True,
                    "items": len(pipe.index),
                    # Partition -> next offset: how far the shared item statistics got here.
                    "item_stats": {
                        "deltas_applied": pipe.deltas_applied,
                        "changelog_read": pipe.stats_read,
                    },
                }
            )

    @app.page("/users/{user_id}/recommendations")
    class RecommendView(View):
        """Recommendations computed now from the user's state (the pull API's fallback).

        Routed to the worker that owns the user's table partition, so it works with any
        number of workers.
        """

        @app.table_route(table=users_table, match_info="user_id")  # type: ignore[arg-type]
        async def get(self, request: Request, user_id: str) -> Response:
            pipe = runtime.installed
            payload = pipe.recommend_now(user_id) if pipe is not None else None
            if payload is None:
                return self.json({"error": f"unknown user {user_id!r}"}, status=404)
            return self.json(payload)

    @app.page("/items/{item_id}/stats")
    class ItemStatsView(View):
        """What this worker's ranking knows of one item from the shared item statistics."""

        async def get(self, request: Request, item_id: str) -> Response:
            pipe = runtime.installed
            if pipe is None:
                return self.json({"error": "worker not ready"}, status=503)
            index, stats = pipe.index, pipe.model.stats
            row = index.row_of(item_id)
            if row is None:
                return self.json({"error": f"unknown item {item_id!r}"}, status=404)
            trans, cooc = stats.neighbours(row)

            def named(part: SparseRow | None) -> dict[str, float]:
                if part is None:
                    return {}
                rows, weights = part.items()
                pairs = zip(rows, weights, strict=True)
                return {index.item_at(int(r)): float(w) for r, w in pairs}

            return self.json(
                {
                    "item_id": item_id,
                    "clicks_now": stats.popularity(row),
                    "users": stats.users(row),
                    "transitions": named(trans),
                    "cooccurrence": named(cooc),
                    "rows_waiting_for_items": pipe.shared.pending,
                }
            )

    @app.page("/users/{user_id}/state")
    class UserStateView(View):
        """What the worker holds about one user (operators' and tests' window on the table)."""

        @app.table_route(table=users_table, match_info="user_id")  # type: ignore[arg-type]
        async def get(self, request: Request, user_id: str) -> Response:
            pipe = runtime.installed
            if pipe is None:
                return self.json({"error": "worker not ready"}, status=503)
            raw = pipe.states.get(user_id)
            if raw is None:
                # Also say whether the vector store still holds vectors (after ``forget``: no).
                stored = bool(pipe.store.get_users([user_id]))
                body = {"error": f"unknown user {user_id!r}", "stored_vectors": stored}
                return self.json(body, status=404)
            st = state_codec.loads(raw)
            stored_vecs = pipe.store.get_users([user_id]).get(user_id, {})
            wanted = st.named_vectors()
            # Operators' consistency check: the store holds exactly the state's vectors.
            consistent = set(stored_vecs) == set(wanted) and all(
                np.allclose(stored_vecs[name], vec, atol=1e-5) for name, vec in wanted.items()
            )
            return self.json(
                {
                    "user_id": user_id,
                    "store_consistent": consistent,
                    "n_events": st.n_events,
                    "scene_counts": st.scene_counts,
                    "recent": list(st.recent),
                    "following": list(st.following),
                    "last_event_id": st.last_event_id,
                    "global": None if st.global_vec is None else st.global_vec.tolist(),
                }
            )

    @app.page("/debug/tasks")
    class TasksView(View):
        """Every asyncio task of the worker and the await chain it is parked in.

        ``Task.get_stack`` shows one frame of a suspended coroutine; following ``cr_await``
        shows the whole chain down to the future it waits for: what a stuck stream waits on.
        """

        async def get(self, request: Request) -> Response:
            lines: list[str] = []
            for task in sorted(asyncio.all_tasks(), key=lambda t: t.get_name()):
                lines.append(f"--- {task.get_name()}")
                lines.extend(f"    {frame}" for frame in await_chain(task.get_coro()))
            return self.text("\n".join(lines) + "\n")

    @app.page("/debug/consumer")
    class ConsumerView(View):
        """Per assigned partition: Kafka position and highwater, Faust's read/committed
        offsets; and the first 50 messages in Faust's unacked set, with their ``acked``
        flags (an acked message can stay there: streams/patches/healing.py).

        Reads Faust's private bookkeeping (there is no public API for it): for diagnosis only.
        """

        async def get(self, request: Request) -> Response:
            return self.json(await consumer_report(app))


async def consumer_report(app: faust.App) -> dict[str, Any]:
    """What ``/debug/consumer`` shows (see its view)."""
    c: Any = app.consumer
    active = c._active_partitions or set()
    rows = {}
    for tp in sorted(c.assignment()):
        rows[f"{tp.topic}[{tp.partition}]"] = {
            "position": await c.position(tp),
            "highwater": c.highwater(tp),
            "read_offset": c._read_offset.get(tp),
            "committed_offset": c._committed_offset.get(tp),
            "active": tp in active,
            "paused": tp in c._paused_partitions,
            "buffered": tp in c._buffered_partitions,
            "unacked": len(c._unacked_messages) if hasattr(c, "_unacked_messages") else None,
        }
    unacked = [
        {
            "tp": f"{m.tp.topic}[{m.tp.partition}]",
            "offset": m.offset,
            "acked": m.acked,
            "refcount": m.refcount,
            "generation_id": m.generation_id,
        }
        for m in sorted(list(c._unacked_messages), key=lambda m: (m.tp, m.offset))
    ]
    return {
        "flow_active": c.flow_active,
        "generation_id": app.consumer_generation_id,
        "partitions": rows,
        "unacked_messages": unacked[:50],
    }


def register_timers(app: faust.App, topics: Topics, metrics: WorkerMetrics) -> None:
    """The worker's timers: refetch what Faust dropped, report the consumer lag."""
    holes = healing.HoleWatch()
    stream_topics = [topic.get_topic_name() for topic in topics.stream]

    @app.timer(interval=5.0, name=f"{__name__}.refetch_dropped_messages")  # type: ignore[untyped-decorator]
    async def refetch_dropped_messages() -> None:
        """Fetch again what Faust read but dropped (streams/patches/healing.py explains when)."""
        consumer: Any = app.consumer
        if app.rebalancing or not consumer.flow_active:
            return
        try:
            views = await healing.view(consumer, stream_topics)
        except Exception:
            # A partition revoked between the check above and here: look again next time,
            # rather than let the timer's exception stop the worker.
            log.warning("could not read the consumer's partitions this time", exc_info=True)
            return
        stuck = holes.stuck(views)
        if stuck:
            log.warning(
                "messages fetched but never processed on %s (commit stuck, nothing in flight): "
                "fetching again from the committed offsets",
                ", ".join(f"{tp.topic}[{tp.partition}]" for tp in stuck),
            )
            metrics.refetches.inc()
            await healing.reseek(consumer, stuck)
            holes.seen.clear()

    @app.timer(interval=5.0, name=f"{__name__}.report_consumer_lag")  # type: ignore[untyped-decorator]
    async def report_consumer_lag() -> None:
        """Per-partition lag = highwater - position, for the partitions this worker owns."""
        consumer = app.consumer
        try:
            for tp in consumer.assignment():
                lag = partition_lag(consumer.highwater(tp), await consumer.position(tp))
                if lag is not None:
                    metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)
        except Exception:
            # A metric is never a reason to stop the worker (the timer's exception would).
            log.warning("consumer lag not reported this time", exc_info=True)


def partition_lag(highwater: int | None, position: int | None) -> int | None:
    """Messages behind the end of a partition; None until both ends are known.

    Right after a rebalance a newly assigned partition has no highwater yet (nothing
    fetched): the bench's ``kill -9`` takeover once hit that, and the ``TypeError`` this
    timer raised crashed the surviving worker (a Faust timer that raises stops the app).
    """
    if highwater is None or position is None:
        return None
    return max(0, highwater - position)


def await_chain(obj: object, limit: int = 40) -> list[str]:
    """``file:line function`` of each coroutine/generator in an await chain, outermost first."""
    out: list[str] = []
    while obj is not None and len(out) < limit:
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "ag_frame", None)
        frame = frame or getattr(obj, "gi_frame", None)
        if frame is None:
            out.append(f"<{type(obj).__name__}>")  # the future or object waited on
            break
        out.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        nxt = getattr(obj, "cr_await", None) or getattr(obj, "ag_await", None)
        obj = nxt or getattr(obj, "gi_yieldfrom", None)
    return out

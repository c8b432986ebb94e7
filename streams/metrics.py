"""Every metric of the worker, declared in one place against an explicit registry."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class WorkerMetrics:
    registry: CollectorRegistry
    events: Counter
    dlq: Counter
    processing_seconds: Histogram
    batch_events: Histogram
    batch_gather_seconds: Histogram
    batch_oldest_age_seconds: Histogram
    flush_seconds: Histogram
    encoder_batch_size: Histogram
    encoder_seconds: Histogram
    recommendations: Counter
    feeds_ranked: Counter
    item_deltas: Counter
    item_rows_applied: Counter
    item_rows_received: Counter
    consumer_lag: Gauge
    items_indexed: Gauge
    event_to_recommendation_seconds: Histogram
    cold_start_seconds: Histogram
    vectorstore_seconds: Histogram
    forgotten: Counter
    refetches: Counter
    gc_pause_seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> WorkerMetrics:
        reg = registry if registry is not None else CollectorRegistry()
        return cls(
            registry=reg,
            events=Counter(
                "scenerec_events_total",
                "Input events by topic, scene ('' where an event has none) and outcome"
                " (ok, duplicate, dlq, forgotten)",
                ["topic", "scene", "outcome"],
                registry=reg,
            ),
            dlq=Counter(
                "scenerec_dlq_total",
                "Events sent to the dead-letter topic, by reason",
                ["reason"],
                registry=reg,
            ),
            processing_seconds=Histogram(
                "scenerec_processing_seconds",
                "Time from a batch being taken from a topic to its effects being emitted",
                ["topic"],
                buckets=_LATENCY_BUCKETS,
                registry=reg,
            ),
            batch_events=Histogram(
                "scenerec_batch_events",
                "Messages per batch taken from a topic",
                ["topic"],
                buckets=_BATCH_BUCKETS,
                registry=reg,
            ),
            batch_gather_seconds=Histogram(
                "scenerec_batch_gather_seconds",
                "From the end of one batch of a topic to the next batch being handed over"
                " (reading messages, and waiting for them when the topic is quiet)",
                ["topic"],
                buckets=_LATENCY_BUCKETS,
                registry=reg,
            ),
            batch_oldest_age_seconds=Histogram(
                "scenerec_batch_oldest_age_seconds",
                "Age of a batch's oldest message (from its Kafka timestamp) when the batch is"
                " handed over: how long events waited before the worker started on them",
                ["topic"],
                buckets=_LATENCY_BUCKETS,
                registry=reg,
            ),
            flush_seconds=Histogram(
                "scenerec_flush_seconds",
                "Waiting for the broker to acknowledge a batch's output (recommendations,"
                " dead letters, state changelog) before the batch is acked",
                ["topic"],
                buckets=_LATENCY_BUCKETS,
                registry=reg,
            ),
            encoder_batch_size=Histogram(
                "scenerec_encoder_batch_size",
                "Texts per call to the encoder",
                buckets=_BATCH_BUCKETS,
                registry=reg,
            ),
            encoder_seconds=Histogram(
                "scenerec_encoder_call_seconds",
                "Latency of one call to the encoder",
                buckets=_LATENCY_BUCKETS,
                registry=reg,
            ),
            recommendations=Counter(
                "scenerec_recommendations_total",
                "Recommendation messages emitted",
                registry=reg,
            ),
            feeds_ranked=Counter(
                "scenerec_feeds_ranked_total",
                "Feeds (global or one scene) ranked and sent in recommendations messages",
                registry=reg,
            ),
            item_deltas=Counter(
                "scenerec_item_deltas_total",
                "Click deltas sent to the item-stats stage",
                registry=reg,
            ),
            item_rows_applied=Counter(
                "scenerec_item_rows_applied_total",
                "Item-stats rows this worker's stage changed and wrote to its table",
                registry=reg,
            ),
            item_rows_received=Counter(
                "scenerec_item_rows_received_total",
                "Item-stats rows this worker read from the shared table into its ranking",
                registry=reg,
            ),
            consumer_lag=Gauge(
                "scenerec_consumer_lag_messages",
                "Messages behind the end of each assigned partition",
                ["topic", "partition"],
                registry=reg,
            ),
            items_indexed=Gauge(
                "scenerec_items_indexed", "Items in the worker's ranking index", registry=reg
            ),
            event_to_recommendation_seconds=Histogram(
                "scenerec_event_to_recommendation_seconds",
                "From an event's Kafka timestamp to the recommendations reflecting it being sent",
                buckets=_LATENCY_BUCKETS,
                registry=reg,
            ),
            cold_start_seconds=Histogram(
                "scenerec_cold_start_seconds",
                "From a new user's first event (profile or first click) to their first list",
                ["trigger"],
                buckets=_LATENCY_BUCKETS,
                registry=reg,
            ),
            vectorstore_seconds=Histogram(
                "scenerec_vectorstore_call_seconds",
                "Latency of one call to the vector store (Qdrant), by operation",
                ["operation"],
                buckets=_LATENCY_BUCKETS,
                registry=reg,
            ),
            forgotten=Counter(
                "scenerec_users_forgotten_total",
                "Users erased on request (a tombstone on users.profiles)",
                registry=reg,
            ),
            refetches=Counter(
                "scenerec_refetches_total",
                "Times messages read but dropped by the consumer were fetched again "
                "(streams/patches/healing.py)",
                registry=reg,
            ),
            gc_pause_seconds=Histogram(
                "scenerec_gc_pause_seconds",
                "Python garbage-collector pauses of the worker (the event loop stops during"
                " each), by generation",
                ["generation"],
                buckets=_LATENCY_BUCKETS,
                registry=reg,
            ),
        )


def watch_gc(hist: Histogram) -> Callable[[str, dict[str, int]], None]:
    """Time every collection into ``hist``; returns the callback (to remove it in tests)."""
    started = 0.0

    def on_gc(phase: str, info: dict[str, int]) -> None:
        nonlocal started
        if phase == "start":
            started = time.perf_counter()
        elif started:
            hist.labels(str(info["generation"])).observe(time.perf_counter() - started)
            started = 0.0

    gc.callbacks.append(on_gc)
    return on_gc

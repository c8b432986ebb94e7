"""Every metric of the worker, declared in one place against an explicit registry."""

from __future__ import annotations

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
    encoder_batch_size: Histogram
    encoder_seconds: Histogram
    recommendations: Counter
    consumer_lag: Gauge
    items_indexed: Gauge
    event_to_recommendation_seconds: Histogram
    cold_start_seconds: Histogram
    vectorstore_seconds: Histogram
    forgotten: Counter
    refetches: Counter

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
                "(streams/healing.py)",
                registry=reg,
            ),
        )

"""Metrics of the Serve apps, recorded with Ray's metrics API inside the replicas.

Ray exports them (with every Ray and Serve built-in metric) on the head's metrics export
port (``SCENEREC_RAY_METRICS_PORT``), adding the ``ray_`` prefix to each name; Prometheus
scrapes that one endpoint instead of each replica. Names here are the ones defined; the
exported ones are in :data:`SERVE_METRIC_NAMES`.
"""

from __future__ import annotations

from typing import Final

from ray.serve import metrics

LATENCY_BOUNDARIES_S: Final = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]
BATCH_BOUNDARIES: Final = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0]

ENCODER_BATCH = "scenerec_encoder_replica_batch_size"
ENCODER_SECONDS = "scenerec_encoder_replica_seconds"
API_REQUESTS = "scenerec_api_requests"  # Ray's exporter appends _total to counters
API_SECONDS = "scenerec_api_request_seconds"
API_OPEN_STREAMS = "scenerec_api_open_streams"
API_STREAM_EVENTS = "scenerec_api_stream_events"  # a counter: _total appended

#: The names as Prometheus sees them on Ray's export port, and their types.
SERVE_METRICS: Final = {
    f"ray_{ENCODER_BATCH}": "histogram",
    f"ray_{ENCODER_SECONDS}": "histogram",
    f"ray_{API_REQUESTS}_total": "counter",
    f"ray_{API_SECONDS}": "histogram",
    f"ray_{API_OPEN_STREAMS}": "gauge",
    f"ray_{API_STREAM_EVENTS}_total": "counter",
}
SERVE_METRIC_NAMES: Final = tuple(SERVE_METRICS)


def encoder_metrics() -> tuple[metrics.Histogram, metrics.Histogram]:
    batch = metrics.Histogram(
        ENCODER_BATCH,
        description="Texts per forward pass of an encoder replica",
        boundaries=BATCH_BOUNDARIES,
    )
    seconds = metrics.Histogram(
        ENCODER_SECONDS,
        description="Seconds per forward pass of an encoder replica",
        boundaries=LATENCY_BOUNDARIES_S,
    )
    return batch, seconds


def api_metrics() -> tuple[metrics.Counter, metrics.Histogram]:
    requests = metrics.Counter(
        API_REQUESTS,
        description="Pull API requests by route and HTTP status",
        tag_keys=("route", "status"),  # type: ignore[arg-type]  # Ray types it as tuple[str]
    )
    seconds = metrics.Histogram(
        API_SECONDS,
        description="Pull API request latency by route",
        boundaries=LATENCY_BOUNDARIES_S,
        tag_keys=("route",),
    )
    return requests, seconds


def stream_metrics() -> tuple[metrics.Gauge, metrics.Counter]:
    open_streams = metrics.Gauge(
        API_OPEN_STREAMS, description="Feed streams (SSE) open on a pull API replica"
    )
    events = metrics.Counter(
        API_STREAM_EVENTS,
        description="Events sent on feed streams by kind (feed, forgotten, heartbeat)",
        tag_keys=("kind",),
    )
    return open_streams, events

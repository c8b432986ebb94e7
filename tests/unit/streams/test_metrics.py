"""Worker metrics that are not exercised by the agents' tests."""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry

from streams.metrics import WorkerMetrics, watch_gc


def test_gc_pauses_are_timed_per_generation() -> None:
    m = WorkerMetrics.create(CollectorRegistry())
    callback = watch_gc(m.gc_pause_seconds)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(callback)
    count = m.registry.get_sample_value("scenerec_gc_pause_seconds_count", {"generation": "2"})
    total = m.registry.get_sample_value("scenerec_gc_pause_seconds_sum", {"generation": "2"})
    assert count is not None and count >= 1
    assert total is not None and total > 0

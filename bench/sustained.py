"""Sustained throughput: the highest offered rate at which the consumer lag does not grow.

A rate is *offered* open loop (the schedule does not wait for the workers) for a warm-up
and then a window (60 s by default). Every second the bench reads each worker's
``scenerec_events_total`` (every input topic of the workload, every outcome) and keeps
``lag = events published - events processed``. The lag's trend is the least-squares slope
of lag over time in the window (events/s); the rate is *sustained* when the bench offered
it (at least 97% of it) and the slope is at most 2% of it (at most 2 events/s below
100/s): a backlog that grows by 2% of the rate for 60 s is 1.2 s of events.

The search: a probe first runs the workers flat out (a bounded backlog of
:data:`bench.load.MAX_BACKLOG`, as the ml-100k throughput phase does) for its processed
rate, the capacity; then rates are tried from 90% of it: up by 15% after a sustained one,
down (to 95% of what was processed, or 80% of the rate, whichever is lower) after one
that was not, bisecting between the two once both are known. Each try drains its backlog
before the next. The answer is the highest sustained rate tried; if none was, the try that
processed most is reported with ``sustained: false`` and its lag slope.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.load import MAX_BACKLOG, EventSource, batch_shape, paced
from bench.stack import Worker, event_counts, metric_samples
from scenerec.config import Settings
from scenerec.kafka import producer

log = logging.getLogger("bench.sustained")

#: The lag may grow by this share of the offered rate (or MIN_SLOPE events/s) and pass.
SLOPE_SHARE = 0.02
MIN_SLOPE = 2.0
#: The bench must have offered at least this share of the rate for a try to count.
OFFERED_SHARE = 0.97
#: "As fast as the backlog allows" for the probe.
FLAT_OUT = 1e9


@dataclass(frozen=True)
class SearchOptions:
    warmup_s: float = 10.0
    window_s: float = 60.0
    probe_s: float = 20.0
    tries: int = 3
    drain_timeout_s: float = 300.0


def lag_slope(samples: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of ``(seconds, lag)`` samples, in lag per second."""
    if len(samples) < 2:
        return 0.0
    n = len(samples)
    mt = sum(t for t, _ in samples) / n
    ml = sum(lag for _, lag in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    if var == 0:
        return 0.0
    return sum((t - mt) * (lag - ml) for t, lag in samples) / var


def is_sustained(rate: float, achieved: float, slope: float) -> bool:
    return achieved >= OFFERED_SHARE * rate and slope <= max(SLOPE_SHARE * rate, MIN_SLOPE)


async def processed(workers: Sequence[Worker], topics: Sequence[str]) -> float:
    """Events of ``topics`` the workers handled so far (every outcome: ok, duplicate, dlq)."""
    total = 0.0
    for w in workers:
        counts = await event_counts(w)
        total += sum(v for (topic, _), v in counts.items() if topic in topics)
    return total


async def shapes(workers: Sequence[Worker], topics: Sequence[str]) -> dict[str, float]:
    """The workers' batch shapes (bench.load.batch_shape) and events of ``topics`` applied
    (outcome ok: those that change a user and so may be ranked), summed over workers."""
    out: dict[str, float] = {"events_ok": 0.0}
    for w in workers:
        for k, v in (await batch_shape(w)).items():
            out[k] = out.get(k, 0.0) + v
        counts = await event_counts(w)
        out["events_ok"] += sum(v for (t, o), v in counts.items() if t in topics and o == "ok")
    return out


async def drain_to(
    workers: Sequence[Worker], topics: Sequence[str], target: float, timeout_s: float
) -> tuple[float, bool]:
    """Wait until the workers processed ``target`` events of ``topics``; (seconds, done)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if await processed(workers, topics) >= target:
            return time.monotonic() - t0, True
        await asyncio.sleep(0.5)
    return time.monotonic() - t0, False


async def lag_of(workers: Sequence[Worker], full_topics: Sequence[str]) -> float:
    """The workers' own consumer lag on ``full_topics`` (prefixed names; their gauge,
    refreshed every 5 s), summed."""
    total = 0.0
    for w in workers:
        for sample in await metric_samples(w, "scenerec_consumer_lag_messages"):
            if sample.labels.get("topic") in full_topics:
                total += float(sample.value)
    return total


async def settle(
    workers: Sequence[Worker], full_topics: Sequence[str], timeout_s: float
) -> dict[str, Any]:
    """Wait until the workers report no lag on ``full_topics`` twice in a row (their
    gauge is refreshed every 5 s); the seconds it took and the lag left."""
    t0 = time.monotonic()
    zeros = 0
    lag = await lag_of(workers, full_topics)
    while time.monotonic() - t0 < timeout_s:
        lag = await lag_of(workers, full_topics)
        zeros = zeros + 1 if lag == 0 else 0
        if zeros >= 2:
            break
        await asyncio.sleep(5.0)
    return {"seconds": round(time.monotonic() - t0, 1), "lag_left": lag}


async def offered_run(
    settings: Settings,
    workers: Sequence[Worker],
    source: EventSource,
    topics: Sequence[str],
    rate: float,
    opts: SearchOptions,
    window_s: float,
    max_backlog: float | None = None,
) -> dict[str, Any]:
    """Offer ``rate`` events/s (``FLAT_OUT``: as fast as ``max_backlog`` allows) for the
    warm-up and ``window_s``; the window's processed rate, lag trend and batch shape."""
    base = await processed(workers, topics)
    published = 0
    done_count = 0.0
    samples: list[tuple[float, float]] = []

    def count(topic: str, event: dict[str, Any], now: float) -> None:
        nonlocal published
        published += 1

    def hold() -> bool:
        return max_backlog is not None and published - done_count >= max_backlog

    prod = producer(settings)
    await prod.start()
    stop = asyncio.Event()
    total_s = opts.warmup_s + window_s
    t_start = time.monotonic()

    async def sample() -> None:
        nonlocal done_count
        while not stop.is_set():
            done_count = await processed(workers, topics) - base
            t = time.monotonic() - t_start
            if t >= opts.warmup_s:
                samples.append((t, published - done_count))
            await asyncio.sleep(1.0)

    sampler = asyncio.create_task(sample())
    pump = asyncio.create_task(
        paced(prod, settings, source, rate, total_s, f"r{round(rate)}", count, hold)
    )
    try:
        await asyncio.sleep(opts.warmup_s)
        c0, s0 = await processed(workers, topics), await shapes(workers, topics)
        t0, p0 = time.monotonic(), published
        sent = await pump
        c1, s1 = await processed(workers, topics), await shapes(workers, topics)
        t1, p1 = time.monotonic(), published
    finally:
        stop.set()
        pump.cancel()
        await asyncio.gather(sampler, pump, return_exceptions=True)
        await prod.flush()
        await prod.stop()
    drain_s, drained = await drain_to(workers, topics, base + published, opts.drain_timeout_s)
    window = t1 - t0
    handled = c1 - c0
    achieved = (p1 - p0) / window if window > 0 else 0.0
    slope = lag_slope(samples)
    lists, events_ok = s1["lists"] - s0["lists"], s1["events_ok"] - s0["events_ok"]
    batches = s1["batches"] - s0["batches"]
    return {
        "offered_rate": None if rate >= FLAT_OUT else round(rate, 1),
        "achieved_offered_rate": round(achieved, 1),
        "processed_per_s": round(handled / window, 1) if window > 0 else 0.0,
        "lag_slope_per_s": round(slope, 2),
        "lag_at_window_start": samples[0][1] if samples else None,
        "lag_at_window_end": samples[-1][1] if samples else None,
        "sustained": rate < FLAT_OUT and is_sustained(rate, achieved, slope),
        "window_s": round(window, 1),
        "published": published,
        "lists_per_click": round(lists / events_ok, 4) if events_ok else None,
        "mean_click_batch": round((s1["events"] - s0["events"]) / batches, 1) if batches else None,
        "gc_share": round((s1["gc_s"] - s0["gc_s"]) / window, 4) if window > 0 else None,
        "drain_s": round(drain_s, 1),
        "drained": drained,
        "sent_seconds": round(sent["seconds"], 1),
    }


def nice(rate: float) -> float:
    """``rate`` rounded down to two significant digits (tried rates read well)."""
    if rate <= 0:
        return 1.0
    scale = 10 ** max(0, math.floor(math.log10(rate)) - 1)
    return float(max(1.0, math.floor(rate / scale) * scale))


def next_rate(lo: float | None, hi: float | None, last: dict[str, Any]) -> float | None:
    """The next rate to try, given the highest sustained (``lo``) and lowest failed
    (``hi``) so far and the last try; None when the two are within 8%."""
    if lo is not None and hi is not None:
        return None if hi / lo < 1.08 else nice((lo + hi) / 2)
    if hi is None:
        assert lo is not None
        return nice(lo * 1.15)
    return nice(min(0.8 * hi, 0.95 * last["processed_per_s"]))


async def search(
    settings: Settings,
    workers: Sequence[Worker],
    source: EventSource,
    topics: Sequence[str],
    opts: SearchOptions,
) -> dict[str, Any]:
    """The highest sustained offered rate (module doc); every try is in ``tries``."""
    log.info("sustained search: probe flat out for %.0fs", opts.probe_s)
    probe = await offered_run(
        settings, workers, source, topics, FLAT_OUT, opts, opts.probe_s, MAX_BACKLOG
    )
    log.info("  probe: %s", probe)
    tries: list[dict[str, Any]] = []
    lo: float | None = None
    hi: float | None = None
    rate: float | None = nice(0.9 * probe["processed_per_s"])
    while rate is not None and len(tries) < opts.tries and probe["drained"]:
        log.info("sustained search: %.0f events/s for %.0fs", rate, opts.window_s)
        got = await offered_run(settings, workers, source, topics, rate, opts, opts.window_s)
        log.info("  -> %s", got)
        tries.append(got)
        if got["sustained"]:
            lo = rate if lo is None else max(lo, rate)
        else:
            hi = rate if hi is None else min(hi, rate)
        if not got["drained"]:
            break
        rate = next_rate(lo, hi, got)
        if rate is not None and any(t["offered_rate"] == rate for t in tries):
            break
    ok = [t for t in tries if t["sustained"]]
    best = (
        max(ok, key=lambda t: t["offered_rate"])
        if ok
        else max(tries or [probe], key=lambda t: t["processed_per_s"])
    )
    return {
        "events_per_s": best["offered_rate"] if best["sustained"] else best["processed_per_s"],
        "sustained": bool(best["sustained"]),
        "lag_slope_per_s": best["lag_slope_per_s"],
        "lists_per_click": best["lists_per_click"],
        "best": best,
        "probe": probe,
        "tries": tries,
    }

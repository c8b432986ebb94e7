"""Sustained throughput: the highest offered rate at which the consumer lag does not grow.

A rate is *offered* open loop (the schedule does not wait for the workers) for a warm-up
and then a window (60 s by default). Every 2 s (every second in the probe) the bench reads
each worker's ``scenerec_events_total`` (every input topic of the workload, every outcome)
and keeps ``lag = events published - events processed``. The lag's trend is the
least-squares slope of lag over time in the window (events/s); the rate is *sustained*
when the bench offered it (at least 97% of it) and the slope is at most 2% of it (at most
2 events/s below 100/s): a backlog that grows by 2% of the rate for 60 s is 1.2 s of
events.

The search: a probe first runs the workers flat out (a bounded backlog, as the ml-100k
throughput phase does, here of 2 s of their rate) for its processed rate, the capacity;
then rates are tried from 90% of it: up by 15% after a sustained one, down (to 95% of what
was processed, or 80% of the rate, whichever is lower) after one that was not, bisecting
between the two once both are known. Each try drains its backlog before the next. The
answer is the highest sustained rate tried; if none was, the try that processed most is
reported with ``sustained: false`` and its lag slope.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.load import MAX_BACKLOG, SHAPE_FAMILIES, EventSource, paced, shape_of
from bench.stack import Worker, event_counts, metric_families, metric_samples
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
#: The probe's backlog: this many seconds of what the workers processed so far, at least
#: MIN_BACKLOG events (a batch closes at 500 users: two of them keep a worker busy).
PROBE_BACKLOG_S = 2.0
MIN_BACKLOG = 1000


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


@dataclass(frozen=True)
class Snapshot:
    """The workers' counters at ``t`` (bench clock, when the last worker answered) and what
    the bench had published by then."""

    t: float
    published: float
    processed: float  # events of the workload's topics, every outcome
    events_ok: float  # of them, applied (they change a user, so may be ranked)
    lists: float
    batches: float  # click batches, and the clicks in them
    batch_events: float
    gc_s: float


async def snapshot(
    workers: Sequence[Worker], topics: Sequence[str], t_start: float, published: Callable[[], int]
) -> Snapshot:
    """One read of each worker's ``/metrics``, summed (a worker busy with a batch answers
    after it, so the time is taken when the answers are in)."""
    tot = {"processed": 0.0, "events_ok": 0.0, "lists": 0.0, "batches": 0.0, "events": 0.0}
    tot["gc_s"] = 0.0
    for w in workers:
        families = await metric_families(w, "scenerec_events", *SHAPE_FAMILIES)
        shape = shape_of(families)
        for k in ("lists", "batches", "events", "gc_s"):
            tot[k] += shape[k]
        for sample in families["scenerec_events"]:
            if sample.name == "scenerec_events_total" and sample.labels.get("topic") in topics:
                tot["processed"] += float(sample.value)
                if sample.labels.get("outcome") == "ok":
                    tot["events_ok"] += float(sample.value)
    return Snapshot(
        time.monotonic() - t_start,
        float(published()),
        tot["processed"],
        tot["events_ok"],
        tot["lists"],
        tot["batches"],
        tot["events"],
        tot["gc_s"],
    )


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
    backlog_s: float | None = None,
) -> dict[str, Any]:
    """Offer ``rate`` events/s for the warm-up and ``window_s``; the window's processed
    rate, lag trend and batch shape, from the snapshots taken in it (every 2 s, every
    second with a backlog). With ``backlog_s``, publishing holds while the backlog is over
    that many seconds of the rate processed so far (within MIN_BACKLOG and MAX_BACKLOG
    events): with ``FLAT_OUT``, as fast as the workers go, and a slow worker's backlog
    still drains in seconds."""
    base = await processed(workers, topics)
    published = 0
    done_count = 0.0
    snaps: list[Snapshot] = []
    # Each read renders the worker's whole /metrics page: 6% of its time at 2 reads a second.
    interval = 2.0 if backlog_s is None else 1.0
    total_s = opts.warmup_s + window_s
    t_start = time.monotonic()

    def count(topic: str, event: dict[str, Any], now: float) -> None:
        nonlocal published
        published += 1

    def hold() -> bool:
        if backlog_s is None:
            return False
        seen_rate = done_count / max(1e-3, time.monotonic() - t_start)
        cap = min(MAX_BACKLOG, max(MIN_BACKLOG, backlog_s * seen_rate))
        return published - done_count >= cap

    async def sample() -> None:
        nonlocal done_count
        while True:
            snap = await snapshot(workers, topics, t_start, lambda: published)
            snap = dataclasses.replace(snap, processed=snap.processed - base)  # this run's
            done_count = snap.processed
            snaps.append(snap)
            if snap.t >= total_s:
                return
            await asyncio.sleep(interval)

    prod = producer(settings)
    await prod.start()
    sampler = asyncio.create_task(sample())
    pump = asyncio.create_task(
        paced(prod, settings, source, rate, total_s, f"r{round(rate)}", count, hold)
    )
    try:
        sent = await pump
        await sampler
    finally:
        for task in (pump, sampler):
            task.cancel()
        await asyncio.gather(sampler, pump, return_exceptions=True)
        await prod.flush()
        await prod.stop()
    drain_s, drained = await drain_to(workers, topics, base + published, opts.drain_timeout_s)
    return {
        "offered_rate": None if rate >= FLAT_OUT else round(rate, 1),
        **window_stats(snaps, opts.warmup_s, total_s, rate),
        "published": published,
        "sent_seconds": round(sent["seconds"], 1),
        "drain_s": round(drain_s, 1),
        "drained": drained,
    }


#: What :func:`window_stats` reports besides ``sustained``, ``window_s`` and the processed rate.
_WINDOW_KEYS = (
    "achieved_offered_rate",
    "lag_slope_per_s",
    "lag_at_window_start",
    "lag_at_window_end",
    "snapshots",
    "lists_per_click",
    "mean_click_batch",
    "gc_share",
)


def window_stats(
    snaps: Sequence[Snapshot], start_s: float, end_s: float, rate: float
) -> dict[str, Any]:
    """Rates, lag trend and batch shape between the first and last snapshot of the window
    ``[start_s, end_s]`` (the last one taken at or after its end counts as its end)."""
    inside = [s for s in snaps if s.t >= start_s]
    inside = [s for s in inside if s.t <= end_s] + [s for s in inside if s.t > end_s][:1]
    if len(inside) < 2:
        empty: dict[str, Any] = dict.fromkeys(_WINDOW_KEYS)
        return {**empty, "sustained": False, "window_s": 0.0, "processed_per_s": 0.0}
    a, b = inside[0], inside[-1]
    span = b.t - a.t
    achieved = (b.published - a.published) / span
    slope = lag_slope([(s.t, s.published - s.processed) for s in inside])
    events_ok, batches = b.events_ok - a.events_ok, b.batches - a.batches
    return {
        "achieved_offered_rate": round(achieved, 1),
        "processed_per_s": round((b.processed - a.processed) / span, 1),
        "lag_slope_per_s": round(slope, 2),
        "lag_at_window_start": a.published - a.processed,
        "lag_at_window_end": b.published - b.processed,
        "sustained": rate < FLAT_OUT and is_sustained(rate, achieved, slope),
        "window_s": round(span, 1),
        "snapshots": len(inside),
        "lists_per_click": round((b.lists - a.lists) / events_ok, 4) if events_ok else None,
        "mean_click_batch": round((b.batch_events - a.batch_events) / batches, 1)
        if batches
        else None,
        "gc_share": round((b.gc_s - a.gc_s) / span, 4),
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
        settings, workers, source, topics, FLAT_OUT, opts, opts.probe_s, PROBE_BACKLOG_S
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

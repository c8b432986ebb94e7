"""The many-users phases of the pipeline benchmark (issue 20, "How it is measured").

For each catalog size, on a fresh lane (bench/lanes.py) with one worker (or two, on four
partitions, for ``many_users_2_workers``):

1. the catalog is published and indexed (timed; a worker that cannot index it in time or
   grows past the memory limit fails this catalog with a message, and the run goes on);
2. the workload's ``N`` users' profiles are published and processed (bench/workload.py);
3. sustained throughput: the highest offered rate of the workload at which the consumer
   lag does not grow (bench/sustained.py), with the lists ranked per event, read from
   the worker's metrics (``scenerec_recommendations_total`` over events applied);
4. new users: ``--mu-new-users-per-s`` a second, each a profile and, ``--mu-click-delay``
   later, a first click: profile -> that user's first list, first click -> the list that
   names it;
5. latency at an offered ``--mu-latency-rate`` (1,000 events/s): publish -> the
   recommendations message whose ``trigger_event_id`` names the event
   (bench/load.py's ``latency_at`` and ``RecWatcher``);
6. the worker's RSS from /proc (``VmRSS`` now, ``VmHWM`` its peak).

The issue's targets are printed beside the numbers (:func:`table_rows`); nothing asserts
them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bench import profiling, sustained
from bench.encoder_cache import CachingEncoderProxy
from bench.lanes import CatalogLane, CatalogOptions, start_catalog_lane
from bench.load import RecWatcher, latency_at, publish
from bench.stack import BenchStack, IndexingFailed, Worker, percentiles
from bench.workload import CLICK, EVENT_TOPICS, PROFILES, Workload, WorkloadConfig
from scenerec.config import Settings
from scenerec.datasets import Dataset
from scenerec.kafka import producer

log = logging.getLogger("bench.many_users")

#: The worker before issue 20 logs this when its catalog outgrows its item-item counts.
FALLBACK_LOG = "larger than the collaborative counts' limit"
#: Since issue 20 the worker logs up to which catalog size it scores every item.
EXACT_LOG = re.compile(r"every item scored up to (\d+) items")


@dataclass(frozen=True)
class ManyUsersOptions:
    users: int = 10_000
    seed: int = 20
    search: sustained.SearchOptions = field(default_factory=sustained.SearchOptions)
    latency_rate: int = 1000
    latency_seconds: float = 20.0
    grace_s: float = 60.0
    new_users_per_s: float = 100.0
    new_user_seconds: float = 20.0
    click_delay_s: float = 0.5
    profiles_timeout_s: float = 900.0
    #: py-spy seconds in the probe window of the 1,682-item catalog (0: off)
    profile_seconds: float = 0.0
    profile_dir: Path = Path("results/profile")


def catalog_label(n: int, detail: dict[str, Any], ml100k: int) -> str:
    if n == ml100k:
        return "ml-100k items"
    vectors = str(detail.get("vectors", ""))
    kind = "synthetic vectors" if vectors.startswith("synthetic") else "encoded vectors"
    return f"synthetic: {ml100k} ml-100k items + {n - ml100k} template items, {kind}"


def run_catalog(
    stack: BenchStack,
    data: Dataset,
    n: int,
    workers: int,
    catalog: CatalogOptions,
    opts: ManyUsersOptions,
    proxies: list[CachingEncoderProxy],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The many-users phases on a catalog of ``n`` items: (result row, detail)."""
    name = f"mu{n}" if workers == 1 else f"mu{n}x{workers}"
    t0 = time.monotonic()
    try:
        cl = start_catalog_lane(stack, data, n, name, catalog, workers, proxies)
    except IndexingFailed as exc:
        log.error("many users, catalog %d: %s", n, exc)
        label = "ml-100k items" if n == len(data.items) else "synthetic"
        return {"catalog": label, "error": str(exc)}, {"index_trace": exc.trace}
    try:
        return _measure(cl, n, len(data.items), opts, t0)
    finally:
        cl.lane.stop_all()


def _measure(
    cl: CatalogLane, n: int, ml100k: int, opts: ManyUsersOptions, t0: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    settings, workers = cl.lane.settings, cl.workers
    workload = Workload(
        cl.items, WorkloadConfig(users=opts.users, seed=opts.seed), f"mu{uuid.uuid4().hex[:5]}"
    )
    detail: dict[str, Any] = {"catalog": cl.detail, "workers": [w.name for w in workers]}
    detail["profiles"] = asyncio.run(_profiles(settings, workers, workload, opts))
    log.info("many users, catalog %d: %s", n, detail["profiles"])
    spy = _profile_probe(workers[0], n, ml100k, opts)
    found = asyncio.run(sustained.search(settings, workers, workload, EVENT_TOPICS, opts.search))
    if spy is not None:
        detail["profile"] = spy()
    detail["throughput"] = found
    rss_after_tp = _rss(workers)
    detail["new_users"] = asyncio.run(_new_users(settings, workers, workload, opts))
    # A backlog the new users left (workers that fell behind) is not the latency run's.
    detail["settle_before_latency"] = asyncio.run(
        sustained.settle(
            workers,
            [settings.topic(t) for t in (*EVENT_TOPICS, PROFILES)],
            opts.search.drain_timeout_s,
        )
    )
    detail["latency"] = asyncio.run(
        latency_at(settings, workload, opts.latency_rate, opts.latency_seconds, opts.grace_s)
    )
    detail["rss_mb"] = {"after_throughput": rss_after_tp, "at_end": _rss(workers)}
    detail["ranking"] = _ranking_mode(workers, n)
    detail["seconds"] = round(time.monotonic() - t0, 1)
    lat = detail["latency"]
    row = {
        "catalog": catalog_label(n, cl.detail, ml100k),
        "ranking": detail["ranking"],
        "events_per_s": found["events_per_s"],
        "sustained": found["sustained"],
        "lag_slope_per_s": found["lag_slope_per_s"],
        "lists_per_click": found["lists_per_click"],
        "latency_ms": {
            str(opts.latency_rate): {
                **{k: lat[k] for k in ("p50", "p95", "p99")},
                "not_reflected": lat["not_reflected"],
                "achieved_offered_rate": lat["achieved_offered_rate"],
            }
        },
        "new_users_ms": {
            k: {p: v[p] for p in ("p50", "p95")} for k, v in detail["new_users"]["latency"].items()
        },
        "worker_rss_mb": max(
            (r["peak"] for r in detail["rss_mb"]["at_end"].values() if r["peak"] is not None),
            default=None,
        ),
        "index_seconds": cl.detail.get("index_seconds"),
    }
    return row, detail


def _rss(workers: list[Worker]) -> dict[str, dict[str, float | None]]:
    def mb(v: float | None) -> float | None:
        return None if v is None else round(v, 1)

    return {w.name: {"now": mb(w.rss_mb()), "peak": mb(w.rss_mb("VmHWM"))} for w in workers}


def _ranking_mode(workers: list[Worker], n: int) -> str:
    """How the worker ranked this catalog, from what its log says at start-up."""
    for w in workers:
        with contextlib.suppress(OSError):
            text = (w.var_dir / "logs" / f"{w.name}.log").read_text(errors="replace")
            if FALLBACK_LOG in text:  # the worker before issue 20
                return "fallback: log popularity + similarity (item-item counts dropped)"
            exact = EXACT_LOG.search(text)
            if exact is not None:
                if n <= int(exact.group(1)):
                    return "exact: every item scored, with the item-item statistics"
                return "candidates, then the blend over them"
    return "blend over every item (with item-item counts)"


def _profile_probe(
    worker: Worker, n: int, ml100k: int, opts: ManyUsersOptions
) -> Callable[[], dict[str, Any]] | None:
    """py-spy in the middle of the probe window of the ml-100k catalog, if asked."""
    seconds = min(opts.profile_seconds, opts.search.probe_s)
    if seconds <= 0 or n != ml100k:
        return None
    delay = opts.search.warmup_s + (opts.search.probe_s - seconds) / 2
    out = opts.profile_dir / f"many-users-{n}.raw"
    title = f"many users, {n} items: py-spy, {seconds:.0f}s of the flat-out probe"
    return profiling.profile_later(worker.pid, out, seconds, delay, title)


async def _profiles(
    settings: Settings, workers: list[Worker], workload: Workload, opts: ManyUsersOptions
) -> dict[str, Any]:
    """Every user's profile published, then processed (encoded, applied, first lists)."""
    base = await sustained.processed(workers, (PROFILES,))
    msgs = workload.profiles()
    publish_s = await publish(settings, PROFILES, msgs, "profiles")
    took, done = await sustained.drain_to(
        workers, (PROFILES,), base + len(msgs), opts.profiles_timeout_s
    )
    return {
        "users": len(msgs),
        "publish_seconds": round(publish_s, 1),
        "processed_seconds": round(publish_s + took, 1),
        "all_processed": done,
    }


async def _new_users(
    settings: Settings, workers: list[Worker], workload: Workload, opts: ManyUsersOptions
) -> dict[str, Any]:
    """New users at ``new_users_per_s``: a profile, then a first click ``click_delay_s``
    later; profile -> first list of the user, first click -> the list naming it."""
    n = max(1, int(opts.new_users_per_s * opts.new_user_seconds))
    schedule: list[tuple[float, str, dict[str, Any]]] = []
    for i in range(n):
        profile, click = workload.new_user()
        at = i / opts.new_users_per_s
        schedule += [(at, PROFILES, profile), (at + opts.click_delay_s, CLICK, click)]
    schedule.sort(key=lambda x: x[0])
    watcher = RecWatcher(settings)
    await watcher.start()
    prod = producer(settings)
    await prod.start()
    profile_sent: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        for at, topic, msg in schedule:
            ahead = at - (time.monotonic() - t0)
            if ahead > 0:
                await asyncio.sleep(ahead)
            now = time.monotonic()
            uid = msg["user_id"]
            if topic == PROFILES:
                profile_sent[uid] = now
            else:
                msg = {**msg, "ts": time.time()}
                watcher.expect(uid, msg["event_id"], now, CLICK)
            await prod.send(settings.topic(topic), key=uid.encode(), value=orjson.dumps(msg))
        await prod.flush()
        deadline = time.monotonic() + opts.grace_s
        while time.monotonic() < deadline and (
            watcher.unreflected() or any(u not in watcher.first_seen for u in profile_sent)
        ):
            await asyncio.sleep(0.2)
    finally:
        await prod.stop()
        await watcher.stop()
    first_list = [
        (watcher.first_seen[u] - t) * 1000 if u in watcher.first_seen else math.inf
        for u, t in profile_sent.items()
    ]
    return {
        "users": n,
        "per_s": opts.new_users_per_s,
        "click_delay_s": opts.click_delay_s,
        "latency": {
            "profile_to_first_list": {
                **percentiles(first_list, (50, 95, 99)),
                "answered": sum(math.isfinite(x) for x in first_list),
            },
            "first_click_to_list": {
                **watcher.percentiles((50, 95, 99)),
                "answered": len(watcher.samples),
            },
        },
    }


# --- reporting -------------------------------------------------------------------------------

#: The issue's targets on this machine (issue 20), printed beside the numbers.
TARGETS: dict[str, dict[str, tuple[str, Callable[[float], bool]]]] = {
    "events_per_s": {
        "1682": (">= 5,000", lambda v: v >= 5000),
        "100000": (">= 2,000", lambda v: v >= 2000),
        "1000000": (">= 1,000", lambda v: v >= 1000),
    },
    "p99": {
        "1682": ("< 100", lambda v: v < 100),
        "100000": ("< 100", lambda v: v < 100),
    },
    "worker_rss_mb": {"1000000": ("<= 4,096", lambda v: v <= 4096)},
    "new_user_p95": {k: ("< 1,000", lambda v: v < 1000) for k in ("1682", "100000", "1000000")},
}


def _target(kind: str, catalog: str, value: object) -> str:
    target = TARGETS.get(kind, {}).get(catalog)
    if target is None:
        return ""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return f"(target {target[0]}: not measured)"
    return f"(target {target[0]}: {'met' if target[1](float(value)) else 'missed'})"


def _f(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "-" if v is None else str(v)


def _row_cells(cat: str, row: dict[str, Any]) -> list[tuple[str, str, str, object]]:
    """(label, value text, target kind, value compared with the target) of one catalog."""
    rate = row["events_per_s"]
    label = "sustained" if row["sustained"] else "not sustained"
    cells: list[tuple[str, str, str, object]] = [
        (f"events/s ({label})", _f(rate), "events_per_s", rate if row["sustained"] else None),
        ("lists per click", _f(row["lists_per_click"]), "", None),
        ("lag slope (events/s)", _f(row["lag_slope_per_s"]), "", None),
    ]
    for at, p in row["latency_ms"].items():
        text = " / ".join(_f(p[k]) for k in ("p50", "p95", "p99"))
        cells.append((f"latency @ {at}/s p50/p95/p99 (ms)", text, "p99", p["p99"]))
    for kind, p in row["new_users_ms"].items():
        what = f"new users, {kind.replace('_', ' ')} p50/p95 (ms)"
        cells.append((what, f"{_f(p['p50'])} / {_f(p['p95'])}", "new_user_p95", p["p95"]))
    rss = row["worker_rss_mb"]
    cells.append(("worker RSS peak (MiB)", _f(rss), "worker_rss_mb", rss))
    cells.append(("catalog indexed in (s)", _f(row["index_seconds"]), "", None))
    return cells


def table_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows for the bench's table: many users per catalog, then with two workers."""
    rows: list[tuple[str, str]] = []
    for key, what in (("many_users", "1 worker"), ("many_users_2_workers", "2 workers")):
        for cat, row in result.get(key, {}).items():
            head = f"many users, {cat} items, {what}"
            if "error" in row:
                rows.append((head, f"FAILED: {row['error'].splitlines()[0]}"))
                continue
            for label, text, kind, value in _row_cells(cat, row):
                rows.append((f"{head}: {label}", f"{text} {_target(kind, cat, value)}".strip()))
    return rows

"""End-to-end pipeline benchmark: Kafka ceiling, worker throughput, latency, cold start.

    python -m bench.pipeline_bench --seconds 60 --rates 100,1000 --out results/bench.json

Everything runs against a private stack started by this script (like the integration
tests): a temporary var dir, free ports for the broker, Ray Serve and the worker's web
server, a unique topic prefix and Faust app id, so a running demo is never touched.
Measured, in order:

1. ``kafka_ceiling_events_per_s``: raw aiokafka produce-then-consume of click-sized JSON
   events on the same local broker, before the encoder and the worker are started;
2. the ml-100k catalog (1,682 items) is published and indexed (``/ready``);
3. ``throughput_events_per_s["1682"]``: clicks published as fast as the worker takes them
   (bounded backlog) for ``--seconds`` after ``--warmup-seconds``, counted by the worker's
   ``scenerec_events_total{topic="events.click",outcome="ok"}``;
4. ``latency_ms``: clicks at fixed offered rates, (first recommendation reflecting an
   event) - (its publish time), matched by ``trigger_event_id``;
5. ``cold_start_ms``: new users, profile only or first click, until their first list.

The stack is always torn down at the end (also on Ctrl-C or SIGTERM).
Not measured here: the 100,000-item catalog, encoder_efficiency (see
bench/encoder_bench.py), memory and scale-out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import signal
import socket
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from scenerec.config import Settings
from scenerec.datasets import Dataset, load_ml100k
from scenerec.kafka import client_kwargs, consumer, producer

log = logging.getLogger("bench.pipeline")

CATALOG = "1682"
CLICK_TOPIC = "events.click"
#: Published-but-unprocessed clicks allowed during the throughput window: enough to keep
#: the worker busy, small enough that the backlog drains in seconds before latency runs.
MAX_BACKLOG = 10_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine() -> str:
    cores = os.cpu_count() or 0
    mem_gib = 0.0
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / 1024**2
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{cores} cores, {mem_gib:.1f} GiB memory, {model}"


def percentiles(values: Sequence[float], wanted: Sequence[int]) -> dict[str, float | None]:
    if not values:
        return {f"p{p}": None for p in wanted}
    ordered = sorted(values)
    out: dict[str, float | None] = {}
    for p in wanted:
        # nearest-rank percentile
        rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.4999)))
        out[f"p{p}"] = round(ordered[rank - 1], 1)
    return out


# --- the private stack ---------------------------------------------------------------------


def bench_env(var_dir: Path) -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {
        "SCENEREC_VAR_DIR": str(var_dir),
        "SCENEREC_KAFKA_PORT": str(free_port()),
        "SCENEREC_KAFKA_CONTROLLER_PORT": str(free_port()),
        "SCENEREC_SERVE_PORT": str(free_port()),
        "SCENEREC_WORKER_WEB_PORT": str(free_port()),
        "SCENEREC_TOPIC_PREFIX": f"b{tag[:6]}.",
        "SCENEREC_APP_ID": f"scenerec-bench-{tag}",
    }


@dataclass
class Stack:
    """The building blocks of ``deploy.stack.up``, in an order that keeps the ceiling quiet."""

    settings: Settings
    started: list[str] = field(default_factory=list)

    def kafka_up(self) -> None:
        from deploy.stack import local_kafka
        from scenerec.kafka import ensure_topics

        self.started.append("kafka")
        local_kafka(self.settings).start()
        asyncio.run(ensure_topics(self.settings))

    def serve_and_worker_up(self) -> None:
        from deploy.ray_serve import start_serve
        from deploy.stack import encoder_config
        from deploy.worker import start_worker

        self.started.append("serve")
        start_serve(encoder_config(self.settings), http_port=self.settings.serve_port)
        self.started.append("worker")
        # The worker inherits os.environ, which main() has set to the bench's settings.
        start_worker(self.settings.var_dir, self.settings.worker_web_port)

    def down(self) -> None:
        from deploy.stack import local_kafka
        from deploy.worker import stop_worker

        if "worker" in self.started:
            with contextlib.suppress(Exception):
                stop_worker(self.settings.var_dir)
        if "serve" in self.started:
            from deploy.ray_serve import stop_serve

            with contextlib.suppress(Exception):
                stop_serve()
        if "kafka" in self.started:
            local_kafka(self.settings).stop()
        self.started.clear()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


async def clicks_ok(settings: Settings) -> float:
    """The worker's scenerec_events_total{topic="events.click",outcome="ok"}."""
    url = f"http://127.0.0.1:{settings.worker_web_port}/metrics"
    status, body = await asyncio.to_thread(_get, url)
    if status != 200:
        raise RuntimeError(f"GET {url} answered {status}")
    for family in text_string_to_metric_families(body.decode()):
        if family.name != "scenerec_events":
            continue
        for sample in family.samples:
            if (
                sample.name == "scenerec_events_total"
                and sample.labels.get("topic") == CLICK_TOPIC
                and sample.labels.get("outcome") == "ok"
            ):
                return float(sample.value)
    return 0.0


async def wait_indexed(settings: Settings, n_items: int, timeout_s: float) -> float:
    url = f"http://127.0.0.1:{settings.worker_web_port}/ready"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        status, body = await asyncio.to_thread(_get, url)
        if status == 200 and int(orjson.loads(body).get("items", 0)) >= n_items:
            return time.monotonic() - t0
        await asyncio.sleep(1.0)
    raise TimeoutError(f"catalog not indexed ({n_items} items) after {timeout_s:.0f}s")


# --- 1. Kafka ceiling ----------------------------------------------------------------------


async def kafka_ceiling(
    settings: Settings, n_events: int, clicks: list[dict[str, Any]]
) -> dict[str, float]:
    topic = settings.topic(f"bench.ceiling.{uuid.uuid4().hex[:6]}")
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name=topic, num_partitions=settings.partitions, replication_factor=1)]
        )
    finally:
        await admin.close()
    values = [orjson.dumps(c) for c in clicks[: min(len(clicks), 10_000)]]
    keys = [str(c["user_id"]).encode() for c in clicks[: len(values)]]
    prod = AIOKafkaProducer(
        **client_kwargs(settings), acks="all", linger_ms=20, max_batch_size=512 * 1024
    )
    await prod.start()
    try:
        t0 = time.perf_counter()
        for i in range(n_events):
            j = i % len(values)
            await prod.send(topic, key=keys[j], value=values[j])
        await prod.flush()
        produce_s = time.perf_counter() - t0
    finally:
        await prod.stop()
    cons = consumer(
        settings,
        topic,
        group_id=None,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await cons.start()
    got = 0
    try:
        t1 = time.perf_counter()
        async with asyncio.timeout(300):
            while got < n_events:
                batch = await cons.getmany(timeout_ms=500, max_records=50_000)
                for records in batch.values():
                    for r in records:
                        orjson.loads(r.value)  # a consumer that looks at what it gets
                    got += len(records)
        consume_s = time.perf_counter() - t1
    finally:
        await cons.stop()
    return {
        "events": float(n_events),
        "bytes_per_event": float(sum(len(v) for v in values) / len(values)),
        "produce_events_per_s": n_events / produce_s,
        "consume_events_per_s": n_events / consume_s,
        "events_per_s": n_events / (produce_s + consume_s),
    }


# --- click source --------------------------------------------------------------------------


class ClickSource:
    """ml-100k clicks in time order, cycled; every published click gets a fresh event id."""

    def __init__(self, data: Dataset, tag: str) -> None:
        self._clicks = data.clicks
        self._tag = tag
        self._i = 0

    def next(self, phase: str) -> dict[str, Any]:
        base = self._clicks[self._i % len(self._clicks)]
        self._i += 1
        return {**base, "event_id": f"{self._tag}-{phase}-{self._i}"}


async def publish_catalog(settings: Settings, data: Dataset) -> None:
    prod = producer(settings)
    await prod.start()
    try:
        for item in data.items:
            await prod.send(
                settings.topic("catalog.items"),
                key=str(item["item_id"]).encode(),
                value=orjson.dumps(item),
            )
        await prod.flush()
    finally:
        await prod.stop()


# --- 3. throughput -------------------------------------------------------------------------


async def metrics_work(settings: Settings) -> bool:
    url = f"http://127.0.0.1:{settings.worker_web_port}/metrics"
    status, _ = await asyncio.to_thread(_get, url)
    return status == 200


async def throughput(
    settings: Settings, source: ClickSource, warmup_s: float, window_s: float
) -> dict[str, Any]:
    """Events processed per second; from /metrics, or from the output topic if it fails.

    Fallback (``counted_by`` = "recommendations.trigger_event_id"): every published click
    gets a per-user sequence number; a recommendations message whose trigger is a user's
    n-th click means that user's clicks 1..n are processed (a user's clicks share one
    partition and are applied in order), so processed = sum over users of the highest n seen.
    """
    use_metrics = await metrics_work(settings)
    watcher = RecWatcher(settings)
    await watcher.start()
    prod = producer(settings)
    await prod.start()
    topic = settings.topic(CLICK_TOPIC)
    base = await clicks_ok(settings) if use_metrics else 0.0

    async def count() -> float:
        if use_metrics:
            return await clicks_ok(settings) - base
        return float(watcher.processed)

    published = 0
    done = asyncio.Event()
    processed = 0.0

    async def pump() -> None:
        nonlocal published
        while not done.is_set():
            if published - processed >= MAX_BACKLOG:
                await asyncio.sleep(0.05)
                continue
            for _ in range(500):
                click = source.next("tp")
                watcher.track(click["user_id"], click["event_id"])
                await prod.send(topic, key=click["user_id"].encode(), value=orjson.dumps(click))
                published += 1
            await asyncio.sleep(0)

    async def watch() -> None:
        nonlocal processed
        while not done.is_set():
            processed = await count()
            await asyncio.sleep(0.5)

    tasks = [asyncio.create_task(pump()), asyncio.create_task(watch())]
    try:
        await asyncio.sleep(warmup_s)
        start_count, t0 = await count(), time.monotonic()
        await asyncio.sleep(window_s)
        end_count, t1 = await count(), time.monotonic()
    finally:
        done.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await prod.flush()
        await prod.stop()
    try:
        # Let the bounded backlog drain so the latency runs start on an idle worker.
        drain_t0 = time.monotonic()
        last, stable_since = -1.0, time.monotonic()
        while time.monotonic() - drain_t0 < 300:
            now = await count()
            if now >= published:
                break
            if now != last:
                last, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since > 30:  # nothing moves: some went to the DLQ
                break
            await asyncio.sleep(0.5)
        drain_s = time.monotonic() - drain_t0
    finally:
        await watcher.stop()
    return {
        "events_per_s": (end_count - start_count) / (t1 - t0),
        "window_s": t1 - t0,
        "events_in_window": end_count - start_count,
        "published": float(published),
        "drain_s": drain_s,
        "counted_by": (
            'scenerec_events_total{topic="events.click",outcome="ok"}'
            if use_metrics
            else "recommendations.trigger_event_id"
        ),
    }


# --- 4./5. latency and cold start ----------------------------------------------------------


class RecWatcher:
    """Reads the recommendations topic from its end and matches lists to published events.

    Rule: a user's published events wait in publish order. A message for that user whose
    ``trigger_event_id`` is one of them reflects that event and every earlier pending
    event of the same user (the worker applies a user's events of one batch together and
    names only the last); each gets latency = arrival of that message - its publish time.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pending: dict[str, deque[tuple[str, float]]] = defaultdict(deque)
        self.latencies_ms: list[float] = []
        self.first_seen: dict[str, float] = {}
        # throughput fallback: event id -> (user, n-th tracked click of that user)
        self._seq: dict[str, int] = {}
        self._tracked: dict[str, int] = defaultdict(int)
        self._done: dict[str, int] = defaultdict(int)
        self.processed = 0
        self._cons: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        topic = self.settings.topic("recommendations")
        cons = consumer(self.settings, group_id=None, enable_auto_commit=False)
        await cons.start()
        # ensure_topics created it with settings.partitions partitions
        tps = [TopicPartition(topic, p) for p in range(self.settings.partitions)]
        cons.assign(tps)
        await cons.seek_to_end(*tps)
        for tp in tps:
            await cons.position(tp)  # resolve the end offsets now, before publishing
        self._cons = cons
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._cons is not None:
            await self._cons.stop()

    def expect(self, user_id: str, event_id: str, published_at: float) -> None:
        self.pending[user_id].append((event_id, published_at))

    def track(self, user_id: str, event_id: str) -> None:
        self._tracked[user_id] += 1
        self._seq[event_id] = self._tracked[user_id]

    def unreflected(self) -> int:
        return sum(len(q) for q in self.pending.values())

    async def _run(self) -> None:
        assert self._cons is not None
        while True:
            batch = await self._cons.getmany(timeout_ms=200)
            arrived = time.monotonic()
            for records in batch.values():
                for r in records:
                    msg = orjson.loads(r.value)
                    self._on_message(str(msg.get("user_id")), msg.get("trigger_event_id"), arrived)

    def _on_message(self, user_id: str, trigger: object, arrived: float) -> None:
        self.first_seen.setdefault(user_id, arrived)
        n = self._seq.get(trigger) if isinstance(trigger, str) else None
        if n is not None and n > self._done[user_id]:
            self.processed += n - self._done[user_id]
            self._done[user_id] = n
        queue = self.pending.get(user_id)
        if not queue or not any(eid == trigger for eid, _ in queue):
            return
        while queue:
            eid, published_at = queue.popleft()
            self.latencies_ms.append((arrived - published_at) * 1000)
            if eid == trigger:
                break


async def latency_at(
    settings: Settings, source: ClickSource, rate: int, seconds: float, grace_s: float
) -> dict[str, Any]:
    watcher = RecWatcher(settings)
    await watcher.start()
    prod = producer(settings)
    await prod.start()
    topic = settings.topic(CLICK_TOPIC)
    n = int(rate * seconds)
    try:
        t0 = time.monotonic()
        for i in range(n):
            click = source.next(f"lat{rate}")
            now = time.monotonic()
            watcher.expect(click["user_id"], click["event_id"], now)
            await prod.send(topic, key=click["user_id"].encode(), value=orjson.dumps(click))
            ahead = (i + 1) / rate - (time.monotonic() - t0)
            if ahead > 0:
                await asyncio.sleep(ahead)
        offered_s = time.monotonic() - t0
        await prod.flush()
        deadline = time.monotonic() + grace_s
        while watcher.unreflected() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
    finally:
        await prod.stop()
        await watcher.stop()
    return {
        **percentiles(watcher.latencies_ms, (50, 95, 99)),
        "events": n,
        "reflected": len(watcher.latencies_ms),
        "not_reflected": watcher.unreflected(),
        "achieved_offered_rate": round(n / offered_s, 1),
    }


async def cold_start(
    settings: Settings, data: Dataset, users: int, spacing_s: float, grace_s: float
) -> dict[str, dict[str, Any]]:
    watcher = RecWatcher(settings)
    await watcher.start()
    prod = producer(settings)
    await prod.start()
    tag = uuid.uuid4().hex[:6]
    sent: dict[str, dict[str, float]] = {"profile": {}, "first_click": {}}
    try:
        for i in range(users):
            prof = data.profiles[i % len(data.profiles)]
            uid = f"cold-p-{tag}-{i}"
            sent["profile"][uid] = time.monotonic()
            await prod.send_and_wait(
                settings.topic("users.profiles"),
                key=uid.encode(),
                value=orjson.dumps({**prof, "user_id": uid}),
            )
            await asyncio.sleep(spacing_s)
            click = data.clicks[(i * 977) % len(data.clicks)]
            uid = f"cold-c-{tag}-{i}"
            sent["first_click"][uid] = time.monotonic()
            await prod.send_and_wait(
                settings.topic(CLICK_TOPIC),
                key=uid.encode(),
                value=orjson.dumps({**click, "user_id": uid, "event_id": f"{uid}-e0"}),
            )
            await asyncio.sleep(spacing_s)
        deadline = time.monotonic() + grace_s
        everyone = [u for kind in sent.values() for u in kind]
        while time.monotonic() < deadline and any(u not in watcher.first_seen for u in everyone):
            await asyncio.sleep(0.2)
    finally:
        await prod.stop()
        await watcher.stop()
    out: dict[str, dict[str, Any]] = {}
    for kind, users_sent in sent.items():
        lat = [
            (watcher.first_seen[u] - t) * 1000
            for u, t in users_sent.items()
            if u in watcher.first_seen
        ]
        out[kind] = {**percentiles(lat, (50, 95)), "users": len(users_sent), "answered": len(lat)}
    return out


# --- driver --------------------------------------------------------------------------------


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.1f}"
    return "-" if v is None else str(v)


def table(result: dict[str, Any]) -> str:
    rows: list[tuple[str, str]] = []
    if "kafka_ceiling_events_per_s" in result:
        rows.append(("kafka ceiling (events/s)", _fmt(result["kafka_ceiling_events_per_s"])))
    for cat, v in result.get("throughput_events_per_s", {}).items():
        rows.append((f"throughput, catalog {cat} (events/s)", _fmt(v)))
        rows.append((f"throughput ratio, catalog {cat}", f"{result['throughput_ratio'][cat]:.3f}"))
    for rate, p in result.get("latency_ms", {}).items():
        rows.append(
            (
                f"latency @ {rate} ev/s (ms) p50/p95/p99",
                " / ".join(_fmt(p.get(k)) for k in ("p50", "p95", "p99")),
            )
        )
    for kind, p in result.get("cold_start_ms", {}).items():
        rows.append(
            (f"cold start, {kind} (ms) p50/p95", " / ".join(_fmt(p.get(k)) for k in ("p50", "p95")))
        )
    width = max((len(k) for k, _ in rows), default=10)
    return "\n".join(f"{k:<{width}}  {v:>24}" for k, v in rows)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def catch_signals() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt, so that run() tears the stack down.

    Called again after Ray Serve starts: ``ray.init`` installs its own SIGTERM handler,
    and SIGINT is ignored in a process started in the background by a non-interactive shell.
    """
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.pipeline_bench",
        description="End-to-end SceneRec benchmark on a private local stack (see module doc).",
    )
    p.add_argument("--seconds", type=float, default=60.0, help="throughput window (issue: >= 60)")
    p.add_argument("--warmup-seconds", type=float, default=10.0, help="load before the window")
    p.add_argument("--rates", default="100,1000", help="offered click rates for latency (ev/s)")
    p.add_argument("--latency-seconds", type=float, default=20.0, help="seconds per rate")
    p.add_argument("--ceiling-events", type=int, default=200_000, help="events for the ceiling")
    p.add_argument("--cold-users", type=int, default=20, help="new users per cold-start kind")
    p.add_argument("--out", type=Path, default=Path("results/bench.json"))
    p.add_argument("--keep-var", action="store_true", help="keep the temporary var dir")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    try:
        args.rate_list = [int(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        p.error(f"--rates: comma-separated integers expected, got {args.rates!r}")
    return args


async def measure(
    settings: Settings, data: Dataset, args: argparse.Namespace, result: dict[str, Any]
) -> None:
    notes: list[str] = result["notes"]
    source = ClickSource(data, uuid.uuid4().hex[:6])
    t = time.monotonic()
    await publish_catalog(settings, data)
    index_s = await wait_indexed(settings, len(data.items), timeout_s=900)
    log.info("catalog of %d items indexed in %.1fs", len(data.items), time.monotonic() - t)
    notes.append(
        f"catalog: {len(data.items)} ml-100k items indexed in {index_s:.1f}s after publish"
    )

    log.info("throughput: %.0fs warm-up, %.0fs window", args.warmup_seconds, args.seconds)
    tp = await throughput(settings, source, args.warmup_seconds, args.seconds)
    ceiling = float(result["kafka_ceiling_events_per_s"])
    result["throughput_events_per_s"] = {CATALOG: round(tp["events_per_s"], 1)}
    result["throughput_ratio"] = {CATALOG: round(tp["events_per_s"] / ceiling, 4)}
    result["throughput_detail"] = {
        CATALOG: {k: round(v, 1) if isinstance(v, float) else v for k, v in tp.items()}
    }
    if tp["counted_by"] == "recommendations.trigger_event_id":
        notes.append(
            "the worker's /metrics answered HTTP 500 (aiohttp refuses prometheus_client's "
            "CONTENT_TYPE_LATEST, which carries a charset), so processed clicks were counted "
            "from the recommendations topic instead: see throughput_detail.counted_by and the "
            "throughput() docstring"
        )
    if args.seconds < 60:
        notes.append(
            f"throughput window was {args.seconds:.0f}s (--seconds), shorter than the 60 s the "
            "issue asks for: a quick run"
        )
    log.info("throughput %.1f events/s", tp["events_per_s"])

    result["latency_ms"] = {}
    for rate in args.rate_list:
        log.info("latency at %d events/s for %.0fs", rate, args.latency_seconds)
        lat = await latency_at(settings, source, rate, args.latency_seconds, grace_s=60)
        result["latency_ms"][str(rate)] = lat
        log.info("latency at %d: %s", rate, lat)

    log.info("cold start: %d users per kind", args.cold_users)
    result["cold_start_ms"] = await cold_start(
        settings, data, args.cold_users, spacing_s=0.25, grace_s=60
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    wall0 = time.monotonic()
    var_dir = Path(tempfile.mkdtemp(prefix="scenerec-bench-"))
    env = bench_env(var_dir)
    os.environ.update(env)  # read by Settings() here and inherited by the worker
    settings = Settings()
    data = load_ml100k(settings.data_dir)
    result: dict[str, Any] = {
        "machine": machine(),
        "notes": [
            "kafka_ceiling_events_per_s = N / (produce seconds + consume seconds) for N "
            f"click-sized JSON events (acks=all, linger 20 ms, {settings.partitions} partitions), "
            "produced and then read by a fresh consumer, on the same local broker before the "
            "encoder and the worker start; produce and consume rates are in kafka_ceiling_detail",
            "throughput: ml-100k clicks (fresh event ids, cycled) published as fast as the worker "
            f"takes them, at most {MAX_BACKLOG} unprocessed; events/s = delta of "
            'scenerec_events_total{topic="events.click",outcome="ok"} over the window '
            "(throughput_detail.counted_by names the output-topic fallback when /metrics fails)",
            "latency rule: a user's published events wait in publish order; the first "
            "recommendations message for that user whose trigger_event_id is one of them "
            "reflects it and every earlier pending event of that user (debounced into the later "
            "one); latency = arrival time of that message at the bench's consumer - the time "
            "just before producer.send (producer linger 5 ms included); nearest-rank percentiles",
            "cold start: new user ids, one users.profiles message (profile) or one click "
            "(first_click) each, 0.25 s apart; time from publish to the first recommendations "
            "message for that user",
            "not measured: the 100,000-item catalog, encoder_efficiency (bench/encoder_bench.py), "
            "memory, scale_out",
            "the bench process (producer + consumer) shares the machine with Kafka, Ray Serve and "
            "the worker; on a small shared machine all numbers are noisy",
        ],
    }
    stack = Stack(settings)
    try:
        catch_signals()
        log.info("var dir %s, ports %s", var_dir, {k: v for k, v in env.items() if "PORT" in k})
        stack.kafka_up()
        log.info("kafka ceiling with %d events", args.ceiling_events)
        ceiling = asyncio.run(kafka_ceiling(settings, args.ceiling_events, data.clicks))
        result["kafka_ceiling_events_per_s"] = round(ceiling["events_per_s"], 1)
        result["kafka_ceiling_detail"] = {k: round(v, 1) for k, v in ceiling.items()}
        log.info("kafka ceiling %s", ceiling)
        stack.serve_and_worker_up()
        catch_signals()
        asyncio.run(measure(settings, data, args, result))
    except KeyboardInterrupt:
        result["notes"].append("interrupted: partial results")
        result["interrupted"] = True
        log.warning("interrupted: tearing down")
    finally:
        # no second interruption half-way through the teardown
        previous = (
            signal.signal(signal.SIGINT, signal.SIG_IGN),
            signal.signal(signal.SIGTERM, signal.SIG_IGN),
        )
        try:
            stack.down()
        finally:
            signal.signal(signal.SIGINT, previous[0])
            signal.signal(signal.SIGTERM, previous[1])
        if not args.keep_var:
            import shutil

            shutil.rmtree(var_dir, ignore_errors=True)
    result["run_seconds"] = round(time.monotonic() - wall0, 1)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # "Topic ... not found in cluster metadata" while a just-created topic propagates
    logging.getLogger("aiokafka.cluster").setLevel(logging.CRITICAL)
    result = run(args)
    print(table(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 130 if result.get("interrupted") else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The private stack of the pipeline benchmark: one broker, one Ray Serve encoder, and
workers in "lanes".

A lane is one independent SceneRec deployment on the shared broker and encoder: its own
topic prefix and Faust app id (so consumer group, changelog and output topics are its
own), and per worker its own var dir (embedded vector store, catalog positions) and web
port. Phases that need a fresh catalog or a fresh consumer group (the 100,000-item
catalog, scale-out, the kill run) each get a lane, so nothing one phase leaves behind
(items, user state, offsets) leaks into the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import platform
import signal
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from deploy.ports import free_port
from scenerec.config import Settings

log = logging.getLogger("bench.stack")

CLICK_TOPIC = "events.click"


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


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


def percentiles(values: Sequence[float], wanted: Sequence[int]) -> dict[str, float | None]:
    if not values:
        return {f"p{p}": None for p in wanted}
    ordered = sorted(values)
    out: dict[str, float | None] = {}
    for p in wanted:
        # nearest-rank percentile; an infinite value (an event never answered) is None
        rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.4999)))
        value = ordered[rank - 1]
        out[f"p{p}"] = round(value, 1) if math.isfinite(value) else None
    return out


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def base_env(var_dir: Path) -> dict[str, str]:
    """Environment of the bench process and, through inheritance, of every worker."""
    return {
        "SCENEREC_VAR_DIR": str(var_dir),
        "SCENEREC_KAFKA_PORT": str(free_port()),
        "SCENEREC_KAFKA_CONTROLLER_PORT": str(free_port()),
        "SCENEREC_SERVE_PORT": str(free_port()),
        "SCENEREC_WORKER_WEB_PORT": str(free_port()),
        # A Ray head of the bench's own: other stacks on the machine keep theirs.
        "SCENEREC_RAY_PORT": str(free_port()),
        "SCENEREC_RAY_TEMP_DIR": f"/tmp/scenerec-ray-{uuid.uuid4().hex[:8]}",
    }


@dataclass
class Worker:
    name: str
    var_dir: Path
    web_port: int
    pid: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def alive(self) -> bool:
        if self.pid <= 0:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        # A zombie (exited, not yet reaped) still answers kill(0).
        with contextlib.suppress(OSError):
            state = Path(f"/proc/{self.pid}/stat").read_text().split(") ", 1)[1][:1]
            return state != "Z"
        return True

    def rss_mb(self, field: str = "VmRSS") -> float | None:
        """Resident memory of the worker process (``VmRSS``; ``VmHWM``: its peak), in MiB."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
        return None

    def log_tail(self, lines: int = 20) -> str:
        path = self.var_dir / "logs" / f"{self.name}.log"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"


@dataclass
class Lane:
    """One SceneRec deployment (topic prefix + app id) on the shared broker and encoder."""

    name: str
    settings: Settings
    root: Path
    env: dict[str, str]
    workers: list[Worker] = field(default_factory=list)

    def start_worker(self, name: str, timeout_s: float = 240.0) -> Worker:
        from deploy.worker import start_worker

        var_dir = self.root / name
        var_dir.mkdir(parents=True, exist_ok=True)
        worker = Worker(name, var_dir, free_port())
        env = {**self.env, "SCENEREC_VAR_DIR": str(var_dir)}
        worker.pid = start_worker(var_dir, worker.web_port, env=env, timeout_s=timeout_s, name=name)
        self.workers.append(worker)
        return worker

    def stop_worker(self, worker: Worker, sig: signal.Signals = signal.SIGTERM) -> None:
        from deploy.worker import stop_worker

        with contextlib.suppress(Exception):
            stop_worker(worker.var_dir, name=worker.name, sig=sig)

    def stop_all(self) -> None:
        for w in self.workers:
            self.stop_worker(w)
        self.workers.clear()


@dataclass
class BenchStack:
    """Broker and encoder for the whole run; lanes for the workers."""

    settings: Settings
    root: Path
    started: list[str] = field(default_factory=list)
    lanes: list[Lane] = field(default_factory=list)
    #: Settings every worker gets (``--worker-env``), e.g. SCENEREC_BATCH_WITHIN_S=0.01.
    worker_env: dict[str, str] = field(default_factory=dict)

    def kafka_up(self) -> None:
        from deploy.stack import local_kafka

        self.started.append("kafka")
        local_kafka(self.settings).start()

    def serve_up(self) -> str:
        from deploy.ray_serve import start_serve
        from deploy.stack import encoder_config, ray_head

        self.started.append("serve")
        return start_serve(
            encoder_config(self.settings),
            http_port=self.settings.serve_port,
            head=ray_head(self.settings),
        )

    def lane(self, name: str, **env_extra: str) -> Lane:
        """A fresh lane: topics created, no worker started yet."""
        from scenerec.kafka import ensure_topics

        tag = uuid.uuid4().hex[:6]
        env = {
            "SCENEREC_TOPIC_PREFIX": f"b{tag}.",
            "SCENEREC_APP_ID": f"scenerec-bench-{name}-{tag}",
            **self.worker_env,
            **env_extra,
        }
        settings = self.settings.model_copy(
            update={"topic_prefix": env["SCENEREC_TOPIC_PREFIX"], "app_id": env["SCENEREC_APP_ID"]}
        )
        asyncio.run(ensure_topics(settings))
        lane = Lane(name, settings, self.root / name, env)
        self.lanes.append(lane)
        return lane

    def down(self) -> None:
        from deploy.stack import local_kafka

        for lane in self.lanes:
            lane.stop_all()
        if "serve" in self.started:
            from deploy.ray_serve import stop_serve
            from deploy.stack import ray_head

            with contextlib.suppress(Exception):
                stop_serve(ray_head(self.settings))
        if "kafka" in self.started:
            local_kafka(self.settings).stop()
        self.started.clear()


# --- reading a worker -----------------------------------------------------------------------


#: How long a live worker may take to answer ``/metrics``: its event loop answers between
#: batches, and one batch of 500 new users on a 100,000-item catalog took over 5 s.
METRICS_PATIENCE_S = 120.0


async def metric_families(worker: Worker, *names: str) -> dict[str, list[Sample]]:
    """The samples of each named metric family, from one read of the worker's ``/metrics``
    (retried while the worker lives and is busy, for up to :data:`METRICS_PATIENCE_S`)."""
    url = f"{worker.url}/metrics"
    t0 = time.monotonic()
    while True:
        status, body = await asyncio.to_thread(http_get, url, 30.0)
        if status == 200:
            break
        if status != 0 or not worker.alive() or time.monotonic() - t0 > METRICS_PATIENCE_S:
            alive = "alive" if worker.alive() else f"exited; log tail:\n{worker.log_tail()}"
            raise RuntimeError(f"GET {url} answered {status} (worker {worker.name} {alive})")
        await asyncio.sleep(1.0)
    out: dict[str, list[Sample]] = {name: [] for name in names}
    for family in text_string_to_metric_families(body.decode()):
        if family.name in out:
            out[family.name].extend(family.samples)
    return out


async def metric_samples(worker: Worker, family_name: str) -> list[Sample]:
    """Every sample of one metric family from the worker's ``/metrics``."""
    return (await metric_families(worker, family_name))[family_name]


async def events_counted(worker: Worker, topic: str = CLICK_TOPIC, outcome: str = "ok") -> float:
    """Sum of ``scenerec_events_total{topic=..., outcome=...}`` over its other labels."""
    return sum(
        float(sample.value)
        for sample in await metric_samples(worker, "scenerec_events")
        if sample.name == "scenerec_events_total"
        and sample.labels.get("topic") == topic
        and sample.labels.get("outcome") == outcome
    )


async def event_counts(worker: Worker) -> dict[tuple[str, str], float]:
    """``scenerec_events_total`` by (topic, outcome), summed over scenes, from one read."""
    out: dict[tuple[str, str], float] = {}
    for sample in await metric_samples(worker, "scenerec_events"):
        if sample.name == "scenerec_events_total":
            key = (sample.labels.get("topic", ""), sample.labels.get("outcome", ""))
            out[key] = out.get(key, 0.0) + float(sample.value)
    return out


async def histogram_totals(worker: Worker, family_name: str) -> dict[str, float]:
    """One histogram of the worker summed over its labels: ``count``, ``sum`` and the
    cumulative count per bucket bound (``le_<bound>``), to diff two readings."""
    out: dict[str, float] = {}
    for sample in await metric_samples(worker, family_name):
        if sample.name.endswith("_bucket"):
            key = f"le_{sample.labels['le']}"
        elif sample.name.endswith(("_count", "_sum")):
            key = sample.name.rsplit("_", 1)[1]
        else:
            continue
        out[key] = out.get(key, 0.0) + float(sample.value)
    return out


class IndexingFailed(RuntimeError):
    """A worker did not index its catalog: it died, ran out of time or grew too large."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        #: Per worker, ``(seconds, items, RSS MiB)`` while it indexed (:func:`wait_indexed`).
        self.trace: dict[str, list[tuple[float, int, float | None]]] = {}


async def wait_indexed(
    worker: Worker,
    n_items: int,
    timeout_s: float,
    max_rss_mb: float | None = None,
    trace: list[tuple[float, int, float | None]] | None = None,
) -> float:
    """Seconds until the worker's ``/ready`` reports ``n_items`` items.

    Raises :class:`IndexingFailed` (with the items done, the rate and the worker's memory)
    when the worker dies, ``timeout_s`` runs out or its RSS passes ``max_rss_mb``; appends
    ``(seconds, items, RSS MiB)`` to ``trace`` every few seconds.
    """
    url = f"{worker.url}/ready"
    t0 = time.monotonic()
    last, last_trace = -1, -math.inf

    def failed(why: str) -> IndexingFailed:
        took = time.monotonic() - t0
        rate = max(last, 0) / took if took > 0 else 0.0
        eta = f", {n_items / rate:.0f}s for all at that rate" if rate > 0 else ""
        rss = worker.rss_mb()
        return IndexingFailed(
            f"worker {worker.name}: {why}: {max(last, 0)} of {n_items} items indexed in "
            f"{took:.0f}s ({rate:.0f} items/s{eta}), worker RSS "
            f"{'unknown' if rss is None else f'{rss:.0f} MiB'}"
        )

    while time.monotonic() - t0 < timeout_s:
        if not worker.alive():
            raise failed(f"the worker exited; log tail:\n{worker.log_tail()}\n")
        status, body = await asyncio.to_thread(http_get, url)
        if status == 200:
            last = int(orjson.loads(body).get("items", 0))
            if last >= n_items:
                return time.monotonic() - t0
        rss = worker.rss_mb()
        if max_rss_mb is not None and rss is not None and rss > max_rss_mb:
            raise failed(f"its RSS passed the limit of {max_rss_mb:.0f} MiB")
        now = time.monotonic() - t0
        if trace is not None and now - last_trace >= 5.0:
            trace.append((round(now, 1), max(last, 0), None if rss is None else round(rss, 1)))
            last_trace = now
        await asyncio.sleep(1.0)
    raise failed(f"timed out after {timeout_s:.0f}s")


async def items_indexed(worker: Worker) -> int:
    status, body = await asyncio.to_thread(http_get, f"{worker.url}/ready")
    return int(orjson.loads(body).get("items", 0)) if status == 200 else -1


def dir_size_mb(path: Path) -> float:
    """Bytes on disk under ``path`` (allocated blocks, so preallocated WAL counts), MiB."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, f)).st_blocks * 512
    return total / 1024**2

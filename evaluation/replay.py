"""Replay a slice of ml-100k through the real pipeline and compare it with the in-process run.

    python -m evaluation.replay --mode both --events 300 --out results/replay.json

``in-process`` drives ``streams.pipeline.Pipeline`` in this process
(``evaluation.pipeline_model``); ``replay`` publishes the same events to Kafka, where a
Faust worker encodes through Ray Serve, keeps users in its table and vectors in Qdrant,
and reads every list back from the ``recommendations`` topic by ``trigger_event_id``.
Both are scored by the same code; the table shows each mode's Hit/NDCG/MRR@10, the
difference, and how many lists are identical. The replay starts its own stack (local
Kafka, Ray Serve, one worker; free ports, a temporary folder, a unique topic prefix) with
``deploy.stack`` and tears it down at the end, with a Ray head of its own; ``--workers 2``
replays through two workers in one consumer group.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from deploy.ports import free_port
from evaluation.pipeline_model import (
    METRICS,
    ModeResult,
    Payload,
    Record,
    ReplayError,
    ReplaySlice,
    compare,
    make_slice,
    run_in_process,
    run_slice,
)
from scenerec.config import Settings
from scenerec.datasets import load_ml100k
from scenerec.kafka import assigned_partitions, consumer, producer

log = logging.getLogger("evaluation.replay")

#: |replay - in-process| allowed on each of Hit, NDCG and MRR@10 (see docs: why not 0).
TOLERANCE = 0.01
#: Seconds to wait for the recommendations message of one event.
EVENT_TIMEOUT_S = 60.0


class RecInbox:
    """The ``recommendations`` topic as ``trigger_event_id -> message``.

    Read from the beginning: the replay runs on a fresh stack (its own topic prefix), so
    nothing there is older than the replay, and no message can slip past a start offset.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._got: dict[str, Payload] = {}
        self._waiting: dict[str, asyncio.Future[Payload]] = {}
        self._cons: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        topic = self.settings.topic("recommendations")
        self._cons = consumer(self.settings, topic, group_id=None, auto_offset_reset="earliest")
        await self._cons.start()
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)  # its CancelledError
        if self._cons is not None:
            await self._cons.stop()

    async def _run(self) -> None:
        assert self._cons is not None
        while True:
            batch = await self._cons.getmany(timeout_ms=200)
            for records in batch.values():
                for r in records:
                    if r.value is None:
                        continue  # a tombstone: a forgotten user
                    msg = orjson.loads(r.value)
                    trigger = str(msg.get("trigger_event_id"))
                    self._got.setdefault(trigger, msg)  # a redelivered batch repeats itself
                    fut = self._waiting.pop(trigger, None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)

    async def get(self, trigger: str, timeout_s: float = EVENT_TIMEOUT_S) -> Payload:
        if trigger in self._got:
            return self._got[trigger]
        fut = self._waiting.setdefault(trigger, asyncio.get_running_loop().create_future())
        try:
            return await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            raise ReplayError(
                f"no recommendations triggered by {trigger!r} in {timeout_s:.0f}s"
            ) from None


class KafkaDriver:
    """The real workers: publish to the input topics, read lists off the output topic.

    After each event it also waits until every click so far has reached the shared item
    statistics each worker ranks with (:meth:`sync_stats`): in the stream they follow a
    click within a second, in-process at once, and the comparison is of the same model.
    """

    def __init__(
        self,
        settings: Settings,
        prod: AIOKafkaProducer,
        inbox: RecInbox,
        worker_urls: Sequence[str],
    ) -> None:
        self.settings = settings
        self._prod = prod
        self._inbox = inbox
        self._workers = list(worker_urls)
        #: One group-less consumer per topic whose end offsets the sync reads.
        self._ends_of: dict[str, tuple[AIOKafkaConsumer, list[TopicPartition]]] = {}

    async def sync_stats(self, timeout_s: float = EVENT_TIMEOUT_S) -> None:
        """Until every worker has read back the deltas sent so far, as applied rows."""
        deltas = await self._ends(self.settings.topic("items.deltas"))
        await self._until(lambda ready: _covered(ready, "deltas_applied", deltas, any), timeout_s)
        changelog = await self._ends(f"{self.settings.app_id}-item-stats-changelog")
        await self._until(
            lambda ready: _covered(ready, "changelog_read", changelog, all), timeout_s
        )

    async def _ends(self, topic: str) -> dict[int, int]:
        if topic not in self._ends_of:
            cons = consumer(self.settings, group_id=None)
            await cons.start()
            self._ends_of[topic] = (cons, await assigned_partitions(cons, topic))
        cons, tps = self._ends_of[topic]
        ends = {tp.partition: off for tp, off in (await cons.end_offsets(tps)).items()}
        if not ends:
            raise ReplayError(f"{topic} has no partitions")
        return ends

    async def close(self) -> None:
        for cons, _ in self._ends_of.values():
            await cons.stop()

    async def _until(self, done: Any, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            ready = [await asyncio.to_thread(_ready, url) for url in self._workers]
            if done(ready):
                return
            if time.monotonic() > deadline:
                raise ReplayError(f"item statistics not caught up in {timeout_s:.0f}s: {ready}")
            await asyncio.sleep(0.02)

    async def _send(self, topic: str, key: str, record: Record) -> str:
        """Send and return the id the worker will name the event by."""
        meta = await self._prod.send_and_wait(
            self.settings.topic(topic), key=key.encode(), value=orjson.dumps(record)
        )
        # A profile has no event_id: the worker names it by topic, partition and offset.
        return str(record.get("event_id") or f"{topic}:{meta.partition}:{meta.offset}")

    async def index_catalog(self, items: Sequence[Record]) -> None:
        for item in items:
            await self._prod.send(
                self.settings.topic("catalog.items"),
                key=str(item["item_id"]).encode(),
                value=orjson.dumps(item),
            )
        await self._prod.flush()
        await wait_indexed(self._workers, len(items))

    async def ingest(self, profiles: Sequence[Record], clicks: Sequence[Record]) -> None:
        # Profiles first, all applied, then clicks: they are on different topics (agents),
        # and a profile applied after a click seeds the user differently.
        ids = await asyncio.gather(
            *(self._send("users.profiles", p["user_id"], p) for p in profiles)
        )
        for trigger in ids:
            await self._inbox.get(trigger)
        last: dict[str, str] = {}
        for c in clicks:
            await self._prod.send(
                self.settings.topic("events.click"),
                key=c["user_id"].encode(),
                value=orjson.dumps(c),
            )
            last[c["user_id"]] = c["event_id"]
        await self._prod.flush()
        # A user's clicks share a partition and are applied in order; the message of a
        # batch names the user's last click in it, so the last click's id means all done.
        timeout = EVENT_TIMEOUT_S + len(clicks) / 50
        for trigger in last.values():
            await self._inbox.get(trigger, timeout)
        await self.sync_stats(timeout)

    async def profile(self, profile: Record) -> Payload:
        got = await self._inbox.get(await self._send("users.profiles", profile["user_id"], profile))
        await self.sync_stats()
        return got

    async def click(self, click: Record) -> Payload:
        got = await self._inbox.get(await self._send("events.click", click["user_id"], click))
        await self.sync_stats()
        return got


@contextlib.asynccontextmanager
async def kafka_driver(
    settings: Settings, worker_urls: Sequence[str]
) -> AsyncIterator[KafkaDriver]:
    inbox = RecInbox(settings)
    await inbox.start()
    prod = producer(settings)
    driver = KafkaDriver(settings, prod, inbox, worker_urls)
    try:
        await prod.start()
        yield driver
    finally:
        await driver.close()
        await prod.stop()
        await inbox.stop()


async def run_replay(
    settings: Settings, data: ReplaySlice, worker_urls: Sequence[str] | None = None
) -> ModeResult:
    """Run ``data`` through the workers (fresh ones: empty index and tables); by default the
    one of ``settings``."""
    urls = worker_urls or [f"http://127.0.0.1:{settings.worker_web_port}"]
    async with kafka_driver(settings, urls) as driver:
        return await run_slice("replay", driver, data)


async def wait_indexed(urls: Sequence[str], n_items: int, timeout_s: float = 900.0) -> None:
    """Until every worker's ``/ready`` counts ``n_items`` items in its index."""
    deadline = time.monotonic() + timeout_s
    for url in urls:
        while (indexed := int((await asyncio.to_thread(_ready, url)).get("items", -1))) < n_items:
            if time.monotonic() > deadline:
                raise ReplayError(f"{url} indexed {indexed} of {n_items} items in {timeout_s}s")
            await asyncio.sleep(0.5)


def _ready(worker_url: str) -> dict[str, Any]:
    """A worker's ``/ready`` answer ({} while it is not up)."""
    try:
        with urllib.request.urlopen(f"{worker_url}/ready", timeout=5) as resp:
            body: dict[str, Any] = orjson.loads(resp.read())
            return body
    except (urllib.error.URLError, OSError, ValueError):
        return {}  # not up yet (503 included)


def _covered(ready: Sequence[dict[str, Any]], key: str, ends: dict[int, int], agg: Any) -> bool:
    """Whether, for every partition, ``agg`` (any or all) of the workers reached its end."""

    def at(r: dict[str, Any], p: int) -> int:
        return int(r.get("item_stats", {}).get(key, {}).get(str(p), 0))

    return all(agg(at(r, p) >= end for r in ready) for p, end in ends.items() if end > 0)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def private_stack(workers: int = 1) -> Iterator[tuple[Settings, list[str]]]:
    """Kafka + Ray Serve + ``workers`` workers (one consumer group) on free ports in a
    temporary folder (deploy.stack); the settings and the workers' URLs."""
    from deploy.stack import down, up
    from deploy.worker import start_worker, stop_worker

    var_dir = Path(tempfile.mkdtemp(prefix="scenerec-replay-"))
    tag = uuid.uuid4().hex[:8]
    ports = ("KAFKA_PORT", "KAFKA_CONTROLLER_PORT", "SERVE_PORT", "RAY_METRICS_PORT", "RAY_PORT")
    env = {f"SCENEREC_{name}": str(free_port()) for name in (*ports, "WORKER_WEB_PORT")}
    env |= {
        "SCENEREC_VAR_DIR": str(var_dir),
        "SCENEREC_APP_ID": f"scenerec-replay-{tag}",
        "SCENEREC_TOPIC_PREFIX": f"r{tag[:6]}.",
        "SCENEREC_RAY_TEMP_DIR": f"/tmp/scenerec-ray-{tag}",
        # Events go one at a time, each waiting for the item statistics: no batching.
        "SCENEREC_STATS_BATCH_WITHIN_S": "0.01",
    }
    os.environ.update(env)  # read by Settings() here and inherited by the workers
    settings = Settings()
    extra = [(var_dir / f"worker-{k}", free_port()) for k in range(2, workers + 1)]
    try:
        # SIGTERM tears the stack down too (set again after Ray installed its own handler).
        signal.signal(signal.SIGTERM, _interrupt)
        info = up(settings)
        signal.signal(signal.SIGTERM, _interrupt)
        for var, port in extra:  # each its own data folder (the embedded store is per process)
            start_worker(var, port, {"SCENEREC_VAR_DIR": str(var)})
        log.info("stack up in %.0fs (var dir %s, %d workers)", info.seconds, var_dir, workers)
        urls = [f"http://127.0.0.1:{p}" for p in (settings.worker_web_port, *(p for _, p in extra))]
        yield settings, urls
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # no second interruption mid-teardown
        try:
            for var, _ in extra:
                stop_worker(var)
            down(settings)
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            shutil.rmtree(var_dir, ignore_errors=True)


# --- the command line ------------------------------------------------------------------------


def table(results: Sequence[ModeResult], comparison: dict[str, Any] | None) -> str:
    head = f"{'mode':<12} {'events':>6} {'scored':>6} " + " ".join(f"{m:>8}" for m in METRICS)
    rows = [head + f" {'seconds':>8}"]
    for r in results:
        js = r.to_json()
        vals = " ".join(f"{js['metrics'][m]['mean']:>8.4f}" for m in METRICS)
        rows.append(
            f"{r.mode:<12} {js['events']:>6} {js['scored'] + js['unserved']:>6} {vals}"
            f" {js['seconds']['total']:>8.1f}"
        )
    if comparison is not None:
        diff = " ".join(f"{comparison['difference'][m]:>+8.4f}" for m in METRICS)
        rows.append(f"{'difference':<12} {'':>6} {'':>6} {diff}")
        rows.append(
            f"identical global lists: {comparison['identical_global_lists']:.1%} of "
            f"{comparison['events_compared']} events; identical messages (all scenes): "
            f"{comparison['identical_messages_all_scenes']:.1%}; max |score difference| "
            f"{comparison['max_abs_score_difference']:.2g}"
        )
    return "\n".join(rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m evaluation.replay",
        description="Score a slice of ml-100k in-process and/or through the real pipeline "
        "(Kafka, Faust, Ray Serve, Qdrant, one or more workers) and compare.",
    )
    p.add_argument("--mode", choices=("in-process", "replay", "both"), default="both")
    p.add_argument("--events", type=int, default=300, help="scored clicks (default 300)")
    p.add_argument("--start", type=int, default=0, help="first click of the slice (time order)")
    p.add_argument("--warmup", type=int, default=0, help="clicks ingested before scoring")
    p.add_argument(
        "--items", type=int, default=None, help="only the first N catalog items and their clicks"
    )
    p.add_argument("--no-profiles", action="store_true", help="do not publish user profiles")
    p.add_argument(
        "--workers", type=int, default=1, help="workers in the replay's consumer group (default 1)"
    )
    p.add_argument("--tolerance", type=float, default=TOLERANCE, help="allowed |difference|")
    p.add_argument("--data-dir", type=Path, default=None, help="default: SCENEREC_DATA_DIR")
    p.add_argument("--out", type=Path, default=Path("results/replay.json"))
    p.add_argument(
        "--dump-recs",
        type=Path,
        default=None,
        help="write every scored list (JSON lines: mode, event, user, target, status, items)",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = args.data_dir or Settings().data_dir
    data = make_slice(
        load_ml100k(data_dir),
        events=args.events,
        start=args.start,
        warmup=args.warmup,
        items=args.items,
        profiles=not args.no_profiles,
    )
    results: list[ModeResult] = []
    # In-process first: the stack is not up yet, so the two do not share the CPU.
    if args.mode in ("in-process", "both"):
        # The same SCENEREC_COLEARN_PATH and SCENEREC_MODEL_PATH the replayed worker reads
        # from the environment.
        settings = Settings()
        results.append(
            asyncio.run(
                run_in_process(
                    data,
                    settings.scenes,
                    colearn_path=settings.colearn_path,
                    model_path=settings.model_path,
                )
            )
        )
    if args.mode in ("replay", "both"):
        t0 = time.perf_counter()
        with private_stack(args.workers) as (settings, urls):
            stack_s = time.perf_counter() - t0
            replayed = asyncio.run(run_replay(settings, data, urls))
        replayed.seconds["stack_up"] = stack_s
        results.append(replayed)
    comparison = compare(results[0], results[1]) if len(results) == 2 else None
    out: dict[str, Any] = {
        "command": "python -m evaluation.replay " + " ".join(args.argv),
        "slice": data.describe(),
        "workers": args.workers,
        "list_scored": "global feed of the user's last recommendations message before the event",
        "modes": {r.mode: r.to_json() for r in results},
    }
    if comparison is not None:
        within = all(abs(comparison["difference"][m]) <= args.tolerance for m in METRICS)
        out["comparison"] = {**comparison, "tolerance": args.tolerance, "within_tolerance": within}
    out["table"] = table(results, comparison)
    if args.dump_recs is not None:
        write_dump(args.dump_recs, results)
    return out


def write_dump(path: Path, results: Sequence[ModeResult]) -> None:
    """Every list that was scored, so the metrics can be recomputed without this code."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for r in results:
            for o in r.outcomes:
                line = {
                    "mode": r.mode,
                    "event": o.index,
                    "event_id": o.event_id,
                    "user": o.user,
                    "target": o.item,
                    "status": o.status,
                    "items": list(o.before),
                }
                fh.write(json.dumps(line) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    # aiokafka.cluster: "topic not found" while just-created topics propagate
    for name, level in (("aiokafka", logging.WARNING), ("aiokafka.cluster", logging.CRITICAL)):
        logging.getLogger(name).setLevel(level)
    out = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(out["table"])
    if "comparison" in out:
        ok = out["comparison"]["within_tolerance"]
        print(f"within tolerance {args.tolerance:g} on {', '.join(METRICS)}: {ok} ({args.out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

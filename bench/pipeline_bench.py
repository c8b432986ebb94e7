"""End-to-end SceneRec benchmark on a private stack: prints a table, writes results/bench.json.

    python -m bench.pipeline_bench                       # everything (make bench)
    python -m bench.pipeline_bench --only throughput,latency --catalog-sizes 1682
    python -m bench.pipeline_bench --help

Everything runs against a stack this script starts and stops (like the integration tests):
a temporary var dir, free ports for the broker, Ray Serve and each worker's web server, and
per phase a "lane" (own topic prefix and Faust app id: see bench/stack.py), so a running
demo is never touched and phases do not see each other's state. Measured, in order:

1. ``kafka_ceiling_events_per_s``: raw aiokafka produce-then-consume of click-sized JSON on
   the same broker, before anything else runs;
2. ``encoder_efficiency``: Serve texts/s / bare-model texts/s (bench/encoder_bench.py);
3. on one worker with the ml-100k catalog: ``throughput_events_per_s["1682"]`` (clicks as
   fast as the worker takes them, for ``--seconds`` after ``--warmup-seconds``),
   ``latency_ms`` at fixed offered rates, ``max_rate_p99_under_1s`` (doubling search),
   ``cold_start_ms`` and ``memory_mb_per_100k_users``;
4. ``throughput_events_per_s["100000"]`` on a fresh worker with the synthetic catalog
   (ml-100k's items + template items, bench/catalog.py), its vectors encoded once through
   Ray Serve and cached (bench/encoder_cache.py);
5. ``scale_out``: two workers, four partitions, then the same with a ``kill -9``;
6. ``push``: 1,000 feed streams on one pull API replica (bench/push_bench.py).
7. ``many_users`` (bench/many_users.py): issue 20's workload (bench/workload.py: 10,000
   users, Zipf(1.1) items, 90/7/3% clicks/comments/social) per catalog of
   ``--mu-catalog-sizes`` on one worker: sustained throughput with its lag trend, lists
   ranked per click, latency at 1,000 events/s, new users, worker RSS, indexing time;
   ``many_users_2_workers`` the same on two workers and four partitions. These rows are
   ``many_users``; the rows above are the ml-100k-in-time-order workload.

``--profile-seconds N`` records the worker with py-spy during each throughput window and the
highest fixed-rate latency run, and
writes the summary to results/profile/. The stack is always torn down at the end (also on
Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from bench import load, many_users, profiling, push_bench, scale_out
from bench.lanes import CatalogOptions, start_catalog_lane
from bench.stack import (
    BenchStack,
    Lane,
    Worker,
    base_env,
    dir_size_mb,
    events_counted,
    histogram_totals,
    load_average,
    machine,
    wait_indexed,
)
from bench.sustained import SearchOptions
from scenerec.config import PROJECT_ROOT, Settings
from scenerec.datasets import Dataset, load_ml100k

log = logging.getLogger("bench.pipeline")

PHASES = (
    "ceiling",
    "encoder",
    "throughput",
    "latency",
    "max_rate",
    "cold_start",
    "memory",
    "scale_out",
    "push",
    "many_users",
    "many_users_2_workers",
)
ML100K = 1682


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.pipeline_bench",
        description="End-to-end SceneRec benchmark on a private local stack (see the module doc).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--only", default=",".join(PHASES), help="comma-separated phases to run")
    p.add_argument("--catalog-sizes", default="1682,100000", help="catalogs for throughput")
    p.add_argument("--seconds", type=float, default=60.0, help="throughput window (issue: >= 60)")
    p.add_argument("--warmup-seconds", type=float, default=10.0, help="load before the window")
    p.add_argument("--rates", default="100,1000", help="fixed offered click rates for latency")
    p.add_argument("--latency-seconds", type=float, default=20.0, help="seconds per offered rate")
    p.add_argument("--max-rate-start", type=int, default=100, help="first rate of the search")
    p.add_argument("--max-rate-limit", type=int, default=12_800, help="last rate of the search")
    p.add_argument("--ceiling-events", type=int, default=200_000, help="events for the ceiling")
    p.add_argument("--cold-users", type=int, default=20, help="new users per cold-start kind")
    p.add_argument("--encoder-texts", type=int, default=512, help="texts per encoder measure")
    p.add_argument("--encoder-rounds", type=int, default=3, help="bare/Serve rounds (median)")
    p.add_argument("--encoder-in-flight", type=int, default=2, help="list requests at once")
    p.add_argument("--memory-users", type=int, default=10_000, help="users given state (N)")
    p.add_argument("--memory-clicks", type=int, default=2, help="clicks per memory user")
    p.add_argument("--scale-users", type=int, default=1000, help="users in a scale-out run")
    p.add_argument("--scale-clicks", type=int, default=20, help="clicks per scale-out user")
    p.add_argument("--settle-seconds", type=float, default=5.0, help="idle before latency runs")
    p.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="SCENEREC_X=V",
        help="a setting for every worker (repeatable), e.g. SCENEREC_BATCH_WITHIN_S=0.01",
    )
    mu = p.add_argument_group("many users (issue 20)")
    mu.add_argument("--mu-catalog-sizes", default="1682,100000,1000000", help="catalogs")
    mu.add_argument("--mu-2-workers-catalog", type=int, default=100_000, help="catalog, 2 workers")
    mu.add_argument("--mu-users", type=int, default=10_000, help="users with a profile (N)")
    mu.add_argument("--mu-seed", type=int, default=20, help="the workload's seed")
    mu.add_argument("--mu-seconds", type=float, default=60.0, help="window per offered rate")
    mu.add_argument("--mu-warmup-seconds", type=float, default=10.0, help="before each window")
    mu.add_argument("--mu-probe-seconds", type=float, default=20.0, help="flat-out probe window")
    mu.add_argument("--mu-tries", type=int, default=3, help="offered rates tried after the probe")
    mu.add_argument("--mu-latency-rate", type=int, default=1000, help="offered events/s")
    mu.add_argument("--mu-latency-seconds", type=float, default=20.0, help="latency run")
    mu.add_argument("--mu-new-users-per-s", type=float, default=100.0, help="new users a second")
    mu.add_argument("--mu-new-user-seconds", type=float, default=20.0, help="new-user run")
    mu.add_argument("--mu-click-delay", type=float, default=0.5, help="profile -> first click (s)")
    mu.add_argument(
        "--synthetic-vectors-from",
        type=int,
        default=1_000_000,
        help="catalogs this large get synthetic vectors, not Ray Serve's (0: never)",
    )
    mu.add_argument(
        "--index-timeout", type=float, default=1800.0, help="seconds a worker may index"
    )
    mu.add_argument(
        "--max-worker-rss-mb",
        type=float,
        default=10_240.0,
        help="a worker indexing past this RSS fails its catalog (protects the machine)",
    )
    p.add_argument("--cache-dir", type=Path, default=Path("results/cache"))
    p.add_argument("--profile-seconds", type=float, default=0.0, help="py-spy per window (0: off)")
    p.add_argument("--profile-dir", type=Path, default=Path("results/profile"))
    p.add_argument("--out", type=Path, default=Path("results/bench.json"))
    p.add_argument("--keep-var", action="store_true", help="keep the temporary var dir")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    args.phases = [x.strip() for x in args.only.split(",") if x.strip()]
    args.worker_env_map = {}
    for item in args.worker_env:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("SCENEREC_"):
            p.error(f"--worker-env: SCENEREC_NAME=VALUE expected, got {item!r}")
        args.worker_env_map[key] = value
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        p.error(f"--only: unknown phases {sorted(unknown)}; known: {', '.join(PHASES)}")
    try:
        args.rate_list = [int(r) for r in args.rates.split(",") if r.strip()]
        args.catalogs = [int(c) for c in args.catalog_sizes.split(",") if c.strip()]
        args.mu_catalogs = [int(c) for c in args.mu_catalog_sizes.split(",") if c.strip()]
    except ValueError:
        p.error("--rates, --catalog-sizes and --mu-catalog-sizes take comma-separated integers")
    return args


class Run:
    """One benchmark run: the stack, the data, the result being filled in."""

    def __init__(self, args: argparse.Namespace, stack: BenchStack, data: Dataset) -> None:
        self.args = args
        self.stack = stack
        self.data = data
        self.source = load.ClickSource(data, uuid.uuid4().hex[:6])
        self.main: tuple[Lane, Worker] | None = None
        self.proxies: list[Any] = []  # caching encoder proxies to stop at the end
        self.result: dict[str, Any] = {"machine": machine(), "notes": []}

    def note(self, text: str) -> None:
        self.result["notes"].append(text)

    def wants(self, phase: str) -> bool:
        return phase in self.args.phases

    # --- lanes -----------------------------------------------------------------------------
    def main_lane(self) -> tuple[Lane, Worker]:
        """One worker with the ml-100k catalog indexed (started on first use)."""
        if self.main is None:
            lane = self.stack.lane("main")
            worker = lane.start_worker("worker")
            t = asyncio.run(load.publish_catalog(lane.settings, self.data.items, "catalog"))
            index_s = asyncio.run(wait_indexed(worker, len(self.data.items), 900))
            self.note(
                f"catalog {ML100K}: {len(self.data.items)} ml-100k items published in {t:.1f}s "
                f"and indexed {index_s:.1f}s later"
            )
            self.main = (lane, worker)
        return self.main

    # --- phases ------------------------------------------------------------------------------
    def ceiling(self) -> None:
        c = asyncio.run(
            load.kafka_ceiling(self.stack.settings, self.args.ceiling_events, self.data.clicks)
        )
        self.result["kafka_ceiling_events_per_s"] = round(c["events_per_s"], 1)
        self.result["kafka_ceiling_detail"] = {k: round(v, 1) for k, v in c.items()}
        self.note(
            "kafka_ceiling_events_per_s = N / (produce seconds + consume seconds) for N "
            "click-sized JSON events (acks=all, linger 20 ms, "
            f"{self.stack.settings.partitions} partitions), produced then read by a fresh "
            "consumer on the same broker before the encoder and workers start"
        )

    def encoder(self, url: str) -> None:
        from bench.encoder_bench import efficiency, make_texts
        from deploy.stack import encoder_config

        threads = encoder_config(self.stack.settings).torch_threads
        eff = efficiency(
            url,
            make_texts(self.args.encoder_texts),
            (32, 128),
            threads,
            in_flight=self.args.encoder_in_flight,
            rounds=self.args.encoder_rounds,
        )
        self.result["encoder_efficiency"] = {b: v["efficiency"] for b, v in eff["best"].items()}
        self.result["encoder_detail"] = eff
        self.note(
            "encoder_efficiency: texts/s through the running Serve encoder (HTTP, the route "
            "the worker uses) / texts/s of the same model in the bench process with the "
            f"replica's torch threads ({threads}), same {self.args.encoder_texts} texts "
            "(8-60 words) in the same chunks of B texts (one encode call per chunk, as "
            "the Serve client sends them); Serve measured with lists of B texts "
            f"({self.args.encoder_in_flight} in flight) and with one text per request "
            f"(gathered by @serve.batch); {self.args.encoder_rounds} rounds, each measuring "
            "bare and Serve back to back; the median of the per-round ratios of the better "
            "mode is kept, every measurement is in encoder_detail"
        )

    def throughput(self, catalog: int) -> None:
        if catalog == ML100K:
            lane, worker = self.main_lane()
        else:
            lane, worker = self.big_catalog_lane(catalog)
        log.info("throughput, catalog %d: %.0fs warm-up, %.0fs window", catalog, *self.windows())
        spy = self.profile_later(worker, f"worker-{catalog}")
        tp = asyncio.run(load.throughput(lane.settings, worker, self.source, *self.windows()))
        if spy is not None:
            spy()
        key = str(catalog)
        self.result.setdefault("throughput_events_per_s", {})[key] = round(tp["events_per_s"], 1)
        ceiling = self.result.get("kafka_ceiling_events_per_s")
        if ceiling:
            self.result.setdefault("throughput_ratio", {})[key] = round(
                tp["events_per_s"] / ceiling, 4
            )
        self.result.setdefault("throughput_detail", {})[key] = {
            k: round(v, 3) if isinstance(v, float) else v for k, v in tp.items()
        }
        log.info(
            "throughput, catalog %d: %.1f events/s (%.0f clicks per batch, %.3f lists per"
            " click, %.1f%% of the time in GC)",
            catalog,
            tp["events_per_s"],
            tp["mean_batch_events"],
            tp["lists_per_event"],
            100 * tp["gc_share"],
        )
        if catalog != ML100K:
            lane.stop_all()

    def windows(self) -> tuple[float, float]:
        return self.args.warmup_seconds, self.args.seconds

    def catalog_options(self) -> CatalogOptions:
        return CatalogOptions(
            cache_dir=self.args.cache_dir,
            synthetic_vectors_from=self.args.synthetic_vectors_from,
            index_timeout_s=self.args.index_timeout,
            max_rss_mb=self.args.max_worker_rss_mb,
        )

    def big_catalog_lane(self, n: int) -> tuple[Lane, Worker]:
        """A worker with ``n`` items: ml-100k's and synthetic ones, vectors from the cache."""
        cl = start_catalog_lane(
            self.stack, self.data, n, f"c{n}", self.catalog_options(), proxies=self.proxies
        )
        d = cl.detail
        self.result.setdefault("catalog_detail", {})[str(n)] = d
        vectors = (
            f"were encoded through the Ray Serve encoder in {d['encode_seconds']:.0f}s "
            f"({d['encode_texts_per_s']:.0f} texts/s, {d['encoded_in']})"
            if "encode_seconds" in d
            else f"got {d['vectors']}"
        )
        self.note(
            f"catalog {n}: labelled synthetic: the {len(self.data.items)} ml-100k items plus "
            f"{n - len(self.data.items)} items from templates (bench/catalog.py); their texts "
            f"{vectors}; the worker then indexed them "
            f"(parse, KG embedding, fusion, index, vector store) in {d['index_seconds']:.0f}s, "
            "its encoder calls answered from that cache by a local proxy"
        )
        return cl.lane, cl.workers[0]

    def latency(self) -> None:
        lane, worker = self.main_lane()
        measured = self.result.setdefault("latency_detail", {})
        # Steady state: the throughput run's backlog has drained; let the worker go idle.
        time.sleep(self.args.settle_seconds)
        for rate in self.args.rate_list:
            log.info("latency at %d events/s for %.0fs", rate, self.args.latency_seconds)
            before = asyncio.run(worker_histograms(worker))
            spy = None
            if rate == max(self.args.rate_list):  # where the tail is: profile the worker
                spy = self.profile_later(worker, f"worker-latency-{rate}", delay=2.0)
            lat = asyncio.run(
                load.latency_at(lane.settings, self.source, rate, self.args.latency_seconds, 60)
            )
            if spy is not None:
                spy()
            lat.update(histogram_deltas(before, asyncio.run(worker_histograms(worker))))
            measured[str(rate)] = lat
            log.info("latency at %d: %s", rate, lat)
        self.result["latency_ms"] = {
            r: {k: measured[r][k] for k in ("p50", "p95", "p99")}
            for r in map(str, self.args.rate_list)
        }

    def max_rate(self) -> None:
        lane, _ = self.main_lane()
        measured = self.result.setdefault("latency_detail", {})
        found = asyncio.run(
            load.max_rate_under_bound(
                lane.settings,
                self.source,
                self.args.max_rate_start,
                self.args.max_rate_limit,
                self.args.latency_seconds,
                measured,
            )
        )
        self.result["max_rate_p99_under_1s"] = found["rate"]
        self.result["max_rate_detail"] = found

    def cold_start(self) -> None:
        lane, _ = self.main_lane()
        cs = asyncio.run(load.cold_start(lane.settings, self.data, self.args.cold_users, 0.25, 60))
        self.result["cold_start_ms"] = {
            k: {"p50": v["p50"], "p95": v["p95"]} for k, v in cs.items()
        }
        self.result["cold_start_detail"] = cs

    def memory(self) -> None:
        lane, worker = self.main_lane()
        n, k = self.args.memory_users, self.args.memory_clicks
        store = worker.var_dir / "qdrant"
        rss0, store0 = worker.rss_mb(), dir_size_mb(store)
        msgs = load.new_user_clicks(self.data, n, k, f"mem{uuid.uuid4().hex[:5]}")
        base = asyncio.run(events_counted(worker))
        asyncio.run(load.publish(lane.settings, "events.click", msgs, "memory users"))
        drain_s = asyncio.run(load.drain(worker, base + len(msgs), timeout_s=1800))
        time.sleep(6)  # the vector store writes its segments in the background
        rss1, store1 = worker.rss_mb(), dir_size_mb(store)
        if rss0 is None or rss1 is None:
            self.note("memory: the worker's RSS could not be read")
            return
        before = {"rss_mb": round(rss0, 1), "store_mb": round(store0, 1)}
        after = {"rss_mb": round(rss1, 1), "store_mb": round(store1, 1)}
        per_100k = {
            "worker": round((rss1 - rss0) / n * 100_000, 1),
            "qdrant": round((store1 - store0) / n * 100_000, 1),
        }
        self.result["memory_mb_per_100k_users"] = per_100k
        self.result["memory_detail"] = {
            "users": n,
            "clicks_per_user": k,
            "before": before,
            "after": after,
            "seconds_to_process": round(drain_s, 1),
        }
        self.note(
            f"memory_mb_per_100k_users: {n} new users with {k} clicks each were given state "
            "on the ml-100k worker; worker = growth of its VmRSS, qdrant = growth of its "
            f"embedded store on disk (allocated blocks), both x 100000 / {n}; the worker's "
            "baseline RSS and store size are in memory_detail; a user with a long history "
            "holds more (up to 1024 applied event ids and 5000 seen items in its state)"
        )

    def scale_out(self) -> None:
        users, k = self.args.scale_users, self.args.scale_clicks
        plain = scale_out.run(self.stack, self.data, users, k, kill=False)
        killed = scale_out.run(self.stack, self.data, users, k, kill=True)
        self.result["scale_out"] = {
            "events_per_s": plain["events_per_s"],
            "lost": plain["lost"],
            "duplicated": plain["duplicated"],
            "lost_after_kill": killed["lost"],
            "duplicated_after_kill": killed["duplicated"],
        }
        self.result["scale_out_detail"] = {"plain": plain, "kill": killed}
        self.note(
            "scale_out: 2 workers (own var dir and web port each), one consumer group, "
            f"{self.stack.settings.partitions} partitions; {users} new users x {k} clicks on "
            "distinct items; lost/duplicated from each user's /users/{id}/state (recent items "
            "and n_events) against what was published; events_per_s = events / (first publish "
            "-> both workers' click counters reach the total); the kill run kill -9s one "
            "worker at 40% of the stream (see bench/scale_out.py)"
        )

    def many_users_options(self) -> many_users.ManyUsersOptions:
        a = self.args
        return many_users.ManyUsersOptions(
            users=a.mu_users,
            seed=a.mu_seed,
            search=SearchOptions(
                warmup_s=a.mu_warmup_seconds,
                window_s=a.mu_seconds,
                probe_s=a.mu_probe_seconds,
                tries=a.mu_tries,
            ),
            latency_rate=a.mu_latency_rate,
            latency_seconds=a.mu_latency_seconds,
            new_users_per_s=a.mu_new_users_per_s,
            new_user_seconds=a.mu_new_user_seconds,
            click_delay_s=a.mu_click_delay,
            profile_seconds=a.profile_seconds,
            profile_dir=a.profile_dir,
        )

    def many_users(self, key: str, catalogs: Sequence[int], workers: int) -> None:
        opts = self.many_users_options()
        for n in catalogs:
            log.info("many users, catalog %d, %d worker(s)", n, workers)
            try:
                row, detail = many_users.run_catalog(
                    self.stack, self.data, n, workers, self.catalog_options(), opts, self.proxies
                )
            except Exception as exc:  # one catalog's failure keeps the others' results
                log.exception("many users, catalog %d, %d worker(s) failed", n, workers)
                row, detail = {"error": f"{type(exc).__name__}: {exc}"}, {}
            profile = detail.pop("profile", None)
            if profile is not None:
                self.record_profile(f"many-users-{n}", profile)
            self.result.setdefault(key, {})[str(n)] = row
            self.result.setdefault(f"{key}_detail", {})[str(n)] = detail
            log.info("many users, catalog %d, %d worker(s): %s", n, workers, row)
        self.note(
            f"{key}: bench/many_users.py; {opts.users} users with a profile each, events from "
            "users drawn uniformly, items Zipf(1.1) over the catalog, 90% clicks / 7% "
            "comments / 3% social (bench/workload.py, seed "
            f"{opts.seed}); events_per_s is the highest offered rate at which the lag "
            f"(published - processed) did not grow over {opts.search.window_s:.0f}s (slope "
            "<= 2% of the rate), or, with sustained false, the best processed rate and its lag "
            "slope; lists_per_click = recommendation lists / events applied (all kinds) in "
            f"that window; latency at {opts.latency_rate} events/s offered for "
            f"{opts.latency_seconds:.0f}s, an event never answered counting as slowest; "
            "worker_rss_mb = the worker's peak VmRSS (VmHWM; with 2 workers the larger)"
        )

    def profile_later(
        self, worker: Worker, name: str, delay: float | None = None
    ) -> Callable[[], None] | None:
        """Start py-spy on ``worker`` after ``delay`` (default: centred in the throughput
        window) for at most ``--profile-seconds``; return a finisher."""
        window = self.args.seconds if delay is None else self.args.latency_seconds - delay - 1
        seconds = min(self.args.profile_seconds, window)
        if seconds <= 0:
            return None
        out = self.args.profile_dir / f"{name}.raw"
        if delay is None:
            delay = self.args.warmup_seconds + max(0.0, (self.args.seconds - seconds) / 2)
        wait = profiling.profile_later(
            worker.pid, out, seconds, delay, f"{name}: py-spy, {seconds:.0f}s under load"
        )

        def finish() -> None:
            self.record_profile(name, wait())

        return finish

    def record_profile(self, name: str, got: dict[str, Any]) -> None:
        if "error" in got:
            self.note(f"profile {name}: {got['error']}")
            return
        text = got.pop("text")
        self.result.setdefault("profiles", {})[name] = got
        log.info("profile %s:\n%s", name, text)

    def execute(self, serve_url: Callable[[], str]) -> None:
        if self.wants("ceiling"):
            self.ceiling()
        url = serve_url()
        if self.wants("encoder"):
            self.encoder(url)
        if self.wants("throughput"):
            for catalog in self.args.catalogs:
                if catalog != ML100K:
                    continue  # the big catalog runs after the ml-100k worker is stopped
                self.throughput(catalog)
        for phase in ("latency", "max_rate", "cold_start", "memory"):
            if self.wants(phase):
                getattr(self, phase)()
        if self.main is not None:
            self.main[0].stop_all()
        if self.wants("throughput"):
            for catalog in self.args.catalogs:
                if catalog != ML100K:
                    self.throughput(catalog)
        if self.wants("scale_out"):
            self.scale_out()
        if self.wants("push"):  # feed streams under load (bench/push_bench.py)
            self.result["push"] = push_bench.measure(self.stack, self.data)
        if self.wants("many_users"):
            self.many_users("many_users", self.args.mu_catalogs, 1)
        if self.wants("many_users_2_workers"):
            self.many_users("many_users_2_workers", [self.args.mu_2_workers_catalog], 2)


#: Worker histograms read around each latency run: what the worker saw of the tail.
_WORKER_HISTOGRAMS = {
    "worker_gc": "scenerec_gc_pause_seconds",
    "worker_event_to_list": "scenerec_event_to_recommendation_seconds",
    "worker_batch": "scenerec_processing_seconds",
    "worker_gather": "scenerec_batch_gather_seconds",
    "worker_oldest_age": "scenerec_batch_oldest_age_seconds",
    "worker_flush": "scenerec_flush_seconds",
}


async def worker_histograms(worker: Worker) -> dict[str, dict[str, float]]:
    return {k: await histogram_totals(worker, name) for k, name in _WORKER_HISTOGRAMS.items()}


def histogram_deltas(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """Per histogram: observations during the run, their mean (ms) and how many took at
    least 10 / 100 / 1,000 ms (from the bucket bounds)."""
    out: dict[str, dict[str, float]] = {}
    for key, now in after.items():
        d = {k: v - before.get(key, {}).get(k, 0.0) for k, v in now.items()}
        n = d.get("count", 0.0)
        out[key] = {
            "n": n,
            "mean_ms": round(1000 * d.get("sum", 0.0) / n, 2) if n else 0.0,
            **{f"n_{b}ms_or_more": n - d.get(f"le_{b / 1000}", n) for b in (10, 100, 1000)},
        }
    return out


def table(result: dict[str, Any]) -> str:
    def f(v: object) -> str:
        if isinstance(v, float):
            return f"{v:,.1f}"
        return "-" if v is None else str(v)

    rows: list[tuple[str, str]] = []
    if "kafka_ceiling_events_per_s" in result:
        rows.append(("kafka ceiling (events/s)", f(result["kafka_ceiling_events_per_s"])))
    for cat, v in result.get("throughput_events_per_s", {}).items():
        per = result.get("throughput_detail", {}).get(cat, {}).get("lists_per_event")
        lists = "" if per is None else f" ({per:.3f} lists/click)"
        rows.append((f"throughput, catalog {cat}, ml-100k in time order (events/s)", f(v) + lists))
        ratio = result.get("throughput_ratio", {}).get(cat)
        rows.append((f"throughput ratio, catalog {cat}", "-" if ratio is None else f"{ratio:.4f}"))
    for rate, p in result.get("latency_ms", {}).items():
        rows.append((f"latency @ {rate} ev/s p50/p95/p99 (ms)", " / ".join(f(p[k]) for k in p)))
    if "max_rate_p99_under_1s" in result:
        rows.append(("max offered rate with p99 < 1 s (ev/s)", f(result["max_rate_p99_under_1s"])))
    for kind, p in result.get("cold_start_ms", {}).items():
        rows.append((f"cold start, {kind} p50/p95 (ms)", " / ".join(f(p[k]) for k in p)))
    for b, v in result.get("encoder_efficiency", {}).items():
        rows.append((f"encoder efficiency, batch {b}", f"{v:.3f}"))
    for k, v in result.get("memory_mb_per_100k_users", {}).items():
        rows.append((f"memory per 100k users, {k} (MB)", f(v)))
    for k, v in result.get("scale_out", {}).items():
        rows.append((f"scale-out {k}", f(v)))
    if "push" in result:
        rows.append(("push p50 / p99, lost, duplicated", push_bench.summary(result["push"])))
    rows.extend(many_users.table_rows(result))
    width = max((len(k) for k, _ in rows), default=10)
    return "\n".join(f"{k:<{width}}  {v:>26}" for k, v in rows)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def catch_signals() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt, so that run() tears the stack down.

    Called again after Ray Serve starts: ``ray.init`` installs its own SIGTERM handler,
    and SIGINT is ignored in a process started in the background by a non-interactive shell.
    """
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def run(args: argparse.Namespace) -> dict[str, Any]:
    wall0 = time.monotonic()
    var_dir = Path(tempfile.mkdtemp(prefix="scenerec-bench-"))
    os.environ.update(base_env(var_dir))  # read by Settings() here and inherited by workers
    settings = Settings()
    stack = BenchStack(settings, var_dir, worker_env=args.worker_env_map)
    bench = Run(args, stack, load_ml100k(settings.data_dir))
    bench.result["load_average_at_start"] = load_average()
    if args.worker_env_map:
        bench.result["worker_env"] = args.worker_env_map
        bench.note(f"workers ran with {args.worker_env_map} (--worker-env)")
    try:
        catch_signals()
        stack.kafka_up()

        def serve_url() -> str:
            url = stack.serve_up()
            catch_signals()
            return url

        bench.execute(serve_url)
    except KeyboardInterrupt:
        bench.note("interrupted: partial results")
        bench.result["interrupted"] = True
        log.warning("interrupted: tearing down")
    finally:
        previous = (  # no second interruption half-way through the teardown
            signal.signal(signal.SIGINT, signal.SIG_IGN),
            signal.signal(signal.SIGTERM, signal.SIG_IGN),
        )
        try:
            for proxy in bench.proxies:
                proxy.stop()
            stack.down()
        finally:
            signal.signal(signal.SIGINT, previous[0])
            signal.signal(signal.SIGTERM, previous[1])
        for lane in stack.lanes:  # Faust makes "<app id>-data" in the worker's cwd
            shutil.rmtree(PROJECT_ROOT / f"{lane.env['SCENEREC_APP_ID']}-data", ignore_errors=True)
        if not args.keep_var:
            shutil.rmtree(var_dir, ignore_errors=True)
    bench.note(
        "the bench process (producer + consumer) shares the machine with Kafka, Ray Serve and "
        "the workers, and other people's work ran on the same 2 cores: numbers are noisy"
    )
    bench.result["load_average_at_end"] = load_average()
    bench.result["run_seconds"] = round(time.monotonic() - wall0, 1)
    bench.result["command"] = "python -m bench.pipeline_bench " + " ".join(args.argv)
    return bench.result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]
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

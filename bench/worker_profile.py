"""Where the worker's time goes on click batches, without Kafka: ``Pipeline`` in-process.

    python -m bench.worker_profile --catalog 1682 --batches 40 --batch 500
    python -m bench.worker_profile --catalog 100000 --nearest store-hnsw --warmup 20
    py-spy record -o results/profile/inproc.svg -- python -m bench.worker_profile ...

Drives :class:`streams.pipeline.Pipeline` the way the Faust agent does (one call of
``on_clicks`` per batch of raw JSON messages) with a dict as the user-state table, the
embedded Qdrant Edge store in a temporary folder and an emitter that serialises each
recommendations payload with orjson (what the worker's emitter does) and keeps nothing.
The catalog is indexed through ``on_catalog`` with a stand-in encoder (deterministic
random unit vectors: ranking cost does not depend on the values), so clicks take the same
path as in the worker: parse, state codec, user-model update, store upsert, ranking,
reasons, payload. Faust, aiokafka and the broker are not in this picture: the profile of
the real worker (``--pyspy`` in bench/pipeline_bench.py) shows them.

The clicks are the many-users workload's by default (``bench/workload.py``: each click from
a user drawn uniformly among 10,000 with profiles, so a batch ranks about one list per
click; ``--warmup`` batches give the users a history first), or ml-100k's ratings in time
order (``--workload ml100k``: one user's ratings together, few lists per click). Large
catalogs rank candidates; their nearest items come from the store as the worker searches
it (an exact scan: Qdrant Edge builds no HNSW index by itself), from the store after
:meth:`optimize` built one (``--nearest store-hnsw``), or from an exact scan of the index.

Prints a per-stage table (wall time per batch, from timers wrapped around the pipeline's
collaborators) and writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench.catalog import ml100k_items, synthetic_items
from embeddings.blended import CandidateConfig
from embeddings.ranking import ItemIndex
from embeddings.vectors import Matrix
from scenerec.config import Settings
from scenerec.datasets import load_ml100k
from streams import state as state_codec
from streams.metrics import WorkerMetrics
from streams.nearest import StoreNearest
from streams.pipeline import Incoming, Pipeline, PipelineConfig
from streams.records import DeadLetter
from vectorstore import open_store
from vectorstore.base import VectorStore

SCENES = Settings().scenes


class Timers:
    """Accumulated wall seconds per stage name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    @contextmanager
    def time(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0
            self.calls[name] += 1

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.time(name):
                return fn(*args, **kwargs)

        return timed


class RandomEncoder:
    """Deterministic unit vectors per text (a stand-in: the catalog is not what is profiled)."""

    def __init__(self, dim: int = 384) -> None:
        self.dim = dim

    async def encode(self, texts: Sequence[str]) -> Matrix:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            rng = np.random.default_rng(abs(hash(t)) % 2**32)
            v = rng.standard_normal(self.dim).astype(np.float32)
            out[i] = v / np.linalg.norm(v)
        return out


class SerialisingEmitter:
    """What FaustEmitter costs before the producer: one orjson.dumps per payload."""

    def __init__(self, timers: Timers) -> None:
        self.timers = timers
        self.messages = 0
        self.bytes = 0

    async def recommendations(self, user_id: str, payload: dict[str, object]) -> None:
        with self.timers.time("emit: orjson.dumps(payload)"):
            self.bytes += len(orjson.dumps(payload))
        self.messages += 1

    async def dead_letter(self, key: str | None, letter: DeadLetter) -> None:
        raise RuntimeError(f"unexpected dead letter: {letter.reason} {letter.error}")

    async def forget(self, user_id: str) -> None:
        return None

    async def flush(self) -> None:
        return None


class TimedStates(MutableMapping[str, bytes]):
    """A dict of state bytes; the codec is timed where the pipeline calls it."""

    def __init__(self) -> None:
        self._d: dict[str, bytes] = {}

    def __getitem__(self, k: str) -> bytes:
        return self._d[k]

    def __setitem__(self, k: str, v: bytes) -> None:
        self._d[k] = v

    def __delitem__(self, k: str) -> None:
        del self._d[k]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)


def instrument(pipe: Pipeline, store: VectorStore, timers: Timers) -> None:
    """Time the collaborators the click path calls, by wrapping them in place."""
    import streams.pipeline as pl

    store_any: Any = store
    store_any.upsert_users = timers.wrap("vector store: upsert_users", store.upsert_users)
    store_any.search_many = timers.wrap("vector store: search_many", store.search_many)
    setattr(pl, "to_payload", timers.wrap("ranking: to_payload", pl.to_payload))  # noqa: B010
    model: Any = pipe.model
    model.rank = timers.wrap("ranking: rank", pipe.model.rank)
    model.click_deltas = timers.wrap("item statistics: click_deltas", pipe.model.click_deltas)
    codec: Any = state_codec  # the module object the pipeline calls through
    codec.loads = timers.wrap("state codec: loads", state_codec.loads)
    codec.dumps = timers.wrap("state codec: dumps", state_codec.dumps)
    pipe_any: Any = pipe
    pipe_any._parse_one = timers.wrap("parse: json + pydantic", pipe._parse_one)


def many_user_batches(
    items: list[dict[str, Any]], n_batches: int, size: int, users: int
) -> tuple[list[Incoming], list[list[Incoming]]]:
    """The many-users workload's profiles, then its clicks (``bench/workload.py``)."""
    from bench.workload import CLICK, Workload, WorkloadConfig

    wl = Workload(items, WorkloadConfig(users=users), tag="prof")
    profiles = [
        Incoming(orjson.dumps(p), "users.profiles", 0, k, key)
        for k, (key, p) in enumerate(wl.profiles())
    ]
    out: list[list[Incoming]] = []
    k = 0
    while len(out) < n_batches:
        batch: list[Incoming] = []
        while len(batch) < size:
            topic, ev = wl.next_event()
            if topic != CLICK:
                continue
            batch.append(Incoming(orjson.dumps(ev), topic, k % 4, k, ev["user_id"].encode()))
            k += 1
        out.append(batch)
    return profiles, out


def click_batches(
    clicks: list[dict[str, Any]], n_batches: int, size: int, topic: str
) -> list[list[Incoming]]:
    out: list[list[Incoming]] = []
    k = 0
    for b in range(n_batches):
        batch = []
        for _ in range(size):
            c = clicks[k % len(clicks)]
            ev = {**c, "event_id": f"p-{k}"}
            batch.append(Incoming(orjson.dumps(ev), topic, k % 4, k, str(c["user_id"]).encode()))
            k += 1
        out.append(batch)
        del b
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings()
    data = load_ml100k(settings.data_dir)
    items = ml100k_items(data) if args.catalog <= 1682 else synthetic_items(args.catalog, data)
    timers = Timers()
    with tempfile.TemporaryDirectory(prefix="scenerec-prof-") as tmp:
        store = open_store(Path(tmp) / "qdrant")
        store.ensure_collections(384, SCENES)
        index = ItemIndex(384)
        emitter = SerialisingEmitter(timers)
        pipe = Pipeline(
            config=PipelineConfig(
                scenes=SCENES,
                unknown_item_wait_s=0.0,
                candidates=CandidateConfig(exact_max_items=args.exact_max_items),
            ),
            store=store,
            index=index,
            encoder=RandomEncoder(),
            states=TimedStates(),
            emitter=emitter,
            metrics=WorkerMetrics.create(),
            nearest=None if args.nearest == "exact" else StoreNearest(store, index),
        )
        rss_before = _rss_mb()
        t0 = time.perf_counter()
        for start in range(0, len(items), 500):
            chunk = [
                Incoming(orjson.dumps(it), "catalog.items", 0, start + i, it["item_id"].encode())
                for i, it in enumerate(items[start : start + 500])
            ]
            await pipe.on_catalog(chunk)
        index_s = time.perf_counter() - t0
        rss_after = _rss_mb()
        # What indexing the catalog added (index, vector store, KG), not the bench's own copy.
        catalog_rss_mb = (
            round(rss_after - rss_before, 1) if rss_after and rss_before is not None else None
        )
        optimize_s = 0.0
        if args.nearest == "store-hnsw":
            t0 = time.perf_counter()
            store.optimize()
            optimize_s = time.perf_counter() - t0
        n = args.warmup + args.batches
        if args.workload == "many-users":
            profiles, batches = many_user_batches(items, n, args.batch, args.users)
            for start in range(0, len(profiles), 500):
                await pipe.on_profiles(profiles[start : start + 500])
        else:
            batches = click_batches(data.clicks, n, args.batch, "events.click")
        for b in batches[: args.warmup]:  # users get state; the store gets its users
            await pipe.on_clicks(b)
        instrument(pipe, store, timers)
        lists_before = emitter.messages
        prof = cProfile.Profile() if args.cprofile else None
        t0 = time.perf_counter()
        if prof is not None:
            prof.enable()
        for b in batches[args.warmup :]:
            with timers.time("on_clicks (total)"):
                await pipe.on_clicks(b)
        if prof is not None:
            prof.disable()
        wall = time.perf_counter() - t0
        lists = emitter.messages - lists_before
        users = len(pipe.states)
        store.close()
    n_events = args.batches * args.batch
    stages = {
        name: {
            "ms_per_batch": round(1000 * s / args.batches, 2),
            "share": round(s / timers.seconds["on_clicks (total)"], 3),
            "calls": timers.calls[name],
        }
        for name, s in sorted(timers.seconds.items(), key=lambda kv: -kv[1])
    }
    result: dict[str, Any] = {
        "catalog_items": len(items),
        "catalog_index_s": round(index_s, 2),
        "nearest": args.nearest,
        "optimize_s": round(optimize_s, 2),
        "workload": args.workload,
        "batch": args.batch,
        "batches": args.batches,
        "users_with_state": users,
        "events_per_s": round(n_events / wall, 1),
        "lists_per_click": round(lists / n_events, 3),
        "ms_per_batch": round(1000 * wall / args.batches, 2),
        "rss_peak_mb": _rss_mb("VmHWM"),
        "catalog_rss_mb": catalog_rss_mb,
        "stages": stages,
    }
    if prof is not None:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats(args.sort).print_stats(40)
        result["cprofile_top"] = buf.getvalue()
    return result


def _rss_mb(field: str = "VmRSS") -> float | None:
    """This process's resident memory (``VmRSS``; ``VmHWM``: its peak), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.worker_profile", description=__doc__)
    p.add_argument("--catalog", type=int, default=1682, help="1682 (ml-100k) or N synthetic")
    p.add_argument("--batch", type=int, default=500, help="clicks per batch (worker default)")
    p.add_argument("--batches", type=int, default=20, help="measured batches")
    p.add_argument("--warmup", type=int, default=5, help="batches before measuring")
    p.add_argument(
        "--workload",
        choices=("many-users", "ml100k"),
        default="many-users",
        help="many-users: bench/workload.py's users, each click from a user drawn uniformly "
        "(one list per click); ml100k: ml-100k's ratings in time order (one user's together)",
    )
    p.add_argument(
        "--nearest",
        choices=("store", "store-hnsw", "exact"),
        default="store",
        help="candidates' nearest items: the vector store as the worker searches it, the store "
        "after building its HNSW index, or an exact scan of the item index (the harness's)",
    )
    p.add_argument(
        "--exact-max-items",
        type=int,
        default=CandidateConfig().exact_max_items,
        help="catalogs up to this size score every item, larger ones candidates (0: always "
        "candidates)",
    )
    p.add_argument("--users", type=int, default=10_000, help="users of the many-users workload")
    p.add_argument("--cprofile", action="store_true", help="also keep a cProfile summary")
    p.add_argument("--sort", default="cumulative", help="cProfile order: cumulative, tottime, ...")
    p.add_argument("--out", type=Path, default=Path("results/profile/worker_profile.json"))
    args = p.parse_args(argv)
    result = asyncio.run(run(args))
    print(
        f"catalog {result['catalog_items']} items, batch {args.batch}: "
        f"{result['events_per_s']:,.0f} clicks/s in-process "
        f"(lists_per_click {result['lists_per_click']}), {result['ms_per_batch']} ms/batch, "
        f"peak RSS {result['rss_peak_mb']} MiB"
    )
    print(f"{'stage':<36}{'ms/batch':>10}{'share':>8}{'calls':>8}")
    for name, s in result["stages"].items():
        print(f"{name:<36}{s['ms_per_batch']:>10.2f}{s['share']:>8.1%}{s['calls']:>8}")
    if "cprofile_top" in result:
        print(result["cprofile_top"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

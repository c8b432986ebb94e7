"""Where the worker's time goes on click batches, without Kafka: ``Pipeline`` in-process.

    python -m bench.worker_profile --catalog 1682 --batches 40 --batch 500
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
from embeddings.vectors import Matrix
from scenerec.config import Settings
from scenerec.datasets import load_ml100k
from streams import state as state_codec
from streams.metrics import WorkerMetrics
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
    setattr(pl, "to_payload", timers.wrap("ranking: to_payload", pl.to_payload))  # noqa: B010
    model: Any = pipe.model
    model.rank = timers.wrap("ranking: rank", pipe.model.rank)
    model.click_deltas = timers.wrap("item statistics: click_deltas", pipe.model.click_deltas)
    codec: Any = state_codec  # the module object the pipeline calls through
    codec.loads = timers.wrap("state codec: loads", state_codec.loads)
    codec.dumps = timers.wrap("state codec: dumps", state_codec.dumps)
    pipe_any: Any = pipe
    pipe_any._parse_one = timers.wrap("parse: json + pydantic", pipe._parse_one)


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
        from embeddings.ranking import ItemIndex

        pipe = Pipeline(
            config=PipelineConfig(scenes=SCENES, unknown_item_wait_s=0.0),
            store=store,
            index=ItemIndex(384),
            encoder=RandomEncoder(),
            states=TimedStates(),
            emitter=SerialisingEmitter(timers),
            metrics=WorkerMetrics.create(),
        )
        t0 = time.perf_counter()
        for start in range(0, len(items), 500):
            chunk = [
                Incoming(orjson.dumps(it), "catalog.items", 0, start + i, it["item_id"].encode())
                for i, it in enumerate(items[start : start + 500])
            ]
            await pipe.on_catalog(chunk)
        index_s = time.perf_counter() - t0
        batches = click_batches(data.clicks, args.warmup + args.batches, args.batch, "events.click")
        for b in batches[: args.warmup]:  # users get state; the store gets its users
            await pipe.on_clicks(b)
        instrument(pipe, store, timers)
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
        "batch": args.batch,
        "batches": args.batches,
        "users_with_state": users,
        "events_per_s": round(n_events / wall, 1),
        "ms_per_batch": round(1000 * wall / args.batches, 2),
        "stages": stages,
    }
    if prof is not None:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(40)
        result["cprofile_top"] = buf.getvalue()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.worker_profile", description=__doc__)
    p.add_argument("--catalog", type=int, default=1682, help="1682 (ml-100k) or N synthetic")
    p.add_argument("--batch", type=int, default=500, help="clicks per batch (worker default)")
    p.add_argument("--batches", type=int, default=20, help="measured batches")
    p.add_argument("--warmup", type=int, default=5, help="batches before measuring")
    p.add_argument("--cprofile", action="store_true", help="also keep a cProfile summary")
    p.add_argument("--out", type=Path, default=Path("results/profile/worker_profile.json"))
    args = p.parse_args(argv)
    result = asyncio.run(run(args))
    print(
        f"catalog {result['catalog_items']} items, batch {args.batch}: "
        f"{result['events_per_s']:,.0f} clicks/s in-process, {result['ms_per_batch']} ms/batch"
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

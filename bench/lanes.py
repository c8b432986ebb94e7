"""Lanes with a catalog: workers started, the catalog published, and indexed.

The catalog of ``n`` items is ml-100k's (``n`` = 1,682) or ml-100k's followed by synthetic
items (bench/catalog.py). The workers' encoder is Ray Serve itself for ml-100k; for a
synthetic catalog, a local proxy (bench/encoder_cache.py) that answers the catalog's texts
from vectors encoded once through Ray Serve and cached, or, from ``synthetic_vectors_from``
items on, from deterministic synthetic vectors (a million texts are beyond the CPU
encoder); every other text (profiles, comments) goes on to Ray Serve.

Indexing is timed per worker; a worker that dies, runs past ``index_timeout_s`` or grows
past ``max_rss_mb`` while indexing fails the lane with :class:`bench.stack.IndexingFailed`
(its message says how far it got and how fast), and the lane's workers are stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import encoder_cache
from bench.catalog import synthetic_items
from bench.load import publish_catalog
from bench.stack import BenchStack, IndexingFailed, Lane, Worker, wait_indexed
from scenerec.datasets import Dataset

log = logging.getLogger("bench.lanes")


@dataclass
class CatalogLane:
    lane: Lane
    items: list[dict[str, Any]]
    detail: dict[str, Any] = field(default_factory=dict)
    proxy: encoder_cache.CachingEncoderProxy | None = None

    @property
    def workers(self) -> list[Worker]:
        return self.lane.workers


@dataclass(frozen=True)
class CatalogOptions:
    cache_dir: Path = Path("results/cache")
    #: Catalogs of this many items or more get synthetic vectors (0: never).
    synthetic_vectors_from: int = 1_000_000
    index_timeout_s: float = 3600.0
    max_rss_mb: float | None = None


def catalog_of(data: Dataset, n: int) -> list[dict[str, Any]]:
    return list(data.items) if n == len(data.items) else synthetic_items(n, data)


def _encoder_proxy(
    n: int, items: list[dict[str, Any]], url: str, opts: CatalogOptions, detail: dict[str, Any]
) -> encoder_cache.CachingEncoderProxy:
    texts = encoder_cache.catalog_texts(items)
    if opts.synthetic_vectors_from and n >= opts.synthetic_vectors_from:
        t0 = time.monotonic()
        vectors = encoder_cache.SyntheticVectors(texts)
        detail.update(
            vectors="synthetic (bench/encoder_cache.py SyntheticVectors), not the encoder's",
            vectors_prepared_seconds=round(time.monotonic() - t0, 1),
        )
        return encoder_cache.CachingEncoderProxy(vectors, url)
    path = encoder_cache.cache_path(opts.cache_dir, texts, url)
    cached = encoder_cache.load(path)
    if cached is None:
        log.info("encoding %d catalog texts through Ray Serve (cached in %s)", n, path)
        meta = asyncio.run(encoder_cache.fill(path, texts, url))
        cached = encoder_cache.load(path)
        assert cached is not None
        when = "this run"
    else:
        meta = cached[1]
        when = f"a previous run ({meta.get('encoded_at')}), read from {path}"
    log.info("encoding %d texts took %.0fs (%s)", n, meta["encode_seconds"], when)
    detail.update(
        vectors="encoded through Ray Serve, cached",
        encode_seconds=meta["encode_seconds"],
        encode_texts_per_s=meta["texts_per_s"],
        encoded_in=when,
    )
    return encoder_cache.CachingEncoderProxy(cached[0], url)


def start_catalog_lane(
    stack: BenchStack,
    data: Dataset,
    n: int,
    name: str,
    opts: CatalogOptions,
    workers: int = 1,
    proxies: list[encoder_cache.CachingEncoderProxy] | None = None,
) -> CatalogLane:
    """A fresh lane with ``workers`` workers that have indexed a catalog of ``n`` items.

    A proxy it starts is appended to ``proxies`` (the caller stops them at the end).
    """
    items = catalog_of(data, n)
    detail: dict[str, Any] = {"items": n, "synthetic_items": n - min(n, len(data.items))}
    proxy = None
    env: dict[str, str] = {}
    if n != len(data.items):
        proxy = _encoder_proxy(n, items, stack.settings.encoder_base_url, opts, detail)
        proxy.start()
        if proxies is not None:
            proxies.append(proxy)
        env["SCENEREC_ENCODER_URL"] = proxy.url
    else:
        detail["vectors"] = "encoded through Ray Serve by the worker"
    lane = stack.lane(name, **env)
    result = CatalogLane(lane, items, detail, proxy)
    try:
        for i in range(workers):
            lane.start_worker("worker" if workers == 1 else f"w{i + 1}")
        detail["publish_seconds"] = round(
            asyncio.run(publish_catalog(lane.settings, items, f"catalog {n}")), 1
        )
        detail.update(asyncio.run(_index_all(lane.workers, n, opts)))
    except IndexingFailed:
        lane.stop_all()
        raise
    if proxy is not None:
        detail.update(proxy_hits=proxy.hits, proxy_misses=proxy.misses)
    return result


async def _index_all(workers: list[Worker], n: int, opts: CatalogOptions) -> dict[str, Any]:
    """Every worker indexes the whole catalog; seconds and RSS per worker, and a trace."""
    traces: dict[str, list[tuple[float, int, float | None]]] = {w.name: [] for w in workers}
    try:
        seconds = await asyncio.gather(
            *(
                wait_indexed(w, n, opts.index_timeout_s, opts.max_rss_mb, traces[w.name])
                for w in workers
            )
        )
    except IndexingFailed as exc:
        exc.trace = traces
        raise
    rss = {w.name: w.rss_mb() for w in workers}
    return {
        "index_seconds": round(max(seconds), 1),
        "index_items_per_s": round(n / max(seconds), 1) if max(seconds) > 0 else None,
        "index_seconds_by_worker": {
            w.name: round(s, 1) for w, s in zip(workers, seconds, strict=True)
        },
        "rss_mb_after_index": {k: None if v is None else round(v, 1) for k, v in rss.items()},
        "index_trace": traces,
    }

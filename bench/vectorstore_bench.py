"""Benchmark the vector store backends on random points.

For each backend: time to upsert N random ``dim``-d items, the index build (``optimize``; Qdrant
Edge only, a no-op elsewhere), the median latency of top-10 queries with and without a scene
filter, and recall@10 against an exact numpy search. Qdrant Edge is measured twice: before the
index build (``edge-scan``, exact full scans) and after it (``edge-hnsw``). Prints a table and
writes JSON. Random Gaussian vectors are the worst case for HNSW recall: real embeddings do better.

    python -m bench.vectorstore_bench --points 20000 --dim 384 --queries 100

Backends: ``edge`` (Qdrant Edge), ``local`` (qdrant-client local mode), and ``server`` when
``--url`` (or QDRANT_URL) is given; the api key comes from QDRANT_API_KEY only, never argv.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vectorstore import ItemPoint, VectorStore
from vectorstore.client import QdrantClientStore
from vectorstore.edge import EdgeVectorStore

SCENES = ("home", "search", "detail", "cart")
K = 10


def make_items(n: int, dim: int, rng: np.random.Generator) -> list[ItemPoint]:
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    n_scenes = rng.integers(1, 3, size=n)
    return [
        ItemPoint(
            item_id=f"item-{i}",
            vector=vectors[i],
            scenes=tuple(rng.choice(SCENES, size=int(n_scenes[i]), replace=False).tolist()),
            title=f"Item {i}",
            popularity=float(rng.random()),
        )
        for i in range(n)
    ]


def exact_top(
    matrix: np.ndarray, query: np.ndarray, ids: list[str], mask: np.ndarray | None
) -> set[str]:
    scores = matrix @ query
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
    top = np.argsort(-scores)[:K]
    return {ids[i] for i in top if np.isfinite(scores[i])}


def measure(
    store: VectorStore, items: list[ItemPoint], queries: np.ndarray, scenes: list[str]
) -> dict[str, float]:
    """Median latency and mean recall@10 of plain and scene-filtered queries."""
    matrix = np.stack([it.vector for it in items])
    ids = [it.item_id for it in items]
    masks = {s: np.array([s in it.scenes for it in items]) for s in SCENES}
    store.search_items(queries[0], K)  # warm-up
    plain_ms: list[float] = []
    filtered_ms: list[float] = []
    recall: list[float] = []
    filtered_recall: list[float] = []
    for query, scene in zip(queries, scenes, strict=True):
        t0 = time.perf_counter()
        hits = store.search_items(query, K)
        plain_ms.append((time.perf_counter() - t0) * 1000)
        truth = exact_top(matrix, query, ids, None)
        recall.append(len(truth & {h.item_id for h in hits}) / len(truth))

        t0 = time.perf_counter()
        hits = store.search_items(query, K, scene=scene)
        filtered_ms.append((time.perf_counter() - t0) * 1000)
        truth = exact_top(matrix, query, ids, masks[scene])
        filtered_recall.append(len(truth & {h.item_id for h in hits}) / max(1, len(truth)))
    return {
        "query_ms_median": round(statistics.median(plain_ms), 3),
        "filtered_query_ms_median": round(statistics.median(filtered_ms), 3),
        "recall_at_10": round(statistics.fmean(recall), 4),
        "filtered_recall_at_10": round(statistics.fmean(filtered_recall), 4),
    }


def run_backend(
    name: str,
    store: VectorStore,
    items: list[ItemPoint],
    queries: np.ndarray,
    scenes: list[str],
) -> list[dict[str, Any]]:
    """One row per backend; Qdrant Edge gets two: before (exact scan) and after the index build."""
    dim = items[0].vector.shape[0]
    store.ensure_collections(dim, SCENES)

    t0 = time.perf_counter()
    store.upsert_items(items)
    store.flush()
    upsert_s = time.perf_counter() - t0
    base = {
        "points": len(items),
        "dim": dim,
        "queries": len(queries),
        "upsert_s": round(upsert_s, 3),
    }

    rows: list[dict[str, Any]] = []
    if name == "edge":
        scan = measure(store, items, queries, scenes)
        rows.append({"backend": "edge-scan", **base, "index_build_s": 0.0, **scan})
    t0 = time.perf_counter()
    store.optimize()  # Qdrant Edge: builds HNSW; a no-op for qdrant-client
    build_s = time.perf_counter() - t0
    label = "edge-hnsw" if name == "edge" else name
    rows.append(
        {
            "backend": label,
            **base,
            "index_build_s": round(build_s, 3),
            **measure(store, items, queries, scenes),
        }
    )
    for row in rows:
        row["count"] = store.count("items")
    return rows


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def print_table(results: list[dict[str, Any]]) -> None:
    header = (
        f"{'backend':<10} {'points':>8} {'upsert s':>9} {'build s':>8} "
        f"{'query ms p50':>13} {'filtered ms p50':>16} {'recall@10':>10} {'filt recall':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r['backend']:<10} {r['points']:>8} {r['upsert_s']:>9.2f} {r['index_build_s']:>8.2f} "
            f"{r['query_ms_median']:>13.2f} {r['filtered_query_ms_median']:>16.2f} "
            f"{r['recall_at_10']:>10.3f} {r['filtered_recall_at_10']:>11.3f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=20_000, help="items to upsert")
    parser.add_argument("--dim", type=int, default=384, help="vector dimension")
    parser.add_argument("--queries", type=int, default=100, help="queries per kind")
    parser.add_argument(
        "--backends",
        default="edge,local",
        help="comma-separated: edge, local, server (server needs --url or QDRANT_URL)",
    )
    parser.add_argument("--url", default=os.environ.get("QDRANT_URL"), help="Qdrant server url")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--hnsw-ef", type=int, default=None, help="HNSW search beam (default: Qdrant's)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("results/vectorstore_bench.json"), help="JSON output"
    )
    args = parser.parse_args(argv)
    if args.points <= 0 or args.dim <= 0 or args.queries <= 0:
        parser.error("--points, --dim and --queries must be positive")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if args.url and "server" not in backends:
        backends.append("server")
    unknown = set(backends) - {"edge", "local", "server"}
    if unknown:
        parser.error(f"unknown backends: {sorted(unknown)}")
    if "server" in backends and not args.url:
        parser.error("the server backend needs --url or QDRANT_URL")

    rng = np.random.default_rng(args.seed)
    items = make_items(args.points, args.dim, rng)
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    scenes = rng.choice(SCENES, size=args.queries).tolist()

    results: list[dict[str, Any]] = []
    for backend in backends:
        print(f"running {backend} ...", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix=f"vsbench-{backend}-") as tmp:
            store: VectorStore
            if backend == "edge":
                store = EdgeVectorStore(Path(tmp), hnsw_ef=args.hnsw_ef)
            elif backend == "local":
                store = QdrantClientStore(path=Path(tmp), hnsw_ef=args.hnsw_ef)
            else:
                store = QdrantClientStore(
                    url=args.url,
                    api_key=os.environ.get("QDRANT_API_KEY") or None,
                    collection_prefix=f"bench_{uuid.uuid4().hex[:8]}_",
                    hnsw_ef=args.hnsw_ef,
                )
            with store:
                results.extend(run_backend(backend, store, items, queries, scenes))

    print_table(results)
    report = {
        "config": {
            "points": args.points,
            "dim": args.dim,
            "queries": args.queries,
            "k": K,
            "seed": args.seed,
            "hnsw_ef": args.hnsw_ef,
            "scenes": list(SCENES),
        },
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "qdrant-edge-py": _version("qdrant-edge-py"),
            "qdrant-client": _version("qdrant-client"),
        },
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

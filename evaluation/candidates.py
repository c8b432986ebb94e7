"""``python -m evaluation.candidates``: how much of the exact ranking the candidates keep.

SceneRec as the worker ranks a large catalog, scoring each feed's candidates only
(``embeddings.blended``: the neighbours of the user's items, the nearest items to the
query from the vector store's index, what is popular now, what new users start with),
against the same model scoring every item, on ml-100k's Protocol B (prequential over
the test events, valid replayed first). Both rankings read one model state, so they
differ only in what they score. Reported:

* the candidates' recall of the exact top-10: ``|cand top-10 ∩ exact top-10| / 10``,
  over every scored event's global feed, the user's earlier items left out of both;
* Hit, NDCG and MRR@10 of both, and the paired difference candidates - exact with its
  95% bootstrap interval over users.

The nearest items come from a Qdrant Edge store holding the catalog, as in the worker.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation.cli import DEFAULT_DATA_DIR, configure
from evaluation.encoding import DEFAULT_CACHE_DIR

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("results/candidates.json")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evaluation.candidates",
        description="SceneRec ranking candidates only vs every item on ml-100k's Protocol B:"
        " recall of the exact top-10 and the paired NDCG difference; writes JSON.",
    )
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="default: %(default)s")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="default: %(default)s")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default: %(default)s")
    p.add_argument("--events", type=int, default=0, help="score only the first N test events")
    p.add_argument("--neighbours", type=int, default=100, help="per source (default: 100)")
    p.add_argument("--nearest", type=int, default=100, help="default: %(default)s")
    p.add_argument("--popular", type=int, default=100, help="default: %(default)s")
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (default: 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log each step with timings")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    from tqdm import tqdm

    from embeddings.blended import CandidateConfig, Ranker
    from embeddings.collaborative import DEFAULT_FEED_BLEND
    from evaluation.data import Catalog, load_ml100k
    from evaluation.encoding import VectorCache, item_vectors, profile_vectors
    from evaluation.metrics import HIT, MRR, NDCG, midrank, paired_delta, summarize, target_metrics
    from evaluation.scenerec_model import SceneRec, SceneRecConfig
    from streams.nearest import StoreNearest
    from vectorstore import open_store
    from vectorstore.base import ItemPoint

    start = time.perf_counter()
    ds = load_ml100k(args.data_dir)
    catalog = Catalog(ds.items)
    cache = VectorCache(args.cache_dir)
    vecs = item_vectors(ds, cache)
    blend = DEFAULT_FEED_BLEND  # the worker's built-in blend: valid's choice for Protocol B
    config = SceneRecConfig(
        half_life_days=blend.half_life_s / 86_400.0,
        start_half_life_days=blend.collab.start_half_life_s / 86_400.0,
        age_weight=blend.collab.age_weight,
        blend=blend.blend,
    )
    model = SceneRec(catalog, vecs, profile_vectors(ds, cache), config)
    model.fit(ds.split.train)
    for event in ds.split.valid:
        model.update(event)
    candidates = CandidateConfig(
        neighbours=args.neighbours,
        nearest=args.nearest,
        popular=args.popular,
        exact_max_items=0,
    )
    scored = ds.split.test[: args.events] if args.events else ds.split.test
    exact_recs: list[tuple[str, dict[str, float]]] = []
    cand_recs: list[tuple[str, dict[str, float]]] = []
    recalls: list[float] = []
    sizes: list[int] = []
    with tempfile.TemporaryDirectory(prefix="scenerec-candidates-") as tmp:
        store = open_store(Path(tmp) / "qdrant")
        store.ensure_collections(
            int(vecs.shape[1]), sorted({s for i in ds.items for s in i.scenes})
        )
        store.upsert_items(
            [ItemPoint(i.id, vecs[r], i.scenes, i.title, 0.0) for r, i in enumerate(ds.items)]
        )
        store.optimize()
        inner = model.model.ranker
        ranker = Ranker(
            model.index,
            model.stats,
            inner.model,
            inner.blend,
            10,
            candidates,
            StoreNearest(store, model.index),
        )
        seen: dict[str, set[int]] = {}
        for e in ds.split.train + ds.split.valid:
            seen.setdefault(e.user, set()).add(catalog.row(e.item))
        excluded = np.zeros(len(catalog), np.bool_)
        for e in tqdm(scored, desc="protocol B", disable=args.no_progress, leave=False):
            target = catalog.row(e.item)
            rows = list(seen.get(e.user, set()) - {target})
            excluded[rows] = True
            state = model.known_state(e.user)
            exact = model.score(e.user)
            cand = ranker.global_scores(state)
            sizes.append(int(np.isfinite(cand).sum()))
            for scores, records in ((exact, exact_recs), (cand, cand_recs)):
                records.append((e.user, target_metrics(midrank(scores, target, excluded))))
            top_exact = set(_top(exact, excluded, 10))
            recalls.append(len(top_exact & set(_top(cand, excluded, 10))) / len(top_exact))
            excluded[rows] = False
            model.update(e)
            seen.setdefault(e.user, set()).add(target)
        store.close()
    metrics = (HIT, NDCG, MRR)
    out: dict[str, Any] = {
        "recall_of_exact_top10": float(np.mean(recalls)),
        "candidates_per_feed": {"mean": float(np.mean(sizes)), "max": int(np.max(sizes))},
        "exact": {m: e.mean for m, e in summarize(exact_recs, metrics).items()},
        "candidates": {m: e.mean for m, e in summarize(cand_recs, metrics).items()},
        "candidates_minus_exact": {m: paired_delta(cand_recs, exact_recs, m) for m in metrics},
        "meta": {
            "dataset": ds.name,
            "scored_events": len(scored),
            "candidates": vars(candidates),
            "wall_time_s": round(time.perf_counter() - start, 1),
        },
    }
    return out


def _top(scores: Any, excluded: Any, k: int) -> list[int]:
    import numpy as np

    masked = np.where(excluded, -np.inf, scores)
    order = np.argsort(-masked, kind="stable")[:k]
    return [int(r) for r in order if np.isfinite(masked[r])]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure(args.verbose, args.threads)
    from evaluation.report import write_json

    out = run(args)
    out["meta"]["command"] = "python -m evaluation.candidates " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    d = out["candidates_minus_exact"]["ndcg@10"]
    print(
        f"recall of the exact top-10: {out['recall_of_exact_top10']:.4f}"
        f" ({out['candidates_per_feed']['mean']:.0f} candidates per feed on average)\n"
        f"NDCG@10 exact {out['exact']['ndcg@10']:.4f}, candidates"
        f" {out['candidates']['ndcg@10']:.4f}, difference {d['delta']:+.4f}"
        f" [{d['delta_lo']:+.4f}, {d['delta_hi']:+.4f}]"
    )
    write_json(args.out, out)
    print(f"wrote {args.out} ({out['meta']['wall_time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m evaluation.ladder``: what each SceneRec component adds on ml-100k.

A ladder of systems, each the previous one plus one component, everything else equal, each
tuned on valid within its own part of the blend grid (``tuning.tune_scenerec_subsets``:
one pass per structure serves every row) before test is scored once:

1. popularity only (recency-decayed counts; the prior of every row);
2. + text: similarity to the user's vector over the encoder's text vectors;
3. + KG: the item vectors fused with the hashed knowledge-graph embedding (the worker's);
4. + collaborative: next-item transitions and item co-occurrence learned from the events;
5. + co-learning: the BPR-learned global gate (``gated_similarity``). The scene side of
   co-learning (borrowing between scenes, per-scene gates) only changes scene feeds: the
   harness's per-scene tables measure it (``evaluation.per_scene``).

Social is not in ml-100k; its rows come from the lastfm-2k experiment
(``evaluation.lastfm``, part of ``python -m evaluation.cli``).
Output: a table (NDCG@10 on Protocols A, B and C with 95% bootstrap intervals and the
paired difference to the row above) and ``results/ladder.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from evaluation.cli import DEFAULT_DATA_DIR, configure
from evaluation.encoding import DEFAULT_CACHE_DIR

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("results/ladder.json")
Weights = tuple[float, ...]  # (popularity, transitions, similarity, co-occurrence, gated)

#: (row, item vectors, which blend weights the row may use).
ROWS: tuple[tuple[str, str, Callable[[Weights], bool]], ...] = (
    ("popularity only", "text", lambda w: not any(w[1:])),
    ("+ text", "text", lambda w: w[1] == w[3] == w[4] == 0),
    ("+ KG", "fused", lambda w: w[1] == w[3] == w[4] == 0),
    ("+ collaborative", "fused", lambda w: w[4] == 0),
    ("+ co-learning (learned gate)", "fused", lambda _w: True),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evaluation.ladder",
        description="SceneRec on ml-100k with its components added one at a time "
        "(popularity, text, KG, collaborative, co-learning), each tuned on valid; "
        "prints NDCG@10 on Protocols A, B and C and writes JSON.",
    )
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="default: %(default)s")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="default: %(default)s")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default: %(default)s")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: one decay setting, the small grid, Protocol B on 2,000 test events",
    )
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (default: 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="log each step with timings")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import numpy.typing as npt

    from embeddings.fusion import fuse_item
    from evaluation.data import Catalog, load_ml100k
    from evaluation.encoding import VectorCache, item_vectors, profile_vectors
    from evaluation.harness import QUICK_TEST_EVENTS
    from evaluation.metrics import NDCG, paired_delta, summarize
    from evaluation.protocols import Contender, cold_start, run_frozen, run_prequential
    from evaluation.scenerec_model import SceneRec, SceneRecConfig
    from evaluation.tuning import (
        SceneRecTuning,
        scenerec_space,
        tune_scenerec_subsets,
    )

    start = time.perf_counter()
    ds = load_ml100k(args.data_dir)
    catalog = Catalog(ds.items)
    train, valid, test = ds.split.train, ds.split.valid, ds.split.test
    cache = VectorCache(args.cache_dir)
    text = cache.encode(f"{ds.name}-items", [it.text for it in ds.items])
    vectors = {
        "text": np.stack([fuse_item(t, None) for t in text]),  # normalized text, no KG
        "fused": item_vectors(ds, cache),
    }
    profiles = profile_vectors(ds, cache)
    progress = not args.no_progress
    tuned: dict[str, SceneRecTuning] = {}
    for kind in ("text", "fused"):
        rows = {name: keep for name, vec, keep in ROWS if vec == kind}
        space = scenerec_space(args.quick)
        space = replace(
            space,
            structures=tuple(replace(c, learn_gate=kind == "fused") for c in space.structures),
        )

        def make(cfg: SceneRecConfig, v: npt.NDArray[np.float32] = vectors[kind]) -> SceneRec:
            return SceneRec(catalog, v, profiles, cfg)

        tuned.update(tune_scenerec_subsets(make, space, train, valid, rows, progress))
    logger.info("tuned in %.0f s", time.perf_counter() - start)

    frozen: dict[str, list[tuple[str, dict[str, float]]]] = {}
    contenders: dict[str, Contender] = {}
    for name, kind, _ in ROWS:
        model = SceneRec(catalog, vectors[kind], profiles, tuned[name].frozen)
        model.fit(train)
        frozen[name] = sorted(run_frozen(model, train + valid, test).metrics.items())
        online = SceneRec(catalog, vectors[kind], profiles, tuned[name].online)
        online.fit(train)
        contenders[name] = Contender(online, learn=True)
    scored = test[:QUICK_TEST_EVENTS] if args.quick else test
    records = run_prequential(
        contenders, catalog, train, valid, scored, desc="protocol B" if progress else None
    )
    train_users = {e.user for e in train}
    out: dict[str, Any] = {}
    previous: str | None = None
    for name, kind, _ in ROWS:
        online_recs = [(r.user, r.metrics) for r in records[name]]
        cold = cold_start(records[name], train_users)
        row: dict[str, Any] = {"item_vectors": kind}
        parts = {
            "A": frozen[name],
            "B": online_recs,
            "C 1st": [(r.user, r.metrics) for r in cold["1st"]],
            "C 2nd-3rd": [(r.user, r.metrics) for r in cold["2nd-3rd"]],
        }
        for label, recs in parts.items():
            est = summarize(recs)[NDCG]
            row[label] = {
                "ndcg@10": round(est.mean, 6),
                "lo": round(est.low, 6),
                "hi": round(est.high, 6),
            }
        if previous is not None:
            prev_online = [(r.user, r.metrics) for r in records[previous]]
            row["delta_vs_previous"] = {
                "A": paired_delta(frozen[name], frozen[previous], NDCG),
                "B": paired_delta(online_recs, prev_online, NDCG),
            }
        row["tuned"] = {
            "frozen": asdict(tuned[name].frozen),
            "online": asdict(tuned[name].online),
            "valid_frozen": max(tuned[name].frozen_valid.values()),
            "valid_online": max(tuned[name].online_valid.values()),
        }
        out[name] = row
        previous = name
    return {
        "rows": out,
        "meta": {
            "quick": args.quick,
            "scored_test_events_online": len(scored),
            "wall_time_s": round(time.perf_counter() - start, 1),
        },
    }


def print_table(payload: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 200), soft_wrap=False)
    table = Table(title="SceneRec on ml-100k, one component at a time: NDCG@10 on test")
    table.add_column("system")
    for label in ("A", "A Δ", "B", "B Δ", "C 1st", "C 2nd-3rd"):
        table.add_column(label, justify="right")
    for name, row in payload["rows"].items():
        cells = []
        for part in ("A", "B"):
            r = row[part]
            cells.append(f"{r['ndcg@10']:.4f} [{r['lo']:.4f}, {r['hi']:.4f}]")
            d = row.get("delta_vs_previous", {}).get(part)
            cells.append("-" if d is None else _delta(d))
        for part in ("C 1st", "C 2nd-3rd"):
            r = row[part]
            cells.append(f"{r['ndcg@10']:.4f} [{r['lo']:.4f}, {r['hi']:.4f}]")
        table.add_row(name, *cells)
    console.print(table)


def _delta(d: dict[str, float]) -> str:
    return f"{d['delta']:+.4f} [{d['delta_lo']:+.4f}, {d['delta_hi']:+.4f}]"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure(args.verbose, args.threads)
    from evaluation.report import write_json

    out = run(args)
    out["meta"]["command"] = "python -m evaluation.ladder " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    print_table(out)
    write_json(args.out, out)
    print(f"wrote {args.out} ({out['meta']['wall_time_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

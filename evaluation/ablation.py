"""``python -m evaluation.ablation``: does the knowledge graph help SceneRec on ml-100k?

SceneRec is run on Protocols A (frozen) and B (online) with three item-vector variants,
everything else identical:

* ``text``: the encoder's text vector only;
* ``text+hashed-kg``: text fused with :class:`embeddings.kg.HashedEntityEmbedding`, what the
  harness and the worker use today;
* ``text+transe-kg``: text fused with TransE entity vectors (:mod:`embeddings.transe`,
  trained on ``ml-100k.kg``, items found through ``ml-100k.link``) after a fixed seeded
  random projection to the text dimension.

For each variant (and each candidate KG fusion weight, ``--kg-weights``) SceneRec's decay
constants and per-tenure blend weights are tuned on valid exactly as the harness does
(``evaluation.tuning.tune_scenerec``); the KG weight is then picked per protocol on the same
valid scores, and test is scored once. Protocol C (cold start) comes from the B records for
free. Beside the harness's bootstrap interval of each NDCG@10, the table gives the paired
difference to ``text`` with its bootstrap interval (same users resampled for both).
The harness builds its item vectors inside ``harness.run``, so this module drives
``tuning`` and ``protocols`` directly rather than calling ``run``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from evaluation.cli import DEFAULT_DATA_DIR, configure
from evaluation.encoding import DEFAULT_CACHE_DIR

logger = logging.getLogger(__name__)

Matrix = npt.NDArray[np.float32]
DEFAULT_OUT = Path("results/ablation.json")
VARIANTS = ("text", "text+hashed-kg", "text+transe-kg")
PROTOCOLS = ("frozen", "online", "cold_start")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evaluation.ablation",
        description=(
            "SceneRec on ml-100k, Protocols A (frozen) and B (online), with item vectors "
            "from text only, text + hashed KG (today) and text + TransE KG. Everything is "
            "tuned on valid only; prints NDCG@10 with bootstrap intervals and writes JSON."
        ),
    )
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="default: %(default)s")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE_DIR,
        help="encoded vectors and trained TransE vectors (default: %(default)s)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="default: %(default)s")
    p.add_argument(
        "--kg-weights",
        default="0.5",
        help="candidate KG fusion weights (text weight 1), comma-separated; the best per "
        "protocol is chosen on valid (default: %(default)s, embeddings.fusion.KG_WEIGHT)",
    )
    p.add_argument("--dim", type=int, default=64, help="TransE dimension (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=50, help="TransE epochs (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="TransE seed (default: %(default)s)")
    p.add_argument(
        "--norm", type=int, choices=(1, 2), default=2, help="TransE distance (default: L2)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: one decay setting, the small blend grid, Protocol B on the first "
        "2,000 test events (numbers not comparable)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="log each step with timings")
    return p


@dataclass(frozen=True)
class _Candidate:
    variant: str
    kg_weight: float | None
    vectors: Matrix
    kg_coverage: int  # items with a KG vector


def _kg_vectors(args: argparse.Namespace, dim: int) -> dict[str, Callable[[Any], Any]]:
    """variant -> item -> KG vector (or None) in the text space."""
    from embeddings.kg import HashedEntityEmbedding
    from embeddings.transe import TransEParams, cached_transe, project_vectors, read_links

    root = args.data_dir / "ml-100k"
    hashed = HashedEntityEmbedding(dim, seed=2024)  # the seed evaluation.encoding uses
    params = TransEParams(dim=args.dim, epochs=args.epochs, seed=args.seed, norm=args.norm)
    model = cached_transe(root / "ml-100k.kg", args.cache_dir, params)
    transe = project_vectors(model, read_links(root / "ml-100k.link"), dim)
    return {
        "text+hashed-kg": lambda item: hashed.embed(item.relations),
        "text+transe-kg": lambda item: transe.get(item.id),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from dataclasses import replace

    from embeddings.fusion import fuse_item
    from evaluation.data import Catalog, load_ml100k
    from evaluation.encoding import VectorCache, profile_vectors
    from evaluation.harness import (
        QUICK_TEST_EVENTS,
        _cold_result,
        _event_result,
        _list_result,
    )
    from evaluation.metrics import NDCG, paired_delta
    from evaluation.protocols import Contender, run_frozen, run_prequential
    from evaluation.report import to_json
    from evaluation.scenerec_model import SceneRec, SceneRecConfig
    from evaluation.tuning import (
        SceneRecTuning,
        scenerec_space,
        tune_scenerec,
    )

    timings: dict[str, float] = {}

    def timed(label: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        logger.info("%s ...", label)
        out = fn()
        timings[label] = round(time.perf_counter() - start, 2)
        logger.info("%s done in %.1f s", label, timings[label])
        return out

    ds = timed("load ml-100k", lambda: load_ml100k(args.data_dir))
    catalog = Catalog(ds.items)
    train, valid, test = ds.split.train, ds.split.valid, ds.split.test
    cache = VectorCache(args.cache_dir)
    text = cache.encode(f"{ds.name}-items", [it.text for it in ds.items])
    profiles = profile_vectors(ds, cache)
    kg = timed("KG vectors (TransE trained or cached)", lambda: _kg_vectors(args, text.shape[1]))
    weights = [float(w) for w in args.kg_weights.split(",") if w.strip()]

    candidates: list[_Candidate] = [
        _Candidate("text", None, np.stack([fuse_item(t, None) for t in text]), 0)
    ]
    for variant in VARIANTS[1:]:
        kg_vecs = [kg[variant](item) for item in ds.items]
        covered = sum(v is not None for v in kg_vecs)
        for w in weights:
            fused = np.stack([fuse_item(text[r], v, w) for r, v in enumerate(kg_vecs)])
            candidates.append(_Candidate(variant, w, fused, covered))

    space = scenerec_space(args.quick)
    tuned: list[tuple[_Candidate, SceneRecTuning]] = []
    for cand in candidates:

        def make(cfg: SceneRecConfig, vecs: Matrix = cand.vectors) -> SceneRec:
            return SceneRec(catalog, vecs, profiles, cfg)

        label = f"tune {cand.variant} kg_weight={cand.kg_weight}"
        sc = timed(
            label,
            partial(
                tune_scenerec,
                make,
                space,
                train,
                valid,
                show_progress=not args.no_progress,
            ),
        )
        tuned.append((cand, sc))

    # Per variant and protocol: the KG weight with the best valid NDCG@10.
    chosen: dict[str, dict[str, tuple[_Candidate, SceneRecConfig, float]]] = {}
    for cand, sc in tuned:
        for protocol, cfg, valid_scores in (
            ("frozen", sc.frozen, sc.frozen_valid),
            ("online", sc.online, sc.online_valid),
        ):
            best = max(valid_scores.values())
            slot = chosen.setdefault(cand.variant, {})
            if protocol not in slot or best > slot[protocol][2] + 1e-12:
                slot[protocol] = (cand, cfg, best)

    scored = test[:QUICK_TEST_EVENTS] if args.quick else test
    frozen_lists = {}
    contenders: dict[str, Contender] = {}
    for variant in VARIANTS:
        cand, cfg, _ = chosen[variant]["frozen"]
        model = SceneRec(catalog, cand.vectors, profiles, cfg)
        model.fit(train)
        frozen_lists[variant] = timed(
            f"protocol A {variant}", partial(run_frozen, model, train + valid, test)
        )
        cand, cfg, _ = chosen[variant]["online"]
        online = SceneRec(catalog, cand.vectors, profiles, replace(cfg))
        online.fit(train)
        contenders[variant] = Contender(online, learn=True)
    records = timed(
        "protocol B",
        lambda: run_prequential(
            contenders,
            catalog,
            train,
            valid,
            scored,
            desc=None if args.no_progress else "protocol B",
        ),
    )
    train_users = {e.user for e in train}
    results = {
        "frozen": {
            v: _list_result(frozen_lists[v], catalog, chosen[v]["frozen"][0].vectors)
            for v in VARIANTS
        },
        "online": {
            v: _event_result(records[v], catalog, chosen[v]["online"][0].vectors) for v in VARIANTS
        },
        "cold_start": {v: _cold_result(records[v], train_users) for v in VARIANTS},
    }
    payload: dict[str, Any] = to_json(results)
    paired: dict[str, list[tuple[str, Mapping[str, float]]]] = {}
    for v in VARIANTS:
        paired[f"frozen:{v}"] = sorted(frozen_lists[v].metrics.items())
        paired[f"online:{v}"] = [(r.user, r.metrics) for r in records[v]]
    for protocol in ("frozen", "online"):
        for v in VARIANTS[1:]:
            payload[protocol][v].update(
                paired_delta(paired[f"{protocol}:{v}"], paired[f"{protocol}:text"], NDCG)
            )
        for v in VARIANTS:
            cand, cfg, valid_ndcg = chosen[v][protocol]
            payload[protocol][v]["valid_ndcg@10"] = round(valid_ndcg, 6)
            payload[protocol][v]["kg_weight"] = cand.kg_weight
            payload[protocol][v]["items_with_kg"] = float(cand.kg_coverage)
    return {
        "results": payload,
        "meta": {
            "quick": args.quick,
            "kg_weights": weights,
            "transe": {
                "dim": args.dim,
                "epochs": args.epochs,
                "seed": args.seed,
                "norm": args.norm,
                "projection": "seeded Gaussian JL projection to the text dimension, seed 2024",
            },
            "scored_test_events_online": len(scored),
            "tuned": {
                v: {
                    p: {"kg_weight": chosen[v][p][0].kg_weight, "config": asdict(chosen[v][p][1])}
                    for p in ("frozen", "online")
                }
                for v in VARIANTS
            },
            "valid_by_candidate": [
                {
                    "variant": cand.variant,
                    "kg_weight": cand.kg_weight,
                    "frozen_valid": sc.frozen_valid,
                    "online_valid": sc.online_valid,
                }
                for cand, sc in tuned
            ],
            "bootstrap": "95% percentile interval, 1000 resamples of users, seed 2024; "
            "delta: paired difference to text, same resampling",
            "timings_s": timings,
        },
    }


def print_table(payload: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 200), soft_wrap=False)
    table = Table(title="SceneRec NDCG@10 by item vectors (test; 95% bootstrap over users)")
    table.add_column("item vectors")
    for label in ("A NDCG@10", "A Δ vs text", "B NDCG@10", "B Δ vs text", "C NDCG@10"):
        table.add_column(label, justify="right")
    table.add_column("valid A / B", justify="right")
    table.add_column("kg w A / B", justify="right")
    for v in VARIANTS:
        cells: list[str] = []
        for protocol in ("frozen", "online"):
            row = payload[protocol][v]
            cells.append(f"{row['ndcg@10']:.4f} [{row['ndcg@10_lo']:.4f}, {row['ndcg@10_hi']:.4f}]")
            cells.append(
                "-"
                if "delta" not in row
                else f"{row['delta']:+.4f} [{row['delta_lo']:+.4f}, {row['delta_hi']:+.4f}]"
            )
        cold = payload["cold_start"][v]
        cells.append(f"{cold['ndcg@10']:.4f} [{cold['ndcg@10_lo']:.4f}, {cold['ndcg@10_hi']:.4f}]")
        fr, on = payload["frozen"][v], payload["online"][v]
        cells.append(f"{fr['valid_ndcg@10']:.4f} / {on['valid_ndcg@10']:.4f}")
        cells.append(f"{_weight(fr['kg_weight'])} / {_weight(on['kg_weight'])}")
        table.add_row(v, *cells)
    console.print(table)


def _weight(w: float | None) -> str:
    return "-" if w is None else f"{w:g}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure(args.verbose, args.threads)
    from evaluation.data import DataError
    from evaluation.report import write_json

    start = time.perf_counter()
    try:
        out = run(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    out["meta"]["command"] = "python -m evaluation.ablation " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    out["meta"]["wall_time_s"] = round(elapsed, 1)
    print_table(out["results"])
    write_json(args.out, {"results": out["results"], "meta": out["meta"]})
    print(f"wrote {args.out} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m evaluation.cli``: run the protocols on a data set and report.

By default: Protocols A, B and C on ml-100k (and the social experiment on lastfm-2k);
``--dataset DIR`` runs any folder of RecBole atomic files, with ``--protocol temporal``
(A, B, C on its global split) or ``loo`` (Protocol L, leave-one-out). Prints one table
per protocol and which knobs valid chose, writes ``results/eval.json`` (and
``eval.meta.json`` next to it: tuned settings, valid scores, timings) and, with
``--dump-recs``, every scored top-10 list as JSON lines.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from evaluation.defaults import DEFAULT_TUNE_USERS, QUICK_BPR_EPOCHS
from evaluation.encoding import DEFAULT_CACHE_DIR
from evaluation.report import (
    PROTOCOL_KEYS,
    dump_recs,
    print_chosen,
    print_deltas,
    print_diversity,
    print_per_scene,
    print_social,
    print_tables,
    titles,
    write_json,
)

#: Kept here (not imported) so that --help never loads numpy or torch.
PROTOCOLS = ("temporal", "loo")

DEFAULT_DATA_DIR = Path(os.environ.get("SCENEREC_DATA_DIR", "../shared/data"))
DEFAULT_OUT = Path("results/eval.json")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evaluation.cli",
        description=(
            "Offline evaluation of SceneRec against most-popular, recent-popular, item-kNN "
            "and BPR-MF (and SASRec in Protocol L) on ml-100k, or on any folder of RecBole "
            "atomic files (--dataset): Protocol A (frozen, RecBole-compatible), B (online, "
            "prequential), C (cold start) or L (leave-one-out, full ranking), as defined in "
            "../shared/EVALUATION.md. Hyper-parameters are tuned on the valid split only."
        ),
    )
    p.add_argument(
        "--dataset",
        type=Path,
        default=None,
        metavar="DIR",
        help="a folder of atomic files (`scenerec convert` writes them) instead of ml-100k",
    )
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="temporal",
        help="with --dataset: temporal (A, B, C on the global split; data without time or "
        "order: a seeded random split, A only) or loo (Protocol L) (default: %(default)s)",
    )
    p.add_argument(
        "--tune-users",
        type=_positive_or_all,
        default=DEFAULT_TUNE_USERS,
        metavar="N",
        help="Protocol L: valid users SceneRec's tuner scores (a seeded sample; 'all' for "
        "every one; default: %(default)s)",
    )
    p.add_argument("--no-sasrec", action="store_true", help="Protocol L: skip SASRec")
    p.add_argument(
        "--no-knn",
        action="store_true",
        help="skip item-kNN, whose dense counts a very large catalog cannot hold",
    )
    p.add_argument(
        "--sasrec-minutes",
        type=float,
        default=30.0,
        help="Protocol L: SASRec's training budget on CPU (default: %(default)s)",
    )
    p.add_argument(
        "--cold-items",
        type=_unit_interval,
        default=0.0,
        metavar="F",
        help="Protocol L: this share of the items (seeded) loses its train events; the "
        "test targets that are such items get their own table (default: 0, off)",
    )
    p.add_argument(
        "--max-dense-gb",
        type=float,
        default=None,
        help="refuse a run whose dense item-item counts would need more (default: 80%% of "
        "the memory available)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help="folder holding ml-100k/ (default: %(default)s or $SCENEREC_DATA_DIR)",
    )
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="results JSON (default: %(default)s)"
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE_DIR,
        help="encoded item/profile vectors (default: %(default)s)",
    )
    p.add_argument(
        "--dump-recs",
        type=Path,
        default=None,
        metavar="FILE",
        help="write every scored top-10 list as JSON lines (protocol, system, user, event, items)",
    )
    p.add_argument(
        "--protocols", default=",".join(PROTOCOL_KEYS), help="comma-separated subset of %(default)s"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="fast smoke run: small tuning grids, BPR 5 epochs, Protocols B/C on "
        "the first 2,000 test events only (numbers not comparable)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch and BLAS CPU threads (default: %(default)s; the machine is shared)",
    )
    p.add_argument(
        "--mmr-lambda",
        type=_unit_interval,
        default=1.0,
        metavar="L",
        help="re-rank SceneRec's lists by MMR with trade-off L in [0, 1] in every protocol "
        "(1 = plain top-k by score, the default; the Protocol A table of lambdas is always "
        "printed)",
    )
    p.add_argument(
        "--no-social",
        action="store_true",
        help="skip the social experiment on lastfm-2k (with vs without friends' influence)",
    )
    p.add_argument(
        "--no-per-scene",
        action="store_true",
        help="skip the per-scene feeds (co-learning vs independent scene models)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="log each step with timings")
    return p


def configure(verbose: bool, threads: int) -> None:
    """Logging, and the CPU threads of torch and of numpy's BLAS, for a harness command."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Imported here so that --help stays instant (torch and transformers are heavy).
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(max(1, threads))
    # numpy's BLAS too: on a busy shared machine its default of one spinning thread per
    # core made the per-event matrix-vector products several times slower, not faster.
    threadpool_limits(max(1, threads))


def _positive_or_all(text: str) -> int | None:
    if text == "all":
        return None
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive count or 'all', got {text}")
    return value


def _unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    protocols = tuple(p.strip() for p in args.protocols.split(",") if p.strip())
    unknown = sorted(set(protocols) - set(PROTOCOL_KEYS))
    if unknown or not protocols:
        print(
            f"unknown protocol(s) {unknown}; choose from {', '.join(PROTOCOL_KEYS)}",
            file=sys.stderr,
        )
        return 2
    configure(args.verbose, args.threads)
    from evaluation.data import DataError
    from evaluation.harness import Options, run
    from evaluation.loo import LooOptions
    from evaluation.memory import MemoryLimitError

    start = time.perf_counter()
    try:
        out = run(
            Options(
                data_dir=args.data_dir,
                cache_dir=args.cache_dir,
                dataset=args.dataset,
                protocol=args.protocol,
                loo=LooOptions(
                    max_tune_users=args.tune_users,
                    sasrec=not args.no_sasrec,
                    sasrec_minutes=args.sasrec_minutes,
                    cold_items=args.cold_items,
                    max_dense_gb=args.max_dense_gb,
                    knn=not args.no_knn,
                    bpr_epochs=QUICK_BPR_EPOCHS if args.quick else 20,
                ),
                quick=args.quick,
                protocols=protocols,
                progress=not args.no_progress,
                per_scene=not args.no_per_scene,
                social=not args.no_social,
                mmr_lambda=args.mmr_lambda,
            )
        )
    except (DataError, MemoryLimitError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    out.meta["command"] = "python -m evaluation.cli " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    out.meta["wall_time_s"] = round(elapsed, 1)
    payload = out.payload()
    print_tables(out.results, heads=titles(out.meta["dataset"], out.results, out.meta["counts"]))
    if "diversity" in payload:
        print_diversity(payload["diversity"])
    if "per_scene" in payload:
        print_per_scene(payload["per_scene"])
    if "social" in payload:
        print_social(payload["social"])
    if out.deltas:
        print_deltas(out.deltas)
    print_chosen(out.meta)
    write_json(args.out, payload)
    # A --dataset run names its side files after --out, so ml-100k's stay the worker's.
    prefix = "" if args.dataset is None else args.out.stem + "."
    if out.colearner is not None:
        # What the worker loads to rank with learned gates and co-learned scene vectors.
        path = args.out.with_name(f"{prefix}colearn.json")
        out.colearner.save(path)
        print(f"wrote {path} (co-learning gates, chosen on valid)")
    if out.feed_blend is not None:
        # The ranking the worker loads with SCENEREC_MODEL_PATH.
        path = args.out.with_name(f"{prefix}model.json")
        out.feed_blend.save(path)
        print(f"wrote {path} (the worker's ranking, tuned on valid)")
    write_json(args.out.with_suffix(".meta.json"), out.meta)
    if args.dump_recs is not None:
        args.dump_recs.parent.mkdir(parents=True, exist_ok=True)
        with args.dump_recs.open("w", encoding="utf-8") as fh:
            n = dump_recs(fh, out.dump_lines())
        print(f"wrote {n} lists to {args.dump_recs}")
    print(f"wrote {args.out} ({elapsed:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

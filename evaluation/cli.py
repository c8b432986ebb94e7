"""``python -m evaluation.cli``: run Protocols A, B and C on ml-100k and report.

Prints one table per protocol, writes ``results/eval.json`` (and ``eval.meta.json`` next
to it: tuned settings, valid scores, timings) and, with ``--dump-recs``, every scored
top-10 list as JSON lines.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from evaluation.encoding import DEFAULT_CACHE_DIR
from evaluation.report import (
    PROTOCOL_KEYS,
    dump_recs,
    print_diversity,
    print_per_scene,
    print_social,
    print_tables,
    write_json,
)

DEFAULT_DATA_DIR = Path(os.environ.get("SCENEREC_DATA_DIR", "../shared/data"))
DEFAULT_OUT = Path("results/eval.json")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m evaluation.cli",
        description=(
            "Offline evaluation of SceneRec against most-popular, recent-popular, item-kNN "
            "and BPR-MF on ml-100k: Protocol A (frozen, RecBole-compatible), B (online, "
            "prequential) and C (cold start), as defined in ../shared/EVALUATION.md. "
            "Hyper-parameters are tuned on the valid split only."
        ),
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

    start = time.perf_counter()
    try:
        out = run(
            Options(
                data_dir=args.data_dir,
                cache_dir=args.cache_dir,
                quick=args.quick,
                protocols=protocols,
                progress=not args.no_progress,
                per_scene=not args.no_per_scene,
                social=not args.no_social,
                mmr_lambda=args.mmr_lambda,
            )
        )
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    out.meta["command"] = "python -m evaluation.cli " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    out.meta["wall_time_s"] = round(elapsed, 1)
    payload = out.payload()
    print_tables(out.results)
    if "diversity" in payload:
        print_diversity(payload["diversity"])
    if "per_scene" in payload:
        print_per_scene(payload["per_scene"])
    if "social" in payload:
        print_social(payload["social"])
    write_json(args.out, payload)
    if out.colearner is not None:
        # What the worker loads to rank with learned gates and co-learned scene vectors.
        out.colearner.save(args.out.with_name("colearn.json"))
        print(f"wrote {args.out.with_name('colearn.json')} (co-learning gates, chosen on valid)")
    if out.feed_blend is not None:
        # The ranking the worker loads with SCENEREC_MODEL_PATH.
        out.feed_blend.save(args.out.with_name("model.json"))
        print(f"wrote {args.out.with_name('model.json')} (the worker's ranking, tuned on valid)")
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

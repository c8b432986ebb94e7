"""``scenerec``: run the local stack, feed it data, watch what it recommends."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from scenerec.config import Settings, load_settings

log = logging.getLogger("scenerec")


def _settings() -> Settings:
    return load_settings()


def cmd_up(args: argparse.Namespace) -> int:
    from deploy.stack import up

    info = up(_settings(), worker=not args.no_worker)
    print(f"stack up in {info.seconds:.1f}s")
    print(f"  kafka:   {info.bootstrap}")
    print(f"  encoder: {info.encoder_url}")
    print(f"  api:     {info.api_url}docs")
    if not args.no_worker:
        print(f"  worker:  {info.worker_metrics_url}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from deploy.stack import down

    down(_settings())
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Run one worker in the foreground (what ``faust -A streams.app worker`` does)."""
    from scenerec.diskcheck import check_writable

    settings = _settings()
    check_writable(settings.var_dir, settings.min_free_mb)  # a clear error now, not mid-stream
    from deploy.worker import DEFAULT_LOOP, FAUST_WORKER

    argv = [sys.executable, *FAUST_WORKER, "-l", args.loglevel]
    os.execve(sys.executable, argv, {**DEFAULT_LOOP, **os.environ})
    return 0  # pragma: no cover - execv does not return


def cmd_load(args: argparse.Namespace) -> int:
    from scenerec.datasets import DATASETS, check_scenes, load_folder
    from scenerec.kafka import ensure_topics
    from scenerec.publish import publish_dataset

    settings = _settings()
    if (args.dataset is None) == (args.dataset_dir is None):
        print("error: name a built-in data set or give --dataset DIR (not both)", file=sys.stderr)
        return 2
    if args.dataset_dir is not None:
        data = load_folder(args.dataset_dir)
    else:
        data = DATASETS[args.dataset](settings.data_dir)
    check_scenes(data, settings.scenes)
    asyncio.run(ensure_topics(settings))
    stats = asyncio.run(
        publish_dataset(
            settings, data, rate=args.rate, limit=args.limit, profiles=not args.no_profiles
        )
    )
    print(
        f"published {stats.items} items, {stats.profiles} profiles, {stats.social} social "
        f"edges, {stats.clicks} clicks and {stats.comments} comments in {stats.seconds:.1f}s"
    )
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from scenerec.convert import Options, convert

    written = convert(
        args.format,
        args.src,
        args.dst,
        Options(name=args.name, scene=args.scene, attributes=args.attributes),
    )
    for name, rows in written.items():
        print(f"wrote {args.dst / name} ({rows:,} rows)")
    return 0


async def _tail(settings: Settings, user: str | None, count: int | None, begin: bool) -> int:
    from scenerec.kafka import consumer

    cons = consumer(
        settings,
        settings.topic("recommendations"),
        auto_offset_reset="earliest" if begin else "latest",
    )
    await cons.start()
    seen = 0
    try:
        async for rec in cons:
            msg = orjson.loads(rec.value)
            if user is not None and msg["user_id"] != user:
                continue
            feed = msg["scenes"]
            line = "  ".join(
                f"{scene}: {', '.join(r['item_id'] for r in items[:5])}"
                for scene, items in feed.items()
            )
            print(f"user {msg['user_id']} after {msg['trigger_event_id']}: {line}")
            seen += 1
            if count is not None and seen >= count:
                break
    finally:
        await cons.stop()
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_tail(_settings(), args.user, args.count, args.from_beginning))
    except KeyboardInterrupt:
        return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from deploy.stack import down, up
    from scenerec.datasets import DATASETS
    from scenerec.demo import run_demo

    settings = _settings()
    t0 = time.monotonic()
    print("loading ml-100k and starting the stack (Kafka, Ray Serve, worker)...", flush=True)
    data = DATASETS["ml-100k"](settings.data_dir)
    info = up(settings)
    print(f"stack up in {info.seconds:.1f}s; streaming at {args.rate:g} events/s", flush=True)
    print(f"try it in a browser: {info.api_url}demo/ (live feeds of a user you start)", flush=True)
    state = None
    try:
        state = asyncio.run(run_demo(settings, data, args.rate, args.events, args.seconds))
    except KeyboardInterrupt:
        print("\ninterrupted")
    finally:
        if not args.keep_up:
            down(settings)
    if state is not None:
        first = (
            f"{state.first_rec_s + (state.started - t0):.1f}s after `demo` started"
            if state.first_rec_s is not None
            else "none"
        )
        print(
            f"published {state.published} clicks, received {state.recs} recommendation "
            f"messages; first recommendation: {first}"
        )
    return 0


def _passed_on(extra: Sequence[str]) -> list[str]:
    """Options after ``--`` belong to the wrapped tool."""
    return list(extra[1:] if list(extra[:1]) == ["--"] else extra)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from evaluation.cli import main as evaluate

    return evaluate(_passed_on(args.harness_args))


def cmd_forget(args: argparse.Namespace) -> int:
    from scenerec.forget import forget

    if forget(_settings(), args.user_id, wait_s=args.wait):
        print(f"forgot {args.user_id!r}: state, vectors and recommendations erased")
        return 0
    print(
        f"tombstone for {args.user_id!r} published; no worker confirmed within {args.wait:g}s "
        "(it is applied when a worker consumes it)"
    )
    return 2


def cmd_bench(args: argparse.Namespace) -> int:
    from bench.pipeline_bench import main as bench

    return bench(_passed_on(args.bench_args))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scenerec",
        description="SceneRec: a real-time multi-scene recommender on Kafka, Faust, "
        "Ray Serve and Qdrant. Configuration comes from SCENEREC_* environment variables, "
        "KAFKA_BOOTSTRAP and QDRANT_URL (see README.md).",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("up", help="start the local stack: Kafka, Ray Serve encoder, one worker")
    s.add_argument("--no-worker", action="store_true", help="start Kafka and the encoder only")
    s.set_defaults(func=cmd_up)

    s = sub.add_parser("down", help="stop everything `up` started")
    s.set_defaults(func=cmd_down)

    s = sub.add_parser("worker", help="run one Faust worker in the foreground")
    s.add_argument("--loglevel", default="info", help="worker log level (default info)")
    s.set_defaults(func=cmd_worker)

    s = sub.add_parser(
        "load",
        help="publish a data set to the input topics: catalog, profiles, social, then events "
        "in order",
    )
    s.add_argument(
        "dataset", nargs="?", choices=["ml-100k", "lastfm-2k"], help="a built-in data set"
    )
    s.add_argument(
        "--dataset",
        dest="dataset_dir",
        type=Path,
        metavar="DIR",
        help="a folder of RecBole atomic files (`scenerec convert` writes them)",
    )
    s.add_argument("--rate", type=float, default=0.0, help="events per second (0 = max)")
    s.add_argument("--limit", type=int, default=None, help="publish only the first N events")
    s.add_argument("--no-profiles", action="store_true", help="do not publish user profiles")
    s.set_defaults(func=cmd_load)

    from scenerec.convert import FORMATS
    from scenerec.convert.common import DEFAULT_SCENE

    s = sub.add_parser(
        "convert",
        help="write RecBole atomic files (NAME.inter, .item, .user, .net, .kg/.link) from a "
        "source format",
        description="Formats: " + "; ".join(f"{name}: {fmt.help}" for name, fmt in FORMATS.items()),
    )
    s.add_argument("format", choices=list(FORMATS), help="the source's format")
    s.add_argument("src", type=Path, help="the source file or folder")
    s.add_argument("dst", type=Path, help="the folder to write (created if missing)")
    s.add_argument(
        "--name", default=None, help="the files' NAME (default: the destination folder's name)"
    )
    s.add_argument(
        "--scene",
        default=DEFAULT_SCENE,
        help="scene of every item of a data set without scenes (default: %(default)s)",
    )
    s.add_argument(
        "--attributes",
        type=Path,
        default=None,
        metavar="FILE.json",
        help="s3rec: item id -> attribute ids, written as a knowledge graph (.kg + .link)",
    )
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("tail", help="print messages of the recommendations topic")
    s.add_argument("--user", default=None, help="only this user")
    s.add_argument("--count", type=int, default=None, help="stop after N messages")
    s.add_argument("--from-beginning", action="store_true", help="start at the oldest message")
    s.set_defaults(func=cmd_tail)

    s = sub.add_parser(
        "demo",
        help="bring the stack up, stream ml-100k and show a live view (the main job); "
        "the API serves a page to try it in a browser at /demo/",
    )
    s.add_argument("--rate", type=float, default=200.0, help="clicks per second (default 200)")
    s.add_argument("--events", type=int, default=None, help="stop after N clicks")
    s.add_argument("--seconds", type=float, default=None, help="stop after S seconds")
    s.add_argument("--keep-up", action="store_true", help="leave the stack running afterwards")
    s.set_defaults(func=cmd_demo)

    # Wrappers: everything after the command (or after `--`) goes to the wrapped tool.
    for name, what, func, dest in (
        (
            "evaluate",
            "offline quality harness (protocols A, B, C on ml-100k; --dataset DIR "
            "[--protocol temporal|loo] for any folder of atomic files)",
            cmd_evaluate,
            "harness_args",
        ),
        (
            "bench",
            "pipeline benchmark on a private stack -> results/bench.json",
            cmd_bench,
            "bench_args",
        ),
    ):
        s = sub.add_parser(name, help=f"{what}; `scenerec {name} -- --help` for its options")
        s.add_argument(dest, nargs=argparse.REMAINDER, help=f"options of the {name} tool")
        s.set_defaults(func=func)

    s = sub.add_parser(
        "forget",
        help="erase a user everywhere (state, vectors, recommendations) via a tombstone",
    )
    s.add_argument("user_id", help="the user to forget")
    s.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the worker")
    s.set_defaults(func=cmd_forget)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except Exception as exc:
        if args.verbose:
            raise
        log.error("%s: %s", type(exc).__name__, exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())

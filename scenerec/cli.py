"""``scenerec``: run the local stack, feed it data, watch what it recommends.

One click command tree. The development tools (the quality harness, the benchmarks, the
analyses) are sub-commands that hand everything after their name to the tool's own
parser: ``scenerec evaluate --help`` is the harness's help.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import orjson

from scenerec.config import Settings, load_settings
from scenerec.convert import FORMATS
from scenerec.convert.common import DEFAULT_SCENE

log = logging.getLogger("scenerec")
HELP = {"help_option_names": ["-h", "--help"]}


def _settings() -> Settings:
    return load_settings()


@click.group(
    context_settings=HELP,
    help="SceneRec: a real-time multi-scene recommender on Kafka, Faust, Ray Serve and "
    "Qdrant. Configuration comes from SCENEREC_* environment variables, KAFKA_BOOTSTRAP and "
    "QDRANT_URL (see README.md).",
)
@click.option("-v", "--verbose", is_flag=True, help="debug logging, and tracebacks on errors")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    ctx.obj = {"verbose": verbose}
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@cli.command(help="start the local stack: Kafka, Ray Serve encoder, one worker")
@click.option("--no-worker", is_flag=True, help="start Kafka and the encoder only")
def up(no_worker: bool) -> int:
    from deploy.stack import up as stack_up

    info = stack_up(_settings(), worker=not no_worker)
    print(f"stack up in {info.seconds:.1f}s")
    print(f"  kafka:   {info.bootstrap}")
    print(f"  encoder: {info.encoder_url}")
    print(f"  api:     {info.api_url}docs")
    if not no_worker:
        print(f"  worker:  {info.worker_metrics_url}")
    return 0


@cli.command(help="stop everything `up` started")
def down() -> int:
    from deploy.stack import down as stack_down

    stack_down(_settings())
    return 0


@cli.command(help="run one Faust worker in the foreground")
@click.option("--loglevel", default="info", show_default=True, help="worker log level")
def worker(loglevel: str) -> int:
    """Run one worker in the foreground (what ``faust -A streams.app worker`` does)."""
    from scenerec.diskcheck import check_writable

    settings = _settings()
    check_writable(settings.var_dir, settings.min_free_mb)  # a clear error now, not mid-stream
    from deploy.worker import DEFAULT_LOOP, FAUST_WORKER

    argv = [sys.executable, *FAUST_WORKER, "-l", loglevel]
    os.execve(sys.executable, argv, {**DEFAULT_LOOP, **os.environ})
    return 0  # pragma: no cover - execv does not return


@cli.command(
    short_help="publish a data set: catalog, profiles, social, events",
    help="publish a data set to the input topics: catalog, profiles, social, then events "
    "in order. DATASET: a built-in data set (ml-100k, lastfm-2k), or --dataset DIR.",
)
@click.argument("dataset", required=False, type=click.Choice(["ml-100k", "lastfm-2k"]))
@click.option(
    "--dataset",
    "dataset_dir",
    type=click.Path(path_type=Path),
    metavar="DIR",
    help="a folder of RecBole atomic files (`scenerec convert` writes them)",
)
@click.option("--rate", type=float, default=0.0, help="events per second (0 = max)")
@click.option("--limit", type=int, default=None, help="publish only the first N events")
@click.option("--no-profiles", is_flag=True, help="do not publish user profiles")
def load(
    dataset: str | None, dataset_dir: Path | None, rate: float, limit: int | None, no_profiles: bool
) -> int:
    from scenerec.datasets import DATASETS, check_scenes, load_folder
    from scenerec.kafka import ensure_topics
    from scenerec.publish import publish_dataset

    settings = _settings()
    if (dataset is None) == (dataset_dir is None):
        raise click.UsageError("name a built-in data set or give --dataset DIR (not both)")
    data = (
        load_folder(dataset_dir)
        if dataset_dir is not None
        else DATASETS[str(dataset)](settings.data_dir)
    )
    check_scenes(data, settings.scenes)
    asyncio.run(ensure_topics(settings))
    stats = asyncio.run(
        publish_dataset(settings, data, rate=rate, limit=limit, profiles=not no_profiles)
    )
    print(
        f"published {stats.items} items, {stats.profiles} profiles, {stats.social} social "
        f"edges, {stats.clicks} clicks and {stats.comments} comments in {stats.seconds:.1f}s"
    )
    return 0


@cli.command(
    short_help="write RecBole atomic files from a source format",
    help="write RecBole atomic files (NAME.inter, .item, .user, .net, .kg/.link) from a "
    "source format: FORMAT SRC (file or folder) DST (folder, created if missing)",
    epilog="Formats: " + "; ".join(f"{name}: {fmt.help}" for name, fmt in FORMATS.items()),
)
@click.argument("fmt", metavar="FORMAT", type=click.Choice(list(FORMATS)))
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--name", default=None, help="the files' NAME (default: the destination's name)")
@click.option(
    "--scene",
    default=DEFAULT_SCENE,
    show_default=True,
    help="scene of every item of a data set without scenes",
)
@click.option(
    "--attributes",
    type=click.Path(path_type=Path),
    default=None,
    metavar="FILE.json",
    help="s3rec: item id -> attribute ids, written as a knowledge graph (.kg + .link)",
)
def convert(
    fmt: str, src: Path, dst: Path, name: str | None, scene: str, attributes: Path | None
) -> int:
    from scenerec.convert import Options
    from scenerec.convert import convert as run_convert

    options = Options(name=name, scene=scene, attributes=attributes)
    for file_name, rows in run_convert(fmt, src, dst, options).items():
        print(f"wrote {dst / file_name} ({rows:,} rows)")
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


@cli.command(help="print messages of the recommendations topic")
@click.option("--user", default=None, help="only this user")
@click.option("--count", type=int, default=None, help="stop after N messages")
@click.option("--from-beginning", is_flag=True, help="start at the oldest message")
def tail(user: str | None, count: int | None, from_beginning: bool) -> int:
    try:
        return asyncio.run(_tail(_settings(), user, count, from_beginning))
    except KeyboardInterrupt:
        return 0


@cli.command(
    short_help="up, stream ml-100k, a live view, down (the main job)",
    help="bring the stack up, stream ml-100k and show a live view (the main job); the API "
    "serves a page to try it in a browser at /demo/",
)
@click.option("--rate", type=float, default=200.0, show_default=True, help="clicks per second")
@click.option("--events", type=int, default=None, help="stop after N clicks")
@click.option("--seconds", type=float, default=None, help="stop after S seconds")
@click.option("--keep-up", is_flag=True, help="leave the stack running afterwards")
def demo(rate: float, events: int | None, seconds: float | None, keep_up: bool) -> int:
    from deploy.stack import down as stack_down
    from deploy.stack import up as stack_up
    from scenerec.datasets import DATASETS
    from scenerec.demo import run_demo

    settings = _settings()
    t0 = time.monotonic()
    print("loading ml-100k and starting the stack (Kafka, Ray Serve, worker)...", flush=True)
    data = DATASETS["ml-100k"](settings.data_dir)
    info = stack_up(settings)
    print(f"stack up in {info.seconds:.1f}s; streaming at {rate:g} events/s", flush=True)
    print(f"try it in a browser: {info.api_url}demo/ (live feeds of a user you start)", flush=True)
    state = None
    try:
        state = asyncio.run(run_demo(settings, data, rate, events, seconds))
    except KeyboardInterrupt:
        print("\ninterrupted")
    finally:
        if not keep_up:
            stack_down(settings)
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


@cli.command(
    short_help="erase a user: state, vectors, recommendations",
    help="erase a user everywhere (state, vectors, recommendations) via a tombstone",
)
@click.argument("user_id")
@click.option("--wait", type=float, default=30.0, show_default=True, help="seconds to wait")
def forget(user_id: str, wait: float) -> int:
    from scenerec.forget import forget as forget_user

    if forget_user(_settings(), user_id, wait_s=wait):
        print(f"forgot {user_id!r}: state, vectors and recommendations erased")
        return 0
    print(
        f"tombstone for {user_id!r} published; no worker confirmed within {wait:g}s "
        "(it is applied when a worker consumes it)"
    )
    return 2


#: Development tools: ``scenerec NAME ARGS`` runs ``MODULE.main(ARGS)`` (from a checkout).
TOOLS = {
    "evaluate": ("evaluation.cli", "the offline quality harness (make eval)"),
    "bench": ("bench.pipeline_bench", "the pipeline benchmark (make bench)"),
    "workload": ("bench.workload", "the many-users event stream"),
    "profile": ("bench.worker_profile", "where the worker's time goes, in-process"),
    "candidates": ("evaluation.candidates", "candidates' recall of the exact ranking"),
    "social": ("evaluation.social", "what followed users' items say of test items"),
}


def _passed_on(extra: Sequence[str]) -> list[str]:
    """Options after an optional ``--`` belong to the wrapped tool."""
    return list(extra[1:] if list(extra[:1]) == ["--"] else extra)


def _tool(name: str, module: str, what: str) -> click.Command:
    def run(args: tuple[str, ...]) -> int:
        tool: Any = importlib.import_module(module)
        return int(tool.main(_passed_on(args)))

    return click.Command(
        name,
        callback=run,
        params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
        help=f"{what}; `scenerec {name} --help` shows its options",
        short_help=what,
        context_settings={"ignore_unknown_options": True, "help_option_names": []},
    )


for _name, (_module, _what) in TOOLS.items():
    cli.add_command(_tool(_name, _module, _what))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a in ("-v", "--verbose") for a in args[:1])
    try:
        rv = cli.main(args=args, prog_name="scenerec", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        return 1
    except Exception as exc:
        if verbose:
            raise
        log.error("%s: %s", type(exc).__name__, exc)
        return 1
    return int(rv or 0)


if __name__ == "__main__":
    sys.exit(main())

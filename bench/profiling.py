"""Sampling profiles of a running worker with py-spy, summarised into where the time goes.

``py-spy`` is a dev tool (``pip install py-spy``), not a dependency of the worker: it
attaches to a running process from outside (ptrace) and samples its Python stacks, so the
worker runs its normal code. Only samples where the main thread runs Python or native code
are kept (idle waits are dropped), so ``active_share`` is the fraction of the window the
worker's event loop was busy.

    python -m bench.profiling summarize results/profile/worker-1682.raw

Only the main thread (the worker's event loop, where all the pipeline work runs) is
bucketed; the busy share of every thread is listed (aiokafka's consumer thread; Qdrant
Edge's own threads are native and not seen). Stacks are put in one bucket each, by the
first rule (in priority order) that matches any frame of the stack: a ranking call made
from inside a Faust agent counts as ranking, and only what no specific rule claims is left
to "faust/mode/asyncio".
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: (bucket, substrings of a frame's file path or function); first match in this order wins.
#: Item statistics: a click's deltas (``click_deltas`` in embeddings/model.py), the stage
#: that applies them and the rows every worker reads back; that rule comes before
#: ranking's, whose modules they call. The blend and its item-item terms are ranking.
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "item statistics (deltas, stage, shared rows)",
        (
            "click_deltas",
            "embeddings/itemstats.py",
            "streams/itemstats.py",
            "streams/stats_reader.py",
        ),
    ),
    (
        "ranking (ranking.py, blended.py, item-item terms)",
        (
            "embeddings/ranking.py",
            "embeddings/blended.py",
            "embeddings/collaborative.py",
            "embeddings/model.py",
        ),
    ),
    ("state codec (streams/state.py)", ("streams/state.py",)),
    ("vector store upserts (vectorstore/)", ("vectorstore/",)),
    ("user model update (embeddings/user_model.py)", ("embeddings/user_model.py",)),
    ("parse: JSON + pydantic (streams/records.py)", ("streams/records.py",)),
    ("prometheus metrics", ("prometheus_client/",)),
    ("faust table + changelog", ("faust/tables/", "faust/stores/")),
    ("produce: faust topic send + aiokafka producer", ("aiokafka/producer", "faust/topics.py")),
    ("consume: aiokafka fetch + faust consumer", ("aiokafka/consumer", "faust/transport/")),
    ("pipeline, other (streams/)", ("streams/",)),
    ("faust/mode/asyncio (agents, streams, event loop)", ("faust/", "mode/", "asyncio/")),
)
OTHER = "other"
#: Waits for a recording started by :func:`profile_later` and returns what it found.
Finisher = Callable[[], dict[str, Any]]


def record(
    pid: int, seconds: float, out: Path, rate: int = 100, fmt: str = "raw"
) -> subprocess.Popen[bytes]:
    """Start ``py-spy record`` on ``pid`` for ``seconds`` in the background."""
    # The venv's own script first: `make bench` runs the venv's python without the venv
    # on PATH.
    beside = Path(sys.executable).parent / "py-spy"
    exe = str(beside) if beside.is_file() else shutil.which("py-spy")
    if exe is None:
        raise FileNotFoundError("py-spy is not installed (pip install py-spy)")
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        exe,
        "record",
        "-p",
        str(pid),
        "-d",
        str(max(1, round(seconds))),
        "-r",
        str(rate),
        "--threads",  # a "thread (tid): name" root frame: the event loop's share is known
        "--format",
        fmt,
        "-o",
        str(out),
        "--nonblocking",  # never pause the worker: samples may be torn, timings are not
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def profile_later(pid: int, out: Path, seconds: float, delay: float, title: str) -> Finisher:
    """Record ``pid`` with py-spy for ``seconds``, ``delay`` seconds from now (a thread
    waits); the returned finisher waits for it, writes ``out`` with ``.txt`` and
    ``.summary.json`` beside it, and returns ``{"raw", "summary", "buckets", "text"}``, or
    ``{"error": ...}`` when py-spy failed."""
    started: dict[str, subprocess.Popen[bytes]] = {}

    def start() -> None:
        time.sleep(delay)
        started["proc"] = record(pid, seconds, out)

    thread = threading.Thread(target=start, daemon=True)
    thread.start()

    def finish() -> dict[str, Any]:
        thread.join()
        proc = started.get("proc")
        if proc is None or proc.wait(timeout=seconds + 60) != 0 or not out.is_file():
            err = proc.stderr.read().decode() if proc is not None and proc.stderr else ""
            return {"error": f"py-spy failed: {err[-300:]}"}
        summary = summarize(read_collapsed(out), seconds)
        text = text_report(summary, title)
        out.with_suffix(".txt").write_text(text)
        out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return {
            "raw": str(out),
            "summary": str(out.with_suffix(".txt")),
            "buckets": summary["buckets"],
            "text": text,
        }

    return finish


def read_collapsed(path: Path) -> list[tuple[list[str], int]]:
    """``frame;frame;...;frame count`` lines (py-spy ``--format raw``), root first."""
    stacks: list[tuple[list[str], int]] = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            stacks.append((stack.split(";"), int(n)))
    return stacks


def bucket(frames: Sequence[str]) -> str:
    for name, needles in RULES:
        if any(needle in f for f in frames for needle in needles):
            return name
    return OTHER


def _short(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py)`` so lines of one function merge."""
    func, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    tail = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{func} ({tail})"


def split_thread(frames: list[str]) -> tuple[str, list[str]]:
    """``("MainThread", rest)`` from a stack recorded with ``--threads``; else ``("", frames)``."""
    if frames and frames[0].startswith("thread ("):
        head, rest = frames[0], frames[1:]
        name = head.split(": ", 1)[1] if ": " in head else head
        return name, rest
    return "", frames


def summarize(
    stacks: list[tuple[list[str], int]],
    seconds: float | None = None,
    rate: int = 100,
    top: int = 25,
    thread: str = "MainThread",
) -> dict[str, Any]:
    """Buckets and top functions of ``thread``'s samples (all samples if no thread names)."""
    per_thread: Counter[str] = Counter()
    mine: list[tuple[list[str], int]] = []
    for frames, n in stacks:
        name, rest = split_thread(frames)
        per_thread[name or "all"] += n
        if not name or name == thread:
            mine.append((rest, n))
    stacks = mine
    total = sum(n for _, n in stacks) or 1
    buckets: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, n in stacks:
        buckets[bucket(frames)] += n
        if frames:
            self_time[_short(frames[-1])] += n
        for f in {_short(f) for f in frames}:
            inclusive[f] += n

    def share(c: Counter[str], k: int) -> list[dict[str, Any]]:
        return [
            {"name": name, "samples": n, "share": round(n / total, 4)}
            for name, n in c.most_common(k)
        ]

    out: dict[str, Any] = {
        "samples": total,
        "buckets": share(buckets, len(buckets)),
        "top_self": share(self_time, top),
        "top_inclusive": share(inclusive, top),
    }
    if seconds:
        out["active_share"] = round(total / (seconds * rate), 3)
        out["threads_busy_share"] = {
            name: round(n / (seconds * rate), 3) for name, n in per_thread.most_common()
        }
    return out


def text_report(summary: dict[str, Any], title: str) -> str:
    lines = [f"# {title}", f"samples: {summary['samples']}"]
    if "active_share" in summary:
        lines.append(f"main thread busy: {summary['active_share']:.0%} of the window")
        for name, share in summary.get("threads_busy_share", {}).items():
            lines.append(f"  thread {name}: busy {share:.0%}")
    for key, head in (
        ("buckets", "where the time goes (share of busy samples)"),
        ("top_inclusive", "top functions, inclusive"),
        ("top_self", "top functions, self"),
    ):
        lines.append(f"\n## {head}")
        lines.extend(f"{e['share']:7.1%}  {e['name']}" for e in summary[key])
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profiling", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("summarize", help="summarise a py-spy --format raw file")
    s.add_argument("raw", type=Path)
    s.add_argument("--seconds", type=float, default=None, help="recording length")
    s.add_argument("--rate", type=int, default=100)
    s.add_argument("--top", type=int, default=25)
    args = p.parse_args(argv)
    summary = summarize(read_collapsed(args.raw), args.seconds, args.rate, args.top)
    print(text_report(summary, str(args.raw)))
    args.raw.with_suffix(".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

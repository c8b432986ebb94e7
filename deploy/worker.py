"""Start and stop a Faust worker process (``faust -A streams.app worker``) in the background."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

#: ``python -m faust ...`` arguments that start a worker, here and in ``scenerec worker``.
FAUST_WORKER = ("-m", "faust", "-A", "streams.app", "worker")

#: The event loop Faust runs on unless ``FAUST_LOOP`` says otherwise (Faust reads it when
#: imported; the Dockerfile sets the same): Faust's per-message work is many event-loop
#: hops, which uvloop makes cheaper (CHANGELOG.md). ``FAUST_LOOP=aio`` goes back to asyncio's.
DEFAULT_LOOP = {"FAUST_LOOP": "uvloop"}

#: Workers this process started, kept so that stop_worker can reap them (and so that a
#: Popen for a process that outlives the call is not garbage-collected while running).
_children: dict[int, subprocess.Popen[bytes]] = {}


class WorkerError(Exception):
    """The worker did not start or stop as asked."""


def _pid(pid_file: Path) -> int | None:
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def is_ready(web_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/ready", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_worker(
    var_dir: Path,
    web_port: int,
    env: dict[str, str] | None = None,
    timeout_s: float = 180.0,
    name: str = "worker",
) -> int:
    """Launch a worker detached from this process; return its pid once it is ready."""
    pid_file = var_dir / f"{name}.pid"
    if (pid := _pid(pid_file)) is not None and is_ready(web_port):
        log.info("worker already running (pid %d)", pid)
        return pid
    logs = var_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    cmd = [
        sys.executable,
        *FAUST_WORKER,
        "-l",
        "info",
        "--web-port",
        str(web_port),
        "--web-host",
        "127.0.0.1",
    ]
    # One BLAS thread: the worker's products are small, and on a busy 2-core host OpenBLAS's
    # thread pool made each 12 ms instead of 0.1 ms (docs/benchmarks.md).
    full_env = {
        "OPENBLAS_NUM_THREADS": "1",
        **DEFAULT_LOOP,
        **os.environ,
        **(env or {}),
        "SCENEREC_WORKER_WEB_PORT": str(web_port),
    }
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
    pid_file.write_text(str(proc.pid))
    _children[proc.pid] = proc
    log.info("worker starting (pid %d), log %s", proc.pid, log_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise WorkerError(
                f"worker exited with {proc.returncode}; last lines:\n{_tail(log_path)}"
            )
        if is_ready(web_port):
            log.info("worker ready on http://127.0.0.1:%d (metrics at /metrics)", web_port)
            return proc.pid
        time.sleep(0.5)
    raise WorkerError(f"worker not ready after {timeout_s:.0f}s; last lines:\n{_tail(log_path)}")


def stop_worker(
    var_dir: Path,
    timeout_s: float = 30.0,
    name: str = "worker",
    sig: signal.Signals = signal.SIGTERM,
) -> None:
    """Stop the worker: SIGTERM (Faust shuts down cleanly), SIGKILL after ``timeout_s``."""
    pid_file = var_dir / f"{name}.pid"
    pid = _pid(pid_file)
    if pid is None:
        pid_file.unlink(missing_ok=True)
        return
    os.killpg(pid, sig)
    if not _wait_gone(pid, timeout_s):
        log.warning("worker %d did not stop in %.0fs: killing it", pid, timeout_s)
        os.killpg(pid, signal.SIGKILL)
        _wait_gone(pid, 10.0)
    pid_file.unlink(missing_ok=True)
    log.info("worker stopped")


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(pid)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def _reap(pid: int) -> None:
    # The worker is our child when this process started it: collect it so it is not a zombie.
    proc = _children.get(pid)
    if proc is not None:
        if proc.poll() is not None:
            del _children[pid]
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"

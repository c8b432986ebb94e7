"""Start/stop a local Ray head running the encoder Serve app.

``python -m deploy.ray_serve start --port 8000 --device cpu --replicas 1`` prints the encoder
base URL once a real request has been answered; the app keeps running detached after this
process exits. ``python -m deploy.ray_serve stop`` shuts Serve down and stops Ray.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray import serve

from deploy.api_config import api_overrides
from scenerec.config import Settings, load_settings
from serving.encoder_app import EncoderAppConfig, build_app

logger = logging.getLogger(__name__)

APP_NAME = "encoder"
ROUTE_PREFIX = "/encoder"
API_APP_NAME = "api"
API_ROUTE_PREFIX = "/"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Small machines: Ray's default object store (30% of RAM) is wasted on an app that only
# moves a few KB per request.
OBJECT_STORE_BYTES = 300 * 1024 * 1024
# Where `ray start` writes ray_current_cluster (same lookup order as Ray itself).
RAY_TMP = Path(os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp") / "ray"
#: Ray's own default GCS port.
DEFAULT_RAY_PORT = 6379


@dataclass(frozen=True)
class RayHead:
    """Which Ray head a stack uses: Ray's default one (``temp_dir`` None: shared by every
    stack of this user, and stopped with ``ray stop``), or one of its own (its GCS port and
    temporary folder), which only this stack starts and stops: test and benchmark stacks
    running side by side on one machine then never reuse or kill each other's."""

    port: int = DEFAULT_RAY_PORT
    temp_dir: Path | None = None

    @classmethod
    def of(cls, settings: Settings) -> RayHead:
        """The head the settings name (``SCENEREC_RAY_PORT``, ``SCENEREC_RAY_TEMP_DIR``)."""
        return cls(settings.ray_port, settings.ray_temp_dir)

    @property
    def address(self) -> str:
        return "auto" if self.temp_dir is None else f"127.0.0.1:{self.port}"


def _ray_bin() -> str:
    # Prefer the `ray` next to this interpreter so the head runs the same venv.
    local = Path(sys.executable).parent / "ray"
    found = str(local) if local.exists() else shutil.which("ray")
    if not found:
        raise RuntimeError("the `ray` CLI was not found; install ray[serve]")
    return found


def ray_head_running(head: RayHead = RayHead()) -> bool:
    """True if the head answers on its GCS port (Ray's default head: one this user started)."""
    try:
        if head.temp_dir is not None:
            host, port = "127.0.0.1", str(head.port)
        else:
            marker = RAY_TMP / "ray_current_cluster"
            if marker.stat().st_uid != os.getuid():
                return False
            host, _, port = marker.read_text().strip().rpartition(":")
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except (OSError, ValueError):
        return False


def _start_head(num_cpus: int, metrics_port: int | None, head: RayHead) -> None:
    cmd = [
        _ray_bin(),
        "start",
        "--head",
        "--disable-usage-stats",
        "--include-dashboard=false",
        f"--num-cpus={num_cpus}",
        f"--object-store-memory={OBJECT_STORE_BYTES}",
    ]
    if head.temp_dir is not None:
        cmd += [
            f"--port={head.port}",
            f"--temp-dir={head.temp_dir}",
            "--node-ip-address=127.0.0.1",
        ]
    if metrics_port is not None:
        # Ray's Prometheus export: its own metrics and the Serve apps' custom ones.
        cmd.append(f"--metrics-export-port={metrics_port}")
    env = dict(os.environ)
    # Workers inherit the raylet's environment: make the project importable for replicas.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    env["HF_HUB_OFFLINE"] = "1"
    logger.info("starting Ray head: %s", " ".join(cmd))
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`ray start` failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    logger.info("Ray head started in %.1fs", time.monotonic() - t0)


def _probe(url: str, timeout_s: float) -> bool:
    """POST one text; True when a well-formed vector comes back."""
    req = urllib.request.Request(
        url,
        data=json.dumps({"texts": ["readiness probe"]}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            body = json.loads(resp.read())
        raw = base64.b64decode(body["vectors_b64"])
        return bool(body["n"] == 1 and len(raw) == 4 * int(body["dim"]) > 0)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _serve_run_with_timeout(
    config: EncoderAppConfig, api_overrides: dict[str, Any] | None, timeout_s: float
) -> None:
    # serve.run waits for healthy replicas but has no timeout: an unschedulable replica
    # (not enough logical CPUs/GPUs) would block forever.
    errors: list[BaseException] = []

    def target() -> None:
        try:
            serve.run(build_app(config), name=APP_NAME, route_prefix=ROUTE_PREFIX, blocking=False)
            if api_overrides is not None:
                from serving.api_app import build_api_app

                serve.run(
                    build_api_app(api_overrides),
                    name=API_APP_NAME,
                    route_prefix=API_ROUTE_PREFIX,
                    blocking=False,
                )
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target, name="serve-run", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if errors:
        raise RuntimeError(f"deploying the encoder app failed: {errors[0]}") from errors[0]
    if thread.is_alive():
        raise TimeoutError(
            f"Serve apps not running after {timeout_s:.0f}s: {serve.status().applications}"
        )


def start_serve(
    config: EncoderAppConfig,
    http_host: str = "127.0.0.1",
    http_port: int = 8000,
    num_cpus: int | None = None,
    timeout_s: float = 180,
    api_overrides: dict[str, Any] | None = None,
    metrics_port: int | None = None,
    head: RayHead = RayHead(),
) -> str:
    """Ensure a Ray head, deploy the encoder app (and the pull API when ``api_overrides``
    are given: Settings fields for its replicas), wait for a real answer, return its URL."""
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    if ray_head_running(head):
        logger.info("reusing the Ray head already running at %s", head.address)
    else:
        needed = math.ceil(config.num_replicas * config.num_cpus)
        cpus = num_cpus if num_cpus is not None else max(os.cpu_count() or 1, needed)
        _start_head(cpus, metrics_port, head)
    ray.init(address=head.address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        serve.start(http_options={"host": http_host, "port": http_port})
        logger.info("deploying app %r at %s with %s", APP_NAME, ROUTE_PREFIX, config)
        _serve_run_with_timeout(config, api_overrides, max(1.0, deadline - time.monotonic()))
        url = f"http://{http_host}:{http_port}{ROUTE_PREFIX}"
        while not _probe(url, timeout_s=10):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not return a vector within {timeout_s:.0f}s")
            time.sleep(0.5)
    finally:
        # Disconnect only: Serve apps are detached and keep running in the Ray cluster.
        ray.shutdown()
    logger.info("encoder ready at %s (%.1fs total)", url, time.monotonic() - t0)
    return url


def stop_serve(head: RayHead = RayHead()) -> None:
    """Shut Serve down (if this process is connected) and stop the head: every Ray process
    of this user for Ray's default head, only the head's own processes otherwise."""
    if ray.is_initialized():
        try:
            serve.shutdown()  # type: ignore[no-untyped-call]
        except Exception:  # Ray is being killed next anyway.
            logger.exception("serve.shutdown() failed; forcing ray stop")
        ray.shutdown()
    if head.temp_dir is not None:
        _kill_head(head.temp_dir)
        return
    logger.info("stopping Ray: ray stop --force")
    proc = subprocess.run(
        [_ray_bin(), "stop", "--force"], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        logger.warning("`ray stop --force` exited %d: %s", proc.returncode, proc.stderr[-500:])


def _kill_head(temp_dir: Path) -> None:
    """Stop the processes of the head whose temporary folder is ``temp_dir`` (each names it
    on its command line); ``ray stop`` would stop every head of this user."""
    mark = str(temp_dir).encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if mark in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    logger.info("stopping the Ray head in %s: %d processes", temp_dir, len(pids))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        if sig == signal.SIGTERM:
            time.sleep(2.0)
    shutil.rmtree(temp_dir, ignore_errors=True)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deploy.ray_serve", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="start Ray (if needed) and the encoder app")
    start.add_argument("--host", default="127.0.0.1")
    start.add_argument("--port", type=int, default=8000)
    start.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    start.add_argument("--replicas", type=int, default=1)
    start.add_argument("--model-path", default=None, help="sentence-encoder directory")
    start.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per replica (default: cores / replicas on cpu)",
    )
    start.add_argument("--max-batch-size", type=int, default=64)
    start.add_argument("--batch-wait-ms", type=float, default=5.0)
    start.add_argument("--max-ongoing-requests", type=int, default=256)
    start.add_argument("--num-cpus", type=int, default=None, help="logical CPUs given to Ray")
    start.add_argument("--timeout", type=float, default=180.0)
    start.add_argument(
        "--no-api",
        action="store_true",
        help="deploy the encoder only, not the pull API (which is configured from SCENEREC_*)",
    )
    start.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="Ray's Prometheus export port when this starts the head "
        "(default: SCENEREC_RAY_METRICS_PORT)",
    )
    sub.add_parser("stop", help="shut Serve down and stop Ray")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = load_settings()
    head = RayHead.of(settings)
    if args.command == "stop":
        stop_serve(head)
        return 0
    threads = args.threads
    if threads is None and args.device == "cpu":
        # Ray pins OMP_NUM_THREADS to the replica's num_cpus (1); use the real cores instead.
        threads = max(1, (os.cpu_count() or 1) // args.replicas)
    config = EncoderAppConfig.for_device(
        args.device,
        model_path=args.model_path,
        num_replicas=args.replicas,
        max_batch_size=args.max_batch_size,
        batch_wait_timeout_s=args.batch_wait_ms / 1000.0,
        max_ongoing_requests=args.max_ongoing_requests,
        torch_threads=threads,
    )
    url = start_serve(
        config,
        args.host,
        args.port,
        args.num_cpus,
        args.timeout,
        api_overrides=None if args.no_api else api_overrides(settings),
        metrics_port=args.metrics_port or settings.ray_metrics_port,
        head=head,
    )
    print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A local Prometheus on the project's own config, and the queries the dashboard and rules ask.

:class:`LocalPrometheus` runs Debian's ``prometheus`` (``make test`` installs it) with
``deploy/prometheus/prometheus.yml`` as it is, except the scrape targets (given, since the
Compose service names do not resolve here), the rule file's path and the intervals; its jobs,
metric paths and rules stay the deployment's, so what answers here answers there.
:func:`panel_queries` and :func:`rule_queries` list every expression of
``deploy/grafana/scenerec-dashboard.json`` and ``deploy/prometheus/scenerec-rules.yml``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

DEPLOY = Path(__file__).resolve().parent
CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
RULES = DEPLOY / "prometheus" / "scenerec-rules.yml"
DASHBOARD = DEPLOY / "grafana" / "scenerec-dashboard.json"
PROMETHEUS_BIN = "/usr/bin/prometheus"


@dataclass(frozen=True)
class Query:
    where: str  # "panel 'Recommendations/s'" or "alert ScenerecWorkerDown"
    expr: str


def panel_queries(dashboard: Mapping[str, Any] | None = None) -> list[Query]:
    d = dashboard if dashboard is not None else json.loads(DASHBOARD.read_text())
    out = []
    for panel in d.get("panels", []):
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                out.append(Query(f"panel {inner.get('title')!r}", target.get("expr", "")))
    return out


def rule_queries(rules: Mapping[str, Any] | None = None) -> list[Query]:
    r = rules if rules is not None else yaml.safe_load(RULES.read_text())
    return [
        Query(
            f"{'record' if 'record' in rule else 'alert'} {rule.get('record') or rule['alert']}",
            rule["expr"],
        )
        for group in r.get("groups", [])
        for rule in group.get("rules", [])
    ]


def grafana_to_promql(expr: str, rate_interval: str) -> str:
    """Grafana's interval variables replaced, as Grafana does before it asks Prometheus."""
    return re.sub(r"\$\{?__(rate_)?interval\}?", rate_interval, expr)


def config_for(targets: Mapping[str, Sequence[str]], interval_s: float) -> dict[str, Any]:
    """The deployment's config with local ``targets`` per job (every job must get some)."""
    cfg: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    cfg["global"]["scrape_interval"] = f"{interval_s:g}s"
    cfg["global"]["evaluation_interval"] = f"{interval_s:g}s"
    cfg["rule_files"] = [str(RULES)]
    jobs = {job["job_name"] for job in cfg["scrape_configs"]}
    missing = jobs - set(targets)
    if missing:
        raise ValueError(f"no local targets for the jobs {sorted(missing)}")
    for job in cfg["scrape_configs"]:
        job["static_configs"] = [{"targets": list(targets[job["job_name"]])}]
    return cfg


class LocalPrometheus:
    """``prometheus`` on ``port`` with its data in ``home``; start, query, stop."""

    def __init__(self, home: Path, port: int, binary: str = PROMETHEUS_BIN) -> None:
        if shutil.which(binary) is None:
            raise FileNotFoundError(f"{binary} not found: `make system-tools` installs it")
        self.home = home
        self.port = port
        self.binary = binary
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, config: Mapping[str, Any], timeout_s: float = 60) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        path = self.home / "prometheus.yml"
        path.write_text(yaml.safe_dump(dict(config)))
        cmd = [
            self.binary,
            f"--config.file={path}",
            f"--storage.tsdb.path={self.home / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        log.info("starting Prometheus: %s", " ".join(cmd))
        with (self.home / "prometheus.log").open("wb") as out:
            self._proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while not self._ready():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.home / "prometheus.log").read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"Prometheus did not become ready:\n{tail}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def api(self, path: str, **params: str) -> Any:
        """``data`` of a ``/api/v1/...`` answer; RuntimeError with Prometheus' error."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        result: list[dict[str, Any]] = data["result"]
        return result

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

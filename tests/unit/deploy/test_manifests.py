"""The deployment manifests agree with the code: parsing only, no Docker engine, no cluster.

Covered: the Dockerfile, deploy/compose, deploy/k8s (and the Qdrant chart values),
deploy/prometheus and deploy/grafana. What the code says comes from the code itself: topic
names and compaction from streams/topics.py, environment variable names from
scenerec.config.Settings, ports from Settings' defaults, metric names from the worker's
registry and serving/metrics.py, the Serve apps from deploy/ray_serve.py and serving/.

Each check is a function that returns the problems it finds. The tests assert there are
none; ``test_each_check_can_fail`` breaks a copy of the manifests once per check and asserts
the check notices, so no check passes vacuously.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import re
import shutil
import subprocess
import tomllib
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices, SecretStr

from deploy.prometheus_local import panel_queries
from scenerec.config import Settings
from streams import topics as topics_module
from streams.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
IMAGE_REPO = "scenerec"
#: The Secret an operator creates by hand (docs/deploy.md); everything else is generated.
USER_SECRET = "scenerec-secrets"
SECRETISH = re.compile(r"(?i)(password|passwd|api[_-]?key|token|secret)$")
INTERPOLATION = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(:?[-?][^}]*)?\}$")

Problems = list[str]


# --------------------------------------------------------------------------------------
# What the manifests say
# --------------------------------------------------------------------------------------


@dataclass
class Manifests:
    compose: dict[str, Any]
    compose_gpu: dict[str, Any]
    prometheus: dict[str, Any]
    rules: dict[str, Any]
    dashboard: dict[str, Any]
    grafana_datasources: dict[str, Any]
    grafana_dashboards: dict[str, Any]
    k8s: list[dict[str, Any]]
    k8s_files: list[str]
    kustomization: dict[str, Any]
    qdrant_values: dict[str, Any]
    dockerfile: str

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.k8s if d.get("kind") == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.kind(kind)
        assert len(found) == 1, f"expected one {kind} in deploy/k8s, found {len(found)}"
        return found[0]


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@cache
def _load() -> Manifests:
    k8s_dir = DEPLOY / "k8s"
    docs: list[dict[str, Any]] = []
    files = []
    for path in sorted(k8s_dir.glob("*.yaml")):
        if path.name in ("kustomization.yaml", "qdrant-values.yaml"):
            continue
        files.append(path.name)
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    grafana = DEPLOY / "grafana"
    return Manifests(
        compose=_yaml(DEPLOY / "compose" / "compose.yaml"),
        compose_gpu=_yaml(DEPLOY / "compose" / "compose.gpu.yaml"),
        prometheus=_yaml(DEPLOY / "prometheus" / "prometheus.yml"),
        rules=_yaml(DEPLOY / "prometheus" / "scenerec-rules.yml"),
        dashboard=json.loads((grafana / "scenerec-dashboard.json").read_text()),
        grafana_datasources=_yaml(grafana / "provisioning" / "datasources" / "prometheus.yaml"),
        grafana_dashboards=_yaml(grafana / "provisioning" / "dashboards" / "scenerec.yaml"),
        k8s=docs,
        k8s_files=files,
        kustomization=_yaml(k8s_dir / "kustomization.yaml"),
        qdrant_values=_yaml(k8s_dir / "qdrant-values.yaml"),
        dockerfile=(ROOT / "Dockerfile").read_text(),
    )


@pytest.fixture
def m() -> Manifests:
    return copy.deepcopy(_load())


# --------------------------------------------------------------------------------------
# What the code says
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    name: str
    type: str

    def samples(self) -> set[str]:
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("", "_sum", "_count", "_created"),
        }.get(self.type, ("",))
        return {self.name + s for s in suffixes}


@dataclass(frozen=True)
class Code:
    topics: dict[str, str]  # name -> cleanup.policy
    env_names: dict[str, str]  # env var -> Settings field
    secret_env: frozenset[str]
    defaults: dict[str, Any]
    image: str
    python: str
    ray_version: str
    qdrant_client: str
    kafka_version: str
    worker_families: dict[str, Family]
    serve_metrics: frozenset[str] | None  # None: serving/metrics.py not there yet

    def default(self, field: str) -> Any:
        return self.defaults[field]


def _cleanup_policy(spec: Any) -> str:
    explicit = getattr(spec, "cleanup_policy", None)
    return str(explicit) if explicit else ("compact" if spec.compacted else "delete")


def _env_names() -> tuple[dict[str, str], frozenset[str]]:
    prefix = str(Settings.model_config.get("env_prefix", ""))
    names: dict[str, str] = {}
    secret: set[str] = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            choices = [c for c in alias.choices if isinstance(c, str)]
        elif isinstance(alias, str):
            choices = [alias]
        else:
            choices = [prefix + field_name]
        is_secret = SecretStr in {field.annotation, *typing.get_args(field.annotation)}
        for choice in choices:
            names[choice.upper()] = field_name
            if is_secret:
                secret.add(choice.upper())
    return names, frozenset(secret)


def _lock_version(package: str) -> str:
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        name, _, version = line.partition("==")
        if name.strip().lower().replace("_", "-") == package:
            return version.strip()
    raise AssertionError(f"{package} is not pinned in requirements.lock")


def _worker_families() -> dict[str, Family]:
    metrics = WorkerMetrics.create()
    return {fam.name: Family(fam.name, fam.type) for fam in metrics.registry.collect()}


def _serve_metrics() -> frozenset[str] | None:
    try:
        module = importlib.import_module("serving.metrics")
    except ModuleNotFoundError:
        return None
    names: set[str] = set()
    for name in module.SERVE_METRIC_NAMES:
        base = name if name.startswith("ray_") else f"ray_{name}"
        base = base.removesuffix("_total")
        names |= {base, f"{base}_total", f"{base}_bucket", f"{base}_sum", f"{base}_count"}
    return frozenset(names)


@cache
def code() -> Code:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    env_names, secret_env = _env_names()
    pom = (DEPLOY / "kafka" / "pom.xml").read_text()
    kafka = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
    assert kafka, "deploy/kafka/pom.xml names no kafka.version"
    return Code(
        topics={spec.name: _cleanup_policy(spec) for spec in topics_module.ALL_TOPICS},
        env_names=env_names,
        secret_env=secret_env,
        defaults={name: f.default for name, f in Settings.model_fields.items()},
        image=f"{IMAGE_REPO}:{pyproject['project']['version']}",
        python=str(pyproject["tool"]["mypy"]["python_version"]),
        ray_version=_lock_version("ray"),
        qdrant_client=_lock_version("qdrant-client"),
        kafka_version=kafka.group(1),
        worker_families=_worker_families(),
        serve_metrics=_serve_metrics(),
    )


# --------------------------------------------------------------------------------------
# Small readers
# --------------------------------------------------------------------------------------


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def command_text(service: dict[str, Any]) -> str:
    cmd = service.get("command") or []
    return cmd if isinstance(cmd, str) else " ".join(str(c) for c in cmd)


def services(m: Manifests) -> dict[str, dict[str, Any]]:
    return dict(m.compose["services"])


def worker_services(m: Manifests) -> dict[str, dict[str, Any]]:
    return {
        n: s for n, s in services(m).items() if re.search(r"\bfaust\b.*\bworker\b", command_text(s))
    }


def ray_services(m: Manifests) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services(m).items() if "ray start" in command_text(s)}


def container_ports(service: dict[str, Any]) -> set[int]:
    return {int(str(p).split(":")[-1].split("/")[0]) for p in service.get("ports", [])}


def url_host_port(url: str) -> tuple[str, int]:
    match = re.match(r"^[a-z]+://([^/:]+):(\d+)", url)
    assert match, f"no host:port in {url!r}"
    return match.group(1), int(match.group(2))


def pod_templates(m: Manifests) -> Iterator[tuple[str, dict[str, Any]]]:
    """(owner, pod template) for the Deployment and every RayService group."""
    for dep in m.kind("Deployment"):
        yield dep["metadata"]["name"], dep["spec"]["template"]
    for rs in m.kind("RayService"):
        cluster = rs["spec"]["rayClusterConfig"]
        yield f"{rs['metadata']['name']}/head", cluster["headGroupSpec"]["template"]
        for group in cluster.get("workerGroupSpecs", []):
            yield f"{rs['metadata']['name']}/{group['groupName']}", group["template"]


def containers(m: Manifests) -> Iterator[tuple[str, dict[str, Any]]]:
    for owner, template in pod_templates(m):
        for c in template["spec"]["containers"]:
            yield f"{owner}/{c['name']}", c


def is_project_image(image: str) -> bool:
    repo = image.rsplit(":", 1)[0] if ":" in image.split("/")[-1] else image
    return repo.split("/")[-1] == IMAGE_REPO


def configmaps(m: Manifests) -> dict[str, dict[str, str]]:
    return {c["metadata"]["name"]: c.get("data", {}) for c in m.kind("ConfigMap")}


def container_env(m: Manifests, c: dict[str, Any]) -> dict[str, Any]:
    """Name -> literal value or valueFrom mapping, envFrom ConfigMaps included."""
    env: dict[str, Any] = {}
    maps = configmaps(m)
    for source in c.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref:
            env.update(maps.get(ref["name"], {}))
    for item in c.get("env", []):
        env[item["name"]] = item.get("value", item.get("valueFrom"))
    return env


def serve_config(m: Manifests) -> dict[str, Any]:
    return dict(yaml.safe_load(m.one("RayService")["spec"]["serveConfigV2"]))


def named_ports(c: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: int(p["containerPort"]) for p in c.get("ports", []) if "name" in p}


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile_pairs(text: str, instruction: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for word, rest in dockerfile_instructions(text):
        if word == instruction:
            for key, value in re.findall(r'([\w.]+)=("[^"]*"|\S+)', rest):
                pairs[key] = value.strip('"')
    return pairs


# --------------------------------------------------------------------------------------
# Monitoring: the expressions of the dashboard and the rules
# --------------------------------------------------------------------------------------

#: Names in an expression (metrics, functions, labels alike): enough to see whether a metric
#: is named at all. Whether each expression returns series is asked of a real Prometheus
#: (tests/integration/test_live.py), which also parses it.
_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def names_in(expr: str) -> set[str]:
    return set(_NAME.findall(re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)))


def dashboard_exprs(m: Manifests) -> list[tuple[str, str]]:
    return [(q.where, q.expr) for q in panel_queries(m.dashboard)]


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------


def check_kafka_topics(m: Manifests) -> Problems:
    c = code()
    problems: Problems = []
    cluster = m.one("Kafka")["metadata"]["name"]
    declared: dict[str, dict[str, Any]] = {}
    for t in m.kind("KafkaTopic"):
        name = t["spec"].get("topicName") or t["metadata"]["name"]
        if name in declared:
            problems.append(f"KafkaTopic {name} declared twice")
        declared[name] = t
        if t["metadata"].get("labels", {}).get("strimzi.io/cluster") != cluster:
            problems.append(f"KafkaTopic {name} is not labelled for the Kafka {cluster!r}")
    for name in sorted(set(c.topics) - set(declared)):
        problems.append(f"topic {name} (streams/topics.py) has no KafkaTopic")
    for name in sorted(set(declared) - set(c.topics)):
        problems.append(f"KafkaTopic {name} is not a topic of streams/topics.py")
    partitions = int(
        configmaps(m).get("scenerec-config", {}).get("SCENEREC_PARTITIONS", c.default("partitions"))
    )
    for name, t in declared.items():
        policy = str(t["spec"].get("config", {}).get("cleanup.policy", "delete"))
        if name in c.topics and policy != c.topics[name]:
            problems.append(f"KafkaTopic {name}: cleanup.policy {policy}, code: {c.topics[name]}")
        if int(t["spec"].get("partitions", 0)) != partitions:
            problems.append(
                f"KafkaTopic {name}: {t['spec'].get('partitions')} partitions, "
                f"SCENEREC_PARTITIONS is {partitions} (Faust co-partitions with its changelog)"
            )
    return problems


def check_kafka_access(m: Manifests) -> Problems:
    """The clients' bootstrap, protocol, user and ACLs match the Strimzi resources."""
    c = code()
    problems: Problems = []
    kafka = m.one("Kafka")
    cluster = kafka["metadata"]["name"]
    user = m.one("KafkaUser")
    config = configmaps(m)["scenerec-config"]
    listeners = {int(x["port"]): x for x in kafka["spec"]["kafka"]["listeners"]}
    host, _, port = config["KAFKA_BOOTSTRAP"].partition(":")
    if host != f"{cluster}-kafka-bootstrap" or int(port) not in listeners:
        problems.append(f"KAFKA_BOOTSTRAP {config['KAFKA_BOOTSTRAP']} is no listener of {cluster}")
    else:
        listener = listeners[int(port)]
        auth = listener.get("authentication", {}).get("type", "")
        want_protocol = ("SASL_" if auth.startswith("scram") else "") + (
            "SSL" if listener.get("tls") else "PLAINTEXT"
        )
        if config.get("SCENEREC_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT") != want_protocol:
            problems.append(f"listener {port} wants security protocol {want_protocol}")
        if auth and config.get("SCENEREC_KAFKA_SASL_MECHANISM", "").lower() != auth:
            problems.append(f"listener {port} authenticates with {auth}")
        if listener.get("tls") and not config.get("SCENEREC_KAFKA_SSL_CAFILE"):
            problems.append("a TLS listener needs SCENEREC_KAFKA_SSL_CAFILE (Strimzi's own CA)")
    if config.get("SCENEREC_KAFKA_SASL_USERNAME") != user["metadata"]["name"]:
        problems.append("SCENEREC_KAFKA_SASL_USERNAME is not the KafkaUser's name")
    app_id = config.get("SCENEREC_APP_ID", c.default("app_id"))
    acls = user["spec"].get("authorization", {}).get("acls", [])

    def covered(kind: str, name: str, ops: set[str]) -> bool:
        for acl in acls:
            res = acl["resource"]
            pattern = res.get("patternType", "literal")
            if res["type"] != kind or not ops <= set(acl.get("operations", [])):
                continue
            if (pattern == "literal" and res["name"] == name) or (
                pattern == "prefix" and name.startswith(res["name"])
            ):
                return True
        return False

    for topic in c.topics:
        if not covered("topic", topic, {"Read", "Write"}):
            problems.append(f"KafkaUser ACLs do not let the app read and write {topic}")
    if not covered("topic", f"{app_id}-any-table-changelog", {"Read", "Write", "Create"}):
        problems.append(f"KafkaUser ACLs do not cover Faust's own topics ({app_id}-...)")
    if not covered("group", app_id, {"Read"}):
        problems.append(f"KafkaUser ACLs do not cover the consumer group {app_id}")
    return problems


def check_env_names(m: Manifests) -> Problems:
    """Every variable given to SceneRec code is a Settings field (name or alias)."""
    c = code()
    problems: Problems = []

    def judge(where: str, name: str, project: bool) -> None:
        # SCENEREC_* anywhere, and every variable given to the project image, must be read
        # by Settings: anything else would be silently ignored.
        if name not in c.env_names and (project or name.startswith("SCENEREC_")):
            problems.append(f"{where}: {name} is not a setting of scenerec/config.py")

    for svc_name, svc in services(m).items():
        project = is_project_image(str(svc.get("image", ""))) or "build" in svc
        for name in compose_env(svc):
            judge(f"compose {svc_name}", name, project)
    for svc_name, svc in m.compose_gpu.get("services", {}).items():
        for name in compose_env(svc):
            judge(f"compose.gpu {svc_name}", name, True)
    used_maps = set()
    for where, c_ in containers(m):
        project = is_project_image(c_["image"])
        used_maps |= {
            s["configMapRef"]["name"] for s in c_.get("envFrom", []) if "configMapRef" in s
        }
        for item in c_.get("env", []):
            judge(where, item["name"], project)
    for name, data in configmaps(m).items():
        for key in data:
            judge(f"ConfigMap {name}", key, name in used_maps)
    for key in dockerfile_pairs(m.dockerfile, "ENV"):
        judge("Dockerfile ENV", key, False)
    for ta in m.kind("TriggerAuthentication"):
        for item in ta["spec"].get("env", []):
            judge(f"TriggerAuthentication {ta['metadata']['name']}", item["name"], True)
    return problems


def check_ports(m: Manifests) -> Problems:
    c = code()
    web, serve, metrics = (
        c.default("worker_web_port"),
        c.default("serve_port"),
        c.default("ray_metrics_port"),
    )
    problems: Problems = []
    workers, rays = worker_services(m), ray_services(m)
    if not workers or not rays:
        problems.append("compose needs worker services and a Ray head")
    # --- compose
    for name, svc in workers.items():
        env = compose_env(svc)
        if int(env.get("SCENEREC_WORKER_WEB_PORT", web)) != web:
            problems.append(f"compose {name}: SCENEREC_WORKER_WEB_PORT is not {web}")
        if svc.get("ports") and container_ports(svc) != {web}:
            problems.append(f"compose {name}: publishes {container_ports(svc)}, worker is {web}")
        health = " ".join(map(str, svc.get("healthcheck", {}).get("test", [])))
        if health and f":{web}/" not in health:
            problems.append(f"compose {name}: healthcheck does not ask port {web}")
    for name, svc in rays.items():
        cmd = command_text(svc)
        if not re.search(rf"--metrics-export-port[= ]{metrics}\b", cmd):
            problems.append(f"compose {name}: Ray metrics export is not on {metrics}")
        if not re.search(rf"deploy\.ray_serve start\b.*--port {serve}\b", cmd):
            problems.append(f"compose {name}: Serve HTTP is not on {serve}")
    for svc_name, svc in services(m).items():
        env = compose_env(svc)
        if "SCENEREC_ENCODER_URL" in env:
            host, port = url_host_port(env["SCENEREC_ENCODER_URL"])
            if host not in rays or port != serve:
                problems.append(
                    f"compose {svc_name}: SCENEREC_ENCODER_URL is not a Ray head:{serve}"
                )
        if "SCENEREC_WORKER_URL" in env:
            host, port = url_host_port(env["SCENEREC_WORKER_URL"])
            if host not in workers or port != web:
                problems.append(f"compose {svc_name}: SCENEREC_WORKER_URL is not a worker:{web}")
    # --- prometheus (compose)
    jobs = {j["job_name"]: j for j in m.prometheus.get("scrape_configs", [])}
    targets = {
        name: {t for sc in j.get("static_configs", []) for t in sc.get("targets", [])}
        for name, j in jobs.items()
    }
    want_workers = {f"{n}:{web}" for n in workers}
    want_ray = {f"{n}:{metrics}" for n in rays}
    if want_workers not in targets.values():
        problems.append(
            f"prometheus.yml: no job scrapes exactly the workers {sorted(want_workers)}"
        )
    if want_ray not in targets.values():
        problems.append(f"prometheus.yml: no job scrapes Ray's export {sorted(want_ray)}")
    for job, ts in targets.items():
        for t in ts:
            host = t.split(":")[0]
            if host not in services(m) and host != "localhost":
                problems.append(f"prometheus.yml job {job}: {host} is no compose service")
    # --- kubernetes
    config = configmaps(m).get("scenerec-config", {})
    if int(config.get("SCENEREC_WORKER_WEB_PORT", web)) != web:
        problems.append(f"ConfigMap: SCENEREC_WORKER_WEB_PORT is not {web}")
    for dep in m.kind("Deployment"):
        for c_ in dep["spec"]["template"]["spec"]["containers"]:
            if named_ports(c_).get("web") != web:
                problems.append(f"Deployment {dep['metadata']['name']}: port web is not {web}")
    for svc in m.kind("Service"):
        for p in svc["spec"]["ports"]:
            if p.get("name") == "web" and int(p["port"]) != web:
                problems.append(f"Service {svc['metadata']['name']}: port web is not {web}")
    rs = m.one("RayService")
    cluster = rs["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    for group in groups:
        gname = group.get("groupName", "head")
        if str(group.get("rayStartParams", {}).get("metrics-export-port")) != str(metrics):
            problems.append(f"RayService group {gname}: metrics-export-port is not {metrics}")
        for c_ in group["template"]["spec"]["containers"]:
            ports = named_ports(c_)
            if ports.get("serve") != serve or ports.get("metrics") != metrics:
                problems.append(
                    f"RayService group {gname}: ports serve/metrics not {serve}/{metrics}"
                )
    if int(serve_config(m).get("http_options", {}).get("port", -1)) != serve:
        problems.append(f"serveConfigV2: http_options.port is not {serve}")
    encoder_url = config.get("SCENEREC_ENCODER_URL", "")
    host, port = url_host_port(encoder_url)
    if host != f"{rs['metadata']['name']}-serve-svc" or port != serve:
        problems.append(f"ConfigMap: SCENEREC_ENCODER_URL {encoder_url} is not the serve Service")
    host, port = url_host_port(config.get("SCENEREC_WORKER_URL", "http://x:0"))
    k8s_services = {s["metadata"]["name"]: s for s in m.kind("Service")}
    if host not in k8s_services or port != web:
        problems.append("ConfigMap: SCENEREC_WORKER_URL is not the worker Service")
    # --- Dockerfile
    exposed = {
        int(p)
        for w, rest in dockerfile_instructions(m.dockerfile)
        if w == "EXPOSE"
        for p in rest.split()
    }
    if not {web, serve, metrics} <= exposed:
        problems.append(
            f"Dockerfile EXPOSE {sorted(exposed)} misses one of {web}, {serve}, {metrics}"
        )
    return problems


def check_monitors(m: Manifests) -> Problems:
    """ServiceMonitor/PodMonitor select the pods and name ports that exist."""
    problems: Problems = []
    services_ = {s["metadata"]["name"]: s for s in m.kind("Service")}
    templates = dict(pod_templates(m))
    for sm in m.kind("ServiceMonitor"):
        sel = sm["spec"]["selector"]["matchLabels"]
        matched = [
            s for s in services_.values() if sel.items() <= s["metadata"].get("labels", {}).items()
        ]
        if not matched:
            problems.append(f"ServiceMonitor {sm['metadata']['name']} selects no Service")
        for s in matched:
            names = {p.get("name") for p in s["spec"]["ports"]}
            for ep in sm["spec"]["endpoints"]:
                if ep["port"] not in names:
                    problems.append(
                        f"ServiceMonitor {sm['metadata']['name']}: no port {ep['port']}"
                    )
    for pm in m.kind("PodMonitor"):
        sel = pm["spec"]["selector"]["matchLabels"]
        matched = {
            owner: t
            for owner, t in templates.items()
            if sel.items() <= t.get("metadata", {}).get("labels", {}).items()
        }
        ray_owners = {o for o in templates if "/" in o}
        if not ray_owners <= set(matched):
            problems.append(
                f"PodMonitor {pm['metadata']['name']} misses {sorted(ray_owners - set(matched))}"
            )
        for owner, t in matched.items():
            for ep in pm["spec"]["podMetricsEndpoints"]:
                if not any(ep["port"] in named_ports(c_) for c_ in t["spec"]["containers"]):
                    problems.append(
                        f"PodMonitor {pm['metadata']['name']}: {owner} has no port {ep['port']}"
                    )
    if not m.kind("ServiceMonitor") or not m.kind("PodMonitor"):
        problems.append("deploy/k8s needs a ServiceMonitor (workers) and a PodMonitor (Ray)")
    return problems


def check_images(m: Manifests) -> Problems:
    c = code()
    problems: Problems = []
    for name, svc in services(m).items():
        image = str(svc.get("image", ""))
        if ("build" in svc or is_project_image(image)) and image != c.image:
            problems.append(f"compose {name}: image {image!r}, expected {c.image}")
        if "build" in svc:
            context = (DEPLOY / "compose" / svc["build"]["context"]).resolve()
            if not (context / svc["build"].get("dockerfile", "Dockerfile")).is_file():
                problems.append(f"compose {name}: build context has no Dockerfile")
    for name in (*worker_services(m), *ray_services(m)):
        if services(m)[name].get("image") != c.image:
            problems.append(f"compose {name} does not run the project image")
    for where, c_ in containers(m):
        if c_["image"] != c.image:
            problems.append(f"{where}: image {c_['image']!r}, expected {c.image}")
    kust = {i["name"]: i for i in m.kustomization.get("images", [])}
    if IMAGE_REPO not in kust or kust[IMAGE_REPO].get("newTag") != c.image.split(":")[1]:
        problems.append(f"kustomization images: no entry {IMAGE_REPO} with tag {c.image}")
    labels = dockerfile_pairs(m.dockerfile, "LABEL")
    title, version = (labels.get(f"org.opencontainers.image.{k}") for k in ("title", "version"))
    if f"{title}:{version}" != c.image:
        problems.append(f"Dockerfile labels do not say {c.image}")
    froms = [rest for w, rest in dockerfile_instructions(m.dockerfile) if w == "FROM"]
    if not froms or not froms[0].startswith(f"python:{c.python}-"):
        problems.append(f"Dockerfile FROM {froms}: the project targets Python {c.python}")
    if not re.search(r"pip install .*-r \S*requirements\.lock", m.dockerfile):
        problems.append("Dockerfile does not install requirements.lock")
    if dockerfile_pairs(m.dockerfile, "ENV").get("PYTHONPATH") != "/app":
        problems.append("Dockerfile: the code is not on PYTHONPATH")
    # Third-party versions that must match what the code is built and tested against.
    kafka_image = services(m).get("kafka", {}).get("image", "")
    if kafka_image != f"apache/kafka:{c.kafka_version}":
        problems.append(f"compose kafka {kafka_image}, deploy/kafka/pom.xml: {c.kafka_version}")
    if str(m.one("Kafka")["spec"]["kafka"]["version"]) != c.kafka_version:
        problems.append(f"Strimzi Kafka version is not {c.kafka_version}")
    if str(m.one("RayService")["spec"]["rayClusterConfig"]["rayVersion"]) != c.ray_version:
        problems.append(f"RayService rayVersion is not the locked ray {c.ray_version}")
    client_minor = ".".join(c.qdrant_client.split(".")[:2])
    for where, tag in (
        ("compose qdrant", services(m).get("qdrant", {}).get("image", "").rpartition(":")[2]),
        ("qdrant-values.yaml", str(m.qdrant_values.get("image", {}).get("tag", ""))),
    ):
        if not tag.lstrip("v").startswith(client_minor + "."):
            problems.append(f"{where}: Qdrant {tag}, qdrant-client is {c.qdrant_client}")
    return problems


def _literal_secrets(node: Any, where: str) -> Iterator[str]:
    if isinstance(node, dict):
        if "name" in node and "value" in node and SECRETISH.search(str(node["name"])):
            yield f"{where}: {node['name']} has a literal value"
        for key, value in node.items():
            literal = isinstance(value, str | int) and not INTERPOLATION.match(str(value))
            if SECRETISH.search(str(key)) and literal and str(value):
                yield f"{where}: {key} is a literal"
            yield from _literal_secrets(value, where)
    elif isinstance(node, list):
        for item in node:
            yield from _literal_secrets(item, where)


def check_secrets(m: Manifests) -> Problems:
    c = code()
    problems: Problems = []
    for name, svc in services(m).items():
        for key, value in compose_env(svc).items():
            if (key in c.secret_env or SECRETISH.search(key)) and not INTERPOLATION.match(value):
                problems.append(f"compose {name}: {key} is not taken from the environment")
    for doc in m.k8s:
        kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
        if kind == "Secret" and (doc.get("data") or doc.get("stringData")):
            problems.append(f"Secret {name} carries values in the repository")
        problems.extend(_literal_secrets(doc, f"{kind} {name}"))
    problems.extend(_literal_secrets(m.qdrant_values, "qdrant-values.yaml"))
    problems.extend(_literal_secrets(serve_config(m), "serveConfigV2"))
    for key in dockerfile_pairs(m.dockerfile, "ENV"):
        if key in c.secret_env or SECRETISH.search(key):
            problems.append(f"Dockerfile ENV {key} bakes a secret into the image")
    for name, data in configmaps(m).items():
        for key in data:
            if key in c.secret_env:
                problems.append(f"ConfigMap {name}: {key} is a secret")
    users = {u["metadata"]["name"] for u in m.kind("KafkaUser")}
    refs: dict[str, set[tuple[str, str]]] = {}
    for where, c_ in containers(m):
        env = container_env(m, c_)
        for key in c.secret_env & set(env):
            ref = env[key].get("secretKeyRef") if isinstance(env[key], dict) else None
            if ref is None:
                problems.append(f"{where}: {key} is not read through secretKeyRef")
                continue
            refs.setdefault(key, set()).add((ref["name"], ref["key"]))
            if ref["name"] not in users | {USER_SECRET}:
                problems.append(
                    f"{where}: {key} comes from {ref['name']}, no KafkaUser nor {USER_SECRET}"
                )
    for key, found in refs.items():
        if len(found) > 1:
            problems.append(f"{key} is read from several secrets: {sorted(found)}")
    api_ref = m.qdrant_values.get("apiKey", {})
    api_ref = (
        api_ref.get("valueFrom", {}).get("secretKeyRef") if isinstance(api_ref, dict) else None
    )
    if not api_ref or {(api_ref["name"], api_ref["key"])} != refs.get("QDRANT_API_KEY"):
        problems.append(
            "qdrant-values.yaml apiKey is not the Secret the pods read as QDRANT_API_KEY"
        )
    for ta in m.kind("TriggerAuthentication"):
        for item in ta["spec"].get("secretTargetRef", []):
            if item["parameter"] == "password" and {(item["name"], item["key"])} != refs.get(
                "SCENEREC_KAFKA_SASL_PASSWORD"
            ):
                problems.append("KEDA's Kafka password is not the workers' SASL password Secret")
    return problems


def check_metrics(m: Manifests) -> Problems:
    """Every metric the code defines has a panel (that the panels' and the rules' queries
    return series is checked against a real Prometheus, tests/integration/test_live.py)."""
    c = code()
    problems: Problems = []
    shown_dashboard = set().union(*(names_in(e) for _, e in dashboard_exprs(m)))
    for fam in c.worker_families.values():
        if not fam.samples() & shown_dashboard:
            problems.append(f"dashboard has no panel for {fam.name}")
    if c.serve_metrics is not None:
        for name in sorted(
            {n.removesuffix("_total") for n in c.serve_metrics if n.endswith("_total")}
            | {
                n
                for n in c.serve_metrics
                if not n.endswith(("_total", "_bucket", "_sum", "_count"))
            }
        ):
            variants = {name, f"{name}_total", f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            if not variants & shown_dashboard:
                problems.append(f"dashboard has no panel for {name}")
    return problems


def check_dashboard_json(m: Manifests) -> Problems:
    """What Grafana needs to load the dashboard, and its provisioning for Compose."""
    d = m.dashboard
    problems: Problems = []
    for key in ("uid", "title", "schemaVersion", "panels", "templating"):
        if key not in d:
            problems.append(f"dashboard has no {key}")
    variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    ds = variables.get("datasource", {})
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("dashboard needs a Prometheus `datasource` variable")
    ids: set[int] = set()
    cells: set[tuple[int, int]] = set()
    for p in d.get("panels", []):
        if p["id"] in ids:
            problems.append(f"panel id {p['id']} used twice")
        ids.add(p["id"])
        g = p["gridPos"]
        if g["x"] + g["w"] > 24:
            problems.append(f"panel {p['title']!r} is wider than the grid")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    problems.append(f"panel {p['title']!r} overlaps another")
                    break
                cells.add((x, y))
        if p["type"] == "row":
            continue
        if p.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"panel {p['title']!r} does not use the datasource variable")
        if not p.get("targets") or not all(t.get("expr") for t in p["targets"]):
            problems.append(f"panel {p['title']!r} has a target without an expression")
    # Provisioning (Compose): the datasource points at the Prometheus service, the dashboard
    # provider at the folder where compose mounts the JSON.
    sources = m.grafana_datasources.get("datasources", [])
    prom = services(m).get("prometheus", {})
    if not any(
        s.get("type") == "prometheus"
        and url_host_port(s["url"]) == ("prometheus", next(iter(container_ports(prom)), -1))
        for s in sources
    ):
        problems.append("Grafana datasource does not point at the prometheus service")
    mounts = [str(v).split(":") for v in services(m).get("grafana", {}).get("volumes", [])]
    json_targets = [t for src, t, *_ in mounts if src.endswith("scenerec-dashboard.json")]
    paths = {p["options"]["path"] for p in m.grafana_dashboards.get("providers", [])}
    if not json_targets or str(Path(json_targets[0]).parent) not in paths:
        problems.append("Grafana dashboard provider does not read where compose mounts the JSON")
    prom_mounts = {
        t: (DEPLOY / "compose" / src).resolve()
        for src, t, *_ in (str(v).split(":") for v in prom.get("volumes", []))
    }
    config_dir = next(
        (str(Path(t).parent) for t, src in prom_mounts.items() if src.name == "prometheus.yml"),
        "/etc/prometheus",
    )
    for rule_file in m.prometheus.get("rule_files", []):
        mounted = str(Path(config_dir, rule_file))  # Prometheus resolves from its config
        if mounted not in prom_mounts or not prom_mounts[mounted].is_file():
            problems.append(f"prometheus.yml rule file {rule_file} is not mounted by compose")
    return problems


def check_serve_apps(m: Manifests) -> Problems:
    """serveConfigV2 names apps, routes, builders, deployments and args the code has."""
    from ray.serve import Deployment

    from deploy import ray_serve

    problems: Problems = []
    cfg = serve_config(m)
    apps = {a["name"]: a for a in cfg.get("applications", [])}
    wanted = {ray_serve.APP_NAME: ray_serve.ROUTE_PREFIX}
    if hasattr(ray_serve, "API_APP_NAME"):
        wanted[ray_serve.API_APP_NAME] = ray_serve.API_ROUTE_PREFIX
    for name, prefix in wanted.items():
        if name not in apps:
            problems.append(f"serveConfigV2 lacks the app {name!r} of deploy/ray_serve.py")
        elif apps[name].get("route_prefix") != prefix:
            problems.append(f"serveConfigV2 app {name}: route_prefix is not {prefix}")
    for name, app in apps.items():
        module_name, _, attr = app["import_path"].partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            problems.append(f"serveConfigV2 app {name}: cannot import {module_name}: {exc}")
            continue
        builder = getattr(module, attr, None)
        if not callable(builder):
            problems.append(f"serveConfigV2 app {name}: {module_name} has no builder {attr!r}")
        deployments = {d.name for d in vars(module).values() if isinstance(d, Deployment)}
        for dep in app.get("deployments", []):
            if dep["name"] not in deployments:
                problems.append(f"serveConfigV2 app {name}: no deployment {dep['name']!r}")
        arg_fields = _builder_arg_fields(module)
        for key in app.get("args", {}) or {}:
            if arg_fields is not None and key not in arg_fields:
                problems.append(f"serveConfigV2 app {name}: arg {key!r} is not a config field")
    # GPU: the encoder's device, its replicas' resources and the worker group agree.
    encoder = apps.get(ray_serve.APP_NAME, {})
    cuda = str((encoder.get("args") or {}).get("device", "cpu")).startswith("cuda")
    gpus = [
        float(d.get("ray_actor_options", {}).get("num_gpus", 0))
        for d in encoder.get("deployments", [])
    ]
    groups = m.one("RayService")["spec"]["rayClusterConfig"].get("workerGroupSpecs", [])
    gpu_groups = [
        g
        for g in groups
        if any(
            "nvidia.com/gpu" in c_.get("resources", {}).get("limits", {})
            for c_ in g["template"]["spec"]["containers"]
        )
    ]
    if cuda != bool(gpus and all(g >= 1 for g in gpus)):
        problems.append("encoder: device cuda and num_gpus >= 1 go together")
    if cuda and not gpu_groups:
        problems.append("encoder on cuda but no worker group has nvidia.com/gpu")
    for g in gpu_groups:
        for c_ in g["template"]["spec"]["containers"]:
            if container_env(m, c_).get("SCENEREC_ENCODER_DEVICE") != "cuda":
                problems.append(f"GPU group {g['groupName']}: SCENEREC_ENCODER_DEVICE is not cuda")
    return problems


def _builder_arg_fields(module: Any) -> set[str] | None:
    """Which args a builder accepts: EncoderAppConfig fields, or Settings fields."""
    if hasattr(module, "EncoderAppConfig"):
        return {f.name for f in dataclasses.fields(module.EncoderAppConfig)}
    if module.__name__ == "serving.api_app":
        return set(Settings.model_fields)
    return None


def check_autoscaling(m: Manifests) -> Problems:
    c = code()
    problems: Problems = []
    config = configmaps(m).get("scenerec-config", {})
    deployments = {d["metadata"]["name"]: d for d in m.kind("Deployment")}
    auths = {a["metadata"]["name"]: a for a in m.kind("TriggerAuthentication")}
    partitions = int(config.get("SCENEREC_PARTITIONS", c.default("partitions")))
    for so in m.kind("ScaledObject"):
        name = so["metadata"]["name"]
        target = deployments.get(so["spec"]["scaleTargetRef"]["name"])
        if target is None:
            problems.append(f"ScaledObject {name} scales no Deployment of deploy/k8s")
            continue
        if int(so["spec"].get("maxReplicaCount", 100)) > partitions:
            problems.append(f"ScaledObject {name}: more workers than the {partitions} partitions")
        for trig in so["spec"]["triggers"]:
            meta = trig["metadata"]
            if trig["type"] != "kafka":
                continue
            if meta.get("consumerGroup") != config.get("SCENEREC_APP_ID", c.default("app_id")):
                problems.append(f"ScaledObject {name}: consumerGroup is not the app id")
            if meta.get("bootstrapServers") != config.get("KAFKA_BOOTSTRAP"):
                problems.append(f"ScaledObject {name}: bootstrapServers is not KAFKA_BOOTSTRAP")
            mech = config.get("SCENEREC_KAFKA_SASL_MECHANISM", "").lower().replace("-", "_")
            if mech and meta.get("sasl") != mech.replace("scram_sha_", "scram_sha"):
                problems.append(f"ScaledObject {name}: sasl {meta.get('sasl')} is not {mech}")
            auth = auths.get(trig.get("authenticationRef", {}).get("name", ""))
            if auth is None:
                problems.append(f"ScaledObject {name}: its TriggerAuthentication is missing")
                continue
            names = {c_["name"] for c_ in target["spec"]["template"]["spec"]["containers"]}
            for item in auth["spec"].get("env", []):
                if item.get("containerName") not in names:
                    problems.append(
                        f"TriggerAuthentication: no container {item.get('containerName')}"
                    )
    if not m.kind("ScaledObject"):
        problems.append("the workers have no ScaledObject")
    return problems


def check_kustomization(m: Manifests) -> Problems:
    listed = list(m.kustomization.get("resources", []))
    problems = [
        f"kustomization lists {r}, which does not exist" for r in listed if r not in m.k8s_files
    ]
    problems += [f"kustomization does not apply {f}" for f in m.k8s_files if f not in listed]
    return problems


CHECKS: dict[str, Callable[[Manifests], Problems]] = {
    "kafka_topics": check_kafka_topics,
    "kafka_access": check_kafka_access,
    "env_names": check_env_names,
    "ports": check_ports,
    "monitors": check_monitors,
    "images": check_images,
    "secrets": check_secrets,
    "metrics": check_metrics,
    "dashboard_json": check_dashboard_json,
    "serve_apps": check_serve_apps,
    "autoscaling": check_autoscaling,
    "kustomization": check_kustomization,
}


# --------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_manifests_agree_with_the_code(name: str, m: Manifests) -> None:
    assert CHECKS[name](m) == []


def test_serve_metric_names_are_declared() -> None:
    # The dashboard's ray_scenerec_* series are only checked against serving/metrics.py.
    assert code().serve_metrics is not None, "serving/metrics.py with SERVE_METRIC_NAMES"


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (`make system-tools`)"
)
@pytest.mark.parametrize("what", ["config", "rules"])
def test_promtool_accepts_the_prometheus_files(what: str) -> None:
    path = DEPLOY / "prometheus" / ("prometheus.yml" if what == "config" else "scenerec-rules.yml")
    proc = subprocess.run(
        ["promtool", "check", what, str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _set_env(doc: dict[str, Any], name: str, value: Any) -> None:
    for item in doc["spec"]["template"]["spec"]["containers"][0]["env"]:
        if item["name"] == name:
            item.clear()
            item.update({"name": name, "value": value})


def _worker(m: Manifests) -> dict[str, Any]:
    return m.one("Deployment")


def _topic(m: Manifests, name: str) -> dict[str, Any]:
    return next(t for t in m.kind("KafkaTopic") if t["metadata"]["name"] == name)


def _first_ts_target(m: Manifests) -> dict[str, Any]:
    panel = next(p for p in m.dashboard["panels"] if p["type"] != "row")
    target: dict[str, Any] = panel["targets"][0]
    return target


def _serve_cfg_edit(m: Manifests, edit: Callable[[dict[str, Any]], None]) -> None:
    rs = m.one("RayService")
    cfg = yaml.safe_load(rs["spec"]["serveConfigV2"])
    edit(cfg)
    rs["spec"]["serveConfigV2"] = yaml.safe_dump(cfg)


BREAKAGES: dict[str, tuple[str, Callable[[Manifests], None]]] = {
    "topic missing": (
        "kafka_topics",
        lambda m: m.k8s.remove(_topic(m, "events.dlq")),
    ),
    "unknown topic": (
        "kafka_topics",
        lambda m: _topic(m, "events.click")["spec"].update(topicName="events.clicks"),
    ),
    "compaction differs": (
        "kafka_topics",
        lambda m: _topic(m, "catalog.items")["spec"]["config"].update({"cleanup.policy": "delete"}),
    ),
    "partitions differ": (
        "kafka_topics",
        lambda m: _topic(m, "users.profiles")["spec"].update(partitions=3),
    ),
    "acl lacks a topic": (
        "kafka_access",
        lambda m: m.one("KafkaUser")["spec"]["authorization"]["acls"].pop(0),
    ),
    "wrong sasl user": (
        "kafka_access",
        lambda m: configmaps(m)["scenerec-config"].update(SCENEREC_KAFKA_SASL_USERNAME="bob"),
    ),
    "unknown env var (configmap)": (
        "env_names",
        lambda m: configmaps(m)["scenerec-config"].update(SCENEREC_QDRANT_ADDRESS="x"),
    ),
    "unknown env var (compose)": (
        "env_names",
        lambda m: services(m)["worker-1"]["environment"].update(KAFKA_BROKERS="kafka:9092"),
    ),
    "worker port": (
        "ports",
        lambda m: _worker(m)["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(
            containerPort=6066
        ),
    ),
    "prometheus target port": (
        "ports",
        lambda m: m.prometheus["scrape_configs"][1]["static_configs"][0]["targets"].__setitem__(
            0, "worker-1:6066"
        ),
    ),
    "ray metrics port": (
        "ports",
        lambda m: m.one("RayService")["spec"]["rayClusterConfig"]["headGroupSpec"][
            "rayStartParams"
        ].update({"metrics-export-port": "8080"}),
    ),
    "serve port in compose": (
        "ports",
        lambda m: services(m)["ray-head"].update(
            command=command_text(services(m)["ray-head"]).replace("--port 18000", "--port 8000")
        ),
    ),
    "monitor port": (
        "monitors",
        lambda m: m.one("ServiceMonitor")["spec"]["endpoints"][0].update(port="http"),
    ),
    "image tag (compose)": (
        "images",
        lambda m: services(m)["worker-2"].update(image="scenerec:latest"),
    ),
    "image (k8s)": (
        "images",
        lambda m: _worker(m)["spec"]["template"]["spec"]["containers"][0].update(
            image="rayproject/ray:2.60.0"
        ),
    ),
    "dockerfile label": (
        "images",
        lambda m: setattr(m, "dockerfile", m.dockerfile.replace('version="0.1.0"', 'version="9"')),
    ),
    "literal secret (k8s)": (
        "secrets",
        lambda m: _set_env(_worker(m), "QDRANT_API_KEY", "hunter2"),
    ),
    "literal secret (compose)": (
        "secrets",
        lambda m: services(m)["worker-1"]["environment"].update(QDRANT_API_KEY="hunter2"),
    ),
    "secret in repo": (
        "secrets",
        lambda m: m.k8s.append(
            {"kind": "Secret", "metadata": {"name": "x"}, "stringData": {"k": "v"}}
        ),
    ),
    "metric without panel": (
        "metrics",
        lambda m: m.dashboard["panels"].__setitem__(
            slice(None),
            [p for p in m.dashboard["panels"] if "dlq" not in json.dumps(p.get("targets", []))],
        ),
    ),
    "dashboard datasource": (
        "dashboard_json",
        lambda m: next(p for p in m.dashboard["panels"] if p["type"] != "row").update(
            datasource={"uid": "abc"}
        ),
    ),
    "serve route": (
        "serve_apps",
        lambda m: _serve_cfg_edit(
            m, lambda cfg: cfg["applications"][0].update(route_prefix="/embed")
        ),
    ),
    "serve builder": (
        "serve_apps",
        lambda m: _serve_cfg_edit(
            m, lambda cfg: cfg["applications"][1].update(import_path="serving.api_app:nope")
        ),
    ),
    "keda group": (
        "autoscaling",
        lambda m: m.one("ScaledObject")["spec"]["triggers"][0]["metadata"].update(
            consumerGroup="other"
        ),
    ),
    "kustomization": (
        "kustomization",
        lambda m: m.kustomization["resources"].remove("kafka-topics.yaml"),
    ),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_each_check_can_fail(breakage: str, m: Manifests) -> None:
    check_name, breaks = BREAKAGES[breakage]
    check = CHECKS[check_name]
    before = set(check(m))
    breaks(m)
    assert set(check(m)) - before, f"{check_name} did not notice: {breakage}"


def test_every_check_has_a_breakage() -> None:
    assert {c for c, _ in BREAKAGES.values()} == set(CHECKS)

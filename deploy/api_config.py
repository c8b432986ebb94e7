"""What the pull API's Serve replicas are configured with: :func:`api_overrides`.

Its own module, light to import, so that both the stack (deploy/stack.py) and the Serve
launcher (deploy/ray_serve.py) use it without either importing the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scenerec.config import Settings

#: Settings the pull API's replicas get explicitly; secrets are not among them (replicas
#: read those from their own environment).
API_SETTINGS = (
    "kafka_bootstrap",
    "kafka_security_protocol",
    "kafka_sasl_mechanism",
    "kafka_sasl_username",
    "kafka_ssl_cafile",
    "kafka_ssl_certfile",
    "kafka_ssl_keyfile",
    "topic_prefix",
    "partitions",
    "scenes",
    "top_k",
    "worker_url",
    "stream_max_open",
    "stream_max_per_user",
    "stream_heartbeat_s",
    "stream_replay_records",
    "cors_origins",
    "api_demo",
)


def api_overrides(settings: Settings) -> dict[str, Any]:
    values = settings.model_dump(include=set(API_SETTINGS))
    values["kafka_bootstrap"] = settings.bootstrap
    values["worker_url"] = settings.worker_base_url
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items() if v is not None}

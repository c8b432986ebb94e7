"""One frozen settings object per process, read once at the edge.

Every knob comes from an environment variable with the ``SCENEREC_`` prefix, except the
three that the wider ecosystem already names (``KAFKA_BOOTSTRAP``, ``QDRANT_URL`` and
``QDRANT_API_KEY``). Library classes never read the environment: they take explicit
arguments built from this object.
"""

from __future__ import annotations

import os
import ssl
from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: The project root (the folder holding pyproject.toml) when running from a checkout.
PROJECT_ROOT = Path(__file__).resolve().parent.parent

#: Scenes the ml-100k loader produces (see scenerec/datasets.py) plus common app scenes.
DEFAULT_SCENES = (
    "action",
    "comedy",
    "drama",
    "family",
    "scifi",
    "thriller",
    "ecommerce",
    "social",
    "news",
    "video",
    "music",
)


class Settings(BaseSettings):
    """Configuration of every SceneRec process (worker, CLI, demo, tests)."""

    model_config = SettingsConfigDict(env_prefix="SCENEREC_", frozen=True, extra="ignore")

    # --- where things live -------------------------------------------------------------
    var_dir: Path = Field(default=PROJECT_ROOT / "var", description="data, logs, pid files")
    data_dir: Path = Field(
        default=PROJECT_ROOT.parent / "shared" / "data", description="real data sets"
    )

    # --- Kafka ---------------------------------------------------------------------------
    kafka_bootstrap: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP", "SCENEREC_KAFKA_BOOTSTRAP"),
        description="an existing Kafka; unset = the project's local broker",
    )
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    # TLS: a private CA and, for mutual TLS, a client certificate and key (file paths).
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None
    partitions: int = Field(default=4, ge=1, le=256)
    topic_prefix: str = ""

    # --- vector store --------------------------------------------------------------------
    qdrant_url: str | None = Field(
        default=None, validation_alias=AliasChoices("QDRANT_URL", "SCENEREC_QDRANT_URL")
    )
    qdrant_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("QDRANT_API_KEY", "SCENEREC_QDRANT_API_KEY")
    )

    # --- encoder (Ray Serve) ---------------------------------------------------------------
    encoder_url: str | None = Field(
        default=None, description="a running encoder route; unset = the project's Ray Serve app"
    )
    serve_port: int = 18000
    #: The Ray head: Ray's default one (shared by this user's stacks) unless a temporary
    #: folder is set, then a head of this stack's own on ``ray_port``.
    ray_port: int = Field(default=6379, ge=1, le=65535)
    ray_temp_dir: Path | None = None
    #: Ray's Prometheus export (Ray's own metrics and the Serve apps' custom ones). Outside
    #: Ray's default worker-port range (10002-19999), which `ray start` refuses to overlap.
    ray_metrics_port: int = 9188
    encoder_model_path: str | None = None
    encoder_device: str = "cpu"
    encoder_replicas: int = 1
    encoder_max_batch_size: int = 64
    #: Texts per forward pass in a replica; 0: by device (16 on CPU, 64 on CUDA; see
    #: ``serving.encoder_app.EncoderAppConfig.forward_batch``).
    encoder_pass_size: int = Field(default=0, ge=0)
    encoder_torch_threads: int | None = None

    # --- worker ----------------------------------------------------------------------------
    worker_web_port: int = 16066
    worker_web_host: str = "127.0.0.1"
    #: Where the pull API finds a worker (any worker: requests are routed to the owner).
    worker_url: str | None = None
    app_id: str = "scenerec"
    # NoDecode: a comma-separated list in the environment, not JSON (see _split_lists).
    scenes: Annotated[tuple[str, ...], NoDecode] = DEFAULT_SCENES
    top_k: int = Field(default=10, ge=1, le=1000)
    max_text_chars: int = Field(default=4096, ge=1)
    max_event_bytes: int = Field(default=65536, ge=256)
    # Large, below Faust's agent queue: under a backlog a batch ranks each user it touches
    # once for all of their events in it, while at low rates the window below keeps batches
    # small, so latency does not suffer.
    batch_max: int = Field(default=4000, ge=1)
    # ... and it closes once it holds this many users' events: handling costs per user, and
    # a batch of thousands of new users would hold the worker's event loop (and /metrics).
    batch_max_users: int = Field(default=500, ge=1)
    # Smaller, because catalog items go through the encoder and clicks on items not yet
    # indexed wait for their batch (SCENEREC_UNKNOWN_ITEM_WAIT_S).
    catalog_batch_max: int = Field(default=500, ge=1)
    # Short, because a longer window lets a standing queue build at high click rates.
    batch_within_s: float = Field(default=0.01, gt=0)
    # The window may grow up to this after a slow batch (streams/agents); off by default
    # (equal to the short window) because big batches fill from the queue under a backlog
    # anyway, and a grown window made the batches after a slow one slower still.
    batch_within_max_s: float = Field(default=0.01, gt=0)
    #: Longest a worker's Kafka fetch waits for data, short because a fetch waiting on idle
    #: topics holds back every click behind it (Faust's own wait is fixed and long;
    #: streams/patches/transport.py, docs/benchmarks.md "The fetch stall").
    fetch_max_wait_ms: int = Field(default=20, ge=1, le=60_000)
    unknown_item_wait_s: float = Field(default=30.0, ge=0)
    min_free_mb: int = Field(default=100, ge=0, description="refuse to start below this")
    max_future_s: float = Field(default=86400.0, gt=0, description="refuse later event times")
    model_version: str = "scenerec-0.1-mean"
    #: Learned scene gates for r = (u ⊙ s) · i (``make eval`` writes results/colearn.json).
    colearn_path: Path | None = None
    #: The ranking blend tuned on valid (``make eval`` writes results/model.json); unset:
    #: the built-in one (``embeddings.collaborative.DEFAULT_FEED_BLEND``).
    model_path: Path | None = None
    #: Catalogs up to this many items are ranked exactly (every item scored); larger ones
    #: score each feed's candidates (``embeddings.blended``). 0: always candidates.
    exact_max_items: int = Field(default=5000, ge=0)
    #: Candidates per feed from each source: the neighbours of the user's items (each of
    #: transitions and co-occurrence), the nearest items to the feed's query, the popular.
    candidates_neighbours: int = Field(default=100, ge=0)
    candidates_nearest: int = Field(default=100, ge=0)
    candidates_popular: int = Field(default=100, ge=0)
    #: A scene feed the user's events did not change is ranked again after this many of
    #: their events.
    feed_refresh_events: int = Field(default=10, ge=1)
    #: How long the item-stats agent gathers deltas before it applies and writes them.
    stats_batch_within_s: float = Field(default=0.5, gt=0)
    #: Threads that share the item product when every item of a catalog of more than 4,096
    #: items is scored (the same scores, bit for bit, as one thread), since on a large
    #: catalog that product is the heaviest part of ranking. 0: one per CPU this process
    #: may run on, at most 4.
    rank_threads: int = Field(default=0, ge=0, le=64)
    #: Once started, the worker moves what it holds into the collector's permanent
    #: generation (``gc.freeze``), so that the full collections big batches trigger stop
    #: rescanning Faust, aiokafka, numpy and the item index.
    gc_freeze: bool = True
    #: Allocations between young-generation collections (Python's default: 700). 0 keeps
    #: the interpreter's setting.
    gc_threshold0: int = Field(default=0, ge=0)

    # --- pull API: feed streams and the demo page -----------------------------------------
    #: Open feed streams one API replica serves at most (503 beyond), and per user (429).
    stream_max_open: int = Field(default=2000, ge=1)
    stream_max_per_user: int = Field(default=8, ge=1)
    #: Seconds between heartbeat comments on a quiet stream (proxies close idle ones).
    stream_heartbeat_s: float = Field(default=15.0, gt=0)
    #: Recent lists a replica keeps to resume streams from; an older Last-Event-ID reads
    #: the topic again.
    stream_replay_records: int = Field(default=20_000, ge=0)
    #: Origins allowed to call the API from a browser (CORS); empty: same origin only.
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    #: Serve the demo page at /demo/ and the endpoints it uses to publish profiles and
    #: clicks to Kafka; off where only apps publish.
    api_demo: bool = True

    @field_validator("scenes", "cors_origins", mode="before")
    @classmethod
    def _split_lists(cls, value: object) -> object:
        # Environment variables arrive as "a,b,c"; a JSON list is accepted too.
        if isinstance(value, str) and not value.lstrip().startswith("["):
            return tuple(s.strip() for s in value.split(",") if s.strip())
        return value

    @field_validator("scenes")
    @classmethod
    def _check_scenes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("scenes: at least one scene is required")
        if "global" in value:
            raise ValueError("scenes: 'global' is reserved for the cross-scene feed")
        if any(scene.startswith("@") for scene in value):
            # The user-state codec names its other vectors "@global", "@by:<user>", ...
            raise ValueError("scenes: a scene name cannot start with '@'")
        return value

    @cached_property
    def kafka_home(self) -> Path:
        return self.var_dir / "kafka"

    @cached_property
    def store_dir(self) -> Path:
        return self.var_dir / "qdrant"

    @property
    def bootstrap(self) -> str:
        """The Kafka bootstrap servers this process talks to."""
        return self.kafka_bootstrap or f"127.0.0.1:{self.kafka_port}"

    @property
    def ranking_threads(self) -> int:
        """``rank_threads``, with 0 resolved to the CPUs this process may use (at most 4)."""
        if self.rank_threads:
            return self.rank_threads
        affinity = getattr(os, "sched_getaffinity", None)
        cpus = len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)
        return max(1, min(4, cpus))

    @property
    def worker_base_url(self) -> str:
        return self.worker_url or f"http://127.0.0.1:{self.worker_web_port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for Kafka when the security protocol uses SSL, else None."""
        if not self.kafka_security_protocol.upper().endswith("SSL"):
            return None
        ctx = ssl.create_default_context(
            cafile=str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None
        )
        if self.kafka_ssl_certfile is not None:
            password = self.kafka_ssl_key_password
            ctx.load_cert_chain(
                str(self.kafka_ssl_certfile),
                str(self.kafka_ssl_keyfile) if self.kafka_ssl_keyfile else None,
                password.get_secret_value() if password else None,
            )
        return ctx

    @property
    def encoder_base_url(self) -> str:
        return self.encoder_url or f"http://127.0.0.1:{self.serve_port}/encoder"

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"


def load_settings() -> Settings:
    """Read the environment once; call this at the edge of a process only."""
    return Settings()

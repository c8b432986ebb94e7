"""Shared fixtures. The real-services fixtures live in tests/integration/conftest.py."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from embeddings.encoder import SentenceEncoder
from embeddings.ranking import ItemIndex
from streams.metrics import WorkerMetrics
from streams.pipeline import Emitter, Pipeline, PipelineConfig, TextEncoder
from vectorstore import open_store


@lru_cache(maxsize=1)
def bare_encoder() -> SentenceEncoder:
    return SentenceEncoder(torch_threads=1)


class InProcessEncoder:
    """The real bundled model behind the pipeline's async encoder interface (no Serve)."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    async def encode(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(len(texts))
        return await asyncio.to_thread(bare_encoder().encode, list(texts))


@pytest.fixture
def in_process_encoder() -> InProcessEncoder:
    return InProcessEncoder()


def local_pipeline(
    store_dir: Path, config: PipelineConfig, encoder: TextEncoder, emitter: Emitter
) -> Pipeline:
    """A pipeline as unit tests run it: an embedded store in ``store_dir`` with the config's
    scenes, an empty index, a dict as user state, metrics on a registry of its own.
    The caller closes ``pipeline.store``."""
    store = open_store(store_dir)
    store.ensure_collections(384, list(config.scenes))
    return Pipeline(
        config=config,
        store=store,
        index=ItemIndex(384),
        encoder=encoder,
        states={},
        emitter=emitter,
        metrics=WorkerMetrics.create(CollectorRegistry()),
    )


def docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def service_mode() -> str:
    """Where the integration tests get Kafka and Qdrant from (see tests/integration)."""
    if os.environ.get("KAFKA_BOOTSTRAP"):
        return "existing"
    return "testcontainers" if docker_answers() else "local"


def pytest_report_header() -> str:
    mode = service_mode()
    why = {
        "existing": f"KAFKA_BOOTSTRAP={os.environ.get('KAFKA_BOOTSTRAP')}",
        "testcontainers": "a Docker engine answers",
        "local": "no Docker engine answers: the project's own Kafka, Ray Serve and worker",
    }[mode]
    qdrant = os.environ.get("QDRANT_URL") or (
        "testcontainers" if mode == "testcontainers" else "embedded Qdrant Edge"
    )
    return f"integration services: {mode} ({why}); vector store: {qdrant}"

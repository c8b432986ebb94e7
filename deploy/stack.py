"""Bring the local stack up and down: Kafka broker, Ray Serve encoder, one Faust worker.

Each component is skipped when the settings point at an existing one (``KAFKA_BOOTSTRAP``,
``SCENEREC_ENCODER_URL``); ``QDRANT_URL`` switches the worker to a Qdrant server.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

# Also named here for the callers that import it from the stack (bench/push_bench.py).
from deploy.api_config import api_overrides
from deploy.kafka_local import LocalKafka
from deploy.worker import start_worker, stop_worker
from scenerec.config import Settings
from scenerec.kafka import ensure_topics

if TYPE_CHECKING:  # Ray is heavy: import it only where it is used
    from deploy.ray_serve import RayHead
    from serving.encoder_app import EncoderAppConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StackInfo:
    bootstrap: str
    encoder_url: str
    worker_metrics_url: str
    api_url: str
    seconds: float


def local_kafka(settings: Settings) -> LocalKafka:
    return LocalKafka(
        settings.kafka_home,
        port=settings.kafka_port,
        controller_port=settings.kafka_controller_port,
        num_partitions=settings.partitions,
    )


def encoder_config(settings: Settings) -> EncoderAppConfig:
    from serving.encoder_app import EncoderAppConfig

    return EncoderAppConfig(
        model_path=settings.encoder_model_path,
        device=settings.encoder_device,
        num_replicas=settings.encoder_replicas,
        num_gpus=1.0 if settings.encoder_device.startswith("cuda") else 0.0,
        max_batch_size=settings.encoder_max_batch_size,
        encode_batch_size=settings.encoder_pass_size,
        # Ray pins a replica to its logical CPUs (1 thread); on a CPU-only host the encoder
        # is the heavy part, so by default its replicas share all cores.
        torch_threads=settings.encoder_torch_threads
        or max(1, (os.cpu_count() or 1) // settings.encoder_replicas),
    )


def _kafka_up(settings: Settings) -> None:
    if settings.kafka_bootstrap is None:
        log.info("starting the local Kafka broker on port %d", settings.kafka_port)
        local_kafka(settings).start()
    else:
        log.info("using the Kafka at %s (KAFKA_BOOTSTRAP)", settings.kafka_bootstrap)
    asyncio.run(ensure_topics(settings))


def ray_head(settings: Settings) -> RayHead:
    """The Ray head the settings name (``SCENEREC_RAY_PORT``, ``SCENEREC_RAY_TEMP_DIR``)."""
    from deploy.ray_serve import RayHead

    return RayHead.of(settings)


def up(settings: Settings, worker: bool = True) -> StackInfo:
    started = time.monotonic()
    settings.var_dir.mkdir(parents=True, exist_ok=True)
    # The broker (~10 s) starts in a thread while Ray Serve (~25 s) starts here: Ray wants
    # the main thread, and neither needs the other.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-up") as pool:
        kafka_ready = pool.submit(_kafka_up, settings)
        if settings.encoder_url is None:
            from deploy.ray_serve import start_serve  # Ray is heavy: import only when needed

            log.info("starting Ray Serve with the encoder on port %d", settings.serve_port)
            start_serve(
                encoder_config(settings),
                http_port=settings.serve_port,
                api_overrides=api_overrides(settings),
                metrics_port=settings.ray_metrics_port,
                head=ray_head(settings),
            )
        else:
            log.info("using the encoder at %s", settings.encoder_url)
        kafka_ready.result()
    if worker:
        start_worker(settings.var_dir, settings.worker_web_port)
    return StackInfo(
        bootstrap=settings.bootstrap,
        encoder_url=settings.encoder_base_url,
        worker_metrics_url=f"http://127.0.0.1:{settings.worker_web_port}/metrics",
        api_url=f"http://127.0.0.1:{settings.serve_port}/",
        seconds=time.monotonic() - started,
    )


def down(settings: Settings) -> None:
    stop_worker(settings.var_dir)
    if settings.encoder_url is None:
        from deploy.ray_serve import stop_serve

        stop_serve(ray_head(settings))
    if settings.kafka_bootstrap is None:
        local_kafka(settings).stop()
    log.info("stack stopped")

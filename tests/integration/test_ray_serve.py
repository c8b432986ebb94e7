"""End to end: a real local Ray head + Serve app, called over HTTP by EncoderClient."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from deploy.ports import free_port
from deploy.ray_serve import RayHead, start_serve, stop_serve
from embeddings.encoder import SentenceEncoder
from serving.client import EncoderClient, EncoderError
from serving.encoder_app import EncoderAppConfig

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

TOPICS = ["space opera", "cooking show", "football match", "jazz concert", "crime thriller"]
TEXTS = [f"{TOPICS[i % 5]} number {i}: " + "very " * (i % 9) + "good" for i in range(50)]


@pytest.fixture(scope="module")
def encoder_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # A head of this module's own, so no other head on the machine is reused or stopped.
    head = RayHead(free_port(), Path(f"/tmp/scenerec-ray-{uuid.uuid4().hex[:8]}"))
    try:
        yield start_serve(
            EncoderAppConfig(max_batch_size=16, batch_wait_timeout_s=0.01, torch_threads=2),
            http_port=free_port(),
            head=head,
        )
    finally:
        stop_serve(head)


async def test_concurrent_requests_match_bare_model(encoder_url: str) -> None:
    # Several list requests plus single-text requests in flight at once.
    chunks = [TEXTS[i : i + 7] for i in range(0, 40, 7)] + [[t] for t in TEXTS[42:]]
    async with EncoderClient(encoder_url) as client:
        assert await client.health()
        parts = await asyncio.gather(*(client.encode(c) for c in chunks))
        whole = await client.encode(TEXTS)
    served = np.vstack(parts)
    expected = SentenceEncoder().encode(TEXTS)
    assert whole.shape == (50, 384)
    np.testing.assert_allclose(whole, expected, atol=1e-5)
    index = {t: i for i, t in enumerate(TEXTS)}
    np.testing.assert_allclose(served, expected[[index[t] for c in chunks for t in c]], atol=1e-5)


async def test_bad_input_is_a_client_error(encoder_url: str) -> None:
    async with EncoderClient(encoder_url, retries=0) as client:
        with pytest.raises(EncoderError, match="HTTP 400"):
            await client.encode(["x" * 10_001])

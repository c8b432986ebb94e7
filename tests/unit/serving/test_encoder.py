"""SentenceEncoder, the Encoder Serve deployment (local testing mode) and EncoderClient."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from aiohttp import web
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request

from deploy.ports import free_port
from embeddings.encoder import EncoderLoadError, SentenceEncoder, default_model_path
from serving.client import EncoderClient, EncoderError, EncoderUnavailable
from serving.encoder_app import (
    MAX_TEXT_CHARS,
    MAX_TEXTS_PER_REQUEST,
    EncoderAppConfig,
    InvalidInput,
    build_app,
    validate_texts,
    vectors_to_b64,
)

TEXTS = [
    "a thrilling space adventure",
    "science fiction movie in outer space",
    "a recipe for lemon cake",
    "romantic comedy set in Paris",
    "documentary about deep sea creatures",
    "how to bake sourdough bread at home",
    "",  # empty text is valid input
    "word " * 400,  # longer than max_length tokens: truncated, not rejected
]


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder()


# --------------------------------------------------------------------------- bare model


def test_default_model_path_is_the_bundled_checkpoint() -> None:
    path = default_model_path()
    assert (path / "config.json").is_file()
    assert (path / "model.safetensors").is_file()


def test_vectors_are_unit_norm_float32(encoder: SentenceEncoder) -> None:
    vectors = encoder.encode(TEXTS)
    assert encoder.dim == 384
    assert vectors.shape == (len(TEXTS), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_similar_sentences_score_higher(encoder: SentenceEncoder) -> None:
    space, scifi, cake = encoder.encode(TEXTS[:3])
    assert float(space @ scifi) > float(space @ cake) + 0.2
    assert float(space @ scifi) > float(scifi @ cake) + 0.2


def test_deterministic_and_independent_of_batching(encoder: SentenceEncoder) -> None:
    first = encoder.encode(TEXTS, batch_size=64)
    np.testing.assert_array_equal(first, encoder.encode(TEXTS, batch_size=64))
    # Different batch composition changes padding only; pooling masks it out.
    np.testing.assert_allclose(first, encoder.encode(TEXTS, batch_size=3), atol=1e-5)
    one_by_one = np.vstack([encoder.encode([t]) for t in TEXTS])
    np.testing.assert_allclose(first, one_by_one, atol=1e-5)


def test_empty_and_bad_arguments(encoder: SentenceEncoder) -> None:
    assert encoder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError):
        encoder.encode("not a list")
    with pytest.raises(ValueError):
        encoder.encode(["x"], batch_size=0)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(EncoderLoadError, match=r"no config\.json"):
        SentenceEncoder(tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(EncoderLoadError, match="CUDA is not available"):
            SentenceEncoder(device="cuda")


# --------------------------------------------------------------------------- Serve app


def test_config_ties_gpus_to_device() -> None:
    assert EncoderAppConfig.for_device("cuda").num_gpus == 1.0
    assert EncoderAppConfig.for_device("cpu").num_gpus == 0.0
    with pytest.raises(ValueError, match="num_gpus"):
        EncoderAppConfig(device="cuda", num_gpus=0)


def test_forward_pass_size_by_device_unless_set() -> None:
    assert EncoderAppConfig().forward_batch == 16
    assert EncoderAppConfig.for_device("cuda").forward_batch == 64
    assert EncoderAppConfig(encode_batch_size=32).forward_batch == 32
    with pytest.raises(ValueError, match="encode_batch_size"):
        EncoderAppConfig(encode_batch_size=-1)


def test_replica_takes_its_pass_size_from_the_config_rule() -> None:
    from serving.encoder_app import EncoderReplica

    assert EncoderReplica()._encode_batch_size == 16  # 0 by default: by device (CPU)
    assert EncoderReplica(encode_batch_size=8)._encode_batch_size == 8


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([], "JSON object"),
        ({"text": ["a"]}, "JSON object"),
        ({"texts": "a"}, "list of strings"),
        ({"texts": ["a", 3]}, "texts\\[1\\] is int"),
        ({"texts": ["a"] * (MAX_TEXTS_PER_REQUEST + 1)}, "at most"),
        ({"texts": ["a" * (MAX_TEXT_CHARS + 1)]}, "chars"),
    ],
)
def test_validate_texts_rejects(payload: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        validate_texts(payload)


@pytest.fixture(scope="module")
def handle() -> Iterator[DeploymentHandle[Any]]:
    with pytest.MonkeyPatch.context() as mp:
        # Ray 2.60 bug: @serve.batch's queue calls serve.get_replica_context() to log a
        # sizing warning, and local testing mode never sets a replica context, so the
        # first batched call raises RayServeException. Skip only that warning.
        mp.setattr(
            "ray.serve.batching._BatchQueue._warn_if_max_batch_size_exceeds_max_ongoing_requests",
            lambda self: None,
            raising=False,
        )
        # Local testing mode runs the replica in this process (no Ray cluster) and there is
        # nothing to shut down afterwards: serve.shutdown() would start a real Ray instance.
        yield serve.run(
            build_app(EncoderAppConfig(max_batch_size=8, batch_wait_timeout_s=0.05)),
            name="encoder-unit",
            _local_testing_mode=True,
        )


def _http_request(body: bytes, method: str = "POST") -> Request:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": method, "path": "/", "headers": [], "query_string": b""}
    return Request(scope, receive)


async def test_serve_batches_match_bare_model(
    handle: DeploymentHandle[Any], encoder: SentenceEncoder
) -> None:
    requests = [TEXTS[i : i + 3] for i in range(len(TEXTS))] + [[t] for t in TEXTS] + [[]]
    # Sent concurrently so @serve.batch groups several requests into one encode call.
    responses = [handle.embed.remote(r) for r in requests]
    expected = encoder.encode(TEXTS)
    index = {t: i for i, t in enumerate(TEXTS)}
    for texts, response in zip(requests, responses, strict=True):
        vectors = await response
        assert vectors.shape == (len(texts), 384)
        np.testing.assert_allclose(vectors, expected[[index[t] for t in texts]], atol=1e-5)


async def test_serve_http_contract(handle: DeploymentHandle[Any], encoder: SentenceEncoder) -> None:
    resp = await handle.remote(_http_request(json.dumps({"texts": TEXTS[:4]}).encode()))
    assert resp.status_code == 200
    body = json.loads(resp.body)
    assert (body["dim"], body["n"]) == (384, 4)
    vectors = np.frombuffer(base64.b64decode(body["vectors_b64"]), dtype="<f4").reshape(4, 384)
    np.testing.assert_allclose(vectors, encoder.encode(TEXTS[:4]), atol=1e-5)

    health = await handle.remote(_http_request(b"", method="GET"))
    assert health.status_code == 200 and json.loads(health.body)["dim"] == 384


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"texts": "one string"}',
        b'{"texts": [1, 2]}',
        b'{"nope": []}',
        json.dumps({"texts": ["x"] * (MAX_TEXTS_PER_REQUEST + 1)}).encode(),
        json.dumps({"texts": ["x" * (MAX_TEXT_CHARS + 1)]}).encode(),
    ],
)
async def test_serve_rejects_bad_input_with_400(handle: DeploymentHandle[Any], body: bytes) -> None:
    resp = await handle.remote(_http_request(body))
    assert resp.status_code == 400
    assert "error" in json.loads(resp.body)


async def test_serve_handle_rejects_bad_input(handle: DeploymentHandle[Any]) -> None:
    with pytest.raises(InvalidInput):
        await handle.embed.remote(["ok", 7])


# --------------------------------------------------------------------------- client


class _FakeEncoder:
    """aiohttp server speaking the encoder contract; fails the first `failures` calls."""

    def __init__(self, failures: int = 0, status: int = 503) -> None:
        self.failures, self.status, self.calls = failures, status, 0
        self.sizes: list[int] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        if self.calls <= self.failures:
            return web.json_response({"error": "busy"}, status=self.status)
        texts = (await request.json())["texts"]
        self.sizes.append(len(texts))
        vectors = np.array([[len(t), i, 0, 1] for i, t in enumerate(texts)], dtype=np.float32)
        return web.json_response(
            {"dim": 4, "n": len(texts), "vectors_b64": vectors_to_b64(vectors)}
        )


@pytest.fixture
async def fake_server() -> AsyncIterator[tuple[_FakeEncoder, str, web.AppRunner]]:
    fake = _FakeEncoder()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/encoder", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield fake, f"http://127.0.0.1:{port}/encoder", runner
    finally:
        await runner.cleanup()


async def test_client_decodes_and_splits_large_lists(
    fake_server: tuple[_FakeEncoder, str, web.AppRunner],
) -> None:
    fake, url, _ = fake_server
    texts = [f"t{i}" for i in range(2500)]
    async with EncoderClient(url) as client:
        vectors = await client.encode(texts)
        empty = await client.encode([])
    assert sorted(fake.sizes) == [452, 1024, 1024]
    assert vectors.shape == (2500, 4) and vectors.flags.writeable
    assert vectors[1500, 0] == len("t1500")
    assert empty.shape == (0, 4)


async def test_client_retries_5xx_then_succeeds(
    fake_server: tuple[_FakeEncoder, str, web.AppRunner],
) -> None:
    fake, url, _ = fake_server
    fake.failures = 2
    async with EncoderClient(url, retries=3, backoff_s=0.01) as client:
        assert (await client.encode(["abc"])).shape == (1, 4)
    assert fake.calls == 3


async def test_client_gives_up_after_retries(
    fake_server: tuple[_FakeEncoder, str, web.AppRunner],
) -> None:
    fake, url, _ = fake_server
    fake.failures = 100
    async with EncoderClient(url, retries=2, backoff_s=0.01) as client:
        with pytest.raises(EncoderUnavailable, match="3 attempts"):
            await client.encode(["abc"])
    assert fake.calls == 3


async def test_client_does_not_retry_4xx(
    fake_server: tuple[_FakeEncoder, str, web.AppRunner],
) -> None:
    fake, url, _ = fake_server
    fake.failures, fake.status = 100, 400
    async with EncoderClient(url, retries=3, backoff_s=0.01) as client:
        with pytest.raises(EncoderError) as info:
            await client.encode(["abc"])
    assert not isinstance(info.value, EncoderUnavailable)
    assert fake.calls == 1


async def test_client_unreachable_server() -> None:
    client = EncoderClient(f"http://127.0.0.1:{free_port()}/encoder", retries=1, backoff_s=0.01)
    try:
        with pytest.raises(EncoderUnavailable):
            await client.encode(["abc"])
        assert await client.health() is False
    finally:
        await client.close()

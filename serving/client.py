"""Async HTTP client of the Ray Serve encoder (see ``serving/encoder_app.py`` for the contract).

Stream workers use this over HTTP, so it must not import Ray.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Sequence
from types import TracebackType

import aiohttp
import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

# Must match serving.encoder_app.MAX_TEXTS_PER_REQUEST (not imported: that module needs Ray).
MAX_TEXTS_PER_REQUEST = 1024
DEFAULT_DIM = 384


class EncoderError(RuntimeError):
    """The encoder service answered with something unusable (e.g. HTTP 4xx, bad payload)."""


class EncoderUnavailable(EncoderError):
    """The encoder service could not be reached or kept failing after all retries."""


class _Retryable(Exception):
    """Internal: this attempt failed in a way worth retrying."""


class EncoderClient:
    """Encode texts by POSTing ``{"texts": [...]}`` to the Serve encoder route."""

    def __init__(
        self,
        base_url: str,
        timeout_s: float = 30.0,
        retries: int = 5,
        backoff_s: float = 0.2,
        dim: int = DEFAULT_DIM,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        # Only used to shape the answer for an empty input; updated from every response.
        self.dim = dim
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        # Created lazily: an aiohttp session must be created inside a running event loop.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                # Many concurrent single-text callers are the normal case; let @serve.batch
                # see them concurrently instead of queueing in the client.
                connector=aiohttp.TCPConnector(limit=256),
            )
        return self._session

    async def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Return ``(len(texts), dim)`` float32 unit vectors, in input order."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of strings, not a single string")
        texts = list(texts)
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        chunks = [
            texts[i : i + MAX_TEXTS_PER_REQUEST]
            for i in range(0, len(texts), MAX_TEXTS_PER_REQUEST)
        ]
        parts = await asyncio.gather(*(self._post_with_retries(c) for c in chunks))
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    async def health(self) -> bool:
        """True when the encoder route answers its GET health check."""
        try:
            async with self._get_session().get(self.base_url) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _post_with_retries(self, texts: list[str]) -> npt.NDArray[np.float32]:
        last: BaseException | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                # Exponential backoff: 0.2, 0.4, 0.8, ... seconds by default.
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                return await self._post(texts)
            except _Retryable as exc:
                last = exc.__cause__ or exc
                logger.warning(
                    "encoder request failed (attempt %d/%d): %s",
                    attempt + 1,
                    self.retries + 1,
                    last,
                )
        raise EncoderUnavailable(
            f"encoder at {self.base_url} unavailable after {self.retries + 1} attempts: {last}"
        ) from last

    async def _post(self, texts: list[str]) -> npt.NDArray[np.float32]:
        try:
            async with self._get_session().post(self.base_url, json={"texts": texts}) as resp:
                if resp.status >= 500:
                    raise _Retryable(f"HTTP {resp.status}: {(await resp.text())[:200]}")
                if resp.status != 200:
                    raise EncoderError(f"HTTP {resp.status}: {(await resp.text())[:500]}")
                body = await resp.json()
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            raise _Retryable(str(exc) or type(exc).__name__) from exc
        except (aiohttp.ContentTypeError, ValueError) as exc:
            raise EncoderError(f"malformed encoder response: {exc}") from exc
        return self._decode(body, len(texts))

    def _decode(self, body: object, n_expected: int) -> npt.NDArray[np.float32]:
        if not isinstance(body, dict):
            raise EncoderError("malformed encoder response: not a JSON object")
        try:
            dim, n = int(body["dim"]), int(body["n"])
            raw = base64.b64decode(body["vectors_b64"], validate=True)
            # astype copies: frombuffer's array is read-only and tied to the response bytes.
            vectors = np.frombuffer(raw, dtype="<f4").reshape(n, dim).astype(np.float32)
        except (KeyError, TypeError, ValueError) as exc:
            raise EncoderError(f"malformed encoder response: {exc}") from exc
        if n != n_expected:
            raise EncoderError(f"encoder returned {n} vectors for {n_expected} texts")
        self.dim = dim
        return vectors

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> EncoderClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

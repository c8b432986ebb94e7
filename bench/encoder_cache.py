"""Encoded catalog texts cached between benchmark runs, served to a worker by a proxy.

Encoding 100,000 item texts with MiniLM on 2 CPU cores takes many minutes, and the
throughput measured afterwards does not depend on it. So the first run encodes the
synthetic catalog through the real Ray Serve encoder (the same HTTP route and lists of
500 texts the worker uses), measures how long that took, and keeps the vectors in
``results/cache/``; later runs start the worker with ``SCENEREC_ENCODER_URL`` pointing at
:class:`CachingEncoderProxy`, which answers the encoder's HTTP contract from the cache and
forwards any text it does not hold (the worker's start-up probe, profiles) to Ray Serve.
The worker's own indexing work (parse, KG embedding, fusion, index, vector store) is
unchanged and is what the bench times as ``index_seconds``.

A cache file is keyed by the sha256 of all the texts and the encoder's answer to ``GET``
(dim, device), so a change of templates or model makes a new one.

A catalog of 1,000,000 items cannot be encoded by the CPU encoder in a bench run (at the
measured 87 texts/s, over three hours). :class:`SyntheticVectors` stands in for it there,
labelled ``synthetic vectors`` wherever it is reported: the proxy answers each of the
catalog's texts with a deterministic vector made from the text (its words, so that items
sharing words are near each other as with real embeddings, plus a term seeded by the
whole text), and forwards every other text (profiles, comments) to Ray Serve.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from aiohttp import web
from tqdm import tqdm

from bench.stack import http_get
from deploy.ports import free_port
from embeddings.fusion import item_text
from serving.client import EncoderClient

log = logging.getLogger("bench.encoder_cache")

#: Texts per request while filling the cache: what the worker's catalog agent sends.
FILL_BATCH = 500


def catalog_texts(items: Sequence[dict[str, Any]]) -> list[str]:
    """The texts the worker encodes for these catalog items (see Pipeline._index_catalog)."""
    return [item_text(i["title"], i.get("description", ""), i["scenes"]) for i in items]


def _key(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def cache_path(cache_dir: Path, texts: Sequence[str], encoder_url: str) -> Path:
    status, body = http_get(encoder_url, timeout_s=30)
    ident = body.decode(errors="replace") if status == 200 else "unknown-encoder"
    h = hashlib.sha256(ident.encode())
    for t in texts:
        h.update(t.encode())
        h.update(b"\0")
    return cache_dir / f"encoded-{len(texts)}-{h.hexdigest()[:16]}.npz"


def load(path: Path) -> tuple[dict[str, npt.NDArray[np.float32]], dict[str, Any]] | None:
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        return None
    with np.load(path) as npz:
        keys = [str(k) for k in npz["keys"]]
        vectors = npz["vectors"].astype(np.float32)
    return dict(zip(keys, vectors, strict=True)), json.loads(meta_path.read_text())


async def fill(
    path: Path, texts: Sequence[str], encoder_url: str, in_flight: int = 2
) -> dict[str, Any]:
    """Encode ``texts`` through the Serve encoder (lists of 500) and save them at ``path``."""
    chunks = [list(texts[i : i + FILL_BATCH]) for i in range(0, len(texts), FILL_BATCH)]
    out: list[npt.NDArray[np.float32] | None] = [None] * len(chunks)
    sem = asyncio.Semaphore(in_flight)
    bar = tqdm(total=len(texts), desc="encoding the synthetic catalog via Ray Serve", unit="text")
    t0 = time.monotonic()
    async with EncoderClient(encoder_url, timeout_s=600) as client:

        async def one(i: int) -> None:
            async with sem:
                out[i] = await client.encode(chunks[i])
                bar.update(len(chunks[i]))

        await asyncio.gather(*(one(i) for i in range(len(chunks))))
    seconds = time.monotonic() - t0
    bar.close()
    vectors = np.concatenate([v for v in out if v is not None])
    meta = {
        "texts": len(texts),
        "encode_seconds": round(seconds, 1),
        "texts_per_s": round(len(texts) / seconds, 1),
        "encoder": encoder_url,
        "requests": f"lists of {FILL_BATCH} texts, {in_flight} in flight",
        "encoded_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, keys=np.array([_key(t) for t in texts]), vectors=vectors)
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


#: A text's vector, or None for a text to forward to the real encoder.
VectorLookup = Callable[[str], npt.NDArray[np.float32] | None]


class SyntheticVectors:
    """Deterministic unit vectors for a known set of texts (a catalog), None for others.

    A text's vector is the normalised sum of one seeded Gaussian vector per word (words are
    few: cached) and one seeded by the whole text at half the weight of a word, so the same
    text always gets the same vector and texts that share words are similar.
    """

    def __init__(self, texts: Sequence[str], dim: int = 384) -> None:
        self.dim = dim
        self._known = {_digest(t) for t in texts}
        self._words: dict[str, npt.NDArray[np.float64]] = {}

    def __len__(self) -> int:
        return len(self._known)

    def __call__(self, text: str) -> npt.NDArray[np.float32] | None:
        if _digest(text) not in self._known:
            return None
        return self.vector(text)

    def vector(self, text: str) -> npt.NDArray[np.float32]:
        acc = 0.5 * _seeded_normal(text, self.dim)
        for word in _WORD.findall(text.lower()):
            if word.isdigit():  # years and item numbers: many, so not cached
                acc += _seeded_normal(word, self.dim)
                continue
            vec = self._words.get(word)
            if vec is None:
                vec = self._words[word] = _seeded_normal(word, self.dim)
            acc += vec
        return (acc / np.linalg.norm(acc)).astype(np.float32)


_WORD = re.compile(r"[a-z0-9]+")


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=8).digest()


def _seeded_normal(text: str, dim: int) -> npt.NDArray[np.float64]:
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng(seed).standard_normal(dim)


class CachingEncoderProxy:
    """The encoder's HTTP contract on a free local port, from a text -> vector cache (or a
    :data:`VectorLookup`, e.g. :class:`SyntheticVectors`).

    Runs its own event loop in a thread, so it serves the worker while the bench's phases
    start and stop their own loops.
    """

    def __init__(
        self, cache: Mapping[str, npt.NDArray[np.float32]] | VectorLookup, upstream: str
    ) -> None:
        if callable(cache):
            self._lookup: VectorLookup = cache
        else:
            table = cache
            self._lookup = lambda text: table.get(_key(text))
        self._upstream = upstream
        self.port = free_port()
        self.hits = 0
        self.misses = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._client = EncoderClient(upstream, timeout_s=120)
        self._started = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/encoder"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="encoder-proxy", daemon=True)
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("the caching encoder proxy did not start")

    def stop(self) -> None:
        if self._loop is not None:
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
            fut.result(timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        loop.run_until_complete(self._serve())
        self._started.set()
        loop.run_forever()
        loop.close()

    async def _serve(self) -> None:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_get("/encoder", self._health)
        app.router.add_post("/encoder", self._encode)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self._client.close()

    async def _health(self, request: web.Request) -> web.Response:
        status, body = await asyncio.to_thread(http_get, self._upstream)
        return web.Response(status=status or 502, body=body, content_type="application/json")

    async def _encode(self, request: web.Request) -> web.Response:
        texts: list[str] = (await request.json())["texts"]
        if not texts:
            return web.json_response({"dim": 384, "n": 0, "vectors_b64": ""})
        rows: list[npt.NDArray[np.float32] | None] = [self._lookup(t) for t in texts]
        missing = [i for i, r in enumerate(rows) if r is None]
        if missing:
            fresh = await self._client.encode([texts[i] for i in missing])
            for i, vec in zip(missing, fresh, strict=True):
                rows[i] = vec
        self.misses += len(missing)
        self.hits += len(texts) - len(missing)
        mat = np.stack([r for r in rows if r is not None]).astype("<f4")
        return web.json_response(
            {
                "dim": int(mat.shape[1]),
                "n": int(mat.shape[0]),
                "vectors_b64": base64.b64encode(mat.tobytes()).decode("ascii"),
            }
        )

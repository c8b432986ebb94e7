"""Item and profile vectors from the bundled sentence encoder, cached on disk.

Encoding 1,682 item texts and 943 profiles takes about half a minute on two cores, while
everything else in a harness run is cheaper per pass; the vectors only change when the
texts or the model do, so they are cached under ``results/cache/`` keyed by a hash of
both. Item vectors are then fused with the knowledge graph exactly as the streaming
worker does (``HashedEntityEmbedding`` + ``fuse_item``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from embeddings.fusion import fuse_item
from embeddings.kg import HashedEntityEmbedding
from embeddings.vectors import normalize
from evaluation.data import Dataset, Event, Item

logger = logging.getLogger(__name__)

Matrix = npt.NDArray[np.float32]
Encode = Callable[[Sequence[str]], Matrix]
DEFAULT_CACHE_DIR = Path("results/cache")
#: Width of the bundled encoder's vectors (all-MiniLM-L6-v2).
ENCODER_DIM = 384


def bundled_encoder(threads: int | None = None) -> tuple[str, Encode]:
    """``(model identity for cache keys, encode function)`` of the bundled MiniLM encoder.

    Imported lazily: a fully cached run never loads torch's transformer stack.
    """
    from embeddings.encoder import SentenceEncoder

    encoder = SentenceEncoder(torch_threads=threads)
    identity = f"{encoder.model_path.name}:{encoder.max_length}"
    return identity, lambda texts: encoder.encode(list(texts))


class VectorCache:
    """Text -> vector matrices, one ``.npy`` per (name, texts, model) in ``cache_dir``."""

    def __init__(
        self,
        cache_dir: Path = DEFAULT_CACHE_DIR,
        encoder: Callable[[], tuple[str, Encode]] = bundled_encoder,
        model_identity: str = "all-MiniLM-L6-v2",
    ) -> None:
        self.cache_dir = cache_dir
        self._make_encoder = encoder
        self._encode: Encode | None = None
        # The key must not require loading the model, so it names the bundled model; a
        # different encoder factory should pass its own identity.
        self.model_identity = model_identity

    def encode(self, name: str, texts: Sequence[str]) -> Matrix:
        digest = hashlib.sha256(self.model_identity.encode())
        for text in texts:
            digest.update(text.encode("utf-8", errors="replace") + b"\0")
        path = self.cache_dir / f"{name}-{digest.hexdigest()[:16]}.npy"
        if path.is_file():
            cached: Matrix = np.load(path)
            if cached.shape[0] == len(texts):
                return cached
        if self._encode is None:
            _, self._encode = self._make_encoder()
        logger.info("encoding %d texts for %s (cached at %s)", len(texts), name, path)
        vectors = np.asarray(self._encode(texts), dtype=np.float32)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, vectors)
        tmp.replace(path)  # atomic: a killed run never leaves a truncated cache file
        return vectors


def text_vectors(dataset: Dataset, cache: VectorCache) -> Matrix:
    """The encoder's vector of each item's text; zeros for an item without text."""
    rows = [r for r, it in enumerate(dataset.items) if it.text]
    if len(rows) == len(dataset.items):
        return cache.encode(f"{dataset.name}-items", [it.text for it in dataset.items])
    out = np.zeros((len(dataset.items), ENCODER_DIM), dtype=np.float32)
    if rows:
        out[rows] = cache.encode(f"{dataset.name}-items", [dataset.items[r].text for r in rows])
    return out


def item_vectors(
    dataset: Dataset, cache: VectorCache, kg_seed: int = 2024, text: bool = True
) -> Matrix:
    """Fused text + KG vector per catalog row (text only for items without relations, KG
    only for items without text; ``text=False``: the KG part alone, ids-only items)."""
    if text:
        text_part = text_vectors(dataset, cache)
    else:
        text_part = np.zeros((len(dataset.items), ENCODER_DIM), dtype=np.float32)
    kg = HashedEntityEmbedding(text_part.shape[1], seed=kg_seed)
    fused = np.empty_like(text_part)
    for row, item in enumerate(dataset.items):
        fused[row] = fuse_item(text_part[row], kg.embed(item.relations))
    return fused


def commented_items(
    items: Sequence[Item], vectors: Matrix, train: Sequence[Event], comments: Mapping[str, Matrix]
) -> Matrix:
    """An item with no vector of its own (no text, no facts) that was commented on in
    ``train`` gets the mean direction of those comments: what a review-only data set says
    about an item, without looking past train."""
    rows = {it.id: r for r, it in enumerate(items)}
    sums: dict[int, Matrix] = {}
    for e in train:
        vec = comments.get(e.text) if e.text else None
        row = rows.get(e.item)
        if vec is None or row is None or np.any(vectors[row]):
            continue
        sums[row] = sums[row] + vec if row in sums else vec.astype(np.float32).copy()
    if not sums:
        return vectors
    out = vectors.copy()
    for row, total in sums.items():
        out[row] = normalize(total)
    return out


def comment_vectors(dataset: Dataset, cache: VectorCache) -> dict[str, Matrix]:
    """The encoder's vector of every distinct comment text of the data set's events."""
    texts = sorted({e.text for e in dataset.events if e.text})
    if not texts:
        return {}
    mat = cache.encode(f"{dataset.name}-comments", texts)
    return {t: mat[k] for k, t in enumerate(texts)}


def profile_vectors(dataset: Dataset, cache: VectorCache) -> dict[str, npt.NDArray[np.float32]]:
    users = sorted(dataset.profiles)
    if not users:
        return {}
    mat = cache.encode(f"{dataset.name}-profiles", [dataset.profiles[u].text for u in users])
    return {u: mat[k] for k, u in enumerate(users)}

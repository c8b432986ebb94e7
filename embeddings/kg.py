"""Knowledge-graph side information for items, as vectors.

This is the simplest embedding of a knowledge graph that is honest: every entity
(``relation:target``, e.g. ``film.film.actor:m.0bln8``) gets a fixed pseudo-random
direction derived from its name, and an item's KG vector is the normalized mean of its
entities' directions. Two films that share actors, directors or writers therefore point
the same way, which is exactly the signal the graph adds to text. A trained TransE/RotatE
embedding can replace :class:`HashedEntityEmbedding` behind the same ``embed`` call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from functools import lru_cache

import numpy as np

from embeddings.vectors import Vector, normalize


class HashedEntityEmbedding:
    def __init__(self, dim: int, seed: int = 2024) -> None:
        self.dim = dim
        self._seed = seed
        self._entity = lru_cache(maxsize=200_000)(self._entity_uncached)

    def _entity_uncached(self, name: str) -> Vector:
        digest = hashlib.blake2b(f"{self._seed}:{name}".encode(), digest_size=8).digest()
        rng = np.random.default_rng(int.from_bytes(digest, "little"))
        return normalize(rng.standard_normal(self.dim).astype(np.float32))

    def embed(self, relations: Iterable[tuple[str, str]]) -> Vector | None:
        """Mean direction of an item's ``(relation, target)`` pairs; None if it has none."""
        vecs = [self._entity(f"{rel}:{target}") for rel, target in relations]
        if not vecs:
            return None
        return normalize(np.mean(vecs, axis=0).astype(np.float32))

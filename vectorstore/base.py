"""The vector store interface shared by every backend.

Two collections live in a store:

* ``items``: one unnamed dense vector per item plus the payload
  ``{item_id, scenes, title, popularity}``; a keyword payload index on ``scenes``.
* ``users``: named dense vectors, ``"global"`` plus one per scene, and the payload ``{user_id}``.

Applications use string ids. Qdrant only accepts unsigned integers or UUIDs as point ids, so every
string id is mapped to a deterministic UUIDv5 (:func:`point_id`, one namespace constant) and the
original id is kept in the payload.

Scores are dot products: vectors are not necessarily normalised, and the recommender computes
``r = (u ⊙ s) · i`` by passing ``u ⊙ s`` as the query.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType, TracebackType
from typing import Any, Final, Literal, Self

import numpy as np
import numpy.typing as npt

__all__ = [
    "GLOBAL_VECTOR",
    "ID_NAMESPACE",
    "ITEMS",
    "ITEM_VECTOR",
    "USERS",
    "CollectionName",
    "CollectionNotFoundError",
    "DimensionMismatchError",
    "Hit",
    "ItemPoint",
    "SchemaError",
    "StoreClosedError",
    "StoreLockedError",
    "UserPoint",
    "Vector",
    "VectorStore",
    "VectorStoreError",
    "as_vector",
    "check_collection",
    "check_vector_dim",
    "point_id",
    "validate_scenes",
]

Vector = npt.NDArray[np.float32]
CollectionName = Literal["items", "users"]

ITEMS: Final = "items"
USERS: Final = "users"
GLOBAL_VECTOR: Final = "global"
#: The name both backends give the items collection's single unnamed vector.
ITEM_VECTOR: Final = ""

#: Namespace of the UUIDv5 point ids. Changing it orphans every stored point: never change it.
ID_NAMESPACE: Final = uuid.UUID("6f0c7a52-3d0b-5c51-9b7e-2f1a4c8e9d30")


class VectorStoreError(Exception):
    """Base class of every error raised by a vector store."""


class CollectionNotFoundError(VectorStoreError):
    """A collection is used before :meth:`VectorStore.ensure_collections` created it."""


class DimensionMismatchError(VectorStoreError):
    """A vector, or an existing collection, has another dimension than expected."""


class SchemaError(VectorStoreError):
    """A point uses a named vector that the collection does not have (an unknown scene)."""


class StoreLockedError(VectorStoreError):
    """The on-disk store is already open in another process (or another store object)."""


class StoreClosedError(VectorStoreError):
    """The store was used after :meth:`VectorStore.close`."""


def point_id(key: str) -> str:
    """The deterministic UUIDv5 point id of an application string id."""
    return str(uuid.uuid5(ID_NAMESPACE, key))


def as_vector(value: object, what: str) -> Vector:
    """``value`` as a 1-d float32 array; ``ValueError`` naming ``what`` if it is not one."""
    arr = np.asarray(value, dtype=np.float32)
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ValueError(f"{what} must be a non-empty 1-d vector, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contains NaN or infinite values")
    return arr


def validate_scenes(scenes: Sequence[str]) -> tuple[str, ...]:
    """Check scene names used as named vectors: non-empty, unique, not ``"global"``."""
    if isinstance(scenes, str):
        raise ValueError("scenes must be a sequence of scene names, not a single string")
    out = tuple(scenes)
    for scene in out:
        if not isinstance(scene, str) or not scene:
            raise ValueError(f"scene names must be non-empty strings, got {scene!r}")
        if scene == GLOBAL_VECTOR:
            raise ValueError(f"{GLOBAL_VECTOR!r} is reserved for the global user vector")
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate scene names in {out!r}")
    return out


def check_vector_dim(
    vec: Vector, schema: Mapping[str, int], collection: str, vector: str, what: str
) -> None:
    """Raise unless ``schema`` (vector name -> dimension) has ``vector`` at ``vec``'s size."""
    expected = schema.get(vector)
    if expected is None:
        raise SchemaError(
            f"{what}: collection {collection!r} has no vector {vector!r}"
            f" (has {sorted(schema)}); add the scene with ensure_collections"
        )
    if vec.shape[0] != expected:
        raise DimensionMismatchError(
            f"{what} has dimension {vec.shape[0]}, collection {collection!r} expects {expected}"
        )


@dataclass(frozen=True, eq=False)
class ItemPoint:
    """An item of the catalog with its embedding.

    ``vector`` is normalised to a 1-d float32 array and ``scenes`` to a tuple. Equality compares
    every field, the vector with ``numpy.array_equal``; points are not hashable.
    """

    item_id: str
    vector: Vector
    scenes: tuple[str, ...]
    title: str
    popularity: float
    #: The item's knowledge-graph facts as ``"relation target"`` strings (for reasons).
    facts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.item_id:
            raise ValueError("item_id must be a non-empty string")
        object.__setattr__(self, "vector", as_vector(self.vector, f"vector of item {self.item_id}"))
        if isinstance(self.scenes, str):
            raise ValueError(f"scenes of item {self.item_id} must be a sequence, not a string")
        object.__setattr__(self, "scenes", tuple(self.scenes))
        object.__setattr__(self, "popularity", float(self.popularity))
        object.__setattr__(self, "facts", tuple(self.facts))

    def payload(self) -> dict[str, object]:
        """What both backends store beside the vector."""
        return {
            "item_id": self.item_id,
            "scenes": list(self.scenes),
            "title": self.title,
            "popularity": self.popularity,
            "facts": list(self.facts),
        }

    @classmethod
    def from_stored(cls, payload: Mapping[str, Any] | None, vector: Any) -> ItemPoint | None:
        """An item read back from a backend (``vector`` may be ``{"": [...]}``), else None."""
        payload = payload or {}
        if isinstance(vector, dict):
            vector = vector.get(ITEM_VECTOR)
        if vector is None or "item_id" not in payload:
            return None
        return cls(
            item_id=str(payload["item_id"]),
            vector=np.asarray(vector, dtype=np.float32),
            scenes=tuple(payload.get("scenes") or ()),
            title=str(payload.get("title", "")),
            popularity=float(payload.get("popularity", 0.0)),
            facts=tuple(payload.get("facts") or ()),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ItemPoint):
            return NotImplemented
        return (
            self.item_id == other.item_id
            and self.scenes == other.scenes
            and self.title == other.title
            and self.popularity == other.popularity
            and self.facts == other.facts
            and bool(np.array_equal(self.vector, other.vector))
        )


@dataclass(frozen=True, eq=False)
class UserPoint:
    """A user's vectors: key ``"global"`` and/or scene names; at least one.

    An upsert only writes the vectors present here: the user's other named vectors stay as they
    were (or absent, for a new user).
    """

    user_id: str
    vectors: Mapping[str, Vector]

    def __post_init__(self) -> None:
        if not self.user_id:
            raise ValueError("user_id must be a non-empty string")
        if not self.vectors:
            raise ValueError(f"user {self.user_id} must carry at least one vector")
        vectors = {
            str(name): as_vector(vec, f"vector {name!r} of user {self.user_id}")
            for name, vec in self.vectors.items()
        }
        object.__setattr__(self, "vectors", MappingProxyType(vectors))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UserPoint):
            return NotImplemented
        return (
            self.user_id == other.user_id
            and self.vectors.keys() == other.vectors.keys()
            and all(np.array_equal(v, other.vectors[k]) for k, v in self.vectors.items())
        )


@dataclass(frozen=True)
class Hit:
    """One search result; ``score`` is the dot product with the query."""

    item_id: str
    score: float
    scenes: tuple[str, ...]
    title: str

    @classmethod
    def from_stored(cls, payload: Mapping[str, Any] | None, score: float) -> Hit:
        payload = payload or {}
        return cls(
            item_id=str(payload.get("item_id", "")),
            score=float(score),
            scenes=tuple(payload.get("scenes") or ()),
            title=str(payload.get("title", "")),
        )


def check_collection(collection: str) -> None:
    if collection not in (ITEMS, USERS):
        raise ValueError(f"collection must be 'items' or 'users', got {collection!r}")


class VectorStore(ABC):
    """A store of item and user vectors. Use it as a context manager, or call :meth:`close`."""

    @abstractmethod
    def ensure_collections(self, dim: int, scenes: Sequence[str]) -> None:
        """Create ``items`` and ``users`` if absent; idempotent.

        New scenes add named vectors to an existing ``users`` collection where the backend can.
        Raises :class:`DimensionMismatchError` if an existing collection has another dimension.
        """

    @abstractmethod
    def upsert_items(self, items: Sequence[ItemPoint]) -> None:
        """Insert or replace items, in batches."""

    @abstractmethod
    def upsert_users(self, users: Sequence[UserPoint]) -> None:
        """Insert or update users; only the named vectors each user carries are written."""

    @abstractmethod
    def get_users(self, user_ids: Sequence[str]) -> dict[str, dict[str, Vector]]:
        """The named vectors of each user found; missing users are absent from the dict."""

    @abstractmethod
    def get_items(self, item_ids: Sequence[str]) -> dict[str, ItemPoint]:
        """The items found; missing items are absent from the dict."""

    @abstractmethod
    def iter_items(self, batch: int = 1000) -> Iterator[ItemPoint]:
        """Scroll through every item, ``batch`` at a time."""

    @abstractmethod
    def search_items(
        self,
        query: npt.ArrayLike,
        k: int,
        scene: str | None = None,
        exclude: Collection[str] = (),
    ) -> list[Hit]:
        """The ``k`` items of highest dot product with ``query``, best first.

        ``scene`` keeps only items whose ``scenes`` contain it; ``exclude`` drops these item ids.
        """

    def search_many(
        self, queries: Sequence[npt.ArrayLike], k: int, scenes: Sequence[str | None]
    ) -> list[list[Hit]]:
        """:meth:`search_items` for each query in its scene (None: any), best first each.

        Backends that can plan a batch of queries as one override this.
        """
        if len(queries) != len(scenes):
            raise ValueError(f"{len(queries)} queries but {len(scenes)} scenes")
        return [self.search_items(q, k, scene) for q, scene in zip(queries, scenes, strict=True)]

    @abstractmethod
    def delete_user(self, user_id: str) -> None:
        """Delete a user; a missing user is not an error."""

    @abstractmethod
    def count(self, collection: CollectionName) -> int:
        """The exact number of points in a collection."""

    @abstractmethod
    def flush(self) -> None:
        """Make every write so far durable."""

    @abstractmethod
    def close(self) -> None:
        """Flush and release every resource; idempotent."""

    def optimize(self) -> None:  # noqa: B027  # optional hook, a no-op by default
        """Build search indexes now.

        A Qdrant server optimises in the background, so this is a no-op there. Qdrant Edge has no
        background optimiser: call this after a bulk load to build the HNSW index.
        """

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

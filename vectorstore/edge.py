"""Qdrant Edge backend: Qdrant's engine in-process, one on-disk EdgeShard per collection.

Layout of a data directory::

    <data_dir>/.lock     flock held by the one store that has the directory open
    <data_dir>/items/    EdgeShard of the items collection
    <data_dir>/users/    EdgeShard of the users collection

Qdrant Edge (``qdrant-edge-py``, import name ``qdrant_edge``) is beta. What this module relies on,
learnt from the package's stubs and by trying it (version 0.9.0):

* ``EdgeShard.create(path, EdgeConfig)`` makes a shard, ``EdgeShard.load(path)`` reopens one with
  the configuration persisted in ``<shard>/edge_config.json`` (which this module also reads, to
  check dimensions: the Python API has no call that returns a shard's vector configuration).
* ``update(UpdateOperation.upsert_points(...))`` replaces every vector of a point, so partial user
  updates use ``UpdateOperation.update_vectors`` for users that already exist.
* ``UpdateOperation.create_dense_vector`` adds a named vector to an existing shard: new scenes can
  be added later.
* There is no background optimiser: segments are only indexed (HNSW) when :meth:`optimize` runs;
  until then searches are exact full scans.
* The shard holds a lock on its WAL; a second open of the same directory fails with
  ``WouldBlock``. The store takes its own ``flock`` on ``<data_dir>/.lock`` first so that the
  error is clear and names the directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import qdrant_edge as qe

from vectorstore.base import (
    GLOBAL_VECTOR,
    ITEM_VECTOR,
    ITEMS,
    USERS,
    CollectionName,
    CollectionNotFoundError,
    DimensionMismatchError,
    Hit,
    ItemPoint,
    SchemaError,
    StoreClosedError,
    StoreLockedError,
    UserPoint,
    Vector,
    VectorStore,
    VectorStoreError,
    as_vector,
    check_collection,
    check_vector_dim,
    point_id,
    validate_scenes,
)

__all__ = ["EdgeVectorStore"]

LOCK_FILE = ".lock"
_CONFIG_FILE = "edge_config.json"


@contextlib.contextmanager
def _edge_errors(what: str, path: Path) -> Iterator[None]:
    """Turn the bare ``Exception`` raised by qdrant_edge into a :class:`VectorStoreError`."""
    try:
        yield
    except VectorStoreError:
        raise
    except Exception as exc:
        msg = str(exc)
        if "WouldBlock" in msg or "Can't init WAL" in msg:
            raise StoreLockedError(
                f"Qdrant Edge shard directory {path} is already open in another process or store"
                f" ({msg})"
            ) from exc
        if "not initialized" in msg:
            raise StoreClosedError(f"Qdrant Edge shard {path} is closed") from exc
        if "dimension error" in msg.lower():
            raise DimensionMismatchError(f"{what} in {path}: {msg}") from exc
        raise VectorStoreError(f"Qdrant Edge {what} failed in {path}: {msg}") from exc


def _acquire_dir_lock(data_dir: Path) -> int:
    """Take an exclusive, non-blocking flock on ``data_dir/.lock``; return its descriptor."""
    lock_path = data_dir / LOCK_FILE
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
        finally:
            os.close(fd)
        by = f" (held by pid {holder})" if holder.isdigit() else ""
        raise StoreLockedError(
            f"Qdrant Edge data directory {data_dir} is already open in another process or"
            f" store{by}; only one may open it at a time"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _release_dir_lock(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
    os.close(fd)  # closing the last descriptor releases the flock


def _is_shard_dir(path: Path) -> bool:
    return (path / _CONFIG_FILE).is_file() or (path / "segments").is_dir()


def _shard_vectors(path: Path) -> dict[str, int]:
    """Dense vector name -> size, from the configuration the shard persisted."""
    try:
        config = json.loads((path / _CONFIG_FILE).read_text())
        vectors = config["vectors"]
        out: dict[str, int] = {}
        for name, params in vectors.items():
            distance = params.get("distance")
            if distance != "Dot":
                raise SchemaError(
                    f"vector {name!r} of shard {path} uses distance {distance}, expected Dot"
                )
            out[str(name)] = int(params["size"])
        return out
    except SchemaError:
        raise
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise VectorStoreError(
            f"cannot read the vector configuration of shard {path}: {exc}"
        ) from exc


def _to_array(value: Any) -> Vector:
    return np.asarray(value, dtype=np.float32)


class EdgeVectorStore(VectorStore):
    """A vector store on Qdrant Edge shards under ``data_dir``.

    Only one store (in one process) may have ``data_dir`` open; a second one raises
    :class:`StoreLockedError`. Call :meth:`optimize` after a bulk load to build the HNSW index:
    Qdrant Edge does not index in the background. ``hnsw_ef`` sets the HNSW search beam once
    indexed (None: Qdrant's default); higher is slower and more accurate.
    """

    def __init__(
        self, data_dir: Path, *, batch_size: int = 1000, hnsw_ef: int | None = None
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if hnsw_ef is not None and hnsw_ef <= 0:
            raise ValueError(f"hnsw_ef must be positive, got {hnsw_ef}")
        self._search_params = qe.SearchParams(hnsw_ef=hnsw_ef) if hnsw_ef is not None else None
        self._dir = Path(data_dir)
        if self._dir.exists() and not self._dir.is_dir():
            raise ValueError(f"data_dir {self._dir} exists and is not a directory")
        self._dir.mkdir(parents=True, exist_ok=True)
        self._batch = batch_size
        self._lock = threading.RLock()
        self._closed = False
        self._shards: dict[str, qe.EdgeShard] = {}
        self._vectors: dict[str, dict[str, int]] = {}
        self._lock_fd = _acquire_dir_lock(self._dir)
        try:
            for name in (ITEMS, USERS):
                path = self._dir / name
                if _is_shard_dir(path):
                    self._vectors[name] = _shard_vectors(path)
                    with _edge_errors("load", path):
                        self._shards[name] = qe.EdgeShard.load(str(path))
        except BaseException:
            with contextlib.suppress(VectorStoreError):
                self._close_all()
            raise

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"EdgeVectorStore(data_dir={str(self._dir)!r}, {state})"

    @property
    def data_dir(self) -> Path:
        return self._dir

    # -- helpers ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"{self!r} is closed")

    def _shard(self, name: str) -> qe.EdgeShard:
        self._check_open()
        shard = self._shards.get(name)
        if shard is None:
            raise CollectionNotFoundError(
                f"collection {name!r} does not exist in {self._dir}; call ensure_collections first"
            )
        return shard

    def _path(self, name: str) -> Path:
        return self._dir / name

    def _check_dim(self, vec: Vector, name: str, vector: str, what: str) -> None:
        check_vector_dim(vec, self._vectors[name], name, vector, what)

    # -- schema -----------------------------------------------------------------------------

    def ensure_collections(self, dim: int, scenes: Sequence[str]) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        scene_names = validate_scenes(scenes)
        with self._lock:
            self._check_open()
            # Check everything before changing anything.
            for name, have in self._vectors.items():
                wrong = {vec: size for vec, size in have.items() if size != dim}
                if wrong:
                    raise DimensionMismatchError(
                        f"collection {name!r} in {self._path(name)} has vectors of dimension"
                        f" {wrong}, expected {dim}; use another data directory or rebuild it"
                    )
            if ITEMS not in self._shards:
                self._create_items(dim)
            self._ensure_scene_index()
            if USERS not in self._shards:
                self._create_users(dim, scene_names)
            else:
                self._add_scenes(dim, scene_names)

    def _create_items(self, dim: int) -> None:
        path = self._path(ITEMS)
        config = qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Dot))
        with _edge_errors("create collection 'items'", path):
            self._shards[ITEMS] = qe.EdgeShard.create(str(path), config)
        self._vectors[ITEMS] = {ITEM_VECTOR: dim}

    def _ensure_scene_index(self) -> None:
        shard = self._shards[ITEMS]
        path = self._path(ITEMS)
        with _edge_errors("create payload index", path):
            if "scenes" not in shard.info().payload_schema:
                shard.update(
                    qe.UpdateOperation.create_field_index("scenes", qe.PayloadSchemaType.Keyword)
                )

    def _create_users(self, dim: int, scenes: tuple[str, ...]) -> None:
        path = self._path(USERS)
        params = {
            name: qe.EdgeVectorParams(size=dim, distance=qe.Distance.Dot)
            for name in (GLOBAL_VECTOR, *scenes)
        }
        # Users are fetched by id, never searched: m=0 skips building HNSW graphs for them.
        hnsw = qe.HnswIndexConfig(m=0, ef_construct=100, full_scan_threshold=10_000)
        config = qe.EdgeConfig(vectors=params, hnsw_config=hnsw)
        with _edge_errors("create collection 'users'", path):
            self._shards[USERS] = qe.EdgeShard.create(str(path), config)
        self._vectors[USERS] = {name: dim for name in params}

    def _add_scenes(self, dim: int, scenes: tuple[str, ...]) -> None:
        shard = self._shards[USERS]
        have = self._vectors[USERS]
        for name in (GLOBAL_VECTOR, *scenes):
            if name in have:
                continue
            with _edge_errors(f"add named vector {name!r}", self._path(USERS)):
                shard.update(qe.UpdateOperation.create_dense_vector(name, dim, qe.Distance.Dot))
            have[name] = dim

    # -- writes -----------------------------------------------------------------------------

    def upsert_items(self, items: Sequence[ItemPoint]) -> None:
        if not items:
            self._check_open()
            return
        shard = self._shard(ITEMS)
        for item in items:
            self._check_dim(item.vector, ITEMS, ITEM_VECTOR, f"vector of item {item.item_id!r}")
        path = self._path(ITEMS)
        with self._lock:
            for start in range(0, len(items), self._batch):
                points = [
                    qe.Point(
                        point_id(item.item_id),
                        item.vector.tolist(),
                        item.payload(),
                    )
                    for item in items[start : start + self._batch]
                ]
                with _edge_errors("upsert items", path):
                    shard.update(qe.UpdateOperation.upsert_points(points))

    def upsert_users(self, users: Sequence[UserPoint]) -> None:
        if not users:
            self._check_open()
            return
        shard = self._shard(USERS)
        merged: dict[str, dict[str, Vector]] = {}
        for user in users:
            for name, vec in user.vectors.items():
                self._check_dim(vec, USERS, name, f"vector {name!r} of user {user.user_id!r}")
            merged.setdefault(user.user_id, {}).update(user.vectors)
        path = self._path(USERS)
        user_ids = list(merged)
        with self._lock:
            for start in range(0, len(user_ids), self._batch):
                chunk = user_ids[start : start + self._batch]
                pids = {uid: point_id(uid) for uid in chunk}
                with _edge_errors("read users", path):
                    found = shard.retrieve(list(pids.values()), False, False)
                existing = {str(rec.id) for rec in found}
                new_points: list[qe.Point] = []
                updates: list[qe.PointVectors] = []
                for uid in chunk:
                    vectors: dict[str, Any] = {n: v.tolist() for n, v in merged[uid].items()}
                    if pids[uid] in existing:
                        updates.append(qe.PointVectors(pids[uid], vectors))
                    else:
                        new_points.append(qe.Point(pids[uid], vectors, {"user_id": uid}))
                with _edge_errors("upsert users", path):
                    if new_points:
                        shard.update(qe.UpdateOperation.upsert_points(new_points))
                    if updates:
                        shard.update(qe.UpdateOperation.update_vectors(updates))

    def delete_user(self, user_id: str) -> None:
        shard = self._shard(USERS)
        with self._lock, _edge_errors("delete user", self._path(USERS)):
            shard.update(qe.UpdateOperation.delete_points([point_id(user_id)]))

    # -- reads ------------------------------------------------------------------------------

    def get_users(self, user_ids: Sequence[str]) -> dict[str, dict[str, Vector]]:
        shard = self._shard(USERS)
        by_pid = {point_id(uid): uid for uid in dict.fromkeys(user_ids)}
        if not by_pid:
            return {}
        with _edge_errors("get users", self._path(USERS)):
            records = shard.retrieve(list(by_pid), False, True)
        out: dict[str, dict[str, Vector]] = {}
        for rec in records:
            uid = by_pid.get(str(rec.id))
            if uid is None or not isinstance(rec.vector, dict):
                continue
            out[uid] = {str(name): _to_array(vec) for name, vec in rec.vector.items()}
        return out

    def get_items(self, item_ids: Sequence[str]) -> dict[str, ItemPoint]:
        shard = self._shard(ITEMS)
        pids: list[qe.PointId] = [point_id(iid) for iid in dict.fromkeys(item_ids)]
        if not pids:
            return {}
        with _edge_errors("get items", self._path(ITEMS)):
            records = shard.retrieve(pids, True, True)
        out: dict[str, ItemPoint] = {}
        for rec in records:
            item = ItemPoint.from_stored(rec.payload, rec.vector)
            if item is not None:
                out[item.item_id] = item
        return out

    def iter_items(self, batch: int = 1000) -> Iterator[ItemPoint]:
        if batch <= 0:
            raise ValueError(f"batch must be positive, got {batch}")
        shard = self._shard(ITEMS)
        offset: qe.PointId | None = None
        while True:
            request = qe.ScrollRequest(
                offset=offset, limit=batch, with_payload=True, with_vector=True
            )
            with _edge_errors("scroll items", self._path(ITEMS)):
                records, offset = shard.scroll(request)
            for rec in records:
                item = ItemPoint.from_stored(rec.payload, rec.vector)
                if item is not None:
                    yield item
            if offset is None or not records:
                return

    def search_items(
        self,
        query: npt.ArrayLike,
        k: int,
        scene: str | None = None,
        exclude: Collection[str] = (),
    ) -> list[Hit]:
        shard = self._shard(ITEMS)
        if k <= 0:
            self._check_dim(as_vector(query, "query"), ITEMS, ITEM_VECTOR, "query")
            return []
        request = self._request(query, k, scene, exclude)
        with _edge_errors("search items", self._path(ITEMS)):
            points = shard.query(request)
        return [Hit.from_stored(p.payload, p.score) for p in points]

    def search_many(
        self, queries: Sequence[npt.ArrayLike], k: int, scenes: Sequence[str | None]
    ) -> list[list[Hit]]:
        if len(queries) != len(scenes):
            raise ValueError(f"{len(queries)} queries but {len(scenes)} scenes")
        shard = self._shard(ITEMS)
        requests = [self._request(q, k, s, ()) for q, s in zip(queries, scenes, strict=True)]
        if k <= 0 or not requests:
            return [[] for _ in requests]
        with _edge_errors("search items", self._path(ITEMS)):
            results = shard.query_batch(qe.QueryBatchRequest(requests))
        return [[Hit.from_stored(p.payload, p.score) for p in points] for points in results]

    def _request(
        self, query: npt.ArrayLike, k: int, scene: str | None, exclude: Collection[str]
    ) -> qe.QueryRequest:
        vec = as_vector(query, "query")
        self._check_dim(vec, ITEMS, ITEM_VECTOR, "query")
        must: list[qe.ConditionType] = []
        must_not: list[qe.ConditionType] = []
        if scene is not None:
            must.append(qe.FieldCondition("scenes", match=qe.MatchValue(scene)))
        if exclude:
            must_not.append(qe.HasIdCondition({point_id(iid) for iid in exclude}))
        flt = qe.Filter(must=must or None, must_not=must_not or None) if must or must_not else None
        return qe.QueryRequest(
            limit=k,
            query=qe.Query.Nearest(vec.tolist()),
            filter=flt,
            with_payload=True,
            params=self._search_params,
        )

    def count(self, collection: CollectionName) -> int:
        check_collection(collection)
        shard = self._shard(collection)
        with _edge_errors("count", self._path(collection)):
            return int(shard.count(qe.CountRequest(exact=True)))

    # -- lifecycle --------------------------------------------------------------------------

    def optimize(self) -> None:
        """Run Qdrant Edge's optimisers now (merges segments, builds the HNSW index); blocks."""
        with self._lock:
            self._check_open()
            for name, shard in self._shards.items():
                with _edge_errors("optimize", self._path(name)):
                    shard.optimize()

    def flush(self) -> None:
        with self._lock:
            self._check_open()
            for name, shard in self._shards.items():
                with _edge_errors("flush", self._path(name)):
                    shard.flush()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close_all()

    def _close_all(self) -> None:
        errors: list[str] = []
        for name, shard in list(self._shards.items()):
            try:
                shard.flush()
            except Exception as exc:
                errors.append(f"flush {name}: {exc}")
            try:
                shard.close()
            except Exception as exc:
                errors.append(f"close {name}: {exc}")
        self._shards.clear()
        if self._lock_fd >= 0:
            _release_dir_lock(self._lock_fd)
            self._lock_fd = -1
        self._closed = True
        if errors:
            raise VectorStoreError(f"closing Qdrant Edge store {self._dir}: {'; '.join(errors)}")

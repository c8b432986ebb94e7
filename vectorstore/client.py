"""qdrant-client backend: a Qdrant server or cluster, or qdrant-client's local mode.

``QdrantClientStore(url=..., api_key=...)`` talks to a server; ``QdrantClientStore(path=...)`` and
``QdrantClientStore(location=":memory:")`` use qdrant-client's pure-Python local mode, which is
slow (see :mod:`vectorstore`) but needs no server: tests run the same cases against it.
``QdrantClientStore(client=...)`` uses a client its caller built and owns (one connection pool
for several stores, or options this class does not expose); the tests run the server cases
that way over one long-lived local-mode client when no server is reachable.

The api key is handed to qdrant-client and never kept here: it appears in no repr, log line or
error message (messages from qdrant-client are scrubbed of it before they are re-raised).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import urllib.parse
import warnings
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from qdrant_client import QdrantClient, models

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

__all__ = ["QdrantClientStore"]


def _redact_url(url: str) -> str:
    """``url`` without user info (``https://user:secret@host`` -> ``https://***@host``)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<invalid url>"
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))


def _local_storage_in_use(path: Path) -> bool:
    """Whether another client holds the flock that qdrant-client's local mode takes on
    ``path/.lock``. Checked first because qdrant-client leaks its lock file object when the lock
    is taken (a ResourceWarning)."""
    lock = path / ".lock"
    if not lock.is_file():
        return False
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _is_local_client(client: QdrantClient) -> bool:
    options = client.init_options
    return bool(options.get("location") == ":memory:" or options.get("path"))


def _describe(url: str | None, path: Path | str | None, client: QdrantClient | None) -> str:
    """Where the store lives, for messages: never a secret."""
    if url is not None:
        return _redact_url(url)
    if path:
        return str(path)
    if client is None:
        return ":memory:"
    options = client.init_options
    if options.get("path"):
        return str(options["path"])
    if options.get("url"):
        return _redact_url(str(options["url"]))
    if options.get("host"):
        return f"{options['host']}:{options.get('port', 6333)}"
    return ":memory:"


def _to_array(value: Any) -> Vector:
    return np.asarray(value, dtype=np.float32)


class QdrantClientStore(VectorStore):
    """A vector store on a Qdrant server (``url``), in qdrant-client local mode (``path``,
    ``location=":memory:"``), or on a caller's ``client`` (not closed by :meth:`close`: its
    owner closes it). Exactly one of ``url``, ``path``, ``location`` and ``client`` is required.

    ``collection_prefix`` is prepended to the collection names (``items``, ``users``), so that
    several deployments or test runs can share one server. ``check_compatibility`` is passed to
    qdrant-client, which then checks the server version in a background thread (and warns).
    ``hnsw_ef`` sets the HNSW search beam (None: the server's default).
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        path: Path | str | None = None,
        location: str | None = None,
        collection_prefix: str = "",
        timeout: int | None = None,
        prefer_grpc: bool = False,
        batch_size: int = 256,
        check_compatibility: bool = True,
        hnsw_ef: int | None = None,
        client: QdrantClient | None = None,
    ) -> None:
        choices = (("url", url), ("path", path), ("location", location), ("client", client))
        given = [name for name, v in choices if v]
        if len(given) != 1:
            raise ValueError(
                "exactly one of url, path, location and client must be given, got "
                + (", ".join(given) if given else "none")
            )
        if location is not None and location != ":memory:":
            raise ValueError("location must be ':memory:' (use url for a server)")
        if api_key is not None and url is None:
            raise ValueError("api_key is only used with url (a Qdrant server)")
        if api_key is not None and not api_key:
            raise ValueError("api_key must not be empty when given")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if hnsw_ef is not None and hnsw_ef <= 0:
            raise ValueError(f"hnsw_ef must be positive, got {hnsw_ef}")
        self._search_params = models.SearchParams(hnsw_ef=hnsw_ef) if hnsw_ef else None
        self._secret = api_key
        self._owns_client = client is None
        self._local = url is None and (client is None or _is_local_client(client))
        self._where = _describe(url, path, client)
        self._names: dict[str, str] = {
            ITEMS: f"{collection_prefix}{ITEMS}",
            USERS: f"{collection_prefix}{USERS}",
        }
        self._batch = batch_size
        self._lock = threading.RLock()
        self._closed = False
        # Cached schema: collection -> vector name -> size ("" = the unnamed vector).
        self._vectors: dict[str, dict[str, int]] = {}
        with self._errors("connect"):
            if client is not None:
                self._client = client
            elif url is not None:
                self._client = QdrantClient(
                    url=url,
                    api_key=api_key,
                    timeout=timeout,
                    prefer_grpc=prefer_grpc,
                    check_compatibility=check_compatibility,
                )
            elif path is not None:
                Path(path).mkdir(parents=True, exist_ok=True)
                if _local_storage_in_use(Path(path)):
                    raise StoreLockedError(
                        f"qdrant-client local storage {path} is already open in another process"
                        " or store; only one may open it at a time"
                    )
                self._client = QdrantClient(path=str(path))
            else:
                self._client = QdrantClient(location=":memory:")

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        key = ", api_key=***" if self._secret else ""
        mode = "client" if not self._owns_client else "local" if self._local else "url"
        return f"QdrantClientStore({mode}={self._where!r}{key}, {state})"

    @property
    def is_local(self) -> bool:
        return self._local

    # -- helpers ----------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        if self._secret:
            text = text.replace(self._secret, "***")
        return text

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except VectorStoreError:
            raise
        except Exception as exc:
            msg = self._scrub(f"{type(exc).__name__}: {exc}")
            if "already accessed by another instance" in msg:
                raise StoreLockedError(
                    f"qdrant-client local storage {self._where} is already open in another"
                    f" process or store ({msg})"
                ) from None
            if "dimension error" in msg.lower() or "expected dim" in msg.lower():
                raise DimensionMismatchError(f"{what} on {self._where}: {msg}") from None
            # `from None`: the original exception might carry request details; its scrubbed
            # text is in the message.
            raise VectorStoreError(f"Qdrant {what} failed on {self._where}: {msg}") from None

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"{self!r} is closed")

    def _read_schema(self, name: str) -> dict[str, int] | None:
        """Vector sizes of a collection from the backend, or None if it does not exist."""
        coll = self._names[name]
        with self._errors(f"read collection {coll!r}"):
            if not self._client.collection_exists(coll):
                return None
            info = self._client.get_collection(coll)
        vectors = info.config.params.vectors
        out: dict[str, int] = {}
        if isinstance(vectors, models.VectorParams):
            params: Mapping[str, models.VectorParams] = {ITEM_VECTOR: vectors}
        elif vectors is None:
            params = {}
        else:
            params = vectors
        for vname, p in params.items():
            if p.distance != models.Distance.DOT:
                raise SchemaError(
                    f"vector {vname!r} of collection {coll!r} uses distance {p.distance}, not Dot"
                )
            out[vname] = int(p.size)
        return out

    def _schema(self, name: str, refresh: bool = False) -> dict[str, int]:
        self._check_open()
        if refresh or name not in self._vectors:
            schema = self._read_schema(name)
            if schema is None:
                raise CollectionNotFoundError(
                    f"collection {self._names[name]!r} does not exist on {self._where};"
                    " call ensure_collections first"
                )
            self._vectors[name] = schema
        return self._vectors[name]

    def _check_dim(self, vec: Vector, name: str, vector: str, what: str) -> None:
        schema = self._schema(name)
        if vector not in schema:
            schema = self._schema(name, refresh=True)  # another process may have added it
        check_vector_dim(vec, schema, self._names[name], vector, what)

    # -- schema -----------------------------------------------------------------------------

    def ensure_collections(self, dim: int, scenes: Sequence[str]) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        scene_names = validate_scenes(scenes)
        with self._lock:
            self._check_open()
            items = self._read_schema(ITEMS)
            users = self._read_schema(USERS)
            for name, schema in ((ITEMS, items), (USERS, users)):
                if schema is None:
                    continue
                wrong = {vec: size for vec, size in schema.items() if size != dim}
                if wrong:
                    raise DimensionMismatchError(
                        f"collection {self._names[name]!r} on {self._where} has vectors of"
                        f" dimension {wrong}, expected {dim}"
                    )
            if items is not None and ITEM_VECTOR not in items:
                raise SchemaError(
                    f"collection {self._names[ITEMS]!r} on {self._where} has named vectors"
                    f" {sorted(items)}; expected one unnamed vector"
                )
            if items is None:
                self._create(
                    ITEMS, models.VectorParams(size=dim, distance=models.Distance.DOT), None
                )
            self._ensure_scene_index()
            wanted = (GLOBAL_VECTOR, *scene_names)
            if users is None:
                params = {
                    n: models.VectorParams(size=dim, distance=models.Distance.DOT) for n in wanted
                }
                # Users are fetched by id, never searched: m=0 skips building HNSW graphs.
                hnsw = models.HnswConfigDiff(m=0)
                self._create(USERS, params, hnsw)
            else:
                for vname in wanted:
                    if vname in users:
                        continue
                    config = models.DenseVectorNameConfig(
                        dense=models.DenseVectorConfig(size=dim, distance=models.Distance.DOT)
                    )
                    with self._errors(f"add named vector {vname!r} to {self._names[USERS]!r}"):
                        self._client.create_vector_name(self._names[USERS], vname, config)
            self._vectors.pop(ITEMS, None)
            self._vectors.pop(USERS, None)
            self._schema(ITEMS)
            self._schema(USERS)

    def _create(
        self,
        name: str,
        vectors: models.VectorParams | dict[str, models.VectorParams],
        hnsw: models.HnswConfigDiff | None,
    ) -> None:
        coll = self._names[name]
        try:
            with self._errors(f"create collection {coll!r}"):
                self._client.create_collection(coll, vectors_config=vectors, hnsw_config=hnsw)
        except VectorStoreError:
            # Another process may have created it in between: fine if it exists now.
            if self._read_schema(name) is None:
                raise

    def _ensure_scene_index(self) -> None:
        coll = self._names[ITEMS]
        with self._errors(f"create payload index on {coll!r}"), warnings.catch_warnings():
            # Local mode keeps no payload indexes (it scans): it says so once and ignores the
            # call, so every backend runs this same code.
            warnings.filterwarnings("ignore", "Payload indexes have no effect", UserWarning)
            schema = self._client.get_collection(coll).payload_schema or {}
            if "scenes" not in schema:
                self._client.create_payload_index(
                    coll, "scenes", field_schema=models.PayloadSchemaType.KEYWORD, wait=True
                )

    # -- writes -----------------------------------------------------------------------------

    def upsert_items(self, items: Sequence[ItemPoint]) -> None:
        self._check_open()
        if not items:
            return
        for item in items:
            self._check_dim(item.vector, ITEMS, ITEM_VECTOR, f"vector of item {item.item_id!r}")
        coll = self._names[ITEMS]
        for start in range(0, len(items), self._batch):
            points = [
                models.PointStruct(
                    id=point_id(item.item_id),
                    vector=item.vector.tolist(),
                    payload=item.payload(),
                )
                for item in items[start : start + self._batch]
            ]
            with self._errors(f"upsert into {coll!r}"):
                self._client.upsert(coll, points=points, wait=True)

    def upsert_users(self, users: Sequence[UserPoint]) -> None:
        self._check_open()
        if not users:
            return
        merged: dict[str, dict[str, Vector]] = {}
        for user in users:
            for name, vec in user.vectors.items():
                self._check_dim(vec, USERS, name, f"vector {name!r} of user {user.user_id!r}")
            merged.setdefault(user.user_id, {}).update(user.vectors)
        coll = self._names[USERS]
        user_ids = list(merged)
        with self._lock:
            for start in range(0, len(user_ids), self._batch):
                chunk = user_ids[start : start + self._batch]
                pids = {uid: point_id(uid) for uid in chunk}
                with self._errors(f"read {coll!r}"):
                    found = self._client.retrieve(
                        coll, list(pids.values()), with_payload=False, with_vectors=False
                    )
                existing = {str(rec.id) for rec in found}
                new_points: list[models.PointStruct] = []
                updates: list[models.PointVectors] = []
                for uid in chunk:
                    vectors: dict[str, Any] = {n: v.tolist() for n, v in merged[uid].items()}
                    if pids[uid] in existing:
                        updates.append(models.PointVectors(id=pids[uid], vector=vectors))
                    else:
                        new_points.append(
                            models.PointStruct(
                                id=pids[uid], vector=vectors, payload={"user_id": uid}
                            )
                        )
                with self._errors(f"upsert into {coll!r}"):
                    if new_points:
                        self._client.upsert(coll, points=new_points, wait=True)
                    if updates:
                        self._client.update_vectors(coll, points=updates, wait=True)

    def delete_user(self, user_id: str) -> None:
        self._schema(USERS)
        coll = self._names[USERS]
        with self._errors(f"delete from {coll!r}"):
            self._client.delete(
                coll, points_selector=models.PointIdsList(points=[point_id(user_id)]), wait=True
            )

    # -- reads ------------------------------------------------------------------------------

    def get_users(self, user_ids: Sequence[str]) -> dict[str, dict[str, Vector]]:
        self._schema(USERS)
        by_pid = {point_id(uid): uid for uid in dict.fromkeys(user_ids)}
        if not by_pid:
            return {}
        coll = self._names[USERS]
        with self._errors(f"retrieve from {coll!r}"):
            records = self._client.retrieve(
                coll, list(by_pid), with_payload=False, with_vectors=True
            )
        out: dict[str, dict[str, Vector]] = {}
        for rec in records:
            uid = by_pid.get(str(rec.id))
            if uid is None or not isinstance(rec.vector, dict):
                continue
            out[uid] = {str(n): _to_array(v) for n, v in rec.vector.items()}
        return out

    def get_items(self, item_ids: Sequence[str]) -> dict[str, ItemPoint]:
        self._schema(ITEMS)
        pids = [point_id(iid) for iid in dict.fromkeys(item_ids)]
        if not pids:
            return {}
        coll = self._names[ITEMS]
        with self._errors(f"retrieve from {coll!r}"):
            records = self._client.retrieve(coll, pids, with_payload=True, with_vectors=True)
        out: dict[str, ItemPoint] = {}
        for rec in records:
            item = ItemPoint.from_stored(rec.payload, rec.vector)
            if item is not None:
                out[item.item_id] = item
        return out

    def iter_items(self, batch: int = 1000) -> Iterator[ItemPoint]:
        if batch <= 0:
            raise ValueError(f"batch must be positive, got {batch}")
        self._schema(ITEMS)
        coll = self._names[ITEMS]
        offset: models.ExtendedPointId | None = None
        while True:
            with self._errors(f"scroll {coll!r}"):
                records, next_offset = self._client.scroll(
                    coll, limit=batch, offset=offset, with_payload=True, with_vectors=True
                )
            for rec in records:
                item = ItemPoint.from_stored(rec.payload, rec.vector)
                if item is not None:
                    yield item
            if next_offset is None or not records:
                return
            offset = next_offset

    def search_items(
        self,
        query: npt.ArrayLike,
        k: int,
        scene: str | None = None,
        exclude: Collection[str] = (),
    ) -> list[Hit]:
        vec = as_vector(query, "query")
        self._check_dim(vec, ITEMS, ITEM_VECTOR, "query")
        if k <= 0:
            return []
        must: list[models.Condition] = []
        must_not: list[models.Condition] = []
        if scene is not None:
            must.append(models.FieldCondition(key="scenes", match=models.MatchValue(value=scene)))
        if exclude:
            ids: list[models.ExtendedPointId] = [point_id(iid) for iid in set(exclude)]
            must_not.append(models.HasIdCondition(has_id=ids))
        flt = (
            models.Filter(must=must or None, must_not=must_not or None)
            if must or must_not
            else None
        )
        coll = self._names[ITEMS]
        with self._errors(f"query {coll!r}"):
            response = self._client.query_points(
                coll,
                query=vec.tolist(),
                limit=k,
                query_filter=flt,
                search_params=self._search_params,
                with_payload=["item_id", "scenes", "title"],
            )
        hits: list[Hit] = []
        for p in response.points:
            hits.append(Hit.from_stored(p.payload, p.score))
        return hits

    def count(self, collection: CollectionName) -> int:
        check_collection(collection)
        self._schema(collection)
        coll = self._names[collection]
        with self._errors(f"count {coll!r}"):
            return int(self._client.count(coll, exact=True).count)

    # -- lifecycle --------------------------------------------------------------------------

    def flush(self) -> None:
        # A server makes each acknowledged (wait=True) write durable through its WAL, and
        # local mode persists every write as it happens: nothing is pending here.
        self._check_open()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._owns_client:
                with self._errors("close"):
                    self._client.close()

"""Vector storage for SceneRec: item and user embeddings, one interface, two backends.

* :class:`~vectorstore.edge.EdgeVectorStore` (the embedded default): Qdrant Edge
  (``qdrant-edge-py``), Qdrant's engine in-process, one on-disk EdgeShard per collection.
* :class:`~vectorstore.client.QdrantClientStore`: a Qdrant server or cluster through
  ``qdrant-client``; it also runs on qdrant-client's local mode (``path=`` or
  ``location=":memory:"``), which the tests use in place of a server.

Why Qdrant Edge is the default: measured here with 100,000 random 384-d points, qdrant-client local
mode took 208 s to upsert, 170 ms per query and 2.2 s per filtered query (it is a pure-Python
brute-force scan); Qdrant Edge upserted in 3.4 s and answered in 1.3 ms, 5 ms filtered (after a
66 s HNSW build). Qdrant Edge has no background optimiser: call :meth:`VectorStore.optimize` after
a bulk load, or searches stay exact full scans (about 5 ms at 20,000 384-d points, recall 1.0).
HNSW is approximate: on random Gaussian vectors (its worst case) recall@10 at Qdrant's default
search beam was only about 0.4 at 20,000 points; raise ``hnsw_ef`` or skip the index build where
that matters (``bench/vectorstore_bench.py`` measures it). Real embeddings fare much better.

Use :func:`open_store`::

    with open_store(Path("data/vectors")) as store:          # Qdrant Edge
        store.ensure_collections(384, ["home", "search"])
    with open_store(Path("unused"), url="https://qdrant:6333", api_key=key) as store:  # server
        ...
"""

from __future__ import annotations

from pathlib import Path

from vectorstore.base import (
    GLOBAL_VECTOR,
    ID_NAMESPACE,
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
    point_id,
)

__all__ = [
    "GLOBAL_VECTOR",
    "ID_NAMESPACE",
    "ITEMS",
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
    "open_store",
    "point_id",
]


def open_store(data_dir: Path, url: str | None = None, api_key: str | None = None) -> VectorStore:
    """Open the vector store: a Qdrant server when ``url`` is set, else Qdrant Edge on ``data_dir``.

    Raises ``ValueError`` naming the argument for bad combinations (an ``api_key`` without
    ``url``, an empty or non-HTTP ``url``, a ``data_dir`` that is a file), and
    :class:`StoreLockedError` if another process has ``data_dir`` open.
    """
    if url is not None:
        if not url.strip():
            raise ValueError("url must not be empty (leave it unset for the embedded store)")
        if not url.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        if api_key is not None and not api_key:
            raise ValueError("api_key must not be empty when given")
        from vectorstore.client import QdrantClientStore

        return QdrantClientStore(url=url, api_key=api_key)
    if api_key is not None:
        raise ValueError("api_key is only used with url (a Qdrant server); url is not set")
    data_dir = Path(data_dir)
    if data_dir.exists() and not data_dir.is_dir():
        raise ValueError(f"data_dir {data_dir} exists and is not a directory")
    from vectorstore.edge import EdgeVectorStore

    return EdgeVectorStore(data_dir)

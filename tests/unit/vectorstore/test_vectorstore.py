"""The vector store: one set of cases run against every backend.

Backends: Qdrant Edge in tmp_path, qdrant-client local mode in tmp_path, and the server backend:
a Qdrant server when QDRANT_URL is set (QDRANT_API_KEY optional), otherwise the same code over
one long-lived qdrant-client in local mode (``location=":memory:"``) standing in for the server.
Either way collections get a unique prefix, stores open and close against a backend that
outlives them, and the collections are dropped after. docs/deploy.md lists what local mode does
differently from a server.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import QdrantClient

from vectorstore import (
    GLOBAL_VECTOR,
    CollectionNotFoundError,
    DimensionMismatchError,
    ItemPoint,
    SchemaError,
    StoreClosedError,
    StoreLockedError,
    UserPoint,
    VectorStore,
    VectorStoreError,
    open_store,
    point_id,
)
from vectorstore.client import QdrantClientStore
from vectorstore.edge import EdgeVectorStore

DIM = 8
SCENES = ("home", "search")
BATCH = 16  # small write batches, so that every test crosses batch boundaries

Opener = Callable[[], VectorStore]

BACKENDS = [
    pytest.param("edge", id="edge"),
    pytest.param("local", id="qdrant-local"),
    pytest.param("server", id="qdrant-server"),
]


def server_client() -> QdrantClient:
    """The server's client: a real server when QDRANT_URL is set, else local mode in memory."""
    if url := os.environ.get("QDRANT_URL"):
        return QdrantClient(url=url, api_key=os.environ.get("QDRANT_API_KEY") or None)
    return QdrantClient(location=":memory:")


def server_store(client: QdrantClient, prefix: str) -> QdrantClientStore:
    if url := os.environ.get("QDRANT_URL"):
        # The store's own connection code, as the worker opens it.
        return QdrantClientStore(
            url=url,
            api_key=os.environ.get("QDRANT_API_KEY") or None,
            collection_prefix=prefix,
            batch_size=BATCH,
        )
    return QdrantClientStore(client=client, collection_prefix=prefix, batch_size=BATCH)


@pytest.fixture(params=BACKENDS)
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """A function that opens (again) the same store; every store opened is closed after."""
    kind: str = request.param
    prefix = f"test_{uuid.uuid4().hex[:12]}_"
    opened: list[VectorStore] = []
    server = server_client() if kind == "server" else None

    def open_() -> VectorStore:
        store: VectorStore
        if kind == "edge":
            store = EdgeVectorStore(tmp_path / "edge", batch_size=BATCH)
        elif kind == "local":
            store = QdrantClientStore(path=tmp_path / "qdrant-local", batch_size=BATCH)
        else:
            assert server is not None
            store = server_store(server, prefix)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()
    if server is not None:
        try:
            for name in ("items", "users"):
                if server.collection_exists(prefix + name):
                    server.delete_collection(prefix + name)
        finally:
            server.close()


@pytest.fixture
def store(opener: Opener) -> VectorStore:
    s = opener()
    s.ensure_collections(DIM, SCENES)
    return s


def vec(*values: float) -> np.ndarray:
    out = np.zeros(DIM, dtype=np.float32)
    out[: len(values)] = values
    return out


def make_items(n: int, seed: int = 0) -> list[ItemPoint]:
    rng = np.random.default_rng(seed)
    scenes_cycle = [("home",), ("search",), ("home", "search"), ()]
    return [
        ItemPoint(
            item_id=f"item-{i}",
            # not normalised: scores must be raw dot products
            vector=rng.normal(size=DIM).astype(np.float32) * rng.uniform(0.5, 3.0),
            scenes=scenes_cycle[i % len(scenes_cycle)],
            title=f"Title {i}",
            popularity=float(i) / 2,
            facts=("film.film.genre g1", f"~film.director.film d{i}")[: i % 3],
        )
        for i in range(n)
    ]


# -- items -------------------------------------------------------------------------------------


def test_items_round_trip(store: VectorStore) -> None:
    items = make_items(7)
    store.upsert_items(items)
    got = store.get_items([it.item_id for it in items] + ["missing"])
    assert set(got) == {it.item_id for it in items}
    for it in items:
        assert got[it.item_id] == it
        assert got[it.item_id].vector.dtype == np.float32
    assert store.count("items") == 7
    assert store.get_items([]) == {}


def test_upsert_item_replaces(store: VectorStore) -> None:
    store.upsert_items([ItemPoint("a", vec(1.0), ("home",), "old", 1.0)])
    store.upsert_items([ItemPoint("a", vec(0.0, 2.0), ("search",), "new", 5.0)])
    got = store.get_items(["a"])["a"]
    assert got == ItemPoint("a", vec(0.0, 2.0), ("search",), "new", 5.0)
    assert store.count("items") == 1


def test_iter_items_scrolls_everything(store: VectorStore) -> None:
    items = make_items(11)
    store.upsert_items(items)
    seen = list(store.iter_items(batch=3))
    assert sorted(it.item_id for it in seen) == sorted(it.item_id for it in items)
    by_id = {it.item_id: it for it in items}
    assert all(it == by_id[it.item_id] for it in seen)


def test_batched_upsert_larger_than_batch(store: VectorStore) -> None:
    items = make_items(5 * BATCH + 3, seed=3)
    store.upsert_items(items)
    assert store.count("items") == len(items)
    assert sum(1 for _ in store.iter_items(batch=7)) == len(items)
    users = [UserPoint(f"u{i}", {GLOBAL_VECTOR: vec(float(i))}) for i in range(3 * BATCH + 1)]
    store.upsert_users(users)
    store.upsert_users([UserPoint(u.user_id, {"home": vec(1.0)}) for u in users])
    got = store.get_users([u.user_id for u in users])
    assert len(got) == len(users)
    assert all(set(v) == {GLOBAL_VECTOR, "home"} for v in got.values())


# -- search ------------------------------------------------------------------------------------


def test_search_orders_by_dot_product(store: VectorStore) -> None:
    items = make_items(40, seed=1)
    store.upsert_items(items)
    query = np.random.default_rng(9).normal(size=DIM).astype(np.float32) * 2.5
    hits = store.search_items(query, k=10)
    matrix = np.stack([it.vector for it in items])
    scores = matrix @ query
    expected = [items[i].item_id for i in np.argsort(-scores)[:10]]
    assert [h.item_id for h in hits] == expected
    by_id = {it.item_id: it for it in items}
    for h in hits:
        assert h.score == pytest.approx(float(by_id[h.item_id].vector @ query), rel=1e-4, abs=1e-4)
        assert h.title == by_id[h.item_id].title
        assert h.scenes == by_id[h.item_id].scenes
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_search_scene_filter(store: VectorStore) -> None:
    items = make_items(40, seed=2)
    store.upsert_items(items)
    query = np.ones(DIM, dtype=np.float32)
    hits = store.search_items(query, k=100, scene="home")
    expected = {it.item_id for it in items if "home" in it.scenes}
    assert {h.item_id for h in hits} == expected
    assert all("home" in h.scenes for h in hits)
    assert store.search_items(query, k=5, scene="nowhere") == []


def test_search_exclude(store: VectorStore) -> None:
    store.upsert_items(
        [
            ItemPoint("best", vec(3.0), ("home",), "best", 0.0),
            ItemPoint("second", vec(2.0), ("home",), "second", 0.0),
            ItemPoint("third", vec(1.0), ("search",), "third", 0.0),
        ]
    )
    q = vec(1.0)
    assert [h.item_id for h in store.search_items(q, k=2)] == ["best", "second"]
    hits = store.search_items(q, k=2, exclude={"best"})
    assert [h.item_id for h in hits] == ["second", "third"]
    hits = store.search_items(q, k=5, scene="home", exclude=["best", "not-there"])
    assert [h.item_id for h in hits] == ["second"]
    assert hits[0].score == pytest.approx(2.0)


def test_search_k_zero_and_bad_query(store: VectorStore) -> None:
    store.upsert_items(make_items(3))
    assert store.search_items(vec(1.0), k=0) == []
    with pytest.raises(DimensionMismatchError):
        store.search_items(np.ones(DIM + 1, dtype=np.float32), k=3)
    with pytest.raises(ValueError):
        store.search_items(np.ones((2, DIM), dtype=np.float32), k=3)


# -- users -------------------------------------------------------------------------------------


def test_users_round_trip(store: VectorStore) -> None:
    store.upsert_users(
        [
            UserPoint("u1", {GLOBAL_VECTOR: vec(1.0), "home": vec(0.0, 1.0)}),
            UserPoint("u2", {GLOBAL_VECTOR: vec(2.0), "search": vec(0.0, 0.0, 3.0)}),
        ]
    )
    got = store.get_users(["u1", "u2", "nobody"])
    assert set(got) == {"u1", "u2"}
    assert set(got["u1"]) == {GLOBAL_VECTOR, "home"}
    np.testing.assert_array_equal(got["u1"]["home"], vec(0.0, 1.0))
    np.testing.assert_array_equal(got["u2"]["search"], vec(0.0, 0.0, 3.0))
    assert got["u2"][GLOBAL_VECTOR].dtype == np.float32
    assert store.count("users") == 2
    assert store.get_users([]) == {}


def test_partial_user_update_keeps_other_vectors(store: VectorStore) -> None:
    store.upsert_users([UserPoint("u", {GLOBAL_VECTOR: vec(1.0), "home": vec(0.0, 1.0)})])
    store.upsert_users([UserPoint("u", {"home": vec(0.0, 5.0)})])
    store.upsert_users([UserPoint("u", {"search": vec(0.0, 0.0, 7.0)})])
    got = store.get_users(["u"])["u"]
    assert set(got) == {GLOBAL_VECTOR, "home", "search"}
    np.testing.assert_array_equal(got[GLOBAL_VECTOR], vec(1.0))
    np.testing.assert_array_equal(got["home"], vec(0.0, 5.0))
    np.testing.assert_array_equal(got["search"], vec(0.0, 0.0, 7.0))
    assert store.count("users") == 1


def test_same_user_twice_in_one_batch_merges(store: VectorStore) -> None:
    store.upsert_users(
        [
            UserPoint("new", {GLOBAL_VECTOR: vec(1.0)}),
            UserPoint("new", {"home": vec(2.0)}),
            UserPoint("new", {GLOBAL_VECTOR: vec(3.0)}),
        ]
    )
    got = store.get_users(["new"])["new"]
    np.testing.assert_array_equal(got[GLOBAL_VECTOR], vec(3.0))
    np.testing.assert_array_equal(got["home"], vec(2.0))


def test_unknown_scene_vector_rejected(store: VectorStore) -> None:
    with pytest.raises(SchemaError, match="cart"):
        store.upsert_users([UserPoint("u", {"cart": vec(1.0)})])
    with pytest.raises(DimensionMismatchError):
        store.upsert_users([UserPoint("u", {GLOBAL_VECTOR: np.ones(DIM + 2, dtype=np.float32)})])


def test_delete_user(store: VectorStore) -> None:
    store.upsert_users(
        [UserPoint("u1", {GLOBAL_VECTOR: vec(1.0)}), UserPoint("u2", {GLOBAL_VECTOR: vec(2.0)})]
    )
    store.delete_user("u1")
    store.delete_user("never-existed")
    assert set(store.get_users(["u1", "u2"])) == {"u2"}
    assert store.count("users") == 1
    # a deleted user starts from scratch
    store.upsert_users([UserPoint("u1", {"home": vec(4.0)})])
    assert set(store.get_users(["u1"])["u1"]) == {"home"}


def test_count(store: VectorStore) -> None:
    assert store.count("items") == 0
    assert store.count("users") == 0
    store.upsert_items(make_items(5))
    store.upsert_users([UserPoint(f"u{i}", {GLOBAL_VECTOR: vec(float(i))}) for i in range(3)])
    assert store.count("items") == 5
    assert store.count("users") == 3
    with pytest.raises(ValueError):
        store.count("carts")  # type: ignore[arg-type]


# -- schema and lifecycle ----------------------------------------------------------------------


def test_ensure_collections_idempotent_and_adds_scenes(store: VectorStore) -> None:
    store.upsert_users([UserPoint("u", {GLOBAL_VECTOR: vec(1.0), "home": vec(2.0)})])
    store.ensure_collections(DIM, SCENES)
    store.ensure_collections(DIM, ["home"])  # fewer scenes: nothing is removed
    store.ensure_collections(DIM, [*SCENES, "cart"])  # a new scene: a new named vector
    store.upsert_users([UserPoint("u", {"cart": vec(0.0, 9.0)})])
    got = store.get_users(["u"])["u"]
    assert set(got) == {GLOBAL_VECTOR, "home", "cart"}
    np.testing.assert_array_equal(got["home"], vec(2.0))


def test_ensure_collections_validates_arguments(opener: Opener) -> None:
    s = opener()
    with pytest.raises(ValueError):
        s.ensure_collections(0, SCENES)
    with pytest.raises(ValueError, match="global"):
        s.ensure_collections(DIM, ["global"])
    with pytest.raises(ValueError):
        s.ensure_collections(DIM, ["home", "home"])


def test_dim_mismatch(opener: Opener) -> None:
    s = opener()
    s.ensure_collections(DIM, SCENES)
    with pytest.raises(DimensionMismatchError, match=str(DIM)):
        s.ensure_collections(DIM * 2, SCENES)
    with pytest.raises(DimensionMismatchError):
        s.upsert_items([ItemPoint("x", np.ones(DIM * 2, dtype=np.float32), (), "x", 0.0)])
    s.close()
    s = opener()  # also after reopening from disk
    with pytest.raises(DimensionMismatchError):
        s.ensure_collections(DIM + 1, SCENES)
    assert isinstance(DimensionMismatchError("x"), VectorStoreError)


def test_collection_missing_before_ensure(opener: Opener) -> None:
    s = opener()
    with pytest.raises(CollectionNotFoundError, match="ensure_collections"):
        s.count("items")
    with pytest.raises(CollectionNotFoundError):
        s.upsert_items(make_items(1))


def test_reopen_from_disk_after_close(opener: Opener) -> None:
    s = opener()
    s.ensure_collections(DIM, SCENES)
    items = make_items(9, seed=4)
    s.upsert_items(items)
    s.upsert_users([UserPoint("u", {GLOBAL_VECTOR: vec(1.0), "search": vec(2.0)})])
    s.flush()
    s.close()
    s.close()  # idempotent

    s2 = opener()  # no ensure_collections: existing collections are found
    assert s2.count("items") == 9
    assert s2.count("users") == 1
    assert s2.get_items(["item-3"])["item-3"] == items[3]
    np.testing.assert_array_equal(s2.get_users(["u"])["u"]["search"], vec(2.0))
    hits = s2.search_items(items[0].vector, k=1)
    assert hits[0].item_id == items[0].item_id or hits[0].score >= float(
        items[0].vector @ items[0].vector
    )
    s2.ensure_collections(DIM, SCENES)
    assert s2.count("items") == 9


def test_closed_store_raises(opener: Opener) -> None:
    with opener() as s:
        s.ensure_collections(DIM, SCENES)
    with pytest.raises(StoreClosedError):
        s.count("items")
    with pytest.raises(StoreClosedError):
        s.search_items(vec(1.0), k=1)


def test_optimize_keeps_results(store: VectorStore) -> None:
    items = make_items(120, seed=5)
    store.upsert_items(items)
    q = np.ones(DIM, dtype=np.float32)
    before = [h.item_id for h in store.search_items(q, k=5)]
    store.optimize()
    assert [h.item_id for h in store.search_items(q, k=5)] == before
    assert store.count("items") == 120


# -- backend-specific --------------------------------------------------------------------------


def test_edge_second_store_on_same_dir_is_locked(tmp_path: Path) -> None:
    data_dir = tmp_path / "vectors"
    with EdgeVectorStore(data_dir) as first:
        first.ensure_collections(DIM, SCENES)
        with pytest.raises(StoreLockedError, match=re.escape(str(data_dir))):
            EdgeVectorStore(data_dir)
        with pytest.raises(StoreLockedError, match=re.escape(str(data_dir))):
            open_store(data_dir)
    with EdgeVectorStore(data_dir) as again:  # released on close
        assert again.count("items") == 0


def test_edge_lock_across_processes(tmp_path: Path) -> None:
    data_dir = tmp_path / "vectors"
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from vectorstore import StoreLockedError
        from vectorstore.edge import EdgeVectorStore
        try:
            EdgeVectorStore(Path({str(data_dir)!r})).close()
        except StoreLockedError as exc:
            print(exc)
            sys.exit(3)
        """
    )
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(root)}
    with EdgeVectorStore(data_dir):
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
        )
        assert proc.returncode == 3, proc.stderr
        assert str(data_dir) in proc.stdout
        assert f"pid {os.getpid()}" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_local_mode_second_store_is_locked(tmp_path: Path) -> None:
    with (
        QdrantClientStore(path=tmp_path / "q"),
        pytest.raises(StoreLockedError, match=re.escape(str(tmp_path / "q"))),
    ):
        QdrantClientStore(path=tmp_path / "q")


def test_server_serves_several_stores_and_outlives_them() -> None:
    client = server_client()
    prefix = f"test_{uuid.uuid4().hex[:12]}_"
    try:
        with server_store(client, prefix) as writer, server_store(client, prefix) as reader:
            writer.ensure_collections(DIM, SCENES)
            writer.upsert_items(make_items(4))
            assert reader.count("items") == 4  # no lock: a server takes many clients
        with server_store(client, prefix) as again:  # closing a store left the server up
            assert again.count("items") == 4
    finally:
        for name in ("items", "users"):
            if client.collection_exists(prefix + name):
                client.delete_collection(prefix + name)
        client.close()


def test_caller_client_is_left_open(tmp_path: Path) -> None:
    client = QdrantClient(location=":memory:")
    with QdrantClientStore(client=client) as s:
        s.ensure_collections(DIM, SCENES)
        assert s.is_local and "client=" in repr(s)
    assert client.collection_exists("items")  # still usable: its owner closes it
    client.close()
    with pytest.raises(ValueError, match="client"):
        QdrantClientStore(url="http://x", client=QdrantClient(location=":memory:"))


def test_in_memory_local_mode(tmp_path: Path) -> None:
    with QdrantClientStore(location=":memory:") as s:
        s.ensure_collections(DIM, SCENES)
        s.upsert_items(make_items(3))
        assert s.count("items") == 3


# -- factory and secrets -----------------------------------------------------------------------


def test_open_store_defaults_to_edge(tmp_path: Path) -> None:
    with open_store(tmp_path / "v") as s:
        assert isinstance(s, EdgeVectorStore)
        assert (tmp_path / "v").is_dir()


def test_open_store_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="api_key"):
        open_store(tmp_path, api_key="k")
    with pytest.raises(ValueError, match="url"):
        open_store(tmp_path, url="")
    with pytest.raises(ValueError, match="url"):
        open_store(tmp_path, url="localhost:6333")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="data_dir"):
        open_store(a_file)
    with pytest.raises(ValueError, match="url"):
        QdrantClientStore(url="http://x", path=tmp_path / "p")
    with pytest.raises(ValueError, match="api_key"):
        QdrantClientStore(path=tmp_path / "p", api_key="k")


def test_open_store_with_url_uses_qdrant_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vectorstore.client

    seen: dict[str, object] = {}

    def fake(url: str | None = None, api_key: str | None = None) -> str:
        seen.update(url=url, api_key=api_key)
        return "store"

    monkeypatch.setattr(vectorstore.client, "QdrantClientStore", fake)
    assert open_store(tmp_path / "unused", url="https://q:6333", api_key="k") == "store"  # type: ignore[comparison-overlap]
    assert seen == {"url": "https://q:6333", "api_key": "k"}
    assert not (tmp_path / "unused").exists()


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
def test_api_key_never_in_repr_or_errors() -> None:
    secret = "sekret-" + uuid.uuid4().hex
    # Nothing listens on port 1: every call fails fast.
    with QdrantClientStore(
        url="http://127.0.0.1:1", api_key=secret, check_compatibility=False
    ) as s:
        assert secret not in repr(s)
        assert "***" in repr(s)
        with pytest.raises(VectorStoreError) as info:
            s.count("items")
        assert secret not in str(info.value)
        assert secret not in repr(info.value)
        assert info.value.__cause__ is None
    with pytest.raises(ValueError) as bad:
        QdrantClientStore(url="http://127.0.0.1:1", api_key=secret, path=Path("x"))
    assert secret not in str(bad.value)


def test_point_ids_are_deterministic_uuids() -> None:
    assert point_id("item-1") == point_id("item-1")
    assert point_id("item-1") != point_id("item-2")
    assert uuid.UUID(point_id("x")).version == 5


def test_points_validate_vectors() -> None:
    with pytest.raises(ValueError):
        ItemPoint("a", np.ones((2, 2), dtype=np.float32), (), "t", 0.0)
    with pytest.raises(ValueError):
        ItemPoint("a", np.array([np.nan, 1.0], dtype=np.float32), (), "t", 0.0)
    with pytest.raises(ValueError):
        UserPoint("u", {})
    item = ItemPoint("a", [1, 2], ["home"], "t", 1)  # type: ignore[arg-type]
    assert item.vector.dtype == np.float32
    assert item.scenes == ("home",)

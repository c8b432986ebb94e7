"""Scene-conditioned ranking: r = (u ⊙ s) · i over an in-memory item matrix, plus what is
popular now.

The final score is ``log pop_now(i) + SIM_WEIGHT * (u ⊙ s) · i``: the similarity alone
ranks far below plain popularity on a temporal split (the evaluation harness measured
NDCG@10 0.038 vs 0.283 on EVALUATION.md's protocol A), because what people watch next is
mostly what is popular at that moment; the user's vector then re-orders it by taste.

The vector store holds every item vector; the worker also keeps them here as one dense
matrix, because ranking a user against every item of a scene is a single matrix-vector
product (1,682 x 384 takes microseconds) while a store query per scene per event would be
a round trip each. Every recommended item carries a reason that names the scene and what
drove the score.

Speed (see docs/benchmarks.md): the worker ranks every user a batch touched, in every scene
the user is active in. :func:`recommend_many` scores all of those queries with one matrix
product (one pass over the item matrix instead of one per query: 10x less memory traffic on
a 100,000-item catalog) and computes the popularity feature once. The product runs with one
BLAS thread: OpenBLAS's threads on these small products cost more than they gain, and on a
loaded machine a 1,682 x 384 product with 2 threads measured 12 ms instead of 0.1 ms. On
catalogs of two blocks or more, :meth:`ItemIndex.set_threads` shares the blocks among
threads instead, each block still one single-threaded BLAS call, so every value stays the
same bit for bit (OpenBLAS's own threads split a product differently and round
differently).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt
from threadpoolctl import ThreadpoolController

from embeddings.collaborative import (
    COOCCURRENCE,
    DEFAULT_MAX_ITEMS,
    TRANSITIONS,
    CollabConfig,
    Collaborative,
)
from embeddings.popularity import DecayedPopularity
from embeddings.scenes import SceneGates
from embeddings.user_model import UserState
from embeddings.vectors import Rows, Vector

log = logging.getLogger(__name__)
GLOBAL = "global"
#: Weight of the similarity term against log popularity. The harness's valid-tuned blends
#: put similarity at 1-8x popularity depending on the user's tenure; 4 is their middle.
SIM_WEIGHT = 4.0
#: Clicks count half as much after this long (event time): the harness's tuned value.
POPULARITY_HALF_LIFE_S = 7 * 86_400.0

#: Controls the BLAS thread pool of the numpy loaded in this process (see the module doc).
_BLAS = ThreadpoolController()
#: Rows per block in :meth:`ItemIndex._similarities`: 4096 x 384 float32 = 6 MiB, in cache;
#: a multiple of every BLAS kernel's row group, so blocking does not change any value.
_ROW_BLOCK = 4096
#: From this many items on, a batch's queries go through one matrix-matrix product per
#: block: 2.7-2.9x faster than a product per query at 100,000 items and 80 queries (328.6
#: against 120.9 ms here), where that product was 58% of the worker. Such a product rounds
#: differently, and differently again for another number of queries, so a score can move
#: in its 7th significant digit and two items that tie to that digit can swap. Below it
#: (the ml-100k and Last.fm catalogs the harness and the tests use), every value stays the
#: same bit for bit as a product over the whole matrix.
GEMM_MIN_ROWS = 20_000


@functools.cache
def _block_pool(workers: int) -> ThreadPoolExecutor:
    """Threads that compute blocks of :meth:`ItemIndex._similarities` beside the caller's
    (one pool per process and size, not per index: the evaluation deep-copies indexes)."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scenerec-rank")


@dataclass(frozen=True)
class Scored:
    item_id: str
    score: float
    reason: str


@dataclass(frozen=True)
class Ranked:
    """One ranked item and how much each term lifted it above the candidates' median."""

    item_id: str
    score: float
    popularity_lift: float
    similarity_lift: float
    transition_lift: float = 0.0
    cooccurrence_lift: float = 0.0
    #: The term that lifted it most, when the ranking already knows (see ``leading_term``).
    lead: str | None = None


class ItemIndex:
    """Item vectors, titles, scenes and live popularity, indexed by row."""

    def __init__(
        self, dim: int, half_life_s: float = POPULARITY_HALF_LIFE_S, threads: int = 1
    ) -> None:
        self.dim = dim
        self.set_threads(threads)
        self._ids: list[str] = []
        self._row: dict[str, int] = {}
        self._titles: list[str] = []
        self._scenes: list[tuple[str, ...]] = []
        self._facts: list[frozenset[str]] = []
        #: Items per KG fact: the rarer a shared fact, the more it says (see :func:`explain`).
        self._fact_items: dict[str, int] = {}
        self._mat = np.zeros((0, dim), dtype=np.float32)
        self._pop = DecayedPopularity(0, half_life_s)
        self._scene_rows: dict[str, npt.NDArray[np.bool_]] = {}
        #: Item-item counts learned from clicks (None: off, or the catalog outgrew them).
        self.collab: Collaborative | None = None
        self._collab_max_items = 0

    def enable_collaborative(
        self, config: CollabConfig, max_items: int = DEFAULT_MAX_ITEMS
    ) -> None:
        """Learn transitions and co-occurrence from :meth:`record_click`, up to ``max_items``."""
        self._collab_max_items = max_items
        self.collab = Collaborative(0, config)
        self._grow_collab(self._mat.shape[0])

    def set_threads(self, threads: int) -> None:
        """Threads that share the blocks of the item product (:meth:`_similarities`).

        numpy releases the GIL inside each block's BLAS call, so on a 100,000 x 384 catalog
        2 threads took 60.8 ms for 77 queries where one took 108.5 ms (docs/benchmarks.md).
        Catalogs of one block (up to 4,096 items) always use one.
        """
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self._threads = threads

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._row

    def upsert(
        self,
        item_id: str,
        vector: Vector,
        scenes: Sequence[str],
        title: str,
        popularity: float = 0.0,
        facts: Iterable[str] = (),
    ) -> None:
        """Add or replace an item; ``facts`` are its KG ``"relation target"`` strings."""
        row = self._row.get(item_id)
        new_facts = frozenset(facts)
        if row is None:
            row = len(self._ids)
            self._row[item_id] = row
            self._ids.append(item_id)
            self._titles.append(title)
            self._scenes.append(tuple(scenes))
            self._facts.append(frozenset())
            self._grow(row + 1)
            self._grow_collab(self._mat.shape[0])
            self._pop.set(row, popularity)
        else:
            self._titles[row] = title
            self._scenes[row] = tuple(scenes)
        for fact in self._facts[row]:
            self._fact_items[fact] -= 1
        for fact in new_facts:
            self._fact_items[fact] = self._fact_items.get(fact, 0) + 1
        self._facts[row] = new_facts
        self._mat[row] = vector
        for mask in self._scene_rows.values():
            mask[row] = False
        for scene in scenes:
            self._scene_mask(scene)[row] = True

    def _grow(self, n: int) -> None:
        if n <= self._mat.shape[0]:
            return
        cap = max(n, 2 * self._mat.shape[0], 64)
        mat = np.zeros((cap, self.dim), dtype=np.float32)
        mat[: self._mat.shape[0]] = self._mat
        self._mat = mat
        self._pop.grow(cap)
        for scene, mask in list(self._scene_rows.items()):
            grown = np.zeros(cap, dtype=np.bool_)
            grown[: mask.shape[0]] = mask
            self._scene_rows[scene] = grown

    def _grow_collab(self, cap: int) -> None:
        if self.collab is None:
            return
        if len(self._ids) > self._collab_max_items:
            log.warning(
                "catalog of %d items is larger than the collaborative counts' limit of %d"
                " (SCENEREC_COLLAB_MAX_ITEMS): they are dropped, and the worker ranks by"
                " log popularity + similarity alone",
                len(self._ids),
                self._collab_max_items,
            )
            self.collab = None
            return
        self.collab.grow(min(cap, self._collab_max_items))

    def _scene_mask(self, scene: str) -> npt.NDArray[np.bool_]:
        mask = self._scene_rows.get(scene)
        if mask is None:
            mask = np.zeros(self._mat.shape[0], dtype=np.bool_)
            self._scene_rows[scene] = mask
        return mask

    def vector(self, item_id: str) -> Vector | None:
        row = self._row.get(item_id)
        return None if row is None else self._mat[row]

    def vectors_of(self, item_ids: Sequence[str]) -> npt.NDArray[np.float32]:
        """Vectors of known ``item_ids``, one row each, in order."""
        return self._mat[[self._row[i] for i in item_ids]]

    def row_of(self, item_id: str) -> int | None:
        return self._row.get(item_id)

    def item_at(self, row: int) -> str:
        return self._ids[row]

    def title(self, item_id: str) -> str:
        return self._titles[self._row[item_id]]

    def scenes_of(self, item_id: str) -> tuple[str, ...]:
        return self._scenes[self._row[item_id]]

    def shared_fact(self, a: str, b: str) -> str | None:
        """The KG fact items ``a`` and ``b`` share that the fewest items have, if any."""
        ra, rb = self._row.get(a), self._row.get(b)
        if ra is None or rb is None:
            return None
        shared = self._facts[ra] & self._facts[rb]
        if not shared:
            return None
        return min(shared, key=lambda f: (self._fact_items[f], f))

    def popularity(self, item_id: str) -> float:
        """Decayed click count as of the latest click seen."""
        return float(self._pop.counts()[self._row[item_id]])

    def count_click(self, item_id: str, ts: float | None = None) -> None:
        """One click at event time ``ts`` (None: at the latest time seen)."""
        row = self._row.get(item_id)
        if row is not None:
            now = self._pop.now
            self._pop.add(row, ts if ts is not None else (now if now is not None else 0.0))

    def record_click(self, item_id: str, ts: float | None, state: UserState) -> None:
        """A click by the user of ``state``, *before* the state takes it in: popularity,
        and the transitions and co-occurrence it adds to what the user had."""
        self.count_click(item_id, ts)
        row = self._row.get(item_id)
        if self.collab is None or row is None:
            return
        if ts is None:
            ts = self._pop.now if self._pop.now is not None else 0.0
        history = self.rows(state.recent).tolist()
        seen = None if item_id in state.seen else self.rows(state.seen)
        self.collab.observe(history, seen, row, ts)

    def set_half_life(self, half_life_s: float) -> None:
        """Popularity's half-life from now on (the counts so far stay as they are)."""
        self._pop.set_half_life(half_life_s)

    def log_popularity(self) -> npt.NDArray[np.float64]:
        """``log`` decayed click counts of the live rows (see ``DecayedPopularity``)."""
        return self._pop.log_scores()[: len(self._ids)]

    def rows(self, item_ids: Iterable[str]) -> npt.NDArray[np.intp]:
        """Rows of the known ``item_ids`` (unknown ids are skipped)."""
        ids = list(item_ids)
        try:  # the common case, all known: a C-level map is ~3x faster than a generator
            return np.fromiter(map(self._row.__getitem__, ids), dtype=np.intp, count=len(ids))
        except KeyError:
            return np.fromiter(
                (r for i in ids if (r := self._row.get(i)) is not None), dtype=np.intp
            )

    def rank(
        self,
        query: Vector | None,
        k: int,
        scene: str | None = None,
        exclude_rows: npt.NDArray[np.intp] | None = None,
        sim_weight: float = SIM_WEIGHT,
    ) -> list[Ranked]:
        """Top ``k`` by ``log pop_now + sim_weight * query · i`` (popularity alone if no query).

        Ties break by row order (a stable sort), so the same state ranks the same way.
        """
        return self.rank_many([RankQuery(query, scene, exclude_rows)], k, sim_weight)[0]

    def rank_many(
        self, queries: Sequence[RankQuery], k: int, sim_weight: float = SIM_WEIGHT
    ) -> list[list[Ranked]]:
        """:meth:`rank` for each of ``queries``, with one matrix product for all of them."""
        n = len(self._ids)
        if n == 0 or not queries:
            return [[] for _ in queries]
        pop = self.log_popularity()
        with_vec = [j for j, q in enumerate(queries) if q.query is not None]
        sims: npt.NDArray[np.float32] | None = None
        if with_vec:
            sims = self._similarities([queries[j].query for j in with_vec], n)
        row_of = {j: r for r, j in enumerate(with_vec)}
        zeros: npt.NDArray[np.float64] | None = None
        out: list[list[Ranked]] = []
        for j, q in enumerate(queries):
            if sims is not None and j in row_of:
                sim = sims[row_of[j]].astype(np.float64)
            else:
                zeros = np.zeros(n, dtype=np.float64) if zeros is None else zeros
                sim = zeros
            out.append(self._top(pop, sim, k, q.scene, q.exclude_rows, sim_weight))
        return out

    def _similarities(self, queries: Sequence[Vector | None], n: int) -> npt.NDArray[np.float32]:
        """``self._mat[:n] @ q`` for every query, one row each; bit for bit below
        ``GEMM_MIN_ROWS`` items.

        The matrix is read in blocks of rows, each used for all queries while it is in
        cache: a 100,000 x 384 matrix is read from memory once per batch instead of once per
        query (3-4x faster). Below ``GEMM_MIN_ROWS`` each product is a matrix-vector
        product, the same BLAS call on the same rows as a product over the whole matrix,
        so the values are identical. From there on, one matrix-matrix product per block
        for all queries, faster again but not bit for bit (``GEMM_MIN_ROWS`` says how).
        """
        stacked = [np.asarray(q, dtype=np.float32) for q in queries]
        sims = np.empty((len(stacked), n), dtype=np.float32)
        # Fast, not bit for bit (GEMM_MIN_ROWS says how).
        q_mat = np.stack(stacked) if n >= GEMM_MIN_ROWS and len(stacked) > 1 else None

        def products(starts: range) -> None:
            for start in starts:
                stop = min(n, start + _ROW_BLOCK)
                block = self._mat[start:stop]
                if q_mat is not None:
                    np.matmul(q_mat, block.T, out=sims[:, start:stop])
                    continue
                for r, q in enumerate(stacked):
                    np.matmul(block, q, out=sims[r, start:stop])

        starts = range(0, n, _ROW_BLOCK)
        parts = max(1, min(self._threads, len(starts)))
        with _BLAS.limit(limits=1, user_api="blas"):
            if parts == 1:
                products(starts)
                return sims
            # Every part computes whole blocks with the same calls as one thread would, so
            # the values do not depend on the number of threads. Blocks dealt round-robin.
            pool = _block_pool(parts - 1)
            futures: list[Future[None]] = []
            try:
                futures = [pool.submit(products, starts[p::parts]) for p in range(1, parts)]
                products(starts[::parts])
            finally:
                for f in futures:  # never return (or raise) while a thread still writes
                    f.result()
        return sims

    def _top(
        self,
        pop: npt.NDArray[np.float64],
        sim: npt.NDArray[np.float64],
        k: int,
        scene: str | None,
        exclude_rows: npt.NDArray[np.intp] | None,
        sim_weight: float,
    ) -> list[Ranked]:
        scores = pop + sim_weight * sim
        cand, top = self.select(scores, k, scene, exclude_rows)
        if cand.size == 0:
            return []
        pop_mid, sim_mid = _median(pop[cand]), _median(sim[cand])
        return [
            Ranked(
                self._ids[r],
                float(scores[r]),
                float(pop[r] - pop_mid),
                float(sim_weight * (sim[r] - sim_mid)),
            )
            for r in top
        ]

    def select(
        self,
        scores: npt.NDArray[np.float64],
        k: int,
        scene: str | None,
        exclude_rows: npt.NDArray[np.intp] | None,
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """The candidate rows (in ``scene``, not excluded) and the best ``k`` of them.

        Ties break by row order (a stable sort), so the same state ranks the same way.
        """
        n = scores.shape[0]
        if scene is not None:
            valid = self._scene_mask(scene)[:n].copy()
        else:
            valid = np.ones(n, dtype=np.bool_)
        if exclude_rows is not None and exclude_rows.size:
            valid[exclude_rows] = False
        cand = np.flatnonzero(valid)
        if cand.size == 0:
            return cand, cand
        return cand, cand[_stable_top_k(-scores[cand], k)]

    def similarities(self, queries: Sequence[Vector]) -> npt.NDArray[np.float32]:
        """``item vectors @ q`` for each query, one row each (see :meth:`_similarities`)."""
        return self._similarities(queries, len(self._ids))


class SceneModel(Protocol):
    """Turns a user's state into the vector ``u_s`` of one feed; ``gates`` give ``u_s ⊙ g_s``.

    :class:`embeddings.colearn.CoLearner` is one (learned gates, scenes borrowing from
    related scenes); :class:`GatedScenes` is the plain one.
    """

    @property
    def gates(self) -> SceneGates: ...

    def scene_vector(self, state: UserState, scene: str | None) -> Vector | None: ...


@dataclass(frozen=True)
class GatedScenes:
    """A sparse scene borrows from the global vector only (``UserState.scene_vector``)."""

    gates: SceneGates

    def scene_vector(self, state: UserState, scene: str | None) -> Vector | None:
        return state.global_vec if scene is None else state.scene_vector(scene)


def _scene_model(scenes: SceneGates | SceneModel) -> SceneModel:
    return GatedScenes(scenes) if isinstance(scenes, SceneGates) else scenes


@dataclass(frozen=True)
class RankQuery:
    """One ranking request: a query vector (None: popularity only), a scene, rows to skip."""

    query: Vector | None
    scene: str | None = None
    exclude_rows: npt.NDArray[np.intp] | None = None


#: Arrays at least this long get the sampled selections below; shorter ones one partition.
_SAMPLED_MIN = 8192
#: Every this many values make the sample: 6,250 of 100,000.
_SAMPLE_STEP = 16


def _repeated_kth(x: npt.NDArray[np.float64], k: int) -> tuple[float, int] | None:
    """The k-th smallest value (0-based) of a long 1-d array without NaN, and how many
    values are below it, when one value repeats all around that rank, else None: a sorted
    sample says so, and two counts confirm it.

    numpy's partition at one index (x86-simd-sort's quickselect) took 0.3 ms on 100,000
    distinct values here, but 2.3-3.8 ms when most of them were equal, as log popularity is
    on a large catalog where most items were never clicked (docs/benchmarks.md). Counting
    takes 0.05 ms.
    """
    n = x.shape[0]
    if n < _SAMPLED_MIN:
        return None
    sample = np.sort(x[::_SAMPLE_STEP])
    j = k * sample.shape[0] // n
    w = 4 * math.isqrt(sample.shape[0]) + 1  # about 4 standard deviations of the estimate
    value = sample[max(j - w, 0)]
    if value != sample[min(j + w, sample.shape[0] - 1)]:
        return None
    below = int(np.count_nonzero(x < value))
    if below <= k < np.count_nonzero(x <= value):
        return float(value), below
    return None


def _median(x: npt.NDArray[np.float64]) -> float:
    """``float(np.median(x))`` of a non-empty 1-d array: the same value, faster.

    numpy's median partitions at two or three places (the middle ones, and the last to find
    a NaN): 0.6-1.3 ms on 100,000 values here. One partition at the middle took 0.3 ms on
    distinct values (:func:`_repeated_kth` handles the case where it is slow); the lower
    middle value of an even length is then the largest of the lower half, and a NaN
    anywhere makes the median NaN, as in numpy. The mean of the two middle values is
    ``(a + b) / 2``, as numpy computes it.
    """
    m = x.shape[0]
    if np.isnan(x.max()):
        return math.nan
    h = m // 2
    repeated = _repeated_kth(x, h)
    if repeated is not None and (m % 2 or repeated[1] <= h - 1):
        return repeated[0]  # for an even length the lower middle value is the same one
    part = np.partition(x, h)
    if m % 2:
        return float(part[h])
    return float((part[:h].max() + part[h]) / 2)


def medians(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """:func:`_median` of each row of a 2-d array with no NaN, with one partition call."""
    m = x.shape[1]
    h = m // 2
    if m % 2:
        return np.partition(x, h, axis=1)[:, h]
    part = np.partition(x, (h - 1, h), axis=1)
    out: npt.NDArray[np.float64] = (part[:, h - 1] + part[:, h]) / 2
    return out


def _stable_top_k(keys: npt.NDArray[np.float64], k: int) -> npt.NDArray[np.intp]:
    """``np.argsort(keys, kind="stable")[:k]`` without sorting all of ``keys``.

    Everything strictly below the k-th smallest key is in, and so is every key equal to it;
    a stable sort of those few gives the same first ``k`` (ties in index order). On a long
    array the k-th smallest of a sample bounds that key from above (at least ``k`` keys are
    at or below it), so the keys up to it hold the answer, without a partition of all of
    them (that took 1.1-1.3 ms on 100,000 scores here, against 0.1 ms).
    """
    if k <= 0:
        return np.empty(0, dtype=np.intp)
    n = keys.shape[0]
    if n <= 4 * k:
        return np.argsort(keys, kind="stable")[:k]
    near: npt.NDArray[np.intp] | None = None
    if n >= _SAMPLED_MIN and n >= _SAMPLE_STEP * 8 * k:
        bound = np.partition(keys[::_SAMPLE_STEP], k - 1)[k - 1]
        if not np.isnan(bound):
            near = np.flatnonzero(keys <= bound)
            if near.shape[0] > n // 8:  # many keys tie at the bound: the general way
                near = None
    if near is None:
        kth = np.partition(keys, k - 1)[k - 1]
        if np.isnan(kth):  # fewer than k comparable keys: let argsort place the NaNs
            return np.argsort(keys, kind="stable")[:k]
        near = np.flatnonzero(keys <= kth)
    return near[np.argsort(keys[near], kind="stable")[:k]]


def recommend(
    state: UserState,
    index: ItemIndex,
    scenes: SceneGates | SceneModel,
    k: int,
) -> dict[str, list[Scored]]:
    """Top-k for the global feed and for every scene the user is active in.

    ``scenes``: gates alone (a sparse scene borrows from the global vector) or a full
    :class:`SceneModel` such as a fitted ``CoLearner``.
    """
    return recommend_many([state], index, scenes, k)[0]


def recommend_many(
    states: Sequence[UserState],
    index: ItemIndex,
    scenes: SceneGates | SceneModel,
    k: int,
) -> list[dict[str, list[Scored]]]:
    """:func:`recommend` for each of ``states``: every (user, scene) query in one product.

    Scores are ``log pop_now + SIM_WEIGHT * (u ⊙ s) · i``; the worker ranks with the
    tenure blend of ``embeddings.blended`` instead, which reuses this module's parts.
    """
    model = _scene_model(scenes)
    plans: list[tuple[UserState, History | None, list[tuple[str, Vector | None]]]] = []
    queries: list[RankQuery] = []
    for state in states:
        # Per user, not per scene: the seen rows and the recent items' vectors (for reasons).
        seen_rows = index.rows(state.seen)
        recent = [i for i in state.recent if i in index]
        history = History(recent, index.vectors_of(recent)) if recent else None
        lists: list[tuple[str, Vector | None]] = []
        for scene in [None, *state.active_scenes]:
            user_vec = model.scene_vector(state, scene)
            query = None if user_vec is None else model.gates.apply(scene or GLOBAL, user_vec)
            queries.append(RankQuery(query, scene, seen_rows))
            lists.append((scene or GLOBAL, user_vec))
        plans.append((state, history, lists))
    ranked = iter(index.rank_many(queries, k))
    out: list[dict[str, list[Scored]]] = []
    for state, history, lists in plans:
        recs: dict[str, list[Scored]] = {}
        for name, user_vec in lists:
            recs[name] = [
                Scored(r.item_id, r.score, explain(state, index, r, name, user_vec, history))
                for r in next(ranked)
            ]
        out.append(recs)
    return out


@dataclass(frozen=True)
class History:
    """A user's recent items that are in the index, and their vectors (one row each)."""

    item_ids: list[str]
    vectors: npt.NDArray[np.float32]
    #: Rows of ``item_ids`` (oldest first) and of every item the user had, for reasons
    #: that name where transitions or co-occurrence came from (the blended ranking).
    rows: Sequence[int] = ()
    seen_rows: Rows = ()
    #: (term, item row) -> the row that reason names: a user's feeds share many items.
    sources: dict[tuple[int, int], int | None] = field(default_factory=dict)

    def source(self, collab: Collaborative, term: int, target: int) -> int | None:
        if (term, target) not in self.sources:
            self.prefetch(collab, term, [target])
        return self.sources[term, target]

    def prefetch(self, collab: Collaborative, term: int, targets: Sequence[int]) -> None:
        """Find the sources of many targets at once (one array operation for a whole list)."""
        todo = [t for t in targets if (term, t) not in self.sources]
        rows = self.rows if term == TRANSITIONS else self.seen_rows
        for t, src in zip(todo, collab.strongest_sources(term, rows, todo), strict=True):
            self.sources[term, t] = src


def explain(
    state: UserState,
    index: ItemIndex,
    ranked: Ranked,
    scene: str,
    user_vec: Vector | None,
    history: History | None,
) -> str:
    """Name what lifted the item most: popularity now, or one source of the user's vector.

    The user's vector is a weighted mean of what pulled it: the items they engaged with,
    their profile text, and the users they follow (their vectors when they pulled). The
    source most similar to the candidate is the largest single term of its similarity, and
    that source is what the reason names. When it is an item that shares a knowledge-graph
    fact with the candidate, the rarest shared fact is named too: the KG part of both
    vectors is built from those facts.
    """
    where = "across scenes" if scene == GLOBAL else f"in {scene}"
    item_id = ranked.item_id
    term = ranked.lead or leading_term(ranked, user_vec is not None)
    if term in ("transitions", "cooccurrence"):
        reason = _collaborative_reason(index, item_id, term, where, history)
        if reason is not None:
            return reason
        term = "popularity"
    if term == "popularity":
        return f"popular now {where} ({index.popularity(item_id):.1f} recent clicks)"
    cand = index.vector(item_id)
    if cand is None:
        return f"{where}: close to your taste"
    sources: list[tuple[float, str, str]] = []  # (similarity, kind, name), best first below
    if history is not None:
        sims = history.vectors @ cand
        j = int(np.argmax(sims))  # the first of equal maxima, in recency order
        sources.append((float(sims[j]), "item", history.item_ids[j]))
    if state.profile_vec is not None:
        sources.append((float(state.profile_vec @ cand), "profile", ""))
    for user, vec in state.pulled_by.items():
        sources.append((float(vec @ cand), "user", user))
    if not sources:
        return f"{where}: close to your taste"
    _, kind, name = max(sources, key=lambda t: (t[0], -_SOURCE_RANK[t[1]]))
    if kind == "item":
        reason = f"{where}: similar to '{index.title(name)}' you engaged with"
        fact = index.shared_fact(item_id, name)
        return reason if fact is None else f"{reason}; both have {fact_label(fact)}"
    if kind == "user":
        return f"{where}: close to the taste of {name}, whom you follow"
    return f"{where}: matches your profile"


#: The terms :func:`leading_terms` compares, in its tie order.
TERMS = ("similarity", "popularity", "transitions", "cooccurrence")


def leading_terms(lifts: npt.NDArray[np.float64], has_vector: bool) -> list[str]:
    """The term that lifted each item most; ``lifts`` is ``(len(TERMS), n_items)``.

    Similarity counts only for a user with a vector, transitions and co-occurrence only
    when they lift the item; on a tie the earlier term in ``TERMS`` wins.
    """
    masked = lifts.copy()
    if not has_vector:
        masked[0] = -np.inf
    masked[2:][masked[2:] <= 0] = -np.inf  # collaborative terms count only when they lift
    return [TERMS[t] for t in np.argmax(masked, axis=0)]  # argmax: the first of equal maxima


def leading_term(ranked: Ranked, has_vector: bool) -> str:
    """The term that lifted the item most (what :func:`explain` names): :func:`leading_terms`
    for one item, so both follow one rule."""
    lifts = np.array(
        [
            [ranked.similarity_lift],
            [ranked.popularity_lift],
            [ranked.transition_lift],
            [ranked.cooccurrence_lift],
        ]
    )
    return leading_terms(lifts, has_vector)[0]


def _collaborative_reason(
    index: ItemIndex, item_id: str, term: str, where: str, history: History | None
) -> str | None:
    """Name the earlier item of the user's that sent the most transition (or co-occurrence)
    mass to ``item_id``: the click the recommendation follows from."""
    collab, target = index.collab, index.row_of(item_id)
    if collab is None or target is None:
        return None
    if term == "transitions":
        if history is None or not history.rows:  # no event yet: scored by the start row
            return f"{where}: what new users have been starting with lately"
        src = history.source(collab, TRANSITIONS, target)
        if src is None:
            return None
        title = index.title(index.item_at(src))
        return f"{where}: people who engaged with '{title}', as you did, went on to this"
    if history is None:
        return None
    src = history.source(collab, COOCCURRENCE, target)
    if src is None:
        return None
    title = index.title(index.item_at(src))
    return f"{where}: the same people engaged with this and with '{title}', which you had"


#: Highest similarity wins in :func:`explain`; on a tie, an item before the profile before
#: a followed user.
_SOURCE_RANK = {"item": 0, "profile": 1, "user": 2}


def fact_label(fact: str) -> str:
    """``"film.film.directed_by m.0abc"`` -> ``"the KG fact film.film.directed_by m.0abc"``.

    An inverse relation (``~film.producer.film m.0xyz``: the item is the triple's tail) is
    written as the triple reads, ``m.0xyz film.producer.film``.
    """
    relation, _, target = fact.partition(" ")
    if relation.startswith("~"):
        return f"the KG fact {target} {relation[1:]}".rstrip()
    return f"the KG fact {relation} {target}".rstrip()


def to_payload(recs: Mapping[str, list[Scored]]) -> dict[str, list[dict[str, object]]]:
    return {
        scene: [{"item_id": s.item_id, "score": round(s.score, 6), "reason": s.reason} for s in lst]
        for scene, lst in recs.items()
    }

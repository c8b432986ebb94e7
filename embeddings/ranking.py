"""The item index every ranking reads, and the parts of a ranked list: selection, reasons.

:class:`ItemIndex` holds every item's fused vector, title, scenes and knowledge-graph
facts by row, and the :func:`~embeddings.itemstats.item_key` of each row (how the
item-stats rows that workers share name items). The scores themselves are the tenure
blend of ``embeddings.blended``, over the whole catalog or over candidates; this module
selects the top of a score vector (ties by row, without sorting everything), finds the
term that lifted each item most, and writes the reason a recommended item carries.

Item products run with one BLAS thread: OpenBLAS's threads on these small products cost
more than they gain on a loaded machine. On catalogs of two blocks or more,
:meth:`ItemIndex.set_threads` shares the blocks among threads instead, each block still one
single-threaded BLAS call, so every value stays the same bit for bit.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from threadpoolctl import ThreadpoolController

from embeddings.collaborative import COOCCURRENCE, TRANSITIONS, Collaborative
from embeddings.itemstats import item_key
from embeddings.scenes import SceneGates
from embeddings.user_model import UserState
from embeddings.vectors import Rows, Vector

log = logging.getLogger(__name__)
GLOBAL = "global"

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
    """Item vectors, titles, scenes, knowledge-graph facts and item keys, indexed by row."""

    def __init__(self, dim: int, threads: int = 1) -> None:
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
        self._scene_rows: dict[str, npt.NDArray[np.bool_]] = {}
        self._keys = np.zeros(0, dtype=np.int64)
        #: ``_keys`` sorted, and the row of each (built on demand: :meth:`rows_of_keys`).
        self._key_order: tuple[npt.NDArray[np.int64], npt.NDArray[np.intp]] | None = None

    def set_threads(self, threads: int) -> None:
        """Threads that share the blocks of the item product (:meth:`_similarities`).

        numpy releases the GIL inside each block's BLAS call; catalogs of one block (up to
        4,096 items) always use one.
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
            self._keys[row] = item_key(item_id)
            self._key_order = None
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
        keys = np.zeros(cap, dtype=np.int64)
        keys[: self._keys.shape[0]] = self._keys
        self._keys = keys
        for scene, mask in list(self._scene_rows.items()):
            grown = np.zeros(cap, dtype=np.bool_)
            grown[: mask.shape[0]] = mask
            self._scene_rows[scene] = grown

    def _scene_mask(self, scene: str) -> npt.NDArray[np.bool_]:
        mask = self._scene_rows.get(scene)
        if mask is None:
            mask = np.zeros(self._mat.shape[0], dtype=np.bool_)
            self._scene_rows[scene] = mask
        return mask

    def scene_rows(self, scene: str | None) -> npt.NDArray[np.bool_] | None:
        """Which rows are in ``scene`` (None: every row, no mask)."""
        return None if scene is None else self._scene_mask(scene)[: len(self._ids)]

    def scenes(self) -> list[str]:
        """Every scene some item is in."""
        return [s for s, mask in self._scene_rows.items() if mask[: len(self._ids)].any()]

    def vector(self, item_id: str) -> Vector | None:
        row = self._row.get(item_id)
        return None if row is None else self._mat[row]

    def vectors_of(self, item_ids: Sequence[str]) -> npt.NDArray[np.float32]:
        """Vectors of known ``item_ids``, one row each, in order."""
        return self._mat[[self._row[i] for i in item_ids]]

    def vectors_at(self, rows: npt.NDArray[np.intp]) -> npt.NDArray[np.float32]:
        """Vectors of item ``rows``, one row each."""
        return self._mat[rows]

    def row_of(self, item_id: str) -> int | None:
        return self._row.get(item_id)

    def item_at(self, row: int) -> str:
        return self._ids[row]

    def key_at(self, row: int) -> int:
        """The item-stats key of ``row`` (:func:`embeddings.itemstats.item_key`)."""
        return int(self._keys[row])

    def rows_of_keys(self, keys: npt.NDArray[np.int64]) -> npt.NDArray[np.intp]:
        """The row of each item-stats key; -1 for a key of no item indexed yet."""
        if self._key_order is None:
            n = len(self._ids)
            order = np.argsort(self._keys[:n], kind="stable")
            self._key_order = (self._keys[:n][order], order.astype(np.intp))
        sorted_keys, rows = self._key_order
        if not sorted_keys.shape[0]:
            return np.full(keys.shape[0], -1, dtype=np.intp)
        at = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.shape[0] - 1)
        return np.where(sorted_keys[at] == keys, rows[at], -1)

    def title(self, item_id: str) -> str:
        return self._titles[self._row[item_id]]

    def scenes_of(self, item_id: str) -> tuple[str, ...]:
        return self._scenes[self._row[item_id]]

    def facts_of(self, item_id: str) -> tuple[str, ...]:
        return tuple(sorted(self._facts[self._row[item_id]]))

    def shared_fact(self, a: str, b: str) -> str | None:
        """The KG fact items ``a`` and ``b`` share that the fewest items have, if any."""
        ra, rb = self._row.get(a), self._row.get(b)
        if ra is None or rb is None:
            return None
        shared = self._facts[ra] & self._facts[rb]
        if not shared:
            return None
        return min(shared, key=lambda f: (self._fact_items[f], f))

    def rows(self, item_ids: Iterable[str]) -> npt.NDArray[np.intp]:
        """Rows of the known ``item_ids`` (unknown ids are skipped)."""
        ids = list(item_ids)
        try:  # the common case, all known: a C-level map is ~3x faster than a generator
            return np.fromiter(map(self._row.__getitem__, ids), dtype=np.intp, count=len(ids))
        except KeyError:
            return np.fromiter(
                (r for i in ids if (r := self._row.get(i)) is not None), dtype=np.intp
            )

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


#: Arrays at least this long get the sampled selection of :func:`_stable_top_k`.
_SAMPLED_MIN = 8192
#: Every this many values make the sample: 6,250 of 100,000.
_SAMPLE_STEP = 16


def medians(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The median of each row of a 2-d array with no NaN, with one partition call."""
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


class History:
    """A user's recent items that are in the index, for the reasons of their lists."""

    def __init__(
        self, index: ItemIndex, item_ids: list[str], rows: Sequence[int], seen_rows: Rows
    ) -> None:
        self.index = index
        self.item_ids = item_ids
        #: Rows of ``item_ids`` (oldest first) and of every item the user had, for reasons
        #: that name where transitions or co-occurrence came from.
        self.rows = rows
        self.seen_rows = seen_rows
        #: (term, item row) -> the row that reason names: a user's feeds share many items.
        self.sources: dict[tuple[int, int], int | None] = {}
        self._vectors: npt.NDArray[np.float32] | None = None

    @property
    def vectors(self) -> npt.NDArray[np.float32]:
        """The recent items' vectors, one row each (gathered when a reason needs them)."""
        if self._vectors is None:
            self._vectors = self.index.vectors_of(self.item_ids)
        return self._vectors

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
    stats: Collaborative,
    ranked: Ranked,
    scene: str,
    user_vec: Vector | None,
    history: History | None,
) -> str:
    """:func:`explain_many` for one item."""
    return explain_many(state, index, stats, [ranked], scene, user_vec, history)[0]


def explain_many(
    state: UserState,
    index: ItemIndex,
    stats: Collaborative,
    ranked: Sequence[Ranked],
    scene: str,
    user_vec: Vector | None,
    history: History | None,
) -> list[str]:
    """Name what lifted each item most: popularity now, the earlier click the transitions
    or co-occurrence came from, or one source of the user's vector.

    The user's vector is a weighted mean of what pulled it: the items they engaged with,
    their profile text, and the users they follow (their vectors when they pulled). The
    source most similar to the candidate is the largest single term of its similarity, and
    that source is what the reason names (on a tie: an item, the most recent first, then
    the profile, then a followed user). When it is an item that shares a knowledge-graph
    fact with the candidate, the rarest shared fact is named too: the KG part of both
    vectors is built from those facts. The similarities of a whole list come from one
    product.
    """
    where = "across scenes" if scene == GLOBAL else f"in {scene}"
    out: list[str | None] = [None] * len(ranked)
    taste: list[int] = []  # positions whose reason is a source of the user's vector
    for j, r in enumerate(ranked):
        term = r.lead or leading_term(r, user_vec is not None)
        if term in ("transitions", "cooccurrence"):
            out[j] = _collaborative_reason(index, stats, r.item_id, term, where, history)
            if out[j] is not None:
                continue
            term = "popularity"
        if term == "popularity":
            row = index.row_of(r.item_id)
            clicks = 0.0 if row is None else stats.popularity(row)
            out[j] = f"popular now {where} ({clicks:.1f} recent clicks)"
        else:
            taste.append(j)
    if taste:
        reasons = _taste_reasons(state, index, ranked, taste, where, history)
        for j, reason in zip(taste, reasons, strict=True):
            out[j] = reason
    return [r or f"{where}: close to your taste" for r in out]


def _taste_reasons(
    state: UserState,
    index: ItemIndex,
    ranked: Sequence[Ranked],
    positions: Sequence[int],
    where: str,
    history: History | None,
) -> list[str]:
    """The reasons of the items lifted by the user's taste: the closest source each."""
    kinds: list[tuple[str, str]] = []  # (kind, name), in tie order: items, profile, users
    vecs: list[Vector] = []
    if history is not None:
        kinds += [("item", i) for i in history.item_ids]
        vecs += list(history.vectors)
    if state.profile_vec is not None:
        kinds.append(("profile", ""))
        vecs.append(state.profile_vec)
    for user, vec in state.pulled_by.items():
        kinds.append(("user", user))
        vecs.append(vec)
    ids = [ranked[j].item_id for j in positions]
    if not kinds:
        return [f"{where}: close to your taste"] * len(ids)
    sims = np.stack(vecs) @ index.vectors_of(ids).T  # (sources, items)
    out = []
    for item_id, best in zip(ids, np.argmax(sims, axis=0).tolist(), strict=True):
        kind, name = kinds[best]  # argmax: the first of equal maxima, in tie order
        if kind == "item":
            reason = f"{where}: similar to '{index.title(name)}' you engaged with"
            fact = index.shared_fact(item_id, name)
            out.append(reason if fact is None else f"{reason}; both have {fact_label(fact)}")
        elif kind == "user":
            out.append(f"{where}: close to the taste of {name}, whom you follow")
        else:
            out.append(f"{where}: matches your profile")
    return out


#: The terms :func:`leading_terms` compares, in its tie order.
TERMS = ("similarity", "popularity", "transitions", "cooccurrence")


def leading_terms(lifts: npt.NDArray[np.float64], has_vector: bool) -> list[str]:
    """The term that lifted each item most; ``lifts`` is ``(len(TERMS), n_items)``.

    Similarity counts only for a user with a vector, transitions and co-occurrence only
    when they lift the item; on a tie the earlier term in ``TERMS`` wins.
    """
    return leading_terms_masked(lifts, np.full(lifts.shape[1], has_vector))


def leading_terms_masked(
    lifts: npt.NDArray[np.float64], has_vector: npt.NDArray[np.bool_]
) -> list[str]:
    """:func:`leading_terms` with a ``has_vector`` flag per item (items of many feeds)."""
    masked = lifts.copy()
    masked[0][~has_vector] = -np.inf
    masked[2:][masked[2:] <= 0] = -np.inf  # collaborative terms count only when they lift
    return [TERMS[t] for t in np.argmax(masked, axis=0).tolist()]  # the first of equal maxima


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
    index: ItemIndex,
    collab: Collaborative,
    item_id: str,
    term: str,
    where: str,
    history: History | None,
) -> str | None:
    """Name the earlier item of the user's that sent the most transition (or co-occurrence)
    mass to ``item_id``: the click the recommendation follows from."""
    target = index.row_of(item_id)
    if target is None:
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

"""The ranking every feed gets: the tenure blend over the whole catalog or over candidates.

Every feed (``global`` and each scene) scores items by ``w(tenure) @ [popularity,
transitions, similarity, co-occurrence, gated similarity]`` (``embeddings.collaborative.
COMPONENTS``), the weights depending on how many events the user has (``embeddings.blend``).
A scene feed differs from the global one in its query, the user's scene vector
(``SceneModel.scene_vector``: borrowing, with co-learning, from related scenes), in its gate
and in ranking that scene's items only.

Up to :attr:`CandidateConfig.exact_max_items` items, every item is scored. Beyond, a feed
scores only its candidates, the union of:

* the items the user's recent items lead to (transitions) and that the same people had
  with their last items (co-occurrence), the strongest of each;
* the items nearest to the feed's query ``u ⊙ s`` (:class:`NearestItems`: the vector
  store's HNSW index in the worker, an exact search in the harness);
* what is popular now in the feed's scene, and what new users start with.

So the cost of a feed is bounded by its candidates, not by the catalog. The harness and
the worker run this same code (``evaluation/scenerec_model.py``, ``streams/pipeline.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from embeddings.collaborative import (
    COOCCURRENCE,
    GATED,
    POPULARITY,
    SIMILARITY,
    TRANSITIONS,
    Collaborative,
    FeedBlend,
    dense_feature,
)
from embeddings.ranking import (
    GLOBAL,
    History,
    ItemIndex,
    Ranked,
    SceneModel,
    Scored,
    _stable_top_k,
    explain_many,
    leading_terms,
    medians,
)
from embeddings.user_model import UserState
from embeddings.vectors import Vector

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
#: A feed to rank: None is the global feed, a string that scene's.
Feed = str | None


@dataclass(frozen=True)
class CandidateConfig:
    """How many items each source offers a feed, and up to which catalog size a feed
    scores every item instead (0: always candidates)."""

    neighbours: int = 100
    nearest: int = 100
    popular: int = 100
    start: int = 50
    exact_max_items: int = 5000
    #: Item-statistics updates between two computations of the popular-now lists.
    popular_refresh: int = 1000

    def exact(self, n_items: int) -> bool:
        return n_items <= self.exact_max_items


class NearestItems(Protocol):
    """The ``k`` items of highest ``query · i`` for each query, in its scene (None: any)."""

    def nearest(
        self, queries: Sequence[Vector], scenes: Sequence[Feed], k: int
    ) -> list[IntArray]: ...


@dataclass(frozen=True)
class ExactNearest:
    """:class:`NearestItems` by scoring every item (the harness, small catalogs, tests)."""

    index: ItemIndex

    def nearest(self, queries: Sequence[Vector], scenes: Sequence[Feed], k: int) -> list[IntArray]:
        if not queries or not len(self.index):
            return [np.zeros(0, np.intp) for _ in queries]
        sims = self.index.similarities(queries)
        out = []
        for sim, scene in zip(sims, scenes, strict=True):
            mask = self.index.scene_rows(scene)
            rows = np.flatnonzero(mask) if mask is not None else np.arange(sim.shape[0])
            out.append(rows[_stable_top_k(-sim[rows].astype(np.float64), k)])
        return out


@dataclass
class _Feed:
    name: str
    scene: str | None
    user_vec: Vector | None
    sim: int | None  # row in the batch's similarity matrix, or of its nearest lists
    gated: int | None


@dataclass
class _Plan:
    state: UserState
    w: FloatArray
    seen_rows: IntArray
    trans: tuple[IntArray, FloatArray]
    cooc: tuple[IntArray, FloatArray]
    history: History | None
    feeds: list[_Feed]
    #: The transition and co-occurrence features of every row (exact ranking).
    dense: tuple[FloatArray, FloatArray] | None = None


class Ranker:
    """Ranks users' feeds with one blend, from one item index and one set of statistics."""

    def __init__(
        self,
        index: ItemIndex,
        stats: Collaborative,
        model: SceneModel,
        blend: FeedBlend,
        k: int,
        candidates: CandidateConfig | None = None,
        nearest: NearestItems | None = None,
    ) -> None:
        self.index, self.stats, self.model, self.blend, self.k = index, stats, model, blend, k
        self.candidates = candidates or CandidateConfig()
        self.nearest = nearest or ExactNearest(index)
        self._popular: dict[object, IntArray] = {}
        self._popular_version = -math.inf

    def exact(self) -> bool:
        """Whether feeds score every item (a catalog up to ``exact_max_items``)."""
        return self.candidates.exact(len(self.index))

    def rank(
        self, requests: Sequence[tuple[UserState, Sequence[Feed]]]
    ) -> list[dict[str, list[Scored]]]:
        """Top-k of each requested feed of each user, with reasons."""
        plans, queries = self._plan(requests)
        if self.exact():
            return self._rank_exact(plans, queries)
        return self._rank_candidates(plans, queries)

    def global_components(self, state: UserState) -> FloatArray:
        """The global feed's ``(len(COMPONENTS), n_items)`` features of every item row."""
        (plan,), queries = self._plan([(state, [None])], exclude_seen=False)
        sims = self.index.similarities(queries) if queries else None
        return np.stack(self._dense_components(plan, plan.feeds[0], sims, self._dense_pop()))

    def global_scores(self, state: UserState) -> FloatArray:
        """The global feed's score of every item row; -inf for a row that is no candidate.

        What the harness scores (the worker's lists are the top of these), unseen items
        included: the protocols leave out what they must.
        """
        n = len(self.index)
        (plan,), queries = self._plan([(state, [None])], exclude_seen=False)
        feed = plan.feeds[0]
        if self.exact():
            sims = self.index.similarities(queries) if queries else None
            comps = self._dense_components(plan, feed, sims, self._dense_pop())
            out: FloatArray = blend(plan.w[None, :], [c[None, :] for c in comps])[0]
            return out
        cand = self._candidate_rows(plan, feed, self._nearest_lists(plans=[plan], queries=queries))
        scores = np.full(n, -np.inf)
        if cand.size:
            comps = self._sparse_components(plan, feed, cand)
            scores[cand] = blend(plan.w[None, :], [c[None, :] for c in comps])[0]
        return scores

    # --- plans ----------------------------------------------------------------------------
    def _plan(
        self, requests: Sequence[tuple[UserState, Sequence[Feed]]], exclude_seen: bool = True
    ) -> tuple[list[_Plan], list[Vector]]:
        index, stats = self.index, self.stats
        stats.grow(len(index))  # rows for items no click has reached yet
        queries: list[Vector] = []

        def query(vec: Vector | None, wanted: bool) -> int | None:
            if vec is None or not wanted:
                return None
            queries.append(vec)
            return len(queries) - 1

        plans = []
        empty = (np.zeros(0, np.intp), np.zeros(0, np.float64))
        for state, wanted in requests:
            w = self.blend.blend.weights_for(state.n_events)
            seen_rows = index.rows(state.seen)
            recent = [i for i in state.recent if i in index]
            recent_rows = index.rows(recent).tolist()
            trans = stats.transition_mass(recent_rows) if w[TRANSITIONS] else empty
            cooc = stats.cooccurrence_mass(seen_rows) if w[COOCCURRENCE] else empty
            feeds = []
            for scene in wanted:
                user_vec = self.model.scene_vector(state, scene)
                gate = self.model.gates.gate(scene or GLOBAL)
                if scene is None and self.blend.global_gate is not None:
                    gate = self.blend.global_gate
                gated_vec = None
                if user_vec is not None and gate is not None:
                    gated_vec = (user_vec * gate).astype(np.float32)
                feeds.append(
                    _Feed(
                        scene or GLOBAL,
                        scene,
                        user_vec,
                        query(user_vec, bool(w[SIMILARITY])),
                        query(gated_vec, bool(w[GATED])),
                    )
                )
            history = (
                History(recent, index.vectors_of(recent), recent_rows, seen_rows)
                if recent
                else None
            )
            excluded = seen_rows if exclude_seen else np.zeros(0, np.intp)
            plans.append(_Plan(state, w, excluded, trans, cooc, history, feeds))
        return plans, queries

    # --- exact: every item ----------------------------------------------------------------
    def _dense_pop(self) -> FloatArray:
        return self.stats.log_popularity()[: len(self.index)]

    def _dense_components(
        self,
        plan: _Plan,
        feed: _Feed,
        sims: npt.NDArray[np.float32] | None,
        pop: FloatArray,
    ) -> tuple[FloatArray, ...]:
        n = len(self.index)
        zeros = np.zeros(n, np.float64)
        trans, cooc = self._user_terms(plan)
        sim = zeros if feed.sim is None or sims is None else sims[feed.sim].astype(np.float64)
        gated = zeros if feed.gated is None or sims is None else sims[feed.gated].astype(np.float64)
        return pop, trans, sim, cooc, gated

    def _user_terms(self, plan: _Plan) -> tuple[FloatArray, FloatArray]:
        """The user's transition and co-occurrence features of every item (all feeds')."""
        if plan.dense is None:
            n = len(self.index)
            plan.dense = (dense_feature(*plan.trans, n), dense_feature(*plan.cooc, n))
        return plan.dense

    def _rank_exact(
        self, plans: list[_Plan], queries: list[Vector]
    ) -> list[dict[str, list[Scored]]]:
        """Every feed of the batch scored over every item at once: one item product for
        all queries, the blend and the selection as whole-matrix operations."""
        n = len(self.index)
        feeds = [(plan, feed) for plan in plans for feed in plan.feeds]
        if not feeds or n == 0:
            return [{feed.name: [] for feed in plan.feeds} for plan in plans]
        pop = self._dense_pop()
        # The similarities of every query, and a row of zeros for feeds without one.
        sims = np.zeros((len(queries) + 1, n), np.float64)
        if queries:
            sims[:-1] = self.index.similarities(queries)
        none = len(queries)
        terms = [self._user_terms(plan) for plan in plans]
        user = np.array([u for u, plan in enumerate(plans) for _ in plan.feeds])
        trans = np.stack([t for t, _ in terms])[user]
        cooc = np.stack([c for _, c in terms])[user]
        sim = sims[[none if f.sim is None else f.sim for _, f in feeds]]
        gated = sims[[none if f.gated is None else f.gated for _, f in feeds]]
        w = np.stack([plan.w for plan, _ in feeds])
        comps = (np.broadcast_to(pop, sim.shape), trans, sim, cooc, gated)
        scores = blend(w, comps)
        valid = np.ones((len(feeds), n), np.bool_)
        for j, (plan, feed) in enumerate(feeds):
            mask = self.index.scene_rows(feed.scene)
            if mask is not None:
                valid[j] = mask
            valid[j, plan.seen_rows] = False
        tops = _top_rows(np.where(valid, -scores, np.inf), self.k)
        mids = _catalog_medians(pop, sims[:none], terms)
        out: list[dict[str, list[Scored]]] = []
        j = 0
        for u, plan in enumerate(plans):
            lists: list[tuple[_Feed, list[Ranked]]] = []
            for feed in plan.feeds:
                top = tops[j]
                mid = (
                    mids.pop,
                    mids.trans[u],
                    mids.sims[feed.sim] if feed.sim is not None else 0.0,
                    mids.cooc[u],
                    mids.sims[feed.gated] if feed.gated is not None else 0.0,
                )
                values = [c[j, top] for c in comps]
                lifts = _lifts_from(values, mid, plan.w, feed.user_vec is not None)
                lists.append((feed, self._ranked(top, scores[j, top], lifts)))
                j += 1
            out.append(self._explained(plan, lists))
        return out

    # --- candidates -----------------------------------------------------------------------
    def _rank_candidates(
        self, plans: list[_Plan], queries: list[Vector]
    ) -> list[dict[str, list[Scored]]]:
        nearest = self._nearest_lists(plans, queries)
        out = []
        for plan in plans:
            lists: list[tuple[_Feed, list[Ranked]]] = []
            for feed in plan.feeds:
                cand = self._candidate_rows(plan, feed, nearest)
                if cand.size == 0:
                    lists.append((feed, []))
                    continue
                comps = self._sparse_components(plan, feed, cand)
                scores = blend(plan.w[None, :], [c[None, :] for c in comps])[0]
                pick = _stable_top_k(-scores, self.k)
                lifts = _lifts(comps, plan.w, np.arange(cand.size), pick, feed.user_vec is not None)
                lists.append((feed, self._ranked(cand[pick], scores[pick], lifts)))
            out.append(self._explained(plan, lists))
        return out

    def _nearest_lists(self, plans: list[_Plan], queries: list[Vector]) -> list[IntArray]:
        """Each query's nearest items in its feed's scene (one call for the whole batch)."""
        scenes: list[Feed] = [None] * len(queries)
        for plan in plans:
            for feed in plan.feeds:
                for q in (feed.sim, feed.gated):
                    if q is not None:
                        scenes[q] = feed.scene
        if not queries:
            return []
        return self.nearest.nearest(queries, scenes, self.candidates.nearest)

    def _candidate_rows(self, plan: _Plan, feed: _Feed, nearest: list[IntArray]) -> IntArray:
        cfg = self.candidates
        parts = [
            _strongest(*plan.trans, cfg.neighbours),
            _strongest(*plan.cooc, cfg.neighbours),
            self._popular_rows(feed.scene),
            self._popular_rows(_START)[: cfg.start],
        ]
        parts += [nearest[q] for q in (feed.sim, feed.gated) if q is not None]
        cand = np.unique(np.concatenate(parts))
        mask = self.index.scene_rows(feed.scene)
        keep = np.ones(cand.shape[0], np.bool_) if mask is None else mask[cand]
        if plan.seen_rows.size:
            keep &= ~np.isin(cand, plan.seen_rows)
        return cand[keep]

    def _popular_rows(self, scene: object) -> IntArray:
        """The most popular rows now in ``scene`` (or the start row's strongest targets),
        recomputed every ``popular_refresh`` statistics updates."""
        if self.stats.version - self._popular_version >= self.candidates.popular_refresh:
            self._popular.clear()
            self._popular_version = self.stats.version
        rows = self._popular.get(scene)
        if rows is None:
            if scene is _START or not (scene is None or isinstance(scene, str)):
                rows = np.sort(_strongest(*self.stats.transition_mass([]), self.candidates.start))
            else:
                mask = self.index.scene_rows(scene)
                pool = np.flatnonzero(mask) if mask is not None else np.arange(len(self.index))
                pop = self.stats.log_popularity(pool)
                rows = np.sort(pool[_stable_top_k(-pop, self.candidates.popular)])
            self._popular[scene] = rows
        return rows

    def _sparse_components(
        self, plan: _Plan, feed: _Feed, cand: IntArray
    ) -> tuple[FloatArray, ...]:
        zeros = np.zeros(cand.shape[0], np.float64)
        pop = self.stats.log_popularity(cand)
        trans = np.log1p(_lookup(*plan.trans, cand)) if plan.trans[0].size else zeros
        cooc = np.log1p(_lookup(*plan.cooc, cand)) if plan.cooc[0].size else zeros
        sim = gated = zeros
        if feed.sim is not None or feed.gated is not None:
            vecs = self.index.vectors_at(cand)
            user_vec = feed.user_vec
            if feed.sim is not None and user_vec is not None:
                sim = (vecs @ user_vec).astype(np.float64)
            if feed.gated is not None and user_vec is not None:
                gate = self._gate(feed)
                gated = (vecs @ (user_vec * gate).astype(np.float32)).astype(np.float64)
        return pop, trans, sim, cooc, gated

    def _gate(self, feed: _Feed) -> Vector:
        gate = self.model.gates.gate(feed.scene or GLOBAL)
        if feed.scene is None and self.blend.global_gate is not None:
            gate = self.blend.global_gate
        assert gate is not None  # a gated query exists only with a gate
        return gate

    # --- lists and reasons ----------------------------------------------------------------
    def _ranked(
        self, rows: IntArray, scores: FloatArray, lifts: list[tuple[list[float], str]]
    ) -> list[Ranked]:
        return [
            Ranked(self.index.item_at(int(r)), float(s), pop, sim, trans, co, lead)
            for r, s, ((sim, pop, trans, co), lead) in zip(
                rows.tolist(), scores.tolist(), lifts, strict=True
            )
        ]

    def _explained(
        self, plan: _Plan, lists: list[tuple[_Feed, list[Ranked]]]
    ) -> dict[str, list[Scored]]:
        history, index = plan.history, self.index
        if history is not None:
            # The reasons that name a source item: all of the user's, in one operation.
            for term, name in ((TRANSITIONS, "transitions"), (COOCCURRENCE, "cooccurrence")):
                rows = {
                    index.row_of(r.item_id) for _, ranked in lists for r in ranked if r.lead == name
                }
                if rows:
                    history.prefetch(self.stats, term, sorted(r for r in rows if r is not None))
        out = {}
        for feed, ranked in lists:
            reasons = explain_many(
                plan.state, index, self.stats, ranked, feed.name, feed.user_vec, history
            )
            out[feed.name] = [
                Scored(r.item_id, r.score, reason)
                for r, reason in zip(ranked, reasons, strict=True)
            ]
        return out


#: The key of the start row's list among the popular-now lists.
_START = object()


def _strongest(rows: IntArray, mass: FloatArray, k: int) -> IntArray:
    if rows.shape[0] <= k:
        return rows
    return rows[_stable_top_k(-mass, k)]


def _lookup(rows: IntArray, mass: FloatArray, cand: IntArray) -> FloatArray:
    """``mass`` at each of ``cand`` (``rows`` sorted ascending), 0 where absent."""
    at = np.minimum(np.searchsorted(rows, cand), rows.shape[0] - 1)
    out: FloatArray = np.where(rows[at] == cand, mass[at], 0.0)
    return out


def blend(w: FloatArray, comps: Sequence[FloatArray]) -> FloatArray:
    """``sum_c w[:, c] * comps[c]`` for each row (feed), term by term in component order:
    the same arithmetic for one feed or a batch of them, so the values are the same."""
    out: FloatArray = w[:, :1] * comps[0]
    for c in range(1, len(comps)):
        out = out + w[:, c : c + 1] * comps[c]
    return out


def _top_rows(keys: FloatArray, k: int) -> list[IntArray]:
    """Each row's ``k`` smallest finite keys' columns, ties in column order (a stable sort):
    one partition for the whole matrix, a small sort per row."""
    n = keys.shape[1]
    kth = np.partition(keys, k - 1, axis=1)[:, k - 1] if n > k else keys.max(axis=1)
    out = []
    for row, bound in zip(keys, kth, strict=True):
        near = np.flatnonzero(row <= bound) if np.isfinite(bound) else np.flatnonzero(row < np.inf)
        out.append(near[np.argsort(row[near], kind="stable")[:k]])
    return out


@dataclass(frozen=True)
class _Medians:
    pop: float
    sims: FloatArray
    trans: list[float]
    cooc: list[float]


def _catalog_medians(
    pop: FloatArray, sims: FloatArray, terms: Sequence[tuple[FloatArray, FloatArray]]
) -> _Medians:
    """Each term's median over the whole catalog: what a recommended item's lift is taken
    from (a sparse term's median is 0 unless it covers half the catalog)."""
    half = pop.shape[0] // 2

    def sparse(x: FloatArray) -> float:
        return float(np.median(x)) if np.count_nonzero(x) > half else 0.0

    return _Medians(
        float(np.median(pop)),
        medians(sims) if sims.shape[0] else np.zeros(0),
        [sparse(t) for t, _ in terms],
        [sparse(c) for _, c in terms],
    )


def _lifts_from(
    values: Sequence[FloatArray], mids: Sequence[float], w: FloatArray, has_vector: bool
) -> list[tuple[list[float], str]]:
    """Each top item's lift per term (``w_c * (value - median)``) and the leading term."""
    lift = np.stack([w[c] * (values[c] - mids[c]) for c in range(len(values))])
    # In the order of ranking.TERMS: similarity, popularity, transitions, co-occurrence.
    terms = np.stack(
        [lift[SIMILARITY] + lift[GATED], lift[POPULARITY], lift[TRANSITIONS], lift[COOCCURRENCE]]
    )
    leads = leading_terms(terms, has_vector)
    return list(zip(terms.T.tolist(), leads, strict=True))


def _lifts(
    comps: Sequence[FloatArray],
    w: FloatArray,
    cand: IntArray,
    top: IntArray,
    has_vector: bool,
) -> list[tuple[list[float], str]]:
    """Each top item's lift per term above the candidates' median, and the leading term.

    The two similarity terms count as one (both are the user's taste); a term with no data
    (all zeros) lifts nothing.
    """
    if cand.size == 0 or top.size == 0:
        return []
    lift = np.zeros((len(comps), top.size), dtype=np.float64)
    used = [c for c, comp in enumerate(comps) if w[c] and comp.any()]
    if used:
        # One partition call for all the terms, over the candidates' values only.
        mids = medians(np.stack([comps[c][cand] for c in used]))
        for j, c in enumerate(used):
            lift[c] = w[c] * (comps[c][top] - mids[j])
    # In the order of ranking.TERMS: similarity, popularity, transitions, co-occurrence.
    terms = np.stack(
        [lift[SIMILARITY] + lift[GATED], lift[POPULARITY], lift[TRANSITIONS], lift[COOCCURRENCE]]
    )
    leads = leading_terms(terms, has_vector)
    return list(zip(terms.T.tolist(), leads, strict=True))

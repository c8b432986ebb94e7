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
    leading_terms_masked,
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
        self._seen_mask = np.zeros(0, np.bool_)
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
        return self._rank_candidates(plans)

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
            sims = self.index.similarities(queries).astype(np.float64) if queries else None
            out = np.empty(n, np.float64)
            trans, cooc = _log_terms(plan.trans), _log_terms(plan.cooc)
            _score_into(out, plan.w, self._dense_pop(), trans, cooc, sims, feed)
            return out
        cand = self._candidate_rows(plan, feed, self._nearest_lists([plan]))
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
            history = History(index, recent, recent_rows, seen_rows) if recent else None
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
        """Every feed of the batch scored over every item: one item product for all queries,
        the user's sparse terms added where they are not zero, one selection for all."""
        n = len(self.index)
        feeds = [(plan, feed) for plan in plans for feed in plan.feeds]
        if not feeds or n == 0:
            return [{feed.name: [] for feed in plan.feeds} for plan in plans]
        pop = self._dense_pop()
        sims = self.index.similarities(queries).astype(np.float64) if queries else None
        logs = [(_log_terms(plan.trans), _log_terms(plan.cooc)) for plan in plans]
        scores = np.empty((len(feeds), n), np.float64)
        j = 0
        for plan, (trans, cooc) in zip(plans, logs, strict=True):
            for feed in plan.feeds:
                _score_into(scores[j], plan.w, pop, trans, cooc, sims, feed)
                mask = self.index.scene_rows(feed.scene)
                if mask is not None:
                    scores[j, ~mask] = -np.inf
                scores[j, plan.seen_rows] = -np.inf
                j += 1
        tops = _top_rows(-scores, self.k)
        mids = _catalog_medians(pop, sims, plans, n)
        lifts = _batch_lifts(plans, logs, tops, pop, sims, mids)
        out: list[dict[str, list[Scored]]] = []
        j = 0
        for plan in plans:
            lists: list[tuple[_Feed, list[Ranked]]] = []
            for feed in plan.feeds:
                top = tops[j]
                lists.append((feed, self._ranked(top, scores[j, top], lifts[j])))
                j += 1
            out.append(self._explained(plan, lists))
        return out

    # --- candidates -----------------------------------------------------------------------
    def _rank_candidates(self, plans: list[_Plan]) -> list[dict[str, list[Scored]]]:
        nearest = self._nearest_lists(plans)
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
                mids = _candidate_medians(comps, plan.w)
                values = [c[pick] for c in comps]
                lifts = _lifts_from(values, mids, plan.w, feed.user_vec is not None)
                lists.append((feed, self._ranked(cand[pick], scores[pick], lifts)))
            out.append(self._explained(plan, lists))
        return out

    def _nearest_lists(self, plans: list[_Plan]) -> dict[int, IntArray]:
        """Each feed's nearest items in its scene, by ``id`` of the feed (one call for the
        batch). The blend's two similarity terms are linear in the item vector,
        ``w_sim u·i + w_gated (u ⊙ g)·i = (u ⊙ (w_sim + w_gated g))·i``, so one query per
        feed finds the items its similarity lifts most, also when both terms weigh."""
        queries: list[Vector] = []
        scenes: list[Feed] = []
        owners: list[int] = []
        for plan in plans:
            for feed in plan.feeds:
                query = self._similarity_query(plan.w, feed)
                if query is not None:
                    queries.append(query)
                    scenes.append(feed.scene)
                    owners.append(id(feed))
        if not queries:
            return {}
        found = self.nearest.nearest(queries, scenes, self.candidates.nearest)
        return dict(zip(owners, found, strict=True))

    def _similarity_query(self, w: FloatArray, feed: _Feed) -> Vector | None:
        """``u ⊙ (w_sim + w_gated g)``: the direction of the feed's similarity terms."""
        u = feed.user_vec
        w_sim = float(w[SIMILARITY]) if feed.sim is not None else 0.0
        w_gated = float(w[GATED]) if feed.gated is not None else 0.0
        if u is None or (w_sim == 0.0 and w_gated == 0.0):
            return None
        if w_gated == 0.0:
            return u
        return (u * (w_sim + w_gated * self._gate(feed))).astype(np.float32)

    def _candidate_rows(self, plan: _Plan, feed: _Feed, nearest: dict[int, IntArray]) -> IntArray:
        cfg = self.candidates
        parts = [
            _strongest(*plan.trans, cfg.neighbours),
            _strongest(*plan.cooc, cfg.neighbours),
            self._popular_rows(feed.scene),
            self._popular_rows(_START)[: cfg.start],
        ]
        if id(feed) in nearest:
            parts.append(nearest[id(feed)])
        cand = np.unique(np.concatenate(parts))
        mask = self.index.scene_rows(feed.scene)
        keep = np.ones(cand.shape[0], np.bool_) if mask is None else mask[cand]
        if plan.seen_rows.size:
            seen = self._seen_mask
            if seen.shape[0] < len(self.index):
                seen = self._seen_mask = np.zeros(2 * len(self.index), np.bool_)
            seen[plan.seen_rows] = True  # set and cleared again: O(seen + candidates)
            keep &= ~seen[cand]
            seen[plan.seen_rows] = False
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
    if not rows.shape[0]:
        return np.zeros(cand.shape[0], np.float64)
    at = np.minimum(np.searchsorted(rows, cand), rows.shape[0] - 1)
    out: FloatArray = np.where(rows[at] == cand, mass[at], 0.0)
    return out


def _log_terms(term: tuple[IntArray, FloatArray]) -> tuple[IntArray, FloatArray]:
    """A sparse term's rows and ``log(1 + mass)``: its component where it is not zero."""
    return term[0], np.log1p(term[1])


def _score_into(
    out: FloatArray,
    w: FloatArray,
    pop: FloatArray,
    trans: tuple[IntArray, FloatArray],
    cooc: tuple[IntArray, FloatArray],
    sims: FloatArray | None,
    feed: _Feed,
) -> None:
    """``out = w @ [pop, trans, sim, cooc, gated]`` for every item row, term by term in
    component order. A sparse term is added only at its rows and a zero weight not at all:
    adding zeros leaves every value as it was, so these are the dense sums bit for bit."""
    np.multiply(w[POPULARITY], pop, out=out)
    if w[TRANSITIONS] and trans[0].size:
        out[trans[0]] += w[TRANSITIONS] * trans[1]
    if w[SIMILARITY] and feed.sim is not None and sims is not None:
        out += w[SIMILARITY] * sims[feed.sim]
    if w[COOCCURRENCE] and cooc[0].size:
        out[cooc[0]] += w[COOCCURRENCE] * cooc[1]
    if w[GATED] and feed.gated is not None and sims is not None:
        out += w[GATED] * sims[feed.gated]


def blend(w: FloatArray, comps: Sequence[FloatArray]) -> FloatArray:
    """``sum_c w[:, c] * comps[c]`` for each row (feed), term by term in component order:
    the same arithmetic for one feed or a batch of them, so the values are the same."""
    out: FloatArray = w[:, :1] * comps[0]
    for c in range(1, len(comps)):
        out = out + w[:, c : c + 1] * comps[c]
    return out


def _top_rows(keys: FloatArray, k: int) -> list[IntArray]:
    """Each row's ``k`` smallest finite keys' columns, ties in column order (a stable sort):
    one partition for the whole matrix; rows with exactly ``k`` keys at or under their
    k-th (no tie across it, the usual case) are sorted all at once, the others one by one."""
    n = keys.shape[1]
    kth = np.partition(keys, k - 1, axis=1)[:, k - 1] if n > k else keys.max(axis=1)
    finite = np.isfinite(kth)
    within = np.where(finite[:, None], keys <= kth[:, None], keys < np.inf)
    counts = within.sum(axis=1)
    out: list[IntArray] = [np.zeros(0, np.intp)] * keys.shape[0]
    plain = np.flatnonzero(counts == min(k, n)) if n else np.zeros(0, np.intp)
    if plain.size and k:
        cols = np.nonzero(within[plain])[1].reshape(plain.size, min(k, n))
        order = np.argsort(np.take_along_axis(keys[plain], cols, axis=1), axis=1, kind="stable")
        for r, row in zip(plain.tolist(), np.take_along_axis(cols, order, axis=1), strict=True):
            out[r] = row
    for r in np.flatnonzero(counts != min(k, n)).tolist():
        near = np.flatnonzero(within[r])
        out[r] = near[np.argsort(keys[r, near], kind="stable")[:k]]
    return out


@dataclass(frozen=True)
class _Medians:
    pop: float
    sims: FloatArray
    trans: list[float]
    cooc: list[float]


def _catalog_medians(
    pop: FloatArray,
    sims: FloatArray | None,
    plans: Sequence[_Plan],
    n: int,
) -> _Medians:
    """Each term's median over the whole catalog: what a recommended item's lift is taken
    from (a sparse term's median is 0 unless it covers half the catalog)."""

    def sparse(term: tuple[IntArray, FloatArray]) -> float:
        rows, mass = term
        if np.count_nonzero(mass) <= n // 2:
            return 0.0
        return float(np.median(dense_feature(rows, mass, n)))

    return _Medians(
        float(np.median(pop)),
        medians(sims) if sims is not None and sims.shape[0] else np.zeros(0),
        [sparse(p.trans) for p in plans],
        [sparse(p.cooc) for p in plans],
    )


def _lifts_from(
    values: Sequence[FloatArray], mids: Sequence[float], w: FloatArray, has_vector: bool
) -> list[tuple[list[float], str]]:
    """Each top item's lift per term (``w_c * (value - median)``) and the leading term: the
    two similarity terms count as one (both are the user's taste)."""
    lift = np.stack([w[c] * (values[c] - mids[c]) for c in range(len(values))])
    # In the order of ranking.TERMS: similarity, popularity, transitions, co-occurrence.
    terms = np.stack(
        [lift[SIMILARITY] + lift[GATED], lift[POPULARITY], lift[TRANSITIONS], lift[COOCCURRENCE]]
    )
    leads = leading_terms(terms, has_vector)
    return list(zip(terms.T.tolist(), leads, strict=True))


def _batch_lifts(
    plans: Sequence[_Plan],
    logs: Sequence[tuple[tuple[IntArray, FloatArray], tuple[IntArray, FloatArray]]],
    tops: Sequence[IntArray],
    pop: FloatArray,
    sims: FloatArray | None,
    mids: _Medians,
) -> list[list[tuple[list[float], str]]]:
    """:func:`_lifts_from` of every feed of a batch in one pass of array operations (the
    same arithmetic element by element): per-feed calls were a tenth of the ranking."""
    feeds = [(u, feed) for u, plan in enumerate(plans) for feed in plan.feeds]
    sizes = np.array([t.shape[0] for t in tops], np.intp)
    rows = np.concatenate(tops) if tops else np.zeros(0, np.intp)
    fid = np.repeat(np.arange(len(feeds)), sizes)
    owner = np.array([u for u, _ in feeds], np.intp)[fid]
    zero = np.zeros(rows.shape[0], np.float64)

    def sparse(which: int) -> FloatArray:
        # One sorted key per (user, row): user u's rows are shifted past every row before.
        m = 1 + max([pop.shape[0], *(int(lg[which][0].max()) for lg in logs if lg[which][0].size)])
        keys = np.concatenate([u * m + lg[which][0] for u, lg in enumerate(logs)])
        mass = np.concatenate([lg[which][1] for lg in logs])
        return _lookup(keys, mass, owner * m + rows)

    def sim_values(pick: list[int | None]) -> tuple[FloatArray, FloatArray]:
        q = np.array([-1 if p is None else p for p in pick], np.intp)[fid]
        if sims is None or not (q >= 0).any():
            return zero, zero
        has = q >= 0
        vals = np.where(has, sims[np.maximum(q, 0), rows], 0.0)
        mid = np.where(has, mids.sims[np.maximum(q, 0)] if mids.sims.size else 0.0, 0.0)
        return vals, mid

    sim, sim_mid = sim_values([f.sim for _, f in feeds])
    gated, gated_mid = sim_values([f.gated for _, f in feeds])
    values = (pop[rows], sparse(0), sim, sparse(1), gated)
    mid_of = (
        np.full(rows.shape[0], mids.pop),
        np.array(mids.trans, np.float64)[owner] if mids.trans else zero,
        sim_mid,
        np.array(mids.cooc, np.float64)[owner] if mids.cooc else zero,
        gated_mid,
    )
    w = np.stack([p.w for p in plans])[owner] if plans else np.zeros((0, 5))
    lift = [w[:, c] * (values[c] - mid_of[c]) for c in range(len(values))]
    terms = np.stack(
        [lift[SIMILARITY] + lift[GATED], lift[POPULARITY], lift[TRANSITIONS], lift[COOCCURRENCE]]
    )
    has_vector = np.array([f.user_vec is not None for _, f in feeds], np.bool_)[fid]
    leads = leading_terms_masked(terms, has_vector)
    pairs = list(zip(terms.T.tolist(), leads, strict=True))
    out, at = [], 0
    for size in sizes.tolist():
        out.append(pairs[at : at + size])
        at += size
    return out


def _candidate_medians(comps: Sequence[FloatArray], w: FloatArray) -> list[float]:
    """Each weighted term's median over a feed's candidates (0 for a term with no data),
    with one partition call for all of them."""
    mids = [0.0] * len(comps)
    used = [c for c, comp in enumerate(comps) if w[c] and comp.any()]
    if used:
        for c, m in zip(used, medians(np.stack([comps[c] for c in used])).tolist(), strict=True):
            mids[c] = m
    return mids

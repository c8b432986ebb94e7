"""The worker's ranking: the evaluation harness's tenure blend, per feed.

Every feed (``global`` and each scene the user is active in) scores every item by
``w(tenure) @ [popularity, transitions, similarity, co-occurrence, gated similarity]``
(``embeddings.collaborative.COMPONENTS``), the weights depending on how many events the
user has (``embeddings.blend``). For the global feed that is exactly the harness's
SceneRec score (``evaluation/scenerec_model.py``; ``tests/unit/test_blended.py`` checks the
lists are the same). A scene feed differs only in its query, the user's scene vector
(``SceneModel.scene_vector``: borrowing, with co-learning, from related scenes), in its
gate (the scene's learned gate, if any) and in ranking that scene's items only.

The similarities of all of a batch's queries come from one pass over the item matrix
(``ItemIndex.similarities``), as in :func:`embeddings.ranking.recommend_many`. The worker
ranks this way while it keeps the item-item counts (``ItemIndex.collab``); without them
the weights, tuned with those terms, do not apply and it uses ``recommend_many``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from embeddings.collaborative import (
    COOCCURRENCE,
    GATED,
    POPULARITY,
    SIMILARITY,
    TRANSITIONS,
    FeedBlend,
)
from embeddings.ranking import (
    GLOBAL,
    History,
    ItemIndex,
    Ranked,
    SceneModel,
    Scored,
    explain,
    leading_terms,
    medians,
)
from embeddings.user_model import UserState
from embeddings.vectors import Vector

FloatArray = npt.NDArray[np.float64]


@dataclass
class _Feed:
    name: str
    scene: str | None
    user_vec: Vector | None
    sim: int | None  # row in the batch's similarity matrix
    gated: int | None


def recommend_blended(
    states: Sequence[UserState],
    index: ItemIndex,
    model: SceneModel,
    k: int,
    blend: FeedBlend,
) -> list[dict[str, list[Scored]]]:
    """Top-k for each user's global feed and active scenes, ranked by ``blend``."""
    n = len(index)
    collab = index.collab
    pop = index.log_popularity()
    if collab is not None:
        pop = collab.fresh_popularity(pop)
    zeros = np.zeros(n, dtype=np.float64)
    queries: list[Vector] = []

    def query(vec: Vector | None, wanted: bool) -> int | None:
        if vec is None or not wanted:
            return None
        queries.append(vec)
        return len(queries) - 1

    plans = []
    for state in states:
        w = blend.blend.weights_for(state.n_events)
        seen_rows = index.rows(state.seen)
        recent = [i for i in state.recent if i in index]
        recent_rows = index.rows(recent).tolist()
        trans = cooc = zeros
        if collab is not None and w[TRANSITIONS]:
            trans = collab.transition_feature(recent_rows)[:n]
        if collab is not None and w[COOCCURRENCE]:
            cooc = collab.cooccurrence_feature(seen_rows)[:n]
        feeds = []
        for scene in [None, *state.active_scenes]:
            user_vec = model.scene_vector(state, scene)
            gate = model.gates.gate(scene or GLOBAL)
            if scene is None and blend.global_gate is not None:
                gate = blend.global_gate
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
            History(recent, index.vectors_of(recent), recent_rows, seen_rows) if recent else None
        )
        plans.append((state, w, seen_rows, trans, cooc, history, feeds))

    sims = index.similarities(queries) if queries and n else None
    out: list[dict[str, list[Scored]]] = []
    for state, w, seen_rows, trans, cooc, history, feeds in plans:
        recs: dict[str, list[Scored]] = {}
        base: FloatArray | None = None  # the terms every feed of this user shares
        lists: list[tuple[_Feed, list[Ranked]]] = []
        for feed in feeds:
            sim = zeros if feed.sim is None or sims is None else sims[feed.sim].astype(np.float64)
            gated = (
                zeros if feed.gated is None or sims is None else sims[feed.gated].astype(np.float64)
            )
            comps = (pop, trans, sim, cooc, gated)
            if feed.scene is None:
                # Exactly the harness's arithmetic (``TenureBlend.score``): the same bits.
                scores: FloatArray = w @ np.stack(comps)
            else:
                if base is None:
                    base = w[POPULARITY] * pop + w[TRANSITIONS] * trans + w[COOCCURRENCE] * cooc
                scores = base + w[SIMILARITY] * sim + w[GATED] * gated
            cand, top = index.select(scores, k, feed.scene, seen_rows)
            lists.append(
                (feed, _lifts(index, comps, w, scores, cand, top, feed.user_vec is not None, zeros))
            )
        if history is not None and collab is not None:
            # The reasons that name a source item: all of the user's, in one operation.
            for term, name in ((TRANSITIONS, "transitions"), (COOCCURRENCE, "cooccurrence")):
                rows = {
                    index.row_of(r.item_id) for _, ranked in lists for r in ranked if r.lead == name
                }
                if rows:
                    history.prefetch(collab, term, sorted(r for r in rows if r is not None))
        for feed, ranked in lists:
            recs[feed.name] = [
                Scored(
                    r.item_id, r.score, explain(state, index, r, feed.name, feed.user_vec, history)
                )
                for r in ranked
            ]
        out.append(recs)
    return out


def _lifts(
    index: ItemIndex,
    comps: Sequence[FloatArray],
    w: FloatArray,
    scores: FloatArray,
    cand: npt.NDArray[np.intp],
    top: npt.NDArray[np.intp],
    has_vector: bool,
    zeros: FloatArray,
) -> list[Ranked]:
    """Each top item with how far each weighted term lifted it above the candidates' median,
    and which term lifted it most. The two similarity terms count as one (both are the
    user's taste)."""
    if cand.size == 0:
        return []
    lift = np.zeros((len(comps), top.size), dtype=np.float64)
    # The weighted terms that are not the shared all-zero array (a term with no data).
    used = [c for c, comp in enumerate(comps) if w[c] and comp is not zeros]
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
    values = terms.T.tolist()
    return [
        Ranked(index.item_at(int(r)), float(scores[r]), pop, sim, trans, co, lead)
        for r, (sim, pop, trans, co), lead in zip(top, values, leads, strict=True)
    ]

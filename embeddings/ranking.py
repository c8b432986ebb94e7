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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from embeddings.popularity import DecayedPopularity
from embeddings.scenes import SceneGates
from embeddings.user_model import UserState
from embeddings.vectors import Vector

GLOBAL = "global"
#: Weight of the similarity term against log popularity. The harness's valid-tuned blends
#: put similarity at 1-8x popularity depending on the user's tenure; 4 is their middle.
SIM_WEIGHT = 4.0
#: Clicks count half as much after this long (event time): the harness's tuned value.
POPULARITY_HALF_LIFE_S = 7 * 86_400.0


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


class ItemIndex:
    """Item vectors, titles, scenes and live popularity, indexed by row."""

    def __init__(self, dim: int, half_life_s: float = POPULARITY_HALF_LIFE_S) -> None:
        self.dim = dim
        self._ids: list[str] = []
        self._row: dict[str, int] = {}
        self._titles: list[str] = []
        self._scenes: list[tuple[str, ...]] = []
        self._mat = np.zeros((0, dim), dtype=np.float32)
        self._pop = DecayedPopularity(0, half_life_s)
        self._scene_rows: dict[str, npt.NDArray[np.bool_]] = {}

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
    ) -> None:
        row = self._row.get(item_id)
        if row is None:
            row = len(self._ids)
            self._row[item_id] = row
            self._ids.append(item_id)
            self._titles.append(title)
            self._scenes.append(tuple(scenes))
            self._grow(row + 1)
            self._pop.set(row, popularity)
        else:
            self._titles[row] = title
            self._scenes[row] = tuple(scenes)
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

    def title(self, item_id: str) -> str:
        return self._titles[self._row[item_id]]

    def scenes_of(self, item_id: str) -> tuple[str, ...]:
        return self._scenes[self._row[item_id]]

    def popularity(self, item_id: str) -> float:
        """Decayed click count as of the latest click seen."""
        return float(self._pop.counts()[self._row[item_id]])

    def count_click(self, item_id: str, ts: float | None = None) -> None:
        """One click at event time ``ts`` (None: at the latest time seen)."""
        row = self._row.get(item_id)
        if row is not None:
            now = self._pop.now
            self._pop.add(row, ts if ts is not None else (now if now is not None else 0.0))

    def rows(self, item_ids: Iterable[str]) -> npt.NDArray[np.intp]:
        """Rows of the known ``item_ids`` (unknown ids are skipped)."""
        return np.fromiter(
            (r for i in item_ids if (r := self._row.get(i)) is not None), dtype=np.intp
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
        n = len(self._ids)
        if n == 0:
            return []
        pop = self._pop.log_scores()[:n]
        sim = (
            np.zeros(n, dtype=np.float64)
            if query is None
            else (self._mat[:n] @ query.astype(np.float32, copy=False)).astype(np.float64)
        )
        scores = pop + sim_weight * sim
        valid = np.ones(n, dtype=np.bool_)
        if scene is not None:
            valid &= self._scene_mask(scene)[:n]
        if exclude_rows is not None and exclude_rows.size:
            valid[exclude_rows] = False
        cand = np.flatnonzero(valid)
        if cand.size == 0:
            return []
        top = cand[np.argsort(-scores[cand], kind="stable")[:k]]
        pop_mid, sim_mid = float(np.median(pop[cand])), float(np.median(sim[cand]))
        return [
            Ranked(
                self._ids[r],
                float(scores[r]),
                float(pop[r] - pop_mid),
                float(sim_weight * (sim[r] - sim_mid)),
            )
            for r in top
        ]


def recommend(
    state: UserState,
    index: ItemIndex,
    gates: SceneGates,
    k: int,
) -> dict[str, list[Scored]]:
    """Top-k for the global feed and for every scene the user is active in."""
    out: dict[str, list[Scored]] = {}
    # Per user, not per scene: the seen rows and the recent items' vectors (for reasons).
    seen_rows = index.rows(state.seen)
    recent = [i for i in state.recent if i in index]
    history = History(recent, index.vectors_of(recent)) if recent else None
    scenes: list[str | None] = [None, *state.active_scenes]
    for scene in scenes:
        user_vec = state.global_vec if scene is None else state.scene_vector(scene)
        query = None if user_vec is None else gates.apply(scene or GLOBAL, user_vec)
        ranked = index.rank(query, k, scene=scene, exclude_rows=seen_rows)
        out[scene or GLOBAL] = [
            Scored(r.item_id, r.score, explain(state, index, r, scene or GLOBAL, user_vec, history))
            for r in ranked
        ]
    return out


@dataclass(frozen=True)
class History:
    """A user's recent items that are in the index, and their vectors (one row each)."""

    item_ids: list[str]
    vectors: npt.NDArray[np.float32]


def explain(
    state: UserState,
    index: ItemIndex,
    ranked: Ranked,
    scene: str,
    user_vec: Vector | None,
    history: History | None,
) -> str:
    """Name what lifted the item most: popularity now, or the user's own history/profile.

    The user vector is a weighted mean of the vectors of what the user engaged with, so
    the recent item most similar to the candidate is the largest single term of its
    similarity.
    """
    where = "across scenes" if scene == GLOBAL else f"in {scene}"
    item_id = ranked.item_id
    if user_vec is None or ranked.popularity_lift > ranked.similarity_lift:
        return f"popular now {where} ({index.popularity(item_id):.1f} recent clicks)"
    cand = index.vector(item_id)
    best: tuple[float, str] | None = None
    if cand is not None and history is not None:
        sims = history.vectors @ cand
        j = int(np.argmax(sims))  # the first of equal maxima, in recency order
        best = (float(sims[j]), history.item_ids[j])
    profile_sim = (
        float(state.profile_vec @ cand)
        if state.profile_vec is not None and cand is not None
        else None
    )
    if best is not None and (profile_sim is None or best[0] >= profile_sim):
        return f"{where}: similar to '{index.title(best[1])}' you engaged with"
    if profile_sim is not None:
        return f"{where}: matches your profile"
    return f"{where}: close to people you follow"


def to_payload(recs: Mapping[str, list[Scored]]) -> dict[str, list[dict[str, object]]]:
    return {
        scene: [{"item_id": s.item_id, "score": round(s.score, 6), "reason": s.reason} for s in lst]
        for scene, lst in recs.items()
    }

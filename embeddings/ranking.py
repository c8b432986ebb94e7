"""Scene-conditioned ranking: r = (u ⊙ s) · i over an in-memory item matrix.

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

from embeddings.scenes import SceneGates
from embeddings.user_model import UserState
from embeddings.vectors import Vector

GLOBAL = "global"


@dataclass(frozen=True)
class Scored:
    item_id: str
    score: float
    reason: str


class ItemIndex:
    """Item vectors, titles, scenes and live popularity, indexed by row."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._ids: list[str] = []
        self._row: dict[str, int] = {}
        self._titles: list[str] = []
        self._scenes: list[tuple[str, ...]] = []
        self._mat = np.zeros((0, dim), dtype=np.float32)
        self._pop = np.zeros(0, dtype=np.float64)
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
            self._pop[row] = popularity
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
        pop = np.zeros(cap, dtype=np.float64)
        pop[: self._pop.shape[0]] = self._pop
        self._mat, self._pop = mat, pop
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

    def title(self, item_id: str) -> str:
        return self._titles[self._row[item_id]]

    def scenes_of(self, item_id: str) -> tuple[str, ...]:
        return self._scenes[self._row[item_id]]

    def popularity(self, item_id: str) -> float:
        return float(self._pop[self._row[item_id]])

    def count_click(self, item_id: str) -> None:
        row = self._row.get(item_id)
        if row is not None:
            self._pop[row] += 1.0

    def rank(
        self,
        query: Vector | None,
        k: int,
        scene: str | None = None,
        exclude: Iterable[str] = (),
    ) -> list[tuple[str, float]]:
        """Top ``k`` items by ``query · i`` (by popularity when ``query`` is None)."""
        n = len(self._ids)
        if n == 0:
            return []
        if query is None:
            scores = np.log1p(self._pop[:n])
        else:
            scores = self._mat[:n] @ query.astype(np.float32, copy=False)
        valid = np.ones(n, dtype=np.bool_)
        if scene is not None:
            valid &= self._scene_mask(scene)[:n]
        rows = [self._row[i] for i in exclude if i in self._row]
        if rows:
            valid[rows] = False
        cand = np.flatnonzero(valid)
        if cand.size == 0:
            return []
        take = min(k, cand.size)
        top = cand[np.argpartition(-scores[cand], take - 1)[:take]]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(self._ids[r], float(scores[r])) for r in top]


def recommend(
    state: UserState,
    index: ItemIndex,
    gates: SceneGates,
    k: int,
) -> dict[str, list[Scored]]:
    """Top-k for the global feed and for every scene the user is active in."""
    out: dict[str, list[Scored]] = {}
    scenes: list[str | None] = [None, *state.active_scenes]
    for scene in scenes:
        user_vec = state.global_vec if scene is None else state.scene_vector(scene)
        query = None if user_vec is None else gates.apply(scene or GLOBAL, user_vec)
        ranked = index.rank(query, k, scene=scene, exclude=state.seen)
        out[scene or GLOBAL] = [
            Scored(item_id, score, explain(state, index, item_id, scene or GLOBAL, user_vec))
            for item_id, score in ranked
        ]
    return out


def explain(
    state: UserState, index: ItemIndex, item_id: str, scene: str, user_vec: Vector | None
) -> str:
    """Name what contributed most to the score: a recent item, the profile, or popularity.

    The user vector is a weighted mean of the vectors of what the user engaged with, so
    the recent item most similar to the candidate is the largest single term of its score.
    """
    where = "across scenes" if scene == GLOBAL else f"in {scene}"
    if user_vec is None:
        return f"popular {where} ({index.popularity(item_id):.0f} clicks)"
    cand = index.vector(item_id)
    best: tuple[float, str] | None = None
    if cand is not None:
        for recent in state.recent:
            vec = index.vector(recent)
            if vec is not None:
                sim = float(vec @ cand)
                if best is None or sim > best[0]:
                    best = (sim, recent)
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

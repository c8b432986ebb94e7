"""Small ranking set-ups for unit tests: an index, its statistics, a ranker."""

from __future__ import annotations

from collections.abc import Sequence

from embeddings.blend import TenureBlend
from embeddings.blended import CandidateConfig, Ranker
from embeddings.collaborative import Collaborative, FeedBlend
from embeddings.ranking import GatedScenes, ItemIndex, SceneModel, Scored
from embeddings.scenes import SceneGates
from embeddings.user_model import UserState

#: Popularity plus four times the similarity: the simplest blend that uses both.
POP_AND_SIM = FeedBlend(TenureBlend.uniform((1.0, 0.0, 4.0, 0.0, 0.0)))


def ranker(
    index: ItemIndex,
    scenes: SceneGates | SceneModel,
    blend: FeedBlend = POP_AND_SIM,
    stats: Collaborative | None = None,
    k: int = 10,
    candidates: CandidateConfig | None = None,
) -> Ranker:
    model = GatedScenes(scenes) if isinstance(scenes, SceneGates) else scenes
    stats = stats or Collaborative(blend.collab, blend.half_life_s)
    return Ranker(index, stats, model, blend, k, candidates)


def recommend(
    state: UserState,
    index: ItemIndex,
    scenes: SceneGates | SceneModel,
    k: int,
    stats: Collaborative | None = None,
    blend: FeedBlend = POP_AND_SIM,
    feeds: Sequence[str | None] | None = None,
) -> dict[str, list[Scored]]:
    """Every feed of ``state`` (the global one and its active scenes)."""
    wanted = [None, *state.active_scenes] if feeds is None else list(feeds)
    return ranker(index, scenes, blend, stats, k).rank([(state, wanted)])[0]


def click(stats: Collaborative, index: ItemIndex, item_id: str, ts: float = 0.0) -> None:
    """One anonymous click on ``item_id`` (popularity only: a repeat by a user with no past)."""
    row = index.row_of(item_id)
    assert row is not None
    stats.observe([], None, row, ts)

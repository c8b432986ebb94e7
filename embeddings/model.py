"""The model the streaming worker serves and the evaluation harness measures.

:class:`SceneRecModel` ties the parts together: the item index, the item statistics
(``embeddings.collaborative``), the scene model and the blend's :class:`Ranker`. A click
changes the user's state (``UserState.apply_item``, the caller's) and the item statistics:

* in one process (the harness, tests) the statistics learn the click at once
  (:meth:`SceneRecModel.learn_click`);
* in the stream a worker turns the click into deltas addressed to item keys
  (:meth:`SceneRecModel.click_deltas`), the item-stats stage applies every worker's
  deltas, and each worker receives the rows back (``streams.itemstats.SharedStats``).

Either way the same counting (``embeddings.itemstats``) and the same ranking run.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

from embeddings.blended import CandidateConfig, Feed, NearestItems, Ranker
from embeddings.collaborative import Collaborative, FeedBlend
from embeddings.itemstats import NO_SOURCE, DeltaBatch, click_deltas
from embeddings.ranking import ItemIndex, SceneModel, Scored
from embeddings.user_model import UserState

log = logging.getLogger(__name__)


class SceneRecModel:
    """Item index, item statistics, scene model and blend: learning and ranking."""

    def __init__(
        self,
        index: ItemIndex,
        blend: FeedBlend,
        scene_model: SceneModel,
        k: int,
        candidates: CandidateConfig | None = None,
        nearest: NearestItems | None = None,
    ) -> None:
        self.index = index
        self.blend = blend
        self.stats = Collaborative(blend.collab, blend.half_life_s)
        self.ranker = Ranker(index, self.stats, scene_model, blend, k, candidates, nearest)

    @property
    def scene_model(self) -> SceneModel:
        return self.ranker.model

    def learn_click(self, state: UserState, item_id: str, ts: float) -> None:
        """The statistics learn a click by the user of ``state``, before the state takes it."""
        row = self.index.row_of(item_id)
        if row is None:
            return
        history = self.index.rows(state.recent).tolist()
        seen = None
        if item_id not in state.seen:
            seen = self.index.rows(last_distinct(state, self.stats.config.cooc_history))
        self.stats.observe(history, seen, row, ts)

    def click_deltas(
        self,
        out: DeltaBatch,
        state: UserState,
        item_id: str,
        ts: float,
        source: int = NO_SOURCE,
        offset: int = 0,
    ) -> None:
        """Append the deltas of a click, addressed to item keys, for the shared statistics."""
        index = self.index
        row = index.row_of(item_id)
        if row is None:
            return
        keys = index.key_at
        recent = [keys(r) for r in index.rows(state.recent).tolist()]
        new = None
        if item_id not in state.seen:
            tail = index.rows(last_distinct(state, self.stats.config.cooc_history))
            new = [keys(r) for r in tail.tolist()]
        click_deltas(out, keys(row), ts, recent, new, self.stats.stats, source, offset)

    def rank(
        self, requests: Sequence[tuple[UserState, Sequence[Feed]]]
    ) -> list[dict[str, list[Scored]]]:
        return self.ranker.rank(requests)


def last_distinct(state: UserState, n: int) -> list[str]:
    """The user's last ``n`` distinct items, oldest first."""
    out = list(itertools.islice(reversed(state.seen), n))
    out.reverse()
    return out

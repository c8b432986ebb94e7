"""What clicks teach about items, learned online, and the tenure blend that ranks with it.

Popularity and the user's vector say what is liked now and what the user is like; the
collaborative part says what people *go on to* click after the items this user just had
(transitions) and which items the same people have together (co-occurrence). In the
evaluation harness that is the online gain: Protocol B NDCG@10 0.046 -> 0.104 (the
ablation in docs/evaluation.md).

This module is the one place that turns (popularity, the user's recent and seen items,
their vector) into the blend's per-item components (``COMPONENTS``). The harness's SceneRec
(``evaluation/scenerec_model.py``) and the worker's ranking (``embeddings/ranking.py``) both
call it, so what the harness measures is what the worker serves.

Memory: the counts are dense, ``(n + 1) x n`` and ``n x n`` float32 (22 MB for ml-100k's
1,682 items, 200 MB at 5,000). :data:`DEFAULT_MAX_ITEMS` bounds them; the worker ranks a
larger catalog by popularity and similarity alone, as before the blend (a sparse store
would lift that bound).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from embeddings.blend import TenureBlend
from embeddings.cooccurrence import CoOccurrence
from embeddings.transitions import TransitionCounts
from embeddings.vectors import Rows, Vector

FloatArray = npt.NDArray[np.float64]
DAY_S = 86_400.0
#: The blend's per-item components, in the order of a :class:`TenureBlend`'s weights.
COMPONENTS = ("popularity", "transitions", "similarity", "cooccurrence", "gated_similarity")
POPULARITY, TRANSITIONS, SIMILARITY, COOCCURRENCE, GATED = range(len(COMPONENTS))
#: Largest catalog whose item-item counts are kept (two dense float32 matrices: 200 MB).
DEFAULT_MAX_ITEMS = 5000


@dataclass(frozen=True)
class CollabConfig:
    """How transitions are counted and scored, and the freshness term of popularity."""

    #: Transition counting: how many earlier items a click is credited to, and how fast
    #: the credit falls with distance.
    window: int = 5
    step_decay: float = 0.7
    #: What new users start with lately (the start row) halves in weight this fast.
    start_half_life_s: float = 28 * DAY_S
    #: Transition scoring: how many recent items query the counts, and their decay.
    recent: int = 5
    recency_decay: float = 0.6
    #: Freshness: popularity becomes ``log pop - age_weight * log(1 + age in days)``, age
    #: counted from the item's first click in the stream. Among equally popular items, one
    #: that just appeared is rising; one that has been around is fading.
    age_weight: float = 0.0


class Collaborative:
    """Online transition and co-occurrence counts, and each item's first-click time."""

    def __init__(self, n_items: int, config: CollabConfig | None = None) -> None:
        self.config = config or CollabConfig()
        self.transitions = TransitionCounts(
            n_items,
            window=self.config.window,
            step_decay=self.config.step_decay,
            start_half_life_s=self.config.start_half_life_s,
        )
        self.cooccurrence = CoOccurrence(n_items)
        self._first_click = np.full(n_items, np.nan)
        self._now = -math.inf
        #: Weights of the recent items in transition scoring, oldest first.
        self._decay = self.config.recency_decay ** np.arange(self.config.recent - 1, -1, -1.0)

    @property
    def n_items(self) -> int:
        return self.transitions.n_items

    def grow(self, n_items: int) -> None:
        """Make room for ``n_items`` (a catalog that grows while the stream runs)."""
        if n_items <= self.n_items:
            return
        self.transitions.grow(n_items)
        self.cooccurrence.grow(n_items)
        first = np.full(n_items, np.nan)
        first[: self._first_click.shape[0]] = self._first_click
        self._first_click = first

    def observe(
        self, history: Sequence[int], seen: Rows | None, row: int, timestamp: float
    ) -> None:
        """One click on ``row``, before the user's state takes it in.

        ``history``: the user's recent rows, oldest first; ``seen``: their distinct earlier
        rows, or None when ``row`` is already among them (co-occurrence counts an item once
        per user).
        """
        self.transitions.add(history, row, timestamp)
        if seen is not None:
            self.cooccurrence.add(seen, row)
        if np.isnan(self._first_click[row]):
            self._first_click[row] = timestamp
        self._now = max(self._now, timestamp)

    def fresh_popularity(self, log_pop: FloatArray) -> FloatArray:
        """``log_pop`` (one value per item row) with the freshness term applied."""
        if self.config.age_weight == 0.0:
            return log_pop
        n = log_pop.shape[0]
        age_days = np.nan_to_num((self._now - self._first_click[:n]) / DAY_S, nan=0.0)
        out: FloatArray = log_pop - self.config.age_weight * np.log1p(np.maximum(age_days, 0.0))
        return out

    def transition_feature(self, history: Sequence[int]) -> FloatArray:
        """``log(1 + transition mass)`` toward every item from the user's recent rows."""
        cfg = self.config
        out: FloatArray = np.log1p(self.transitions.scores(history, cfg.recent, cfg.recency_decay))
        return out

    def cooccurrence_feature(self, seen: Rows) -> FloatArray:
        """``log(1 + co-occurrence cosine mass)`` from every item the user had."""
        out: FloatArray = np.log1p(self.cooccurrence.scores(seen))
        return out

    def strongest_sources(self, kind: int, rows: Rows, targets: Sequence[int]) -> list[int | None]:
        """For each of ``targets``, which of ``rows`` put the most transition (or, for
        ``COOCCURRENCE``, co-occurrence) mass on it; None where none did.

        For a recommendation's reason: the earlier item that contributed most to the term.
        """
        if not len(rows) or not len(targets):
            return [None] * len(targets)
        if kind == TRANSITIONS:
            rows = rows[-self.config.recent :]
            mass = self._decay[-len(rows) :, None] * self.transitions.row_mass(rows, targets)
        else:
            mass = self.cooccurrence.row_mass(rows, targets)
        best = np.argmax(mass, axis=0)  # (len(targets),): the first of equal maxima
        found = mass[best, np.arange(len(targets))] > 0
        return [int(rows[b]) if ok else None for b, ok in zip(best, found, strict=True)]


@dataclass(frozen=True)
class FeedBlend:
    """What the worker ranks with: weights over ``COMPONENTS`` per tenure bucket, how the
    collaborative counts work, popularity's half-life, and the learned global gate of
    ``gated_similarity`` (None: that component is zero, as in the harness without a gate).

    ``make eval`` writes the one tuned on valid for Protocol B (the streaming protocol) to
    ``results/model.json``; the worker loads it from ``SCENEREC_MODEL_PATH``.
    """

    blend: TenureBlend
    collab: CollabConfig = field(default_factory=CollabConfig)
    half_life_s: float = 7 * DAY_S
    global_gate: Vector | None = None

    def __post_init__(self) -> None:
        if len(self.blend.weights[0]) != len(COMPONENTS):
            raise ValueError(f"a feed blend weighs {len(COMPONENTS)} components: {COMPONENTS}")

    def with_new_user_weights(self, weights: Sequence[float]) -> FeedBlend:
        """The same blend with another weight vector for users with no event yet."""
        rows = (tuple(float(x) for x in weights), *self.blend.weights[1:])
        return replace(self, blend=TenureBlend(rows, self.blend.edges))

    def to_dict(self) -> dict[str, object]:
        return {
            "components": list(COMPONENTS),
            "weights": [list(w) for w in self.blend.weights],
            "tenure_edges": list(self.blend.edges),
            "collab": asdict(self.collab),
            "half_life_s": self.half_life_s,
            "global_gate": None if self.global_gate is None else self.global_gate.tolist(),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> FeedBlend:
        if list(raw.get("components", COMPONENTS)) != list(COMPONENTS):  # type: ignore[call-overload]
            raise ValueError(f"expected components {COMPONENTS}, got {raw.get('components')}")
        weights = tuple(tuple(float(x) for x in w) for w in raw["weights"])  # type: ignore[attr-defined]
        edges = tuple(int(e) for e in raw["tenure_edges"])  # type: ignore[attr-defined]
        gate = raw.get("global_gate")
        return cls(
            TenureBlend(weights, edges),
            CollabConfig(**raw["collab"]),  # type: ignore[arg-type]
            float(raw["half_life_s"]),  # type: ignore[arg-type]
            None if gate is None else np.asarray(gate, dtype=np.float32),
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> FeedBlend:
        return cls.from_dict(json.loads(path.read_text()))


#: The worker's blend when no model file is given, from the last full ``make eval``
#: (docs/evaluation.md), as ``evaluation.harness.worker_blend`` composes it: the weights,
#: half-life and freshness valid chose for Protocol B (the streaming protocol), except for
#: users with no event yet, whose weights are Protocol A's (where 97 of 166 users are new):
#: there the profile's similarity counts, so a new user is served from the profile text.
#: The ``gated_similarity`` weight needs the learned gate, which only a model file carries.
DEFAULT_FEED_BLEND = FeedBlend(
    TenureBlend(
        (
            (1.0, 1.0, 1.0, 0.0, 0.0),
            (1.0, 0.5, 0.0, 1.0, 0.0),
            (1.0, 0.5, 2.0, 4.0, 0.0),
            (1.0, 8.0, 0.0, 4.0, 32.0),
        )
    ),
    CollabConfig(age_weight=0.25),
)

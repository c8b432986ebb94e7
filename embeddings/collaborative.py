"""What clicks teach about items, as every ranking reads it, and the tenure blend over it.

Popularity and the user's vector say what is liked now and what the user is like; the
collaborative part says what people *go on to* click after the items this user just had
(transitions) and which items the same people have together (co-occurrence). In the
evaluation harness that is the online gain (the ladder in docs/evaluation.md).

:class:`Collaborative` holds the item statistics of ``embeddings.itemstats`` by item row
and turns (the user's recent and seen items) into the blend's per-item components
(``COMPONENTS``), for the whole catalog or for a set of candidate rows. The harness's
SceneRec feeds it clicks directly (:meth:`Collaborative.observe`); a streaming worker
receives the rows every worker shares from the item-stats stage (:meth:`Collaborative.put`).
Memory is bounded per clicked item (``StatsConfig.neighbours``), whatever the catalog size.
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
from embeddings.itemstats import (
    START,
    DeltaBatch,
    SparseRow,
    StatsConfig,
    StatsRow,
    apply,
    click_deltas,
)
from embeddings.vectors import Rows, Vector

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
DAY_S = 86_400.0
#: The blend's per-item components, in the order of a :class:`TenureBlend`'s weights.
COMPONENTS = ("popularity", "transitions", "similarity", "cooccurrence", "gated_similarity")
POPULARITY, TRANSITIONS, SIMILARITY, COOCCURRENCE, GATED = range(len(COMPONENTS))
#: Popularity's smoothing, relative to the most popular item: ``log(count + 1e-3 max)``.
POP_SMOOTHING = 1e-3


@dataclass(frozen=True)
class CollabConfig:
    """How transitions and co-occurrence are counted and scored, and popularity's freshness."""

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
    #: Co-occurrence: a user's last this many distinct items count a new click, and score.
    cooc_history: int = 20
    #: Neighbours kept per item and kind (transitions, co-occurrence): the memory bound.
    neighbours: int = 200

    def stats(self, half_life_s: float) -> StatsConfig:
        """The counting part, with popularity's half-life."""
        return StatsConfig(
            window=self.window,
            step_decay=self.step_decay,
            cooc_history=self.cooc_history,
            neighbours=self.neighbours,
            half_life_s=half_life_s,
            start_half_life_s=self.start_half_life_s,
        )


class Collaborative:
    """Item statistics by item row: popularity now, freshness, transitions, co-occurrence."""

    def __init__(self, config: CollabConfig | None = None, half_life_s: float = 7 * DAY_S) -> None:
        self.config = config or CollabConfig()
        self.stats = self.config.stats(half_life_s)
        self._log_pop = np.zeros(0, np.float64)
        self._first = np.zeros(0, np.float64)
        self._count = np.zeros(0, np.float64)
        self._trans: list[SparseRow | None] = []
        self._cooc: list[SparseRow | None] = []
        self._start = SparseRow()
        self._max_log_pop = -math.inf
        #: Rows received or changed so far (what caches of derived lists watch).
        self.version = 0
        #: The latest event time any row has seen: what "now" means for popularity.
        self.now = -math.inf
        #: In-process rows (``observe``), by item row; a worker receives rows instead.
        self._rows: dict[int, StatsRow] = {}
        #: Weights of the recent items in transition scoring, oldest first.
        self._decay = self.config.recency_decay ** np.arange(self.config.recent - 1, -1, -1.0)
        self.grow(0)

    @property
    def n_items(self) -> int:
        return int(self._log_pop.shape[0])

    def grow(self, n_items: int) -> None:
        """Make room for ``n_items`` rows (a catalog that grows while the stream runs)."""
        n = self.n_items
        if n_items <= n:
            return
        cap = max(n_items, 2 * n, 64)
        self._log_pop = _grown(self._log_pop, cap, -math.inf)
        self._first = _grown(self._first, cap, math.nan)
        self._count = _grown(self._count, cap, 0.0)
        self._trans.extend([None] * (cap - n))
        self._cooc.extend([None] * (cap - n))

    # --- learning -------------------------------------------------------------------------
    def observe(
        self, history: Sequence[int], seen: Rows | None, row: int, timestamp: float
    ) -> None:
        """One click on ``row``, before the user's state takes it in (in-process).

        ``history``: the user's recent rows, oldest first; ``seen``: their distinct earlier
        rows, most recent last, or None when ``row`` is already among them.
        """
        new = None if seen is None else [int(r) for r in seen[-self.config.cooc_history :]]
        deltas = DeltaBatch()
        click_deltas(deltas, row, timestamp, history, new, self.stats)
        self.learn(deltas)

    def learn(self, deltas: DeltaBatch) -> None:
        """Apply deltas addressed to item rows (in-process; a worker receives rows instead)."""
        for key, positions in deltas.groups().items():
            stats_row = self._rows.get(key)
            if stats_row is None:
                stats_row = self._rows[key] = StatsRow()
            apply(stats_row, deltas, positions, self.stats)
            self.put(key, stats_row)

    def put(self, row: int, stats: StatsRow) -> None:
        """The statistics of item ``row`` (targets as item rows), or of :data:`START`."""
        self.version += 1
        self.now = max(self.now, stats.ts)
        if row == START:
            self._start = stats.trans
            return
        self.grow(row + 1)
        self._log_pop[row] = stats.log_pop
        self._max_log_pop = max(self._max_log_pop, stats.log_pop)
        self._first[row] = stats.first_click
        self._count[row] = stats.count
        self._trans[row] = stats.trans
        self._cooc[row] = stats.cooc

    # --- reading --------------------------------------------------------------------------
    def log_popularity(self, rows: IntArray | None = None) -> FloatArray:
        """``log(count + 1e-3 max)`` of decayed click counts as of :attr:`now`, with the
        freshness term; for ``rows`` (None: rows ``0 .. n - 1`` of the catalog)."""
        lp = self._log_pop if rows is None else self._log_pop[rows]
        if self._max_log_pop == -math.inf:
            return np.zeros(lp.shape[0], np.float64)
        floor = math.log(POP_SMOOTHING) + self._max_log_pop
        out: FloatArray = np.logaddexp(lp, floor) - self.stats.rate * self.now
        if self.config.age_weight:
            first = self._first if rows is None else self._first[rows]
            age_days = np.nan_to_num((self.now - first) / DAY_S, nan=0.0)
            out -= self.config.age_weight * np.log1p(np.maximum(age_days, 0.0))
        return out

    def neighbours(self, row: int) -> tuple[SparseRow | None, SparseRow | None]:
        """The transitions out of item ``row`` and its co-occurrences (targets as rows)."""
        if row >= self.n_items:
            return None, None
        return self._trans[row], self._cooc[row]

    def users(self, row: int) -> float:
        """How many distinct users clicked item ``row``."""
        return float(self._count[row]) if row < self.n_items else 0.0

    def popularity(self, row: int) -> float:
        """Decayed click count of ``row`` as of :attr:`now`."""
        if row >= self.n_items or self._log_pop[row] == -math.inf:
            return 0.0
        return math.exp(self._log_pop[row] - self.stats.rate * self.now)

    def transition_mass(self, history: Sequence[int]) -> tuple[IntArray, FloatArray]:
        """Transition mass toward the items the user's last rows lead to: ``(rows, mass)``.

        An empty history scores with the start row (decayed counts as of the latest first
        click: "how many new users recently started here").
        """
        if not len(history):
            keys, weights = self._start.items()
            return keys.astype(np.intp), weights.copy()
        rows = list(history)[-self.config.recent :]
        decay = self._decay[-len(rows) :]
        parts = [(self._trans[r], w) for r, w in zip(rows, decay, strict=True)]
        return _accumulate([(p, w) for p, w in parts if p is not None])

    def cooccurrence_mass(self, seen: Rows) -> tuple[IntArray, FloatArray]:
        """Item-item cosine mass from the user's last distinct rows: ``(rows, mass)``.

        Item ``j`` scores ``sum_h C[h, j] / sqrt(n_h n_j)`` over history ``H``, divided by
        ``sqrt(|H|)`` so long histories do not dominate a blend.
        """
        rows = [int(r) for r in seen[-self.config.cooc_history :]]
        if not rows:
            return np.zeros(0, np.intp), np.zeros(0, np.float64)
        norm = 1.0 / np.sqrt(np.maximum(self._count[rows], 1.0))
        parts = [(c, float(w)) for r, w in zip(rows, norm, strict=True) if (c := self._cooc[r])]
        targets, mass = _accumulate(parts)
        mass /= np.sqrt(np.maximum(self._count[targets], 1.0)) * math.sqrt(len(rows))
        return targets, mass

    def transition_feature(self, history: Sequence[int], n: int | None = None) -> FloatArray:
        """``log(1 + transition mass)`` toward every item row (``n`` of them)."""
        return dense_feature(*self.transition_mass(history), self._n(n))

    def cooccurrence_feature(self, seen: Rows, n: int | None = None) -> FloatArray:
        """``log(1 + co-occurrence cosine mass)`` toward every item row."""
        return dense_feature(*self.cooccurrence_mass(seen), self._n(n))

    def _n(self, n: int | None) -> int:
        return self.n_items if n is None else n

    def strongest_sources(self, kind: int, rows: Rows, targets: Sequence[int]) -> list[int | None]:
        """For each of ``targets``, which of ``rows`` put the most transition (or, for
        ``COOCCURRENCE``, co-occurrence) mass on it; None where none did.

        For a recommendation's reason: the earlier item that contributed most to the term.
        """
        if not len(rows) or not len(targets):
            return [None] * len(targets)
        if kind == TRANSITIONS:
            src = [int(r) for r in list(rows)[-self.config.recent :]]
            scale = self._decay[-len(src) :]
            table = self._trans
        else:
            src = [int(r) for r in list(rows)[-self.config.cooc_history :]]
            scale = 1.0 / np.sqrt(np.maximum(self._count[src], 1.0))
            table = self._cooc
        mass = np.zeros((len(src), len(targets)))
        for i, r in enumerate(src):
            row = table[r]
            if row is not None and len(row):
                mass[i] = scale[i] * row.get(targets)
        best = np.argmax(mass, axis=0)  # the first of equal maxima
        found = mass[best, np.arange(len(targets))] > 0
        return [src[b] if ok else None for b, ok in zip(best.tolist(), found, strict=True)]


def _grown(arr: FloatArray, cap: int, fill: float) -> FloatArray:
    out = np.full(cap, fill, np.float64)
    out[: arr.shape[0]] = arr
    return out


def _accumulate(parts: Sequence[tuple[SparseRow, float]]) -> tuple[IntArray, FloatArray]:
    """The weighted sum of sparse rows, as (sorted rows, mass)."""
    if not parts:
        return np.zeros(0, np.intp), np.zeros(0, np.float64)
    if len(parts) == 1:
        keys, weights = parts[0][0].items()
        order = np.argsort(keys, kind="stable")
        return keys[order].astype(np.intp), weights[order] * parts[0][1]
    keys = np.concatenate([p.items()[0] for p, _ in parts])
    weights = np.concatenate([p.items()[1] * w for p, w in parts])
    uniq, inverse = np.unique(keys, return_inverse=True)
    mass: FloatArray = np.bincount(inverse, weights, minlength=uniq.shape[0]).astype(np.float64)
    return uniq.astype(np.intp), mass


def dense_feature(rows: IntArray, mass: FloatArray, n: int) -> FloatArray:
    """``log(1 + mass)`` at ``rows`` (distinct), 0 elsewhere, over ``n`` item rows."""
    out = np.zeros(n, np.float64)
    keep = rows < n
    out[rows[keep]] = mass[keep]
    return np.log1p(out)


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

"""Choosing hyper-parameters on the valid split only (fit on train, score valid).

Baselines with a knob (recent-popular's window) are tuned by running the protocol's own
evaluation on (train -> valid). SceneRec's blend weights are tuned per tenure bucket from
one pass per structural setting: each scored user or event computes the component matrix
once and evaluates every candidate weight vector on it as one matrix product, so a grid of
dozens of blends costs little more than one. Buckets are independent (a user's score only
uses their bucket's weights), so the best weights are picked bucket by bucket.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from embeddings.blend import TENURE_EDGES, TenureBlend, tenure_bucket
from evaluation.baselines import Recommender
from evaluation.data import Catalog, Event
from evaluation.metrics import NDCG, K, summarize
from evaluation.protocols import Contender, items_by_user, run_frozen, run_prequential
from evaluation.scenerec_model import SceneRec, SceneRecConfig

FloatArray = npt.NDArray[np.float64]


#: Candidate blend weights (popularity, transitions, similarity, co-occurrence, gated
#: similarity), in the order of ``scenerec_model.COMPONENTS``. Popularity is the reference
#: at weight 1; a large weight elsewhere makes popularity a mere tie-breaker. The plain and
#: the gated similarity are alternatives (never both): the grid says which, if any, helps.
def _grid(
    trans: Sequence[float], sims: Sequence[float], coocs: Sequence[float], gated: Sequence[float]
) -> tuple[tuple[float, ...], ...]:
    plain = [(1.0, t, s, c, 0.0) for t, s, c in itertools.product(trans, sims, coocs)]
    learned = [(1.0, t, 0.0, c, g) for t, c, g in itertools.product(trans, coocs, gated) if g > 0]
    return tuple(plain + learned)


WEIGHT_GRID = _grid(
    (0.0, 0.5, 1.0, 2.0, 4.0, 8.0),
    (0.0, 1.0, 2.0, 4.0, 8.0),
    (0.0, 1.0, 2.0, 4.0),
    (4.0, 8.0, 16.0, 32.0),
)
QUICK_WEIGHT_GRID = _grid((0.0, 1.0, 4.0), (0.0, 2.0), (0.0, 2.0), (8.0,))


@dataclass(frozen=True)
class Tuned:
    """A chosen setting with its valid NDCG@10, and every candidate's, for the record."""

    label: str
    valid_ndcg: float
    candidates: dict[str, float]


def tune_recommender(
    factories: dict[str, Callable[[], Recommender]],
    catalog: Catalog,
    train: Sequence[Event],
    valid: Sequence[Event],
    online: bool,
) -> Tuned:
    """Best of ``factories`` by valid NDCG@10, frozen (Protocol A) or prequential (B)."""
    scores: dict[str, float] = {}
    for label, make in factories.items():
        model = make()
        model.fit(train)
        if online:
            recs = run_prequential(
                {label: Contender(model, learn=True)}, catalog, train, (), valid
            )[label]
            scores[label] = summarize([(r.user, r.metrics) for r in recs])[NDCG].mean
        else:
            result = run_frozen(model, train, valid)
            scores[label] = summarize(result.metrics.items())[NDCG].mean
    best = max(scores, key=lambda lbl: scores[lbl])  # first best on ties: grid order
    return Tuned(best, scores[best], scores)


class _BucketScores:
    """Sum of NDCG@10 per (tenure bucket, weight row), and how many units each bucket has."""

    def __init__(self, n_weights: int, edges: tuple[int, ...] = TENURE_EDGES) -> None:
        self.edges = edges
        self.sums = np.zeros((len(edges) + 1, n_weights), dtype=np.float64)
        self.counts = np.zeros(len(edges) + 1, dtype=np.float64)

    def add(self, n_events: int, ndcg: FloatArray) -> None:
        b = tenure_bucket(n_events, self.edges)
        self.sums[b] += ndcg
        self.counts[b] += 1

    def best(
        self, grid: npt.NDArray[np.float64], allowed: npt.NDArray[np.bool_] | None = None
    ) -> tuple[TenureBlend, float]:
        """Best weights per bucket, among the ``allowed`` grid rows (default: all)."""
        sums = self.sums if allowed is None else np.where(allowed[None, :], self.sums, -np.inf)
        choice = sums.argmax(axis=1)  # first best on ties: the grid's simpler end
        blend = TenureBlend(tuple(tuple(float(w) for w in grid[c]) for c in choice), self.edges)
        total = float(self.sums[np.arange(len(choice)), choice].sum() / max(self.counts.sum(), 1))
        return blend, total


def _discounts(k: int) -> FloatArray:
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def _frozen_pass(
    model: SceneRec,
    grid: npt.NDArray[np.float64],
    train: Sequence[Event],
    valid: Sequence[Event],
    progress: bool,
) -> _BucketScores:
    catalog = model.catalog
    truth, seen = items_by_user(valid), items_by_user(train)
    disc = _discounts(K)
    acc = _BucketScores(grid.shape[0])
    for user in tqdm(sorted(truth), desc="  valid, frozen", leave=False, disable=not progress):
        scores = grid @ model.components(user)
        excl = catalog.rows(seen.get(user, set()))
        if excl:
            scores[:, excl] = -np.inf
        top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
        relevant = np.zeros(len(catalog), dtype=np.float64)
        relevant[catalog.rows(truth[user])] = 1.0
        idcg = float(disc[: min(len(truth[user]), K)].sum())
        acc.add(model.n_events(user), (relevant[top] @ disc) / idcg)
    return acc


def _online_pass(
    model: SceneRec,
    grid: npt.NDArray[np.float64],
    train: Sequence[Event],
    valid: Sequence[Event],
    progress: bool,
) -> _BucketScores:
    catalog = model.catalog
    seen: dict[str, set[int]] = {}
    for e in train:
        seen.setdefault(e.user, set()).add(catalog.row(e.item))
    acc = _BucketScores(grid.shape[0])
    for e in tqdm(valid, desc="  valid, online", leave=False, disable=not progress):
        target = catalog.row(e.item)
        scores = grid @ model.components(e.user)
        excl = list(seen.get(e.user, set()) - {target})
        if excl:
            scores[:, excl] = -np.inf
        own = scores[:, target : target + 1]
        rank = (scores > own).sum(axis=1) + ((scores == own).sum(axis=1) + 1) / 2.0
        ndcg = np.where(rank <= K, 1.0 / np.log2(rank + 1.0), 0.0)
        acc.add(model.n_events(e.user), ndcg)
        model.update(e)
        seen.setdefault(e.user, set()).add(target)
    return acc


@dataclass(frozen=True)
class SceneRecTuning:
    frozen: SceneRecConfig
    online: SceneRecConfig
    frozen_valid: dict[str, float]
    online_valid: dict[str, float]


def tune_scenerec(
    make: Callable[[SceneRecConfig], SceneRec],
    structures: Sequence[SceneRecConfig],
    train: Sequence[Event],
    valid: Sequence[Event],
    grid: Sequence[tuple[float, ...]] = WEIGHT_GRID,
    show_progress: bool = True,
) -> SceneRecTuning:
    """Pick structure and per-bucket blend for Protocol A (frozen) and B (online) on valid.

    One fit on train per structure serves both: the frozen pass only reads the model, the
    online pass then replays valid through it.
    """
    return tune_scenerec_subsets(make, structures, train, valid, grid, None, show_progress)[""]


#: Which grid rows a restricted SceneRec may use (e.g. only some components, for an ablation).
GridFilter = Callable[[tuple[float, ...]], bool]


def tune_scenerec_subsets(
    make: Callable[[SceneRecConfig], SceneRec],
    structures: Sequence[SceneRecConfig],
    train: Sequence[Event],
    valid: Sequence[Event],
    grid: Sequence[tuple[float, ...]],
    subsets: Mapping[str, GridFilter] | None,
    show_progress: bool = True,
) -> dict[str, SceneRecTuning]:
    """:func:`tune_scenerec` for several restrictions of the grid in the same passes.

    Each subset's blend is the best among its allowed rows, so every restricted system is
    tuned as carefully as the full one, at the cost of one pass per structure in all.
    ``subsets=None`` is the whole grid, under the key ``""``.
    """
    weights = np.asarray(grid, dtype=np.float64)
    masks = {
        name: np.array([keep(tuple(row)) for row in grid], dtype=np.bool_)
        for name, keep in (subsets or {"": lambda _row: True}).items()
    }
    best: dict[tuple[str, str], tuple[float, SceneRecConfig]] = {}
    valid_scores: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for cfg in tqdm(structures, desc="tune scenerec", disable=not show_progress, leave=False):
        model = make(cfg)
        model.fit(train)
        for kind, run in (("frozen", _frozen_pass), ("online", _online_pass)):
            acc = run(model, weights, train, valid, show_progress)
            for name, mask in masks.items():
                blend, value = acc.best(weights, mask)
                valid_scores[(name, kind)][cfg.label()] = value
                if (name, kind) not in best or value > best[(name, kind)][0] + 1e-12:
                    best[(name, kind)] = (value, cfg.with_blend(blend))
    if not best:
        raise ValueError("no SceneRec structure to tune")
    return {
        name: SceneRecTuning(
            frozen=best[(name, "frozen")][1],
            online=best[(name, "online")][1],
            frozen_valid=valid_scores[(name, "frozen")],
            online_valid=valid_scores[(name, "online")],
        )
        for name in masks
    }


def scenerec_structures(quick: bool) -> list[SceneRecConfig]:
    """Decay constants to try; the blend is tuned inside each."""
    if quick:
        return [SceneRecConfig(half_life_days=14.0, start_half_life_days=14.0)]
    # The start row's 28-day half-life won on valid against 7 days in every earlier run
    # (docs/evaluation.md); the freshness term (item age) took its place in the grid.
    return [
        SceneRecConfig(half_life_days=hl, start_half_life_days=28.0, age_weight=age)
        for hl in (7.0, 14.0)
        for age in (0.0, 0.25)
    ]

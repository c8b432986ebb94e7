"""Choosing hyper-parameters on the valid split only (fit on train, score valid).

Baselines with a knob (recent-popular's window) are tuned by running the protocol's own
evaluation on (train -> valid). SceneRec's blend weights are tuned per tenure bucket from
one pass per structural setting: each scored user or event computes the component matrix
once and evaluates every candidate weight vector on it as one matrix product, so a grid of
hundreds of blends costs little more than one. Buckets are independent (a user's score
only uses their bucket's weights), so the best weights are picked bucket by bucket.

Popularity's half-life and freshness only change the popularity row, so one fit counts
popularity at every candidate half-life at once (``SceneRec.track_half_lives``) and the
pass scores every (half-life, freshness) variant from the same other components. The
ranges fit any data set (:func:`scenerec_space`): half-lives from a day to no decay at all
(all-time counts) on a time clock, fractions of the replay on an event-step clock; the
grid contains each count-based baseline's own ranking (most-popular: popularity alone
without decay; item-kNN: co-occurrence alone with popularity as a tie-breaker), so valid
can always choose at least what they do.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from embeddings.blend import TENURE_EDGES, TenureBlend, tenure_bucket
from evaluation.baselines import DAY_S, Recommender
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


#: Popularity's weight where it only breaks ties between what the history suggests.
TIE_BREAK = 0.01


def _tie_break_rows(
    trans: Sequence[float], sims: Sequence[float], coocs: Sequence[float]
) -> tuple[tuple[float, ...], ...]:
    """Rows where the user's history decides and popularity only breaks ties: item-kNN's
    ranking (co-occurrence alone) is one of them."""
    rows = itertools.product(trans, sims, coocs)
    return tuple((TIE_BREAK, t, s, c, 0.0) for t, s, c in rows if t or s or c)


WEIGHT_GRID = _grid(
    (0.0, 0.5, 1.0, 2.0, 4.0, 8.0),
    (0.0, 1.0, 2.0, 4.0, 8.0),
    (0.0, 1.0, 2.0, 4.0),
    (4.0, 8.0, 16.0, 32.0),
) + _tie_break_rows((0.0, 1.0, 2.0, 4.0), (0.0, 1.0), (0.0, 1.0, 2.0, 4.0))
QUICK_WEIGHT_GRID = _grid((0.0, 1.0, 4.0), (0.0, 2.0), (0.0, 2.0), (8.0,)) + _tie_break_rows(
    (0.0, 1.0), (0.0,), (0.0, 1.0)
)
#: Weights of the social component (``scenerec_model.SOCIAL``) tried with every row.
SOCIAL_WEIGHTS = (0.0, 1.0, 4.0)


def with_social(
    grid: Sequence[tuple[float, ...]], weights: Sequence[float] = SOCIAL_WEIGHTS
) -> tuple[tuple[float, ...], ...]:
    """The grid for a model with the social component: every row at every social weight."""
    return tuple((*row, w) for w in weights for row in grid)


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


#: A popularity variant the pass scores: (half-life in the clock's days, freshness weight).
Variant = tuple[float, float]


@dataclass(frozen=True)
class SearchSpace:
    """What the tuner tries: fitted structures, popularity variants of each, blend rows."""

    structures: tuple[SceneRecConfig, ...]
    variants: tuple[Variant, ...]
    grid: tuple[tuple[float, ...], ...]

    def describe(self) -> dict[str, object]:
        return {
            "structures": [c.label() for c in self.structures],
            "half_lives": sorted({hl for hl, _ in self.variants}),
            "freshness": sorted({a for _, a in self.variants}),
            "clock_unit_s": self.structures[0].clock_unit_s if self.structures else DAY_S,
            "blend_rows": len(self.grid),
        }


#: The longer co-occurrence history the tuner tries (item-kNN counts a user's whole one).
LONG_COOC_HISTORY = 200
#: Half-lives on a time clock, in days: a day to no decay at all.
TIME_HALF_LIVES = (1.0, 7.0, 14.0, 56.0, math.inf)
QUICK_TIME_HALF_LIVES = (7.0, 14.0, math.inf)
#: On an event-step clock: these fractions of the training replay, and no decay.
STEP_FRACTIONS = (0.003, 0.03, 0.3)


def scenerec_space(
    quick: bool, clock: str = "time", n_train: int = 0, social: bool = False
) -> SearchSpace:
    """SceneRec's knobs for a data set with this clock and this many training events.

    On a time clock, the start row keeps its 28-day half-life (it won against 7 days on
    ml-100k's valid in every earlier run, docs/evaluation.md); on an event-step clock
    nothing decays by default and popularity's half-life is a fraction of the replay.
    Co-occurrence is fitted both over a user's last 20 distinct items (the worker's
    default) and over the last :data:`LONG_COOC_HISTORY` (``--quick``: 20 only); both
    keep the worker's 200 neighbours an item, so memory stays bounded.
    """
    grid = QUICK_WEIGHT_GRID if quick else WEIGHT_GRID
    if social:
        grid = with_social(grid)
    hls: tuple[float, ...]
    ages: tuple[float, ...]
    if clock == "time":
        base = SceneRecConfig(half_life_days=7.0, start_half_life_days=28.0)
        hls = QUICK_TIME_HALF_LIVES if quick else TIME_HALF_LIVES
        ages = (0.0, 0.25)
    else:
        base = SceneRecConfig(
            half_life_days=math.inf, start_half_life_days=math.inf, clock_unit_s=1.0
        )
        steps = () if clock == "none" or quick else STEP_FRACTIONS
        hls = (*(float(f"{max(f * n_train, 1.0):.2g}") for f in steps), math.inf)
        ages = (0.0,)  # freshness counts days since an item's first click: none here
    variants = tuple((hl, age) for hl in hls for age in ages)
    base = replace(base, half_life_days=hls[0])
    # The worker's co-occurrence over a user's last 20 distinct items, and over the last
    # 200: item-kNN's own counts for all but the longest histories.
    longer = replace(base, cooc_history=LONG_COOC_HISTORY)
    return SearchSpace((base,) if quick else (base, longer), variants, grid)


@dataclass(frozen=True)
class SceneRecTuning:
    """The setting chosen on valid per protocol kind (``frozen``, ``online``, ``loo``), and
    every candidate's valid NDCG@10."""

    chosen: dict[str, SceneRecConfig]
    valid: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def frozen(self) -> SceneRecConfig:
        return self.chosen["frozen"]

    @property
    def online(self) -> SceneRecConfig:
        return self.chosen["online"]

    @property
    def frozen_valid(self) -> dict[str, float]:
        return self.valid.get("frozen", {})

    @property
    def online_valid(self) -> dict[str, float]:
        return self.valid.get("online", {})


def _variant_scores(
    model: SceneRec,
    grid: npt.NDArray[np.float64],
    comps: FloatArray,
    variants: Sequence[Variant],
) -> Iterator[npt.NDArray[np.float32]]:
    """``(G, n)`` scores of every grid row for each popularity variant, one at a time.

    In float32: the tuner only compares them, and halving the bytes halves the time of
    the pass (every variant costs a ``G x n`` matrix per scored unit).
    """
    rest = (grid[:, 1:] @ comps[1:]).astype(np.float32)
    pop_weights = grid[:, :1].astype(np.float32)
    buf = np.empty_like(rest)
    for pop in model.popularity_rows(variants):
        np.multiply(pop_weights, pop.astype(np.float32)[None, :], out=buf)
        buf += rest
        yield buf  # the same buffer each time: the consumer is done with the last one


def _frozen_pass(
    model: SceneRec,
    grid: npt.NDArray[np.float64],
    variants: Sequence[Variant],
    train: Sequence[Event],
    valid: Sequence[Event],
    progress: bool,
    max_users: int | None = None,
) -> list[_BucketScores]:
    catalog = model.catalog
    truth, seen = items_by_user(valid), items_by_user(train)
    disc = _discounts(K)
    acc = [_BucketScores(grid.shape[0]) for _ in variants]
    users = _sample(sorted(truth), max_users)
    for user in tqdm(users, desc="  valid, frozen", leave=False, disable=not progress):
        excl = catalog.rows(seen.get(user, set()))
        relevant = np.zeros(len(catalog), dtype=np.float64)
        relevant[catalog.rows(truth[user])] = 1.0
        idcg = float(disc[: min(len(truth[user]), K)].sum())
        n = model.n_events(user)
        for a, scores in zip(
            acc, _variant_scores(model, grid, model.components(user), variants), strict=True
        ):
            if excl:
                scores[:, excl] = -np.inf
            top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
            a.add(n, (relevant[top] @ disc) / idcg)
    return acc


def _rank_ndcg(scores: npt.NDArray[np.float32], target: int, excl: Sequence[int]) -> FloatArray:
    """NDCG@10 of ``target`` under every grid row (mid-rank ties, ``excl`` left out)."""
    if len(excl):
        scores[:, excl] = -np.inf
    own = scores[:, target : target + 1]
    above = np.count_nonzero(scores > own, axis=1)
    out = np.zeros(scores.shape[0], dtype=np.float64)
    # Ties only matter where fewer than K items are above: a rank past K scores 0 anyway.
    near = np.flatnonzero(above < K)
    if near.size:
        ties = np.count_nonzero(scores[near] == own[near], axis=1)
        rank = above[near] + (ties + 1) / 2.0
        out[near] = np.where(rank <= K, 1.0 / np.log2(rank + 1.0), 0.0)
    return out


def _add_target(
    acc: Sequence[_BucketScores],
    model: SceneRec,
    grid: npt.NDArray[np.float64],
    variants: Sequence[Variant],
    user: str,
    target: int,
    excl: Sequence[int],
) -> None:
    """One scored target: its NDCG@10 under every (variant, grid row) into ``acc``."""
    n = model.n_events(user)
    scores = _variant_scores(model, grid, model.components(user), variants)
    for a, s in zip(acc, scores, strict=True):
        a.add(n, _rank_ndcg(s, target, excl))


def _online_pass(
    model: SceneRec,
    grid: npt.NDArray[np.float64],
    variants: Sequence[Variant],
    train: Sequence[Event],
    valid: Sequence[Event],
    progress: bool,
    max_users: int | None = None,
) -> list[_BucketScores]:
    catalog = model.catalog
    seen: dict[str, set[int]] = {}
    for e in train:
        seen.setdefault(e.user, set()).add(catalog.row(e.item))
    acc = [_BucketScores(grid.shape[0]) for _ in variants]
    for e in tqdm(valid, desc="  valid, online", leave=False, disable=not progress):
        target = catalog.row(e.item)
        excl = list(seen.get(e.user, set()) - {target})
        _add_target(acc, model, grid, variants, e.user, target, excl)
        model.update(e)
        seen.setdefault(e.user, set()).add(target)
    return acc


def loo_pass(
    model: SceneRec,
    grid: npt.NDArray[np.float64],
    variants: Sequence[Variant],
    train: Sequence[Event],
    valid: Sequence[Event],
    progress: bool,
    max_users: int | None = None,
) -> list[_BucketScores]:
    """Protocol L on valid: each user's valid target ranked after all of train, the user's
    earlier items left out (``max_users``: a seeded sample of them)."""
    catalog = model.catalog
    seen = items_by_user(train)
    acc = [_BucketScores(grid.shape[0]) for _ in variants]
    targets = _sample(list(valid), max_users)
    for e in tqdm(targets, desc="  valid, leave-one-out", leave=False, disable=not progress):
        target = catalog.row(e.item)
        excl = [r for r in catalog.rows(seen.get(e.user, set())) if r != target]
        _add_target(acc, model, grid, variants, e.user, target, excl)
    return acc


#: Seed of the valid sample when tuning is limited to ``max_users``.
SAMPLE_SEED = 2026


def _sample(units: list[Any], max_units: int | None) -> list[Any]:
    if max_units is None or len(units) <= max_units:
        return units
    keep = sorted(random.Random(SAMPLE_SEED).sample(range(len(units)), max_units))
    return [units[k] for k in keep]


Pass = Callable[..., list[_BucketScores]]
PASSES: dict[str, Pass] = {"frozen": _frozen_pass, "online": _online_pass, "loo": loo_pass}


def tune_scenerec(
    make: Callable[[SceneRecConfig], SceneRec],
    space: SearchSpace,
    train: Sequence[Event],
    valid: Sequence[Event],
    show_progress: bool = True,
    kinds: Sequence[str] = ("frozen", "online"),
    max_users: int | None = None,
) -> SceneRecTuning:
    """Pick structure, popularity variant and per-bucket blend on valid, per protocol kind.

    One fit on train per structure serves every kind: the frozen and leave-one-out passes
    only read the model, the online pass (last) then replays valid through it.
    """
    return tune_scenerec_subsets(make, space, train, valid, None, show_progress, kinds, max_users)[
        ""
    ]


#: Which grid rows a restricted SceneRec may use (e.g. only some components, for an ablation).
GridFilter = Callable[[tuple[float, ...]], bool]


def tune_scenerec_subsets(
    make: Callable[[SceneRecConfig], SceneRec],
    space: SearchSpace,
    train: Sequence[Event],
    valid: Sequence[Event],
    subsets: Mapping[str, GridFilter] | None,
    show_progress: bool = True,
    kinds: Sequence[str] = ("frozen", "online"),
    max_users: int | None = None,
) -> dict[str, SceneRecTuning]:
    """:func:`tune_scenerec` for several restrictions of the grid in the same passes.

    Each subset's blend is the best among its allowed rows, so every restricted system is
    tuned as carefully as the full one, at the cost of one pass per structure in all.
    ``subsets=None`` is the whole grid, under the key ``""``.
    """
    weights = np.asarray(space.grid, dtype=np.float64)
    masks = {
        name: np.array([keep(tuple(row)) for row in space.grid], dtype=np.bool_)
        for name, keep in (subsets or {"": lambda _row: True}).items()
    }
    # The online pass changes the model (it ingests valid): it runs last.
    kinds = sorted(kinds, key=lambda k: k == "online")
    best: dict[tuple[str, str], tuple[float, SceneRecConfig]] = {}
    valid_scores: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for cfg in tqdm(space.structures, desc="tune scenerec", disable=not show_progress, leave=False):
        model = make(cfg)
        model.track_half_lives([hl for hl, _ in space.variants])
        model.fit(train)
        for kind in kinds:
            accs = PASSES[kind](
                model, weights, space.variants, train, valid, show_progress, max_users
            )
            for (hl, age), acc in zip(space.variants, accs, strict=True):
                variant = replace(cfg, half_life_days=hl, age_weight=age)
                for name, mask in masks.items():
                    blend, value = acc.best(weights, mask)
                    valid_scores[(name, kind)][variant.label()] = round(value, 6)
                    if (name, kind) not in best or value > best[(name, kind)][0] + 1e-12:
                        best[(name, kind)] = (value, variant.with_blend(blend))
    if not best:
        raise ValueError("no SceneRec structure to tune")
    return {
        name: SceneRecTuning(
            {kind: best[(name, kind)][1] for kind in kinds},
            {kind: valid_scores[(name, kind)] for kind in kinds},
        )
        for name in masks
    }

"""Per-scene feeds: NDCG@10 of each scene's top-10, co-learning against independent scenes.

The worker emits a top-10 for every scene a user is active in (``embeddings.ranking``). This
module scores those scene feeds on ml-100k's six scenes with three ways of forming the
scene query ``u_s ⊙ g_s``, everything else equal (the popularity, transition and
co-occurrence components of the same fitted :class:`SceneRec`, restricted to the scene's
items):

* ``independent``: each scene learns only from its own events: the user's running mean in
  the scene (nothing before their first click there) and a gate fitted by BPR on that
  scene's events alone (``embeddings.colearn``, mode ``independent``);
* ``colearn``: the scene vector shrunk toward a mix of the global vector and the user's
  related scenes, and gates with a shape shared by all scenes plus a scene-specific part
  (``embeddings.colearn``, mode ``shared``);
* ``worker``: what the worker does today, ``UserState.scene_vector`` (borrows from the
  global vector only) with all-ones gates.

Protocols, on the same split as the harness:

* ``frozen`` (A per scene): for every (user, scene) with test events in the scene, the
  scene's top-10 among the scene's items, leaving out the user's train + valid items;
  truth: the user's test items clicked in that scene. Nothing after train is learned.
* ``online`` (B per scene): every test event is scored among the items of its scene the user
  has not had, mid-rank ties, before it is ingested; valid is replayed first.

Each family has a few candidates (gate L2 strength; for ``colearn`` also how much and from
what it borrows) and one blend per tenure bucket; all are chosen on valid (train -> valid,
frozen or prequential as the protocol), pooled over scenes, before test is scored.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from embeddings.blend import TenureBlend
from embeddings.colearn import (
    GLOBAL,
    CoLearnConfig,
    CoLearner,
    GateFitConfig,
    GateSamples,
    SceneRelations,
    colearned_scene_vector,
    fit_gates,
    independent_scene_vector,
    scene_candidates,
)
from embeddings.scenes import SceneGates
from embeddings.user_model import UserState
from embeddings.vectors import Vector
from evaluation.data import Catalog, Event
from evaluation.metrics import (
    HIT,
    NDCG,
    Estimate,
    K,
    list_metrics,
    paired_delta,
    summarize,
    target_metrics,
)
from evaluation.protocols import items_by_user
from evaluation.scenerec_model import SceneRec
from evaluation.tuning import _BucketScores, _discounts

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
FAMILIES = ("independent", "colearn", "worker")
#: Per-scene blend: (popularity, transitions, scene similarity, co-occurrence). Smaller than
#: the global grid: every candidate is scored for every variant on every valid event.
SCENE_GRID: tuple[tuple[float, ...], ...] = tuple(
    (1.0, t, s, c)
    for t in (0.0, 1.0, 4.0)
    for s in (0.0, 2.0, 4.0, 8.0, 16.0, 32.0)
    for c in (0.0, 1.0, 4.0)
)
QUICK_SCENE_GRID: tuple[tuple[float, ...], ...] = tuple(
    (1.0, t, s, c) for t in (0.0, 1.0, 4.0) for s in (0.0, 4.0, 16.0) for c in (0.0, 2.0)
)


@dataclass(frozen=True)
class Variant:
    """One way to form the scene query: a family and its knobs."""

    family: str
    colearn: CoLearnConfig | None = None
    gate: GateFitConfig | None = None

    @property
    def name(self) -> str:
        parts = [self.family]
        if self.colearn is not None:
            parts.append(f"k={self.colearn.prior:g} b={self.colearn.global_share:g}")
        if self.gate is not None:
            parts.append(f"reg={self.gate.reg:g}")
        return " ".join(parts)

    @property
    def sample_key(self) -> tuple[str, CoLearnConfig | None]:
        """Variants with the same query share their gate training samples."""
        return (self.family, self.colearn)


def variants(quick: bool = False) -> list[Variant]:
    """Candidates per family; the valid split picks one of each."""
    if quick:
        return [
            Variant("independent", gate=GateFitConfig("independent", reg=1e-5)),
            Variant("colearn", CoLearnConfig(3.0, 0.5), GateFitConfig("shared", 1e-4, 1e-5)),
            Variant("worker"),
        ]
    out = [
        Variant("independent", gate=GateFitConfig("independent", reg=reg)) for reg in (1e-5, 1e-4)
    ]
    out += [
        Variant("colearn", CoLearnConfig(3.0, share), GateFitConfig("shared", reg, 1e-5))
        for share, reg in ((0.0, 1e-5), (0.0, 1e-4), (0.5, 1e-4))
    ]
    return [*out, Variant("worker")]


def colearner_for(
    feeds: SceneFeeds, tuning: SceneTuning, global_gate: Vector | None
) -> CoLearner | None:
    """The chosen co-learning variant as the worker would load it (gates, relations, config)."""
    chosen = tuning.chosen.get("colearn")
    if chosen is None:
        return None
    variant = chosen[0]
    if variant.colearn is None:
        return None
    gates = SceneGates(feeds.items.shape[1])
    for scene, gate in feeds.gates.get(variant.name, {}).items():
        gates.set_gate(scene, gate)
    if global_gate is not None:
        gates.set_gate(GLOBAL, global_gate)
    return CoLearner(gates, feeds.relations, variant.colearn)


def relations_from(train: Iterable[Event]) -> SceneRelations:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for e in train:
        counts[e.user][e.scene] += 1
    return SceneRelations.from_activity(counts)


class SceneFeeds:
    """The per-scene queries of every variant, their gates, and the scene components."""

    def __init__(
        self,
        catalog: Catalog,
        item_matrix: npt.NDArray[np.float32],
        candidates: Sequence[Variant],
        relations: SceneRelations,
    ) -> None:
        self.catalog = catalog
        self.items = item_matrix
        self.variants = {v.name: v for v in candidates}
        self.relations = relations
        self.rows: dict[str, IntArray] = scene_candidates([it.scenes for it in catalog.items])
        self._scene_items = {s: np.ascontiguousarray(item_matrix[r]) for s, r in self.rows.items()}
        self.gates: dict[str, dict[str, Vector]] = {}
        self._samples: dict[tuple[str, CoLearnConfig | None], GateSamples] = {}
        # One representative per sample key: variants that differ only in the gate's
        # penalty train on the same samples.
        self._gated = {v.sample_key: v for v in reversed(candidates) if v.gate is not None}

    def scene_vector(self, variant: Variant, state: UserState, scene: str) -> Vector | None:
        if variant.family == "independent":
            return independent_scene_vector(state, scene)
        if variant.family == "colearn" and variant.colearn is not None:
            return colearned_scene_vector(state, scene, self.relations, variant.colearn)
        return state.scene_vector(scene)

    def query(self, variant: Variant, state: UserState, scene: str) -> Vector | None:
        vec = self.scene_vector(variant, state, scene)
        gate = self.gates.get(variant.name, {}).get(scene)
        if vec is None or gate is None:
            return vec
        out: Vector = (vec * gate).astype(np.float32)
        return out

    def observe(self, event: Event, state: UserState, row: int) -> None:
        """SceneRec observer: the query each gated variant had before the event."""
        for key, v in self._gated.items():
            samples = self._samples.get(key)
            if samples is None:
                samples = self._samples[key] = GateSamples(self.items.shape[1])
            samples.add(event.scene, self.scene_vector(v, state, event.scene), row)

    def fit_gates(self) -> None:
        for v in self.variants.values():
            if v.gate is not None:
                samples = self._samples.get(v.sample_key)
                if samples is not None and len(samples):
                    self.gates[v.name] = fit_gates(samples, self.items, self.rows, v.gate)
        self._samples.clear()

    def components(
        self, model: SceneRec, user: str, scene: str, names: Iterable[str]
    ) -> tuple[IntArray, dict[str, FloatArray]]:
        """The scene's candidate rows, and per variant its ``(4, n_candidates)`` features."""
        rows = self.rows[scene]
        base = model.components(user)[:, rows]  # popularity, transitions, sim, cooc, gated
        state = model.known_state(user)
        out: dict[str, FloatArray] = {}
        for name in names:
            q = self.query(self.variants[name], state, scene)
            sim = (
                np.zeros(len(rows), dtype=np.float64)
                if q is None
                else (self._scene_items[scene] @ q).astype(np.float64)
            )
            out[name] = np.stack([base[0], base[1], sim, base[3]])
        return rows, out


def fit_with_feeds(model: SceneRec, feeds: SceneFeeds, train: Sequence[Event]) -> None:
    """Fit ``model`` on train, collecting the gate samples of every variant on the way."""
    model.observers.append(feeds.observe)
    try:
        model.fit(train)
    finally:
        model.observers.remove(feeds.observe)
    feeds.fit_gates()


# --- passes ----------------------------------------------------------------------------------

#: (user, scene, variant name, user's events so far, ranked candidate rows per grid row
#: (G, K), relevant rows)
FrozenSink = Callable[[str, str, str, int, IntArray, set[int]], None]
#: (event, variant name, user's events so far, target ranks per grid row (G,))
OnlineSink = Callable[[Event, str, int, FloatArray], None]
Weights = Callable[[str, int], FloatArray]  # (variant name, n_events) -> (G, 4)


def _frozen_pass(
    model: SceneRec,
    feeds: SceneFeeds,
    names: Sequence[str],
    history: Sequence[Event],
    target: Sequence[Event],
    weights: Weights,
    sink: FrozenSink,
    desc: str | None = None,
) -> None:
    catalog = model.catalog
    seen = items_by_user(history)
    truth: dict[tuple[str, str], set[int]] = defaultdict(set)
    for e in target:
        if e.item in catalog:
            truth[(e.user, e.scene)].add(catalog.row(e.item))
    for user, scene in tqdm(sorted(truth), desc=desc, disable=desc is None, leave=False):
        rows, comps = feeds.components(model, user, scene, names)
        live = ~np.isin(rows, catalog.rows(seen.get(user, set())))
        n = model.n_events(user)
        for name in names:
            scores = (weights(name, n) @ comps[name])[:, live]
            top = np.argsort(-scores, axis=1, kind="stable")[:, :K]
            sink(user, scene, name, n, rows[live][top], truth[(user, scene)])


def _online_pass(
    model: SceneRec,
    feeds: SceneFeeds,
    names: Sequence[str],
    history: Sequence[Event],
    scored: Sequence[Event],
    weights: Weights,
    sink: OnlineSink,
    desc: str | None = None,
) -> None:
    catalog = model.catalog
    seen: dict[str, set[int]] = defaultdict(set)
    for e in history:
        if e.item in catalog:
            seen[e.user].add(catalog.row(e.item))
    for e in tqdm(scored, desc=desc, disable=desc is None, leave=False):
        if e.item not in catalog:
            continue
        target = catalog.row(e.item)
        rows, comps = feeds.components(model, e.user, e.scene, names)
        live = ~np.isin(rows, list(seen[e.user] - {target}))
        pos = int(np.flatnonzero(rows == target)[0])
        n = model.n_events(e.user)
        for name in names:
            scores = (weights(name, n) @ comps[name])[:, live]
            own = scores[:, int(live[:pos].sum()) : int(live[:pos].sum()) + 1]
            rank = (scores > own).sum(axis=1) + ((scores == own).sum(axis=1) + 1) / 2.0
            sink(e, name, n, rank.astype(np.float64))
        model.update(e)
        seen[e.user].add(target)


# --- tuning and scoring ----------------------------------------------------------------------


@dataclass
class SceneTuning:
    """Per family: the chosen variant and its blend; every candidate's pooled valid NDCG."""

    chosen: dict[str, tuple[Variant, TenureBlend]]
    valid: dict[str, float]


def _pick(
    feeds: SceneFeeds, acc: Mapping[str, _BucketScores], grid: npt.NDArray[np.float64]
) -> SceneTuning:
    chosen: dict[str, tuple[Variant, TenureBlend, float]] = {}
    valid: dict[str, float] = {}
    for name, scores in acc.items():
        blend, value = scores.best(grid)
        valid[name] = round(value, 6)
        v = feeds.variants[name]
        if v.family not in chosen or value > chosen[v.family][2] + 1e-12:
            chosen[v.family] = (v, blend, value)
    return SceneTuning({f: (v, b) for f, (v, b, _) in chosen.items()}, valid)


def tune(
    model: SceneRec,
    feeds: SceneFeeds,
    train: Sequence[Event],
    valid: Sequence[Event],
    grid: Sequence[tuple[float, ...]],
    online: bool,
    desc: str | None = None,
) -> SceneTuning:
    """Every variant x blend on valid, frozen (one list per user and scene) or prequential.

    After the prequential pass ``model`` has ingested valid: test's warm-up.
    """
    g = np.asarray(grid, dtype=np.float64)
    acc = {name: _BucketScores(len(g)) for name in feeds.variants}
    disc = _discounts(K)

    def listed(user: str, scene: str, name: str, n: int, top: IntArray, truth: set[int]) -> None:
        hits = np.isin(top, list(truth)).astype(np.float64)
        idcg = float(disc[: min(len(truth), K)].sum())
        acc[name].add(n, (hits @ disc[: top.shape[1]]) / idcg)

    def ranked(_e: Event, name: str, n: int, rank: FloatArray) -> None:
        acc[name].add(n, np.where(rank <= K, 1.0 / np.log2(rank + 1.0), 0.0))

    names = list(feeds.variants)
    if online:
        _online_pass(model, feeds, names, train, valid, lambda _n, _k: g, ranked, desc)
    else:
        _frozen_pass(model, feeds, names, train, valid, lambda _n, _k: g, listed, desc)
    return _pick(feeds, acc, g)


@dataclass
class PerSceneResult:
    """One protocol: per family and scene, the metric estimates over users."""

    scenes: list[str]
    train_events: dict[str, int]
    estimates: dict[str, dict[str, dict[str, Estimate]]]
    pooled: dict[str, dict[str, Estimate]]
    #: Per scene: co-learning minus independent NDCG@10, paired over the same users.
    delta: dict[str, dict[str, float]]
    tuning: SceneTuning
    records: dict[str, dict[str, list[tuple[str, dict[str, float]]]]] = field(default_factory=dict)


def _blend_weights(tuning: SceneTuning) -> tuple[dict[str, str], Weights]:
    by_name = {v.name: (fam, blend) for fam, (v, blend) in tuning.chosen.items()}

    def weights(name: str, n: int) -> FloatArray:
        return by_name[name][1].weights_for(n)[None, :]

    return {name: fam for name, (fam, _) in by_name.items()}, weights


Records = dict[str, dict[str, list[tuple[str, dict[str, float]]]]]


def score_test(
    model: SceneRec,
    feeds: SceneFeeds,
    history: Sequence[Event],
    test: Sequence[Event],
    tuning: SceneTuning,
    train_events: Mapping[str, int],
    online: bool,
    desc: str | None = None,
) -> PerSceneResult:
    """Score test once with each family's chosen variant and blend.

    Frozen: one list per (user, scene). Online: ``model`` must already have ingested
    everything in ``history`` (train + valid); it goes on learning from test.
    """
    family_of, weights = _blend_weights(tuning)
    names = list(family_of)
    records: Records = defaultdict(lambda: defaultdict(list))
    catalog = model.catalog

    def listed(user: str, scene: str, name: str, _n: int, top: IntArray, truth: set[int]) -> None:
        ranked = [catalog.ids[r] for r in top[0]]
        metrics = list_metrics(ranked, {catalog.ids[r] for r in truth})
        records[family_of[name]][scene].append((user, metrics))

    def ranked(e: Event, name: str, _n: int, rank: FloatArray) -> None:
        records[family_of[name]][e.scene].append((e.user, target_metrics(float(rank[0]))))

    if online:
        _online_pass(model, feeds, names, history, test, weights, ranked, desc)
    else:
        _frozen_pass(model, feeds, names, history, test, weights, listed, desc)
    return _result(records, train_events, tuning)


def _result(
    records: Records,
    train_events: Mapping[str, int],
    tuning: SceneTuning,
) -> PerSceneResult:
    scenes = sorted(
        {s for per in records.values() for s in per}, key=lambda s: (train_events.get(s, 0), s)
    )
    estimates = {
        fam: {s: summarize(per[s]) for s in scenes if s in per} for fam, per in records.items()
    }
    pooled = {
        fam: summarize([r for s in scenes for r in per.get(s, [])]) for fam, per in records.items()
    }
    delta: dict[str, dict[str, float]] = {}
    if "colearn" in records and "independent" in records:
        for s in scenes:
            delta[s] = paired_delta(records["colearn"][s], records["independent"][s], NDCG)
    return PerSceneResult(
        scenes,
        dict(train_events),
        estimates,
        pooled,
        delta,
        tuning,
        {f: dict(p) for f, p in records.items()},
    )


def to_json(result: PerSceneResult) -> dict[str, Any]:
    """``{scene: {family: {metric: value}}}`` plus train event counts, deltas and tuning."""
    out: dict[str, Any] = {}
    for s in result.scenes:
        row: dict[str, Any] = {"train_events": result.train_events.get(s, 0)}
        for fam, per in result.estimates.items():
            est = per.get(s)
            if est is None:
                continue
            row[fam] = {
                **{m: round(est[m].mean, 6) for m in (NDCG, HIT)},
                f"{NDCG}_lo": round(est[NDCG].low, 6),
                f"{NDCG}_hi": round(est[NDCG].high, 6),
                "n_users": est[NDCG].n_users,
                "n_events": est[NDCG].n_events,
            }
        if s in result.delta:
            row["colearn_minus_independent"] = result.delta[s]
        out[s] = row
    out["all"] = {
        fam: {
            NDCG: round(est[NDCG].mean, 6),
            f"{NDCG}_lo": round(est[NDCG].low, 6),
            f"{NDCG}_hi": round(est[NDCG].high, 6),
            HIT: round(est[HIT].mean, 6),
        }
        for fam, est in result.pooled.items()
    }
    out["sparsest"] = result.scenes[:3]
    out["tuned"] = {
        fam: {"variant": v.name, "blend": [list(w) for w in blend.weights]}
        for fam, (v, blend) in result.tuning.chosen.items()
    }
    out["valid_ndcg@10"] = result.tuning.valid
    return out


def train_event_counts(train: Iterable[Event]) -> dict[str, int]:
    return dict(Counter(e.scene for e in train))

"""One harness run: load a data set, tune on valid, run its protocols, collect results.

The default run is EVALUATION.md's: ml-100k's Protocols A, B and C, its per-scene feeds,
and the social experiment on lastfm-2k. ``Options.dataset`` runs any folder of atomic
files instead: the same protocols on its global split (``protocol="temporal"``; B and C
need an order, so data with neither time nor order gets A only), or Protocol L
(``protocol="loo"``, ``evaluation.loo``). Every system is fitted on train only. Knobs are
chosen on valid (``evaluation.tuning``) before test is touched; test is scored once.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from embeddings.colearn import GLOBAL, CoLearner
from embeddings.collaborative import COMPONENTS, FeedBlend
from evaluation import lastfm
from evaluation.baselines import (
    BPRMF,
    DecayedPopular,
    ItemKNN,
    MostPopular,
    RecentPopular,
    Recommender,
)
from evaluation.data import Catalog, Dataset, Event, load_folder, load_lastfm2k, load_ml100k
from evaluation.defaults import QUICK_BPR_EPOCHS
from evaluation.encoding import (
    VectorCache,
    comment_vectors,
    commented_items,
    item_vectors,
    profile_vectors,
)
from evaluation.loo import LooOptions
from evaluation.loo import run as run_loo
from evaluation.memory import DenseEstimate, check_dense
from evaluation.metrics import catalog_coverage, intra_list_diversity, summarize
from evaluation.per_scene import (
    QUICK_SCENE_GRID,
    SCENE_GRID,
    PerSceneResult,
    SceneFeeds,
    colearner_for,
    fit_with_feeds,
    relations_from,
    score_test,
    train_event_counts,
    tune,
    variants,
)
from evaluation.per_scene import to_json as per_scene_json
from evaluation.protocols import (
    Contender,
    EventRecord,
    ListResult,
    cold_start,
    run_frozen,
    run_prequential,
)
from evaluation.report import Results, SystemResult, dump_line, to_json
from evaluation.scenerec_model import SOCIAL, Diversified, SceneRec, SceneRecConfig
from evaluation.social import social_report
from evaluation.tuning import (
    GridFilter,
    SceneRecTuning,
    Tuned,
    scenerec_space,
    tune_recommender,
    tune_scenerec_subsets,
)

logger = logging.getLogger(__name__)

WINDOWS_DAYS = (1.0, 3.0, 5.0, 7.0, 10.0, 14.0, 21.0, 28.0, 42.0, 56.0)
QUICK_WINDOWS_DAYS = (7.0, 14.0)
#: The window / half-life of EVALUATION.md's popularity anchors.
ANCHOR_DAYS = 14.0
#: --quick scores only the first test events in Protocols B and C.
QUICK_TEST_EVENTS = 2_000
#: MMR lambdas shown against Protocol A accuracy (1 = no re-ranking).
MMR_SWEEP = (1.0, 0.9, 0.8, 0.7, 0.5, 0.3)


@dataclass(frozen=True)
class Options:
    data_dir: Path
    cache_dir: Path
    #: A folder of atomic files to evaluate instead of ml-100k (and lastfm-2k's social).
    dataset: Path | None = None
    #: ``temporal`` (Protocols A, B, C) or ``loo`` (Protocol L), for ``dataset``.
    protocol: str = "temporal"
    #: Protocol L's settings (``evaluation.loo``).
    loo: LooOptions = field(default_factory=LooOptions)
    quick: bool = False
    protocols: tuple[str, ...] = ("frozen", "online", "cold_start")
    progress: bool = True
    #: Also score the per-scene feeds (co-learning vs independent scene models).
    per_scene: bool = True
    #: Also run the social experiment on lastfm-2k (``evaluation.lastfm``).
    social: bool = True
    #: MMR trade-off of SceneRec's lists in every protocol (1: plain top-k by score).
    mmr_lambda: float = 1.0
    #: The MMR values whose effect on Protocol A is shown (accuracy vs diversity).
    mmr_sweep: tuple[float, ...] = MMR_SWEEP


@dataclass
class HarnessOutput:
    results: Results
    meta: dict[str, Any]
    frozen_lists: dict[str, ListResult] = field(default_factory=dict)
    online_records: dict[str, list[EventRecord]] = field(default_factory=dict)
    #: Protocol key (``frozen``/``online``) -> per-scene feed results.
    per_scene: dict[str, PerSceneResult] = field(default_factory=dict)
    #: MMR lambda -> SceneRec on Protocol A with its lists re-ranked.
    diversity: dict[str, SystemResult] = field(default_factory=dict)
    #: The co-learning state chosen on valid (Protocol B), for the worker to load.
    colearner: CoLearner | None = None
    #: The ranking the worker loads (``results/model.json``, SCENEREC_MODEL_PATH).
    feed_blend: FeedBlend | None = None
    #: Data set -> the social experiment's JSON (``evaluation.lastfm.run``, or
    #: :func:`social_report` for a data set with a social graph).
    social: dict[str, Any] = field(default_factory=dict)
    #: Protocol L: system -> user -> the test top-10.
    loo_lists: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    #: Paired NDCG@10 differences (``scenerec - scenerec-ids-only`` ...), by label.
    deltas: dict[str, dict[str, float]] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        """``eval.json``: the required ``{protocol: {system: {metric: value}}}`` plus extras
        under their own top-level keys (``per_scene``)."""
        out: dict[str, Any] = dict(to_json(self.results))
        if self.per_scene:
            out["per_scene"] = {p: per_scene_json(r) for p, r in self.per_scene.items()}
        if self.diversity:
            out["diversity"] = {"frozen": to_json({"mmr": self.diversity})["mmr"]}
        if self.social:
            out["social"] = self.social
        if self.deltas:
            out["paired_ndcg@10"] = self.deltas
        return out

    def dump_lines(self) -> Iterator[dict[str, Any]]:
        for system, lists in self.loo_lists.items():
            for user, items in lists.items():
                yield dump_line("loo", system, user, items)
        for system, result in self.frozen_lists.items():
            for user, items in result.recs.items():
                yield dump_line("frozen", system, user, items)
        # Protocol C scores the same lists as B (a subset of its events): not repeated.
        for system, records in self.online_records.items():
            for r in records:
                yield dump_line(
                    "online",
                    system,
                    r.user,
                    r.recs,
                    event=r.index,
                    target=r.item,
                    user_event=r.user_event,
                )


class _Timer:
    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    def run(self, label: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        logger.info("%s ...", label)
        out = fn()
        self.times[label] = round(time.perf_counter() - start, 2)
        logger.info("%s done in %.1f s", label, self.times[label])
        return out


def run(opts: Options) -> HarnessOutput:
    timer = _Timer()
    if opts.dataset is None:
        ds: Dataset = timer.run("load ml-100k", lambda: load_ml100k(opts.data_dir))
    else:
        folder = opts.dataset
        ds = timer.run(f"load {folder}", lambda: load_folder(folder, opts.protocol))
    cache = VectorCache(opts.cache_dir)
    if ds.protocol == "loo":
        return _loo(opts, ds, cache, timer)
    catalog = Catalog(ds.items)
    train, valid, test = ds.split.train, ds.split.valid, ds.split.test
    # Item-kNN online and frozen: two dense matrices.
    dense = check_dense(DenseEstimate(len(catalog), 0, 2 * opts.loo.knn), opts.loo.max_dense_gb)
    vecs = timer.run("item vectors", lambda: item_vectors(ds, cache))
    profiles = timer.run("profile vectors", lambda: profile_vectors(ds, cache))
    comments = timer.run("comment vectors", lambda: comment_vectors(ds, cache))
    vecs = commented_items(ds.items, vecs, train, comments)

    def make_scenerec(cfg: SceneRecConfig) -> SceneRec:
        return SceneRec(catalog, vecs, profiles, cfg, ds.social, comments)

    timed = ds.clock == "time"
    ordered = ds.clock != "none"
    protocols = tuple(p for p in opts.protocols if ordered or p == "frozen")
    want_online = bool({"online", "cold_start"} & set(protocols))
    windows = QUICK_WINDOWS_DAYS if opts.quick else WINDOWS_DAYS
    rp_frozen: Tuned | None = None
    rp_online: Tuned | None = None
    if timed:
        rp_frozen = timer.run(
            "tune recent-popular (A)",
            lambda: tune_recommender(
                _windows(catalog, windows), catalog, train, valid, online=False
            ),
        )
        if want_online:
            rp_online = timer.run(
                "tune recent-popular (B)",
                lambda: tune_recommender(
                    _windows(catalog, windows), catalog, train, valid, online=True
                ),
            )
    space = scenerec_space(opts.quick, ds.clock, len(train), bool(ds.social))
    subsets = _subsets(ds, opts, bool(np.any(vecs)))
    kinds = ("frozen", "online") if want_online else ("frozen",)
    tuned: dict[str, SceneRecTuning] = timer.run(
        "tune scenerec",
        lambda: tune_scenerec_subsets(
            make_scenerec, space, train, valid, subsets, opts.progress, kinds
        ),
    )
    sc = tuned["scenerec"]
    bpr_epochs = QUICK_BPR_EPOCHS if opts.quick else BPRMF(catalog).epochs
    factories: dict[str, Callable[[], Recommender]] = {"most-popular": lambda: MostPopular(catalog)}
    if rp_frozen is not None:
        label = rp_frozen.label
        factories["recent-popular"] = lambda: RecentPopular(catalog, _days(label))
        # EVALUATION.md's anchor, fixed (not tuned), to compare with its table.
        factories["recent-popular-14d"] = lambda: RecentPopular(catalog, ANCHOR_DAYS)
    if opts.loo.knn:
        factories["item-knn"] = lambda: ItemKNN(catalog)
    factories["bpr-mf"] = lambda: BPRMF(catalog, epochs=bpr_epochs)
    factories["scenerec"] = lambda: _mmr(make_scenerec(sc.frozen), vecs, opts.mmr_lambda)
    if profiles:
        factories["scenerec-no-profile"] = lambda: _mmr(
            make_scenerec(replace(sc.frozen, use_profiles=False)), vecs, opts.mmr_lambda
        )
    for name, tuning in tuned.items():
        if name != "scenerec":
            factories[name] = _factory(make_scenerec, tuning.frozen)
    fitted: dict[str, Recommender] = timer.run("fit baselines", lambda: _fit(factories, train))
    out = HarnessOutput(results={}, meta={})
    if "frozen" in protocols:
        out.frozen_lists = timer.run(
            "protocol A",
            lambda: {
                name: run_frozen(m, train + valid, test, desc=_desc(opts, f"A {name}"))
                for name, m in fitted.items()
            },
        )
        out.results["frozen"] = {
            name: _list_result(res, catalog, vecs) for name, res in out.frozen_lists.items()
        }
        base = fitted["scenerec"]
        base = base.model if isinstance(base, Diversified) else base
        out.diversity = timer.run(
            "MMR sweep (A)",
            lambda: {
                f"{lam:g}": _list_result(
                    run_frozen(Diversified(base, vecs, lam), train + valid, test), catalog, vecs
                )
                for lam in opts.mmr_sweep
            },
        )
    if want_online:
        scored = test[:QUICK_TEST_EVENTS] if opts.quick else test
        contenders = _online_contenders(
            fitted,
            catalog,
            train,
            rp_online,
            tuned,
            lambda c: _mmr(make_scenerec(c), vecs, opts.mmr_lambda),
            bool(profiles),
        )
        out.feed_blend = worker_blend(contenders["scenerec-frozen"].model, sc)
        records: dict[str, list[EventRecord]] = timer.run(
            "protocol B",
            lambda: run_prequential(
                contenders, catalog, train, valid, scored, desc=_desc(opts, "protocol B")
            ),
        )
        out.online_records = records
        if "online" in protocols:
            out.results["online"] = {
                name: _event_result(recs, catalog, vecs) for name, recs in records.items()
            }
        if "cold_start" in protocols:
            train_users = {e.user for e in train}
            out.results["cold_start"] = {
                name: _cold_result(recs, train_users)
                for name, recs in records.items()
                if contenders[name].learn
            }
    scenes = {s for it in ds.items for s in it.scenes}
    if opts.per_scene and len(scenes) > 1 and {"frozen", "online"} & set(protocols):
        out.per_scene, out.colearner = timer.run(
            "per-scene feeds",
            lambda: _per_scene(opts, catalog, vecs, train, valid, test, sc, make_scenerec),
        )
    if ds.social:
        out.social[ds.name] = social_report(
            ds, out.frozen_lists, out.online_records, [*train, *valid], test
        )
    if opts.social and opts.dataset is None:
        out.social["lastfm-2k"] = timer.run(
            "social on lastfm-2k",
            lambda: lastfm.run(load_lastfm2k(opts.data_dir), cache),
        )
    out.meta = {
        "dataset": ds.name,
        "counts": dataset_counts(ds),
        "protocols": list(protocols),
        "quick": opts.quick,
        "split": {"train": len(train), "valid": len(valid), "test": len(test)},
        "scored_test_events_online": min(QUICK_TEST_EVENTS, len(test)) if opts.quick else len(test),
        "tie_rule": "Protocols B/C: the target takes the middle rank of its tie group",
        "bootstrap": "95% percentile interval, 1000 resamples of users, seed 2024",
        "dense_counts": dense,
        "tuned": {
            "recent-popular": {
                "frozen": None if rp_frozen is None else asdict(rp_frozen),
                "online": None if rp_online is None else asdict(rp_online),
            },
            "scenerec": {
                "space": space.describe(),
                "frozen": asdict(sc.frozen),
                "online": asdict(sc.online) if want_online else None,
                "frozen_valid_ndcg": sc.frozen_valid,
                "online_valid_ndcg": sc.online_valid,
            },
            **{
                name: {kind: t.chosen[kind].label() for kind in t.chosen}
                | {
                    "blend": {
                        kind: [list(w) for w in t.chosen[kind].blend.weights] for kind in t.chosen
                    }
                }
                for name, t in tuned.items()
                if name != "scenerec"
            },
            "bpr-mf": {"epochs": bpr_epochs},
        },
        "mmr_lambda": opts.mmr_lambda,
        "timings_s": timer.times,
    }
    return out


def _subsets(ds: Dataset, opts: Options, has_vectors: bool) -> dict[str, GridFilter]:
    """SceneRec and its restrictions tuned in the same passes: without the social term
    (a data set with a social graph), without item vectors (a data set run with --dataset
    whose items have text or facts)."""
    out: dict[str, GridFilter] = {"scenerec": lambda _w: True}
    if ds.social:
        out["scenerec-no-social"] = lambda w: w[SOCIAL] == 0
    if opts.dataset is not None and has_vectors:
        out["scenerec-ids-only"] = lambda w: w[2] == w[4] == 0
    return out


def _factory(
    make: Callable[[SceneRecConfig], SceneRec], cfg: SceneRecConfig
) -> Callable[[], Recommender]:
    return lambda: make(cfg)


def dataset_counts(ds: Dataset) -> dict[str, int]:
    """What the printed titles name: the data set's own sizes."""
    split = ds.split
    return {
        "items": len(ds.items),
        "users": len({e.user for e in ds.events}),
        "events": len(ds.events),
        "train": len(split.train),
        "valid": len(split.valid),
        "test": len(split.test),
        "test_users": len({e.user for e in split.test}),
        "social_edges": len(ds.social),
        "profiles": len(ds.profiles),
        "scenes": len({s for it in ds.items for s in it.scenes}),
    }


def _loo(opts: Options, ds: Dataset, cache: VectorCache, timer: _Timer) -> HarnessOutput:
    loo_opts = replace(opts.loo, quick=opts.quick, progress=opts.progress)
    res = timer.run("protocol L", lambda: run_loo(ds, cache, loo_opts))
    out = HarnessOutput(results=res.results, meta={})
    out.frozen_lists = {}
    out.loo_lists = res.lists
    if res.deltas:
        out.deltas = res.deltas
    out.meta = {
        "dataset": ds.name,
        "counts": dataset_counts(ds),
        "protocols": list(res.results),
        "quick": opts.quick,
        "tie_rule": "the target takes the middle rank of its tie group",
        "bootstrap": "95% percentile interval, 1000 resamples of users, seed 2024",
        **res.meta,
        "timings_s": timer.times,
    }
    return out


def _per_scene(
    opts: Options,
    catalog: Catalog,
    vecs: npt.NDArray[np.float32],
    train: Sequence[Event],
    valid: Sequence[Event],
    test: Sequence[Event],
    sc: SceneRecTuning,
    make_scenerec: Callable[[SceneRecConfig], SceneRec],
) -> tuple[dict[str, PerSceneResult], CoLearner | None]:
    """Scene feeds of the tuned SceneRec: co-learning, independent scenes, the worker's way.

    The gates are fitted once, on train, while the first model is fitted; the scene
    variants and blends are chosen on valid per protocol, then test is scored once.
    """
    feeds = SceneFeeds(catalog, vecs, variants(opts.quick), relations_from(train))
    counts = train_event_counts(train)
    grid = QUICK_SCENE_GRID if opts.quick else SCENE_GRID
    out: dict[str, PerSceneResult] = {}
    learner: CoLearner | None = None

    def fitted(cfg: SceneRecConfig) -> SceneRec:
        model = make_scenerec(cfg)
        if feeds.gates:
            model.fit(train)
        else:
            fit_with_feeds(model, feeds, train)
        return model

    if "frozen" in opts.protocols:
        model = fitted(sc.frozen)
        tuning = tune(model, feeds, train, valid, grid, False, _desc(opts, "scenes A, valid"))
        out["frozen"] = score_test(
            model, feeds, [*train, *valid], test, tuning, counts, False, _desc(opts, "scenes A")
        )
    if "online" in opts.protocols:
        model = fitted(sc.online)
        # Prequential over valid: the model then has ingested valid, test's warm-up.
        tuning = tune(model, feeds, train, valid, grid, True, _desc(opts, "scenes B, valid"))
        learner = colearner_for(feeds, tuning, model.gates.gate(GLOBAL))
        scored = test[:QUICK_TEST_EVENTS] if opts.quick else test
        out["online"] = score_test(
            model, feeds, [*train, *valid], scored, tuning, counts, True, _desc(opts, "scenes B")
        )
    return out, learner


def _mmr(model: SceneRec, vecs: npt.NDArray[np.float32], lam: float) -> Recommender:
    return model if lam >= 1.0 else Diversified(model, vecs, lam)


def _windows(catalog: Catalog, days: Sequence[float]) -> dict[str, Callable[[], Recommender]]:
    def make(d: float) -> Callable[[], Recommender]:
        return lambda: RecentPopular(catalog, d)

    return {f"{d:g}d": make(d) for d in days}


def _days(label: str) -> float:
    return float(label.rstrip("d"))


def _fit(
    factories: Mapping[str, Callable[[], Recommender]], train: Sequence[Event]
) -> dict[str, Recommender]:
    out: dict[str, Recommender] = {}
    for name, make in factories.items():
        model = make()
        model.fit(train)
        out[name] = model
    return out


def worker_blend(model: Recommender, sc: SceneRecTuning) -> FeedBlend | None:
    """The streaming worker's ranking: SceneRec as tuned for Protocol B and fitted on train
    (its learned gate included), with Protocol A's weights for users with no event yet.

    Protocol A is where new users are (97 of its 166): its valid choice weighs the profile's
    similarity for them, so the worker serves a new user from the profile text.
    """
    model = model.model if isinstance(model, Diversified) else model
    if not isinstance(model, SceneRec):
        return None
    blend = model.feed_blend()
    new_user = sc.frozen.blend.weights[0]
    if blend is None or any(new_user[len(COMPONENTS) :]):
        return None  # the worker has no slot for the social term, nor event-step clocks
    return blend.with_new_user_weights(new_user[: len(COMPONENTS)])


def _online_contenders(
    fitted: Mapping[str, Recommender],
    catalog: Catalog,
    train: Sequence[Event],
    rp_online: Tuned | None,
    tuned: Mapping[str, SceneRecTuning],
    make_scenerec: Callable[[SceneRecConfig], Recommender],
    profiles: bool,
) -> dict[str, Contender]:
    """Each system online, and the same fitted model frozen, side by side (popularity
    anchors only on a time clock)."""
    models: dict[str, Recommender] = {"most-popular": fitted["most-popular"]}
    if rp_online is not None:
        recent = RecentPopular(catalog, _days(rp_online.label))
        recent.fit(train)
        decayed = DecayedPopular(catalog, ANCHOR_DAYS)  # EVALUATION.md's anchor, not tuned
        decayed.fit(train)
        models |= {"recent-popular": recent, "decayed-popular-14d": decayed}
    models |= {n: fitted[n] for n in ("item-knn", "bpr-mf") if n in fitted}
    sc = tuned["scenerec"]
    scenerec = make_scenerec(sc.online)
    scenerec.fit(train)
    models["scenerec"] = scenerec
    out: dict[str, Contender] = {}
    for name, model in models.items():
        out[name] = Contender(copy.deepcopy(model), learn=True)
        out[f"{name}-frozen"] = Contender(model, learn=False)
    variants = {name: t.online for name, t in tuned.items() if name != "scenerec"}
    if profiles:
        variants = {"scenerec-no-profile": replace(sc.online, use_profiles=False)} | variants
    for name, cfg in variants.items():
        model = make_scenerec(cfg)
        model.fit(train)
        out[name] = Contender(model, learn=True)
    return out


def _list_result(res: ListResult, catalog: Catalog, vecs: npt.NDArray[np.float32]) -> SystemResult:
    lists = list(res.recs.values())
    return SystemResult(
        estimates=summarize(res.metrics.items()),
        extra=_list_stats(lists, catalog, vecs),
    )


def _event_result(
    records: Sequence[EventRecord], catalog: Catalog, vecs: npt.NDArray[np.float32]
) -> SystemResult:
    return SystemResult(
        estimates=summarize([(r.user, r.metrics) for r in records]),
        extra=_list_stats([r.recs for r in records], catalog, vecs),
    )


def _cold_result(records: Sequence[EventRecord], train_users: set[str]) -> SystemResult:
    buckets = cold_start(records, train_users)
    pooled = [r for recs in buckets.values() for r in recs]
    return SystemResult(
        estimates=summarize([(r.user, r.metrics) for r in pooled]),
        buckets={
            label: summarize([(r.user, r.metrics) for r in recs]) for label, recs in buckets.items()
        },
    )


def _list_stats(
    lists: Sequence[Sequence[str]], catalog: Catalog, vecs: npt.NDArray[np.float32]
) -> dict[str, float]:
    return {
        "coverage@10": round(catalog_coverage(lists, len(catalog)), 6),
        "diversity@10": round(
            intra_list_diversity([catalog.rows(list(lst)) for lst in lists], vecs), 6
        ),
    }


def _desc(opts: Options, label: str) -> str | None:
    return label if opts.progress else None

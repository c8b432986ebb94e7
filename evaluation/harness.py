"""One harness run: load ml-100k, tune on valid, run Protocols A, B and C, collect results.

Every system is fitted on train only. Knobs are chosen on valid (``evaluation.tuning``)
before test is touched; test is then scored once per protocol.
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
from embeddings.collaborative import FeedBlend
from evaluation import lastfm
from evaluation.baselines import (
    BPRMF,
    DecayedPopular,
    ItemKNN,
    MostPopular,
    RecentPopular,
    Recommender,
)
from evaluation.data import Catalog, Dataset, Event, load_lastfm2k, load_ml100k
from evaluation.encoding import VectorCache, item_vectors, profile_vectors
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
from evaluation.scenerec_model import Diversified, SceneRec, SceneRecConfig
from evaluation.tuning import (
    QUICK_WEIGHT_GRID,
    WEIGHT_GRID,
    SceneRecTuning,
    Tuned,
    scenerec_structures,
    tune_recommender,
    tune_scenerec,
)

logger = logging.getLogger(__name__)

WINDOWS_DAYS = (1.0, 3.0, 5.0, 7.0, 10.0, 14.0, 21.0, 28.0, 42.0, 56.0)
QUICK_WINDOWS_DAYS = (7.0, 14.0)
#: The window / half-life of EVALUATION.md's popularity anchors.
ANCHOR_DAYS = 14.0
#: --quick scores only the first test events in Protocols B and C.
QUICK_TEST_EVENTS = 2_000
#: --quick trains BPR-MF for fewer epochs.
QUICK_BPR_EPOCHS = 5
#: MMR lambdas shown against Protocol A accuracy (1 = no re-ranking).
MMR_SWEEP = (1.0, 0.9, 0.8, 0.7, 0.5, 0.3)


@dataclass(frozen=True)
class Options:
    data_dir: Path
    cache_dir: Path
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
    #: Data set -> the social experiment's JSON (``evaluation.lastfm.run``).
    social: dict[str, Any] = field(default_factory=dict)

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
        return out

    def dump_lines(self) -> Iterator[dict[str, Any]]:
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
    ds: Dataset = timer.run("load ml-100k", lambda: load_ml100k(opts.data_dir))
    catalog = Catalog(ds.items)
    train, valid, test = ds.split.train, ds.split.valid, ds.split.test
    cache = VectorCache(opts.cache_dir)
    vecs = timer.run("item vectors", lambda: item_vectors(ds, cache))
    profiles = timer.run("profile vectors", lambda: profile_vectors(ds, cache))

    def make_scenerec(cfg: SceneRecConfig) -> SceneRec:
        return SceneRec(catalog, vecs, profiles, cfg)

    want_online = bool({"online", "cold_start"} & set(opts.protocols))
    windows = QUICK_WINDOWS_DAYS if opts.quick else WINDOWS_DAYS
    rp_frozen: Tuned = timer.run(
        "tune recent-popular (A)",
        lambda: tune_recommender(_windows(catalog, windows), catalog, train, valid, online=False),
    )
    rp_online: Tuned | None = None
    if want_online:
        rp_online = timer.run(
            "tune recent-popular (B)",
            lambda: tune_recommender(
                _windows(catalog, windows), catalog, train, valid, online=True
            ),
        )
    sc: SceneRecTuning = timer.run(
        "tune scenerec",
        lambda: tune_scenerec(
            make_scenerec,
            scenerec_structures(opts.quick),
            train,
            valid,
            QUICK_WEIGHT_GRID if opts.quick else WEIGHT_GRID,
            show_progress=opts.progress,
        ),
    )
    bpr_epochs = QUICK_BPR_EPOCHS if opts.quick else BPRMF(catalog).epochs
    fitted: dict[str, Recommender] = timer.run(
        "fit baselines",
        lambda: _fit(
            {
                "most-popular": lambda: MostPopular(catalog),
                "recent-popular": lambda: RecentPopular(catalog, _days(rp_frozen.label)),
                # EVALUATION.md's anchor, fixed (not tuned), to compare with its table.
                "recent-popular-14d": lambda: RecentPopular(catalog, ANCHOR_DAYS),
                "item-knn": lambda: ItemKNN(catalog),
                "bpr-mf": lambda: BPRMF(catalog, epochs=bpr_epochs),
                "scenerec": lambda: _mmr(make_scenerec(sc.frozen), vecs, opts.mmr_lambda),
                "scenerec-no-profile": lambda: _mmr(
                    make_scenerec(replace(sc.frozen, use_profiles=False)), vecs, opts.mmr_lambda
                ),
            },
            train,
        ),
    )
    out = HarnessOutput(results={}, meta={})
    if "frozen" in opts.protocols:
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
    if want_online and rp_online is not None:
        scored = test[:QUICK_TEST_EVENTS] if opts.quick else test
        contenders = _online_contenders(
            fitted,
            catalog,
            train,
            rp_online,
            sc,
            lambda c: _mmr(make_scenerec(c), vecs, opts.mmr_lambda),
        )
        out.feed_blend = worker_blend(contenders["scenerec-frozen"].model, sc)
        records: dict[str, list[EventRecord]] = timer.run(
            "protocol B",
            lambda: run_prequential(
                contenders, catalog, train, valid, scored, desc=_desc(opts, "protocol B")
            ),
        )
        out.online_records = records
        if "online" in opts.protocols:
            out.results["online"] = {
                name: _event_result(recs, catalog, vecs) for name, recs in records.items()
            }
        if "cold_start" in opts.protocols:
            train_users = {e.user for e in train}
            out.results["cold_start"] = {
                name: _cold_result(recs, train_users)
                for name, recs in records.items()
                if contenders[name].learn
            }
    if opts.per_scene and {"frozen", "online"} & set(opts.protocols):
        out.per_scene, out.colearner = timer.run(
            "per-scene feeds",
            lambda: _per_scene(opts, catalog, vecs, train, valid, test, sc, make_scenerec),
        )
    if opts.social:
        out.social = timer.run(
            "social on lastfm-2k",
            lambda: {"lastfm-2k": lastfm.run(load_lastfm2k(opts.data_dir), cache)},
        )
    out.meta = {
        "dataset": ds.name,
        "quick": opts.quick,
        "split": {"train": len(train), "valid": len(valid), "test": len(test)},
        "scored_test_events_online": QUICK_TEST_EVENTS if opts.quick else len(test),
        "tie_rule": "Protocols B/C: the target takes the middle rank of its tie group",
        "bootstrap": "95% percentile interval, 1000 resamples of users, seed 2024",
        "tuned": {
            "recent-popular": {
                "frozen": asdict(rp_frozen),
                "online": None if rp_online is None else asdict(rp_online),
            },
            "scenerec": {
                "frozen": asdict(sc.frozen),
                "online": asdict(sc.online),
                "frozen_valid_ndcg": sc.frozen_valid,
                "online_valid_ndcg": sc.online_valid,
            },
            "bpr-mf": {"epochs": bpr_epochs},
        },
        "mmr_lambda": opts.mmr_lambda,
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
    return model.feed_blend().with_new_user_weights(sc.frozen.blend.weights[0])


def _online_contenders(
    fitted: Mapping[str, Recommender],
    catalog: Catalog,
    train: Sequence[Event],
    rp_online: Tuned,
    sc: SceneRecTuning,
    make_scenerec: Callable[[SceneRecConfig], Recommender],
) -> dict[str, Contender]:
    """Each system online, and the same fitted model frozen, side by side."""
    recent = RecentPopular(catalog, _days(rp_online.label))
    recent.fit(train)
    decayed = DecayedPopular(catalog, ANCHOR_DAYS)  # EVALUATION.md's anchor, not tuned
    decayed.fit(train)
    models: dict[str, Recommender] = {
        "most-popular": fitted["most-popular"],
        "recent-popular": recent,
        "decayed-popular-14d": decayed,
        "item-knn": fitted["item-knn"],
        "bpr-mf": fitted["bpr-mf"],
    }
    scenerec = make_scenerec(sc.online)
    scenerec.fit(train)
    models["scenerec"] = scenerec
    out: dict[str, Contender] = {}
    for name, model in models.items():
        out[name] = Contender(copy.deepcopy(model), learn=True)
        out[f"{name}-frozen"] = Contender(model, learn=False)
    no_profile = make_scenerec(replace(sc.online, use_profiles=False))
    no_profile.fit(train)
    out["scenerec-no-profile"] = Contender(no_profile, learn=True)
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

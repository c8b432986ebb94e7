"""Protocol L: leave-one-out with full ranking, as S3-Rec, SASRec and BERT4Rec publish.

Per user, in order: the last interaction is test, the one before valid, the rest train
(``evaluation.data.split_loo``). A target is ranked against every item, the user's
earlier items left out (S3-Rec's ``trainers.py`` zeroes them; the target itself stays in
when the user had it before), its rank taken as the middle of its tie group; Hit, NDCG and
MRR at 5, 10 and 20, with 95% bootstrap intervals over users.

A streaming system has seen the user's whole prefix when it ranks: every system is fitted
on train (all users' train events, in replay order), scored on valid, then ingests valid
(``update``) and is scored once on test. Most-popular keeps its train counts (the row the
field publishes); SASRec and BPR-MF learn their weights from train only and read (SASRec)
or fold in (BPR-MF) the valid event. SceneRec's knobs are chosen on valid
(``evaluation.tuning``), then a fresh model with them is fitted, fed valid and scored.

Item cold start (``cold_items``): a seeded share of the items lose their train events;
the run then also reports the test targets that are such items.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from embeddings.blend import top_k
from evaluation.baselines import BPRMF, ItemKNN, MostPopular, Recommender
from evaluation.data import Catalog, Dataset, Event
from evaluation.defaults import DEFAULT_TUNE_USERS
from evaluation.encoding import VectorCache, comment_vectors, item_vectors, profile_vectors
from evaluation.memory import DenseEstimate, check_dense
from evaluation.metrics import LOO_METRICS, NDCG, loo_metrics, paired_delta, summarize
from evaluation.protocols import items_by_user
from evaluation.report import SystemResult
from evaluation.sasrec import SASRec, SASRecConfig
from evaluation.scenerec_model import SOCIAL, SceneRec, SceneRecConfig
from evaluation.social import friends_items
from evaluation.tuning import GridFilter, SceneRecTuning, scenerec_space, tune_scenerec_subsets

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
#: Per-user records of one system: (user, metrics) and the top-10 it listed.
Records = list[tuple[str, dict[str, float]]]
COLD_SEED = 2027


@dataclass(frozen=True)
class LooOptions:
    quick: bool = False
    progress: bool = True
    max_tune_users: int | None = DEFAULT_TUNE_USERS
    sasrec: bool = True
    sasrec_minutes: float = 30.0
    bpr_epochs: int = 20
    cold_items: float = 0.0
    max_dense_gb: float | None = None
    #: The item-kNN baseline keeps dense counts (``evaluation.memory``): off for a catalog
    #: too large for them.
    knn: bool = True


@dataclass
class LooOutput:
    results: dict[str, dict[str, SystemResult]]
    meta: dict[str, Any]
    lists: dict[str, dict[str, list[str]]]
    deltas: dict[str, dict[str, float]]


def cold_item_set(items: Sequence[str], fraction: float, seed: int = COLD_SEED) -> set[str]:
    """A seeded ``fraction`` of the catalog."""
    n = round(fraction * len(items))
    return set(random.Random(seed).sample(list(items), n))


def rank_targets(
    model: Recommender,
    targets: Sequence[Event],
    history: Mapping[str, set[str]],
    desc: str | None = None,
    batch: int = 512,
) -> tuple[Records, dict[str, list[str]]]:
    """Each target's rank among all items, the user's earlier items left out: the per-user
    metrics (@5, @10, @20) and the top-10 list."""
    catalog = model.catalog
    records: Records = []
    lists: dict[str, list[str]] = {}
    many: Callable[[Sequence[str]], FloatArray] | None = getattr(model, "score_many", None)
    for b0 in tqdm(range(0, len(targets), batch), desc=desc, disable=desc is None, leave=False):
        chunk = [e for e in targets[b0 : b0 + batch] if e.item in catalog]
        users = [e.user for e in chunk]
        scores = many(users) if many is not None else np.stack([model.score(u) for u in users])
        for k, e in enumerate(chunk):
            row = np.array(scores[k], dtype=np.float64)
            target = catalog.row(e.item)
            excl = [r for r in catalog.rows(history.get(e.user, set())) if r != target]
            row[excl] = -np.inf
            own = row[target]
            rank = float(np.count_nonzero(row > own)) + (np.count_nonzero(row == own) + 1) / 2.0
            records.append((e.user, loo_metrics(rank)))
            lists[e.user] = [catalog.ids[r] for r in top_k(row, 10, excl)]
    return records, lists


def _ingest(model: Recommender, events: Iterable[Event]) -> None:
    for e in events:
        model.update(e)


def run(ds: Dataset, cache: VectorCache, opts: LooOptions) -> LooOutput:
    if ds.protocol != "loo":
        raise ValueError("Protocol L needs the leave-one-out split (load with protocol='loo')")
    catalog = Catalog(ds.items)
    train, valid, test = ds.split.train, ds.split.valid, ds.split.test
    cold: set[str] = set()
    if opts.cold_items > 0:
        cold = cold_item_set(catalog.ids, opts.cold_items)
        train = tuple(e for e in train if e.item not in cold)
    checked = check_dense(DenseEstimate(len(catalog), 0, int(opts.knn)), opts.max_dense_gb)
    vecs = item_vectors(ds, cache)
    profiles = profile_vectors(ds, cache)
    comments = comment_vectors(ds, cache)
    seen_valid = items_by_user(train)
    seen_test = items_by_user([*train, *valid])
    desc = (lambda label: label) if opts.progress else (lambda _label: None)
    records: dict[str, Records] = {}
    lists: dict[str, dict[str, list[str]]] = {}
    meta: dict[str, Any] = {"valid_ndcg@10": {}, "dense_counts": checked}

    def evaluate(name: str, model: Recommender, ingest_valid: bool = True) -> None:
        v, _ = rank_targets(model, valid, seen_valid, desc(f"{name} valid"))
        meta["valid_ndcg@10"][name] = round(summarize(v, LOO_METRICS)["ndcg@10"].mean, 6)
        if ingest_valid:
            _ingest(model, valid)
        records[name], lists[name] = rank_targets(model, test, seen_test, desc(f"{name} test"))
        logger.info(
            "%s: test NDCG@10 %.4f", name, summarize(records[name], LOO_METRICS)["ndcg@10"].mean
        )

    popular = MostPopular(catalog)
    popular.fit(train)
    evaluate("most-popular", popular, ingest_valid=False)
    meta["calibration"] = _calibration(catalog, train, valid, test, seen_test)
    if opts.knn:
        knn = ItemKNN(catalog)
        knn.fit(train)
        evaluate("item-knn", knn)
        del knn
    bpr = BPRMF(catalog, epochs=opts.bpr_epochs)
    bpr.fit(train)
    evaluate("bpr-mf", bpr)
    del bpr
    if opts.sasrec:
        sas = SASRec(catalog, SASRecConfig(minutes=opts.sasrec_minutes))
        sas.fit_with_valid(train, valid)
        meta["sasrec"] = {
            "best_epoch": sas.best_epoch,
            "best_valid_ndcg@10": sas.best_valid,
            "log": sas.log,
        } | asdict(sas.config)
        evaluate("sasrec", sas)
        del sas

    social = bool(ds.social)

    def make(cfg: SceneRecConfig) -> SceneRec:
        return SceneRec(catalog, vecs, profiles, cfg, ds.social, comments)

    space = scenerec_space(opts.quick, ds.clock, len(train), social)
    subsets: dict[str, GridFilter] = {"scenerec": lambda _w: True}
    if any(it.text for it in ds.items) or any(it.relations for it in ds.items):
        subsets["scenerec-ids-only"] = lambda w: w[2] == w[4] == 0
    if social:
        subsets["scenerec-no-social"] = lambda w: w[SOCIAL] == 0
    tuned: dict[str, SceneRecTuning] = tune_scenerec_subsets(
        make, space, train, valid, subsets, opts.progress, ("loo",), opts.max_tune_users
    )
    meta["scenerec"] = {"space": space.describe(), "max_tune_users": opts.max_tune_users}
    for name, tuning in tuned.items():
        cfg = tuning.chosen["loo"]
        meta["scenerec"][name] = {
            "chosen": _knobs(cfg),
            "valid_ndcg@10": max(tuning.valid["loo"].values()),
        }
        model = make(cfg)
        model.fit(train)
        evaluate(name, model)
        del model
    results = {"loo": {n: SystemResult(summarize(r, LOO_METRICS)) for n, r in records.items()}}
    if cold:
        cold_users = {e.user for e in test if e.item in cold}
        results["loo_cold_items"] = {
            n: SystemResult(summarize([x for x in r if x[0] in cold_users], LOO_METRICS))
            for n, r in records.items()
        }
        meta["cold_items"] = {
            "fraction": opts.cold_items,
            "seed": COLD_SEED,
            "items": len(cold),
            "test_targets": len(cold_users),
            "with_a_valid_event": len({e.item for e in valid if e.item in cold}),
        }
    deltas = _deltas(records, cold_users if cold else None)
    if social:
        meta["social"] = {"friends_items": friends_items(ds, [*train, *valid], test)}
    meta["split"] = {"train": len(train), "valid": len(valid), "test": len(test)}
    return LooOutput(results, meta, lists, deltas)


def _deltas(
    records: Mapping[str, Records], cold_users: set[str] | None
) -> dict[str, dict[str, float]]:
    """Paired NDCG@10 differences over the same users: what text and social add."""
    out: dict[str, dict[str, float]] = {}
    pairs = [("scenerec", "scenerec-ids-only"), ("scenerec", "scenerec-no-social")]
    for a, b in pairs:
        if a in records and b in records:
            out[f"{a} - {b}"] = paired_delta(records[a], records[b], NDCG)
            if cold_users is not None:
                ra = [x for x in records[a] if x[0] in cold_users]
                rb = [x for x in records[b] if x[0] in cold_users]
                out[f"{a} - {b} (cold targets)"] = paired_delta(ra, rb, NDCG)
    return out


def _calibration(
    catalog: Catalog,
    train: Sequence[Event],
    valid: Sequence[Event],
    test: Sequence[Event],
    seen_test: Mapping[str, set[str]],
) -> dict[str, float]:
    """Most-popular's test NDCG@10 / HR@10 by train counts (the protocol's row), and by the
    counts of the whole file, test included (how a published PopRec row can come about)."""
    out: dict[str, float] = {}
    for label, events in (("train", train), ("all", [*train, *valid, *test])):
        model = MostPopular(catalog)
        model.fit(events)
        recs, _ = rank_targets(model, test, seen_test)
        est = summarize(recs, LOO_METRICS)
        out[f"ndcg@10 ({label} counts)"] = round(est["ndcg@10"].mean, 6)
        out[f"hit@10 ({label} counts)"] = round(est["hit@10"].mean, 6)
    return out


def _knobs(cfg: SceneRecConfig) -> dict[str, Any]:
    knobs = asdict(cfg)
    knobs["blend"] = [list(w) for w in cfg.blend.weights]
    return knobs | {"label": cfg.label()}

"""EVALUATION.md's protocols as functions of fitted models and event sequences.

* A, frozen: every user with a target event gets one top-K list from the model as fitted,
  leaving out the items the user had before; metrics against the user's target items.
* B, online (prequential): events are replayed in time order; for each scored event the
  target's mid-rank among all items the user had not had yet is taken *before* the event
  is ingested; a frozen contender is scored the same way but never ingests anything.
* C, cold start: the B records of users first seen after train, by how many events the
  user had before (0 -> 1st event, 1-2 -> 2nd-3rd, 3-9 -> 4th-10th).

The same functions run on (train -> valid) for tuning and on (train + valid -> test).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from embeddings.blend import top_k
from evaluation.baselines import Recommender
from evaluation.data import Catalog, Event
from evaluation.metrics import K, list_metrics, midrank, target_metrics

#: Protocol C buckets: (label, first user-event index, end index), 0-based.
COLD_BUCKETS: tuple[tuple[str, int, int], ...] = (
    ("1st", 0, 1),
    ("2nd-3rd", 1, 3),
    ("4th-10th", 3, 10),
)


@dataclass(frozen=True)
class ListResult:
    """Protocol A for one system: per-user metrics and the list each user got."""

    metrics: dict[str, dict[str, float]]
    recs: dict[str, list[str]]


@dataclass(frozen=True)
class EventRecord:
    """Protocol B for one system and one scored event."""

    index: int  # position of the event in the scored sequence
    user: str
    item: str
    user_event: int  # number of earlier events of this user, train included
    metrics: dict[str, float]
    recs: tuple[str, ...]


@dataclass
class Contender:
    """A fitted model in a prequential replay; ``learn=False`` is its frozen variant."""

    model: Recommender
    learn: bool


def items_by_user(events: Iterable[Event]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for e in events:
        out[e.user].add(e.item)
    return out


def run_frozen(
    model: Recommender,
    history: Sequence[Event],
    target: Sequence[Event],
    k: int = K,
    desc: str | None = None,
) -> ListResult:
    """One top-``k`` list per user with target events, leaving out the user's history."""
    truth = items_by_user(target)
    seen = items_by_user(history)
    metrics: dict[str, dict[str, float]] = {}
    recs: dict[str, list[str]] = {}
    users = sorted(truth, key=_user_key)
    for user in tqdm(users, desc=desc, disable=desc is None, leave=False):
        ranked = model.recommend(user, k, exclude=seen.get(user, set()))
        recs[user] = ranked
        metrics[user] = list_metrics(ranked, truth[user], k)
    return ListResult(metrics, recs)


def run_prequential(
    contenders: Mapping[str, Contender],
    catalog: Catalog,
    history: Sequence[Event],
    warmup: Sequence[Event],
    scored: Sequence[Event],
    k: int = K,
    desc: str | None = None,
) -> dict[str, list[EventRecord]]:
    """Score every event of ``scored`` for every contender, then let learners ingest it.

    ``history`` is what the contenders were fitted on (it only seeds the per-user
    exclusions and event counts); ``warmup`` is ingested by learners without scoring
    (valid, before test).
    """
    seen: dict[str, set[int]] = defaultdict(set)
    n_before: dict[str, int] = defaultdict(int)
    for e in history:
        _remember(catalog, seen, n_before, e)
    for e in warmup:
        for c in contenders.values():
            if c.learn:
                c.model.update(e)
        _remember(catalog, seen, n_before, e)
    out: dict[str, list[EventRecord]] = {name: [] for name in contenders}
    excluded = np.zeros(len(catalog), dtype=np.bool_)
    for idx, e in enumerate(tqdm(scored, desc=desc, disable=desc is None, leave=False)):
        if e.item not in catalog:
            continue
        target = catalog.row(e.item)
        rows = list(seen[e.user] - {target})
        excluded[rows] = True
        for name, c in contenders.items():
            scores = c.model.score(e.user)
            listed = c.model.rerank(scores, k, rows)
            if listed is None:
                metrics = target_metrics(midrank(scores, target, excluded), k)
                listed = top_k(scores, k, rows)
            else:  # a reranked list is scored as listed: a target not in it is a miss
                pos = listed.index(target) + 1 if target in listed else k + 1
                metrics = target_metrics(float(pos), k)
            recs = tuple(catalog.ids[r] for r in listed)
            out[name].append(EventRecord(idx, e.user, e.item, n_before[e.user], metrics, recs))
        excluded[rows] = False
        for c in contenders.values():
            if c.learn:
                c.model.update(e)
        _remember(catalog, seen, n_before, e)
    return out


def _remember(
    catalog: Catalog, seen: dict[str, set[int]], n_before: dict[str, int], e: Event
) -> None:
    if e.item in catalog:
        seen[e.user].add(catalog.row(e.item))
    n_before[e.user] += 1


def cold_start(
    records: Sequence[EventRecord], train_users: set[str]
) -> dict[str, list[EventRecord]]:
    """Protocol C: the records of users absent from train, by bucket of ``user_event``."""
    out: dict[str, list[EventRecord]] = {label: [] for label, _, _ in COLD_BUCKETS}
    for r in records:
        if r.user in train_users:
            continue
        for label, lo, hi in COLD_BUCKETS:
            if lo <= r.user_event < hi:
                out[label].append(r)
    return out


def _user_key(user: str) -> tuple[int, str]:
    # Numeric ids in numeric order (stable, readable dumps); others after, by name.
    return (int(user), "") if user.isdigit() else (1 << 62, user)

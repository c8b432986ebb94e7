"""What the social graph is worth to SceneRec on a data set with ``NAME.net``.

Two parts: SceneRec with its social component against the same SceneRec tuned without it
(the paired NDCG@10 difference over the same users, per protocol), and what the followed
users' items say about the user's test items (:func:`friends_items`; also
``python -m evaluation.social --dataset DIR``). If social does not help, the second part
says why.

:func:`friends_items` ranks each test target on its own against every item the user had
not had before, by three counts over the history (train, and valid where the protocol
ingests it):

* **popularity**: how many users had the item;
* **friends**: how many of the users the user follows (``.net``: source follows target)
  had it;
* **strangers**: how many of as many users drawn at random (seeded) among the others had
  it: the friends' count without the friendship.

If friends rank the targets no better than strangers, the graph carries nothing the crowd
does not; if no better than popularity, friends only echo what is popular. It also gives
the share of the catalog the friends had and the share of test targets among it. Hit and
NDCG at 10 with 95% bootstrap intervals over users; ties share their mean rank.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from evaluation.data import Catalog, Dataset, Event, load_folder
from evaluation.metrics import HIT, NDCG, midrank, paired_delta, summarize, target_metrics
from evaluation.protocols import EventRecord, ListResult

SEED = 2028
WITH, WITHOUT = "scenerec", "scenerec-no-social"


def paired(
    a: Iterable[tuple[str, Mapping[str, float]]], b: Iterable[tuple[str, Mapping[str, float]]]
) -> dict[str, float]:
    return paired_delta(list(a), list(b), NDCG)


def social_report(
    ds: Dataset,
    frozen: Mapping[str, ListResult],
    online: Mapping[str, Sequence[EventRecord]],
    history: Sequence[Event],
    test: Sequence[Event],
) -> dict[str, Any]:
    """The ``social`` part of ``eval.json`` for a data set with a social graph."""
    out: dict[str, Any] = {"follow_edges": len(ds.social)}
    if WITH in frozen and WITHOUT in frozen:
        out["frozen: scenerec - scenerec-no-social"] = paired(
            sorted(frozen[WITH].metrics.items()), sorted(frozen[WITHOUT].metrics.items())
        )
    if WITH in online and WITHOUT in online:
        out["online: scenerec - scenerec-no-social"] = paired(
            ((r.user, r.metrics) for r in online[WITH]),
            ((r.user, r.metrics) for r in online[WITHOUT]),
        )
    out["friends_items"] = friends_items(ds, history, test)
    return out


SCORERS = ("popularity", "friends", "strangers")
Records = list[tuple[str, Mapping[str, float]]]


def followed_by(ds: Dataset) -> dict[str, set[str]]:
    """The users each user follows (a user never follows themself here)."""
    out: dict[str, set[str]] = defaultdict(set)
    for e in ds.social:
        if e.source != e.target:
            out[e.source].add(e.target)
    return out


def friends_items(
    ds: Dataset, history: Sequence[Event], test: Sequence[Event], seed: int = SEED
) -> dict[str, Any]:
    """Test targets ranked by the followed users' history against strangers' and popularity."""
    catalog = Catalog(ds.items)
    n = len(catalog)
    train_rows: dict[str, set[int]] = defaultdict(set)
    for e in history:
        if e.item in catalog:
            train_rows[e.user].add(catalog.row(e.item))
    users = sorted(train_rows)
    had = np.zeros((len(users), n), np.float64)  # user x item: had it in train
    for u, user in enumerate(users):
        had[u, sorted(train_rows[user])] = 1.0
    position = {user: u for u, user in enumerate(users)}
    popularity = had.sum(axis=0)
    friends = followed_by(ds)
    rng = np.random.default_rng(seed)
    records: dict[str, Records] = {name: [] for name in SCORERS}
    coverage, targets_covered, with_friends = [], [], 0
    tests: dict[str, list[int]] = defaultdict(list)
    for e in test:
        if e.item in catalog and e.user in position:
            tests[e.user].append(catalog.row(e.item))
    for user, targets in sorted(tests.items()):
        mates = [position[f] for f in sorted(friends.get(user, ())) if f in position]
        if not mates:
            continue
        with_friends += 1
        me = position[user]
        others = np.setdiff1d(np.arange(len(users)), [me, *mates])
        strangers = rng.choice(others, size=min(len(mates), others.size), replace=False)
        scores = {
            "popularity": popularity,
            "friends": had[mates].sum(axis=0),
            "strangers": had[strangers].sum(axis=0),
        }
        excluded = had[me].astype(np.bool_)
        coverage.append(float((scores["friends"] > 0).mean()))
        targets_covered.append(float(np.mean(scores["friends"][targets] > 0)))
        for name, s in scores.items():
            for t in targets:
                rank = midrank(s, t, _excluding_other_than(excluded, t))
                records[name].append((user, target_metrics(rank)))
    return _report(ds, records, coverage, targets_covered, with_friends, len(tests))


def _excluding_other_than(excluded: npt.NDArray[np.bool_], target: int) -> npt.NDArray[np.bool_]:
    """The user's train items, the target kept in (a repeat is still a target)."""
    if not excluded[target]:
        return excluded
    out = excluded.copy()
    out[target] = False
    return out


def _report(
    ds: Dataset,
    records: dict[str, Records],
    coverage: Sequence[float],
    targets_covered: Sequence[float],
    with_friends: int,
    test_users: int,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "dataset": ds.name,
        "protocol": ds.protocol,
        "follow_edges": len(ds.social),
        "test_users": test_users,
        "test_users_with_friends": with_friends,
        "catalog_share_friends_had": round(float(np.mean(coverage)), 4) if coverage else None,
        "test_targets_friends_had": (
            round(float(np.mean(targets_covered)), 4) if targets_covered else None
        ),
    }
    if not with_friends:
        return out
    for name, recs in records.items():
        est = summarize(recs, (HIT, NDCG))
        out[name] = {
            m: {"value": round(e.mean, 4), "lo": round(e.low, 4), "hi": round(e.high, 4)}
            for m, e in est.items()
        }
    for a, b in (("friends", "strangers"), ("friends", "popularity")):
        out[f"{a} - {b} (ndcg@10)"] = {
            k: round(v, 4) for k, v in paired_delta(records[a], records[b], NDCG).items()
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m evaluation.social",
        description="Test targets ranked by friends' train items vs strangers' vs popularity.",
    )
    p.add_argument("--dataset", type=Path, required=True, help="a folder of atomic files")
    p.add_argument("--protocol", choices=("temporal", "loo"), default="temporal")
    p.add_argument("--seed", type=int, default=SEED, help="strangers' draw (default: %(default)s)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    ds = load_folder(args.dataset, args.protocol)
    if not ds.social:
        print(f"{ds.name} has no social edges (.net file)", file=sys.stderr)
        return 2
    history = [*ds.split.train, *ds.split.valid]  # what the harness ingests before test
    result = friends_items(ds, history, ds.split.test, args.seed)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What the social graph is worth to SceneRec on a data set with ``NAME.net``.

Two parts: SceneRec with its social component against the same SceneRec tuned without it
(the paired NDCG@10 difference over the same users, per protocol), and what the followed
users' items have in common with the user's test items, against random users as
"friends" (how often a test item is among what the followed users had before, and how
popular such items are). If social does not help, the second part says why.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from evaluation.data import Dataset, Event
from evaluation.metrics import NDCG, paired_delta
from evaluation.protocols import EventRecord, ListResult, items_by_user

SEED = 2028
WITH, WITHOUT = "scenerec", "scenerec-no-social"


def friend_overlap(
    ds: Dataset, history: Sequence[Event], test: Sequence[Event], seed: int = SEED
) -> dict[str, float]:
    """For test events of users who follow someone: the share whose item a followed user
    had in ``history``, the same share with as many random users in the friends' place,
    and the mean popularity rank (0 = most popular) of the hits of each kind."""
    follows: dict[str, set[str]] = {}
    for edge in ds.social:
        if edge.source != edge.target:
            follows.setdefault(edge.source, set()).add(edge.target)
    had = items_by_user(history)
    users = sorted(had)
    counts = Counter(e.item for e in history)
    rank = {item: r for r, (item, _) in enumerate(counts.most_common())}
    rng = random.Random(seed)
    hits = {"friends": [0, 0], "random": [0, 0]}
    pop_rank: dict[str, list[int]] = {"friends": [], "random": []}
    scored = 0
    for e in test:
        friends = follows.get(e.user)
        if not friends:
            continue
        scored += 1
        strangers = rng.sample(users, min(len(friends), len(users)))
        for kind, group in (("friends", friends), ("random", strangers)):
            found = any(e.item in had.get(f, ()) for f in group)
            hits[kind][0] += int(found)
            if found:
                pop_rank[kind].append(rank.get(e.item, len(rank)))
    out: dict[str, float] = {
        "test_events_of_users_who_follow": scored,
        "mean_followed": round(sum(len(f) for f in follows.values()) / max(len(follows), 1), 2),
    }
    for kind in hits:
        out[f"share_item_had_by_{kind}"] = round(hits[kind][0] / max(scored, 1), 4)
        ranks = pop_rank[kind]
        out[f"mean_popularity_rank_of_{kind}_hits"] = (
            round(sum(ranks) / len(ranks), 1) if ranks else float("nan")
        )
    out["items"] = len(ds.items)
    return out


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
    out["friends_items"] = friend_overlap(ds, history, test)
    return out

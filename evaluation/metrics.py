"""Top-K metrics exactly as EVALUATION.md defines them, bootstrap intervals, list statistics.

Two shapes of ground truth:

* a set of items per user (Protocol A): :func:`list_metrics` on the ranked top-K list.
  NDCG uses binary relevance and an ideal DCG of ``min(|truth|, K)`` hits, which is what
  RecBole's evaluator does, so the calibration numbers reproduce;
* a single target per event (Protocols B and C): :func:`midrank` of the target among the
  non-excluded items, ties taking the middle rank of their group (a constant scorer
  therefore gets the expected rank of a random order, not the best or the worst), and
  :func:`target_metrics` of that rank. Recall of one target is the hit itself.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

K = 10
HIT, NDCG, RECALL, MRR = "hit@10", "ndcg@10", "recall@10", "mrr@10"
METRICS = (HIT, NDCG, RECALL, MRR)
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 2024


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95% bootstrap interval over users."""

    mean: float
    low: float
    high: float
    n_users: int
    n_events: int

    def fmt(self) -> str:
        return f"{self.mean:.4f} [{self.low:.4f}, {self.high:.4f}]"


def list_metrics(ranked: Sequence[str], truth: Collection[str], k: int = K) -> dict[str, float]:
    """Hit, NDCG, Recall and MRR at ``k`` of one ranked list against a set of relevant items."""
    if not truth:
        raise ValueError("list_metrics needs at least one relevant item")
    hits = [item in truth for item in ranked[:k]]
    dcg = sum(1.0 / math.log2(pos + 2) for pos, hit in enumerate(hits) if hit)
    idcg = sum(1.0 / math.log2(pos + 2) for pos in range(min(len(truth), k)))
    first = next((pos for pos, hit in enumerate(hits) if hit), None)
    return {
        HIT: float(first is not None),
        NDCG: dcg / idcg,
        RECALL: sum(hits) / len(truth),
        MRR: 0.0 if first is None else 1.0 / (first + 1),
    }


def midrank(scores: FloatArray, target: int, excluded: BoolArray | None = None) -> float:
    """1-based rank of ``scores[target]`` among non-excluded items; ties share the middle rank.

    With ``g`` strictly better items and ``e`` items tied with the target (itself included)
    the rank is ``g + (e + 1) / 2``: the mean position of the target over all orders of
    its tie group. A target scored -inf (outside a model's candidates) ranks after every
    scored item.
    """
    if excluded is not None and excluded[target]:
        raise ValueError("the target item is excluded from the ranking")
    value = scores[target]
    if math.isnan(float(value)) or float(value) == math.inf:
        raise ValueError("the target's score is not a number or infinite")
    live = scores if excluded is None else scores[~excluded]
    greater = int(np.count_nonzero(live > value))
    equal = int(np.count_nonzero(live == value))
    return greater + (equal + 1) / 2.0


def target_metrics(rank: float, k: int = K) -> dict[str, float]:
    """Hit, NDCG, Recall (= Hit) and MRR at ``k`` of one target at a (fractional) ``rank``."""
    if rank < 1:
        raise ValueError("ranks start at 1")
    if rank > k:
        return {HIT: 0.0, NDCG: 0.0, RECALL: 0.0, MRR: 0.0}
    return {HIT: 1.0, NDCG: 1.0 / math.log2(rank + 1.0), RECALL: 1.0, MRR: 1.0 / rank}


def bootstrap(
    sums: FloatArray,
    counts: FloatArray,
    n_samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Mean ``sum(sums) / sum(counts)`` and its percentile interval, resampling users.

    A user is the resampled unit even when the metric is per event (Protocol B): events of
    one user are not independent, so resampling events would give too narrow intervals.
    """
    n = sums.shape[0]
    if n == 0:
        return (float("nan"),) * 3
    mean = float(sums.sum() / counts.sum())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_samples, n))
    means = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return mean, float(low), float(high)


def summarize(
    records: Iterable[tuple[str, Mapping[str, float]]], metrics: Sequence[str] = METRICS
) -> dict[str, Estimate]:
    """Per-(user, metrics) records -> mean over events, with intervals over users.

    With one record per user (Protocol A) this is the plain mean over users.
    """
    sums: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(metrics, 0.0))
    counts: dict[str, int] = defaultdict(int)
    for user, values in records:
        acc = sums[user]
        for m in metrics:
            acc[m] += values[m]
        counts[user] += 1
    users = sorted(counts)
    cnt = np.array([counts[u] for u in users], dtype=np.float64)
    out: dict[str, Estimate] = {}
    for m in metrics:
        s = np.array([sums[u][m] for u in users], dtype=np.float64)
        mean, low, high = bootstrap(s, cnt)
        out[m] = Estimate(mean, low, high, n_users=len(users), n_events=int(cnt.sum()))
    return out


def paired_delta(
    a: Sequence[tuple[str, Mapping[str, float]]],
    b: Sequence[tuple[str, Mapping[str, float]]],
    metric: str,
) -> dict[str, float]:
    """Mean of ``a - b`` over the same records (same users, same order), with its interval.

    Both systems are resampled together, user by user, so the interval is that of the
    difference itself: much narrower than the two separate intervals suggest when the
    systems agree on most users.
    """
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for (user, ma), (user_b, mb) in zip(a, b, strict=True):
        if user != user_b:
            raise ValueError("paired records differ")
        sums[user] = sums.get(user, 0.0) + ma[metric] - mb[metric]
        counts[user] = counts.get(user, 0) + 1
    users = sorted(sums)
    mean, low, high = bootstrap(
        np.array([sums[u] for u in users]), np.array([counts[u] for u in users], dtype=float)
    )
    return {"delta": round(mean, 6), "delta_lo": round(low, 6), "delta_hi": round(high, 6)}


def catalog_coverage(lists: Iterable[Sequence[str]], n_items: int) -> float:
    """Share of the catalog that appears in at least one recommended list."""
    shown: set[str] = set()
    for lst in lists:
        shown.update(lst)
    return len(shown) / n_items if n_items else 0.0


def intra_list_diversity(lists: Iterable[Sequence[int]], vectors: npt.NDArray[np.float32]) -> float:
    """Mean over lists of the mean pairwise cosine distance ``1 - cos`` of the list's items.

    ``vectors`` are unit-norm item vectors by catalog row; lists shorter than 2 are skipped.
    """
    values: list[float] = []
    for rows in lists:
        n = len(rows)
        if n < 2:
            continue
        v = vectors[list(rows)].astype(np.float64)
        sim = v @ v.T
        mean_sim = (sim.sum() - np.trace(sim)) / (n * (n - 1))
        values.append(1.0 - float(mean_sim))
    return float(np.mean(values)) if values else float("nan")

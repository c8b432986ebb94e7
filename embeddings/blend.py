"""Blending per-item score components, and top-k over a full score vector.

A recommender that knows nothing about a user can only say what is popular; one that has
seen ten of their clicks should lean on those. So the blend weights depend on the user's
*tenure* (how many events the model has seen from them): one weight vector per tenure
bucket, each applied as ``scores = w @ components`` to a ``(n_components, n_items)``
matrix of features (log popularity, log transition mass, user·item similarity, ...).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

#: Tenure buckets: first event (nothing seen yet), 2nd-3rd, 4th-10th, later.
TENURE_EDGES: tuple[int, ...] = (1, 3, 10)


def tenure_bucket(n_events: int, edges: Sequence[int] = TENURE_EDGES) -> int:
    """Index of the bucket of a user with ``n_events`` known events (0 = brand new)."""
    for i, edge in enumerate(edges):
        if n_events < edge:
            return i
    return len(edges)


@dataclass(frozen=True)
class TenureBlend:
    """One weight vector per tenure bucket (``len(edges) + 1`` of them)."""

    weights: tuple[tuple[float, ...], ...]
    edges: tuple[int, ...] = TENURE_EDGES

    def __post_init__(self) -> None:
        if len(self.weights) != len(self.edges) + 1:
            raise ValueError(f"need {len(self.edges) + 1} weight vectors, got {len(self.weights)}")
        if len({len(w) for w in self.weights}) != 1:
            raise ValueError("every bucket needs the same number of weights")

    @classmethod
    def uniform(
        cls, weights: Sequence[float], edges: tuple[int, ...] = TENURE_EDGES
    ) -> TenureBlend:
        return cls(tuple(tuple(weights) for _ in range(len(edges) + 1)), edges)

    def weights_for(self, n_events: int) -> FloatArray:
        return np.asarray(self.weights[tenure_bucket(n_events, self.edges)], dtype=np.float64)

    def score(self, components: FloatArray, n_events: int) -> FloatArray:
        out: FloatArray = self.weights_for(n_events) @ components
        return out


def top_k(scores: FloatArray, k: int, exclude_rows: Iterable[int] = ()) -> list[int]:
    """Rows of the ``k`` best scores, excluded rows left out, ties in row order.

    A full stable sort rather than ``argpartition``: with popularity-like scores, ties at
    the k-th place are common and must break the same way on every run.
    """
    masked = np.array(scores, dtype=np.float64, copy=True)
    rows = list(exclude_rows)
    if rows:
        masked[rows] = -np.inf
    order = np.argsort(-masked, kind="stable")
    take = min(k, masked.shape[0] - len(set(rows)))
    return [int(r) for r in order[: max(take, 0)]]

"""Recency-decayed item popularity, updated one event at a time.

On a stream, what is popular *now* beats what was popular overall: tastes drift toward
what is new. Each click adds 1 to its item, and every count halves every ``half_life``
seconds, so ``count_i(t) = sum_k 2 ** (-(t - t_k) / half_life)`` over the item's clicks.
Counts are kept as of the latest event time; since the decay scales every item by the
same factor, rankings never need the current wall-clock time.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


class DecayedPopularity:
    def __init__(self, n_items: int, half_life_s: float) -> None:
        if half_life_s <= 0:
            raise ValueError("half_life_s must be > 0")
        self.half_life_s = half_life_s
        self._rate = math.log(2.0) / half_life_s
        self._counts = np.zeros(n_items, dtype=np.float64)
        self._now: float | None = None

    @property
    def now(self) -> float | None:
        """Timestamp the counts are expressed at (the latest event seen)."""
        return self._now

    def add(self, row: int, timestamp: float, weight: float = 1.0) -> None:
        if self._now is None:
            self._now = timestamp
        elif timestamp > self._now:
            self._counts *= math.exp(-self._rate * (timestamp - self._now))
            self._now = timestamp
        # An event older than ``now`` (out-of-order delivery) counts at its decayed weight.
        self._counts[row] += weight * math.exp(-self._rate * (self._now - timestamp))

    def set_half_life(self, half_life_s: float) -> None:
        """Decay at this half-life from now on; the counts as of :attr:`now` stay."""
        if half_life_s <= 0:
            raise ValueError("half_life_s must be > 0")
        self.half_life_s = half_life_s
        self._rate = math.log(2.0) / half_life_s

    def grow(self, n_items: int) -> None:
        """Make room for ``n_items`` (a catalog that grows while the stream runs)."""
        if n_items > self._counts.shape[0]:
            grown = np.zeros(n_items, dtype=np.float64)
            grown[: self._counts.shape[0]] = self._counts
            self._counts = grown

    def set(self, row: int, count: float) -> None:
        """Seed a count (e.g. a popularity read back from the vector store)."""
        self._counts[row] = count

    def counts(self) -> FloatArray:
        """Decayed counts as of :attr:`now` (a view: do not modify)."""
        return self._counts

    def log_scores(self, smoothing: float = 1e-3) -> FloatArray:
        """``log(count + smoothing)``: additive in a blend, so popularity acts as a prior.

        The smoothing is relative to the largest count, so the feature is the same whatever
        the absolute scale the decay has reached.
        """
        top = float(self._counts.max()) if self._counts.size else 0.0
        return np.log(self._counts + smoothing * max(top, 1e-300))

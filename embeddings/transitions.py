"""What users engage with next: online item -> next-item counts, plus a start row.

A user's last few items say more about the next one than their long-run taste: sessions
follow the catalog's pages and sequels, and people rate batches of related films. For
every click on ``j`` after ``h_1 .. h_m`` (most recent last) the counts ``T[h_{m-d}, j]``
grow by ``step_decay ** d`` for ``d < window``. A user's *first* item is counted in a
virtual start row instead; that row decays with a half-life, because what new users start
with follows what is new in the catalog. Scoring a user sums the rows of their recent
items, weighted toward the most recent.

Memory is a dense ``(n_items + 1) x n_items`` float32 matrix: 11 MB for ml-100k's 1,682
items; a catalog much beyond ~10,000 items would want a sparse store behind this API.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from embeddings.vectors import Rows

FloatArray = npt.NDArray[np.float64]


class TransitionCounts:
    def __init__(
        self,
        n_items: int,
        window: int = 5,
        step_decay: float = 0.7,
        start_half_life_s: float | None = None,
    ) -> None:
        if window < 1:
            raise ValueError("window must be >= 1")
        self.n_items = n_items
        self.window = window
        self.step_decay = step_decay
        self._start_rate = 0.0 if start_half_life_s is None else math.log(2.0) / start_half_life_s
        self._counts = np.zeros((n_items + 1, n_items), dtype=np.float32)
        self._start_now: float | None = None

    @property
    def start_row(self) -> int:
        return self.n_items

    def grow(self, n_items: int) -> None:
        """Make room for ``n_items`` (a catalog that grows while the stream runs)."""
        if n_items <= self.n_items:
            return
        old, n = self._counts, self.n_items
        self._counts = np.zeros((n_items + 1, n_items), dtype=np.float32)
        self._counts[:n, :n] = old[:n]
        self._counts[n_items, :n] = old[n]  # the start row stays last
        self.n_items = n_items

    def add(self, history: Sequence[int], row: int, timestamp: float) -> None:
        """Count ``row`` as following ``history`` (the user's earlier items, oldest first)."""
        if not history:
            self._add_start(row, timestamp)
            return
        recent = history[-self.window :]
        for distance, prev in enumerate(reversed(recent)):
            self._counts[prev, row] += self.step_decay**distance

    def _add_start(self, row: int, timestamp: float) -> None:
        start = self._counts[self.start_row]
        if self._start_now is None:
            self._start_now = timestamp
        elif timestamp > self._start_now:
            start *= math.exp(-self._start_rate * (timestamp - self._start_now))
            self._start_now = timestamp
        start[row] += math.exp(-self._start_rate * (self._start_now - timestamp))

    def scores(
        self, history: Sequence[int], recent: int = 5, recency_decay: float = 0.6
    ) -> FloatArray:
        """Transition mass toward every item from the user's last ``recent`` items.

        An empty history scores with the start row (decayed counts as of the latest first
        event, so its scale is "how many new users recently started here"); otherwise item
        ``h`` at distance ``d`` from the end contributes ``recency_decay ** d * T[h]``.
        """
        if not history:
            start: FloatArray = self._counts[self.start_row].astype(np.float64)
            return start
        rows = list(history[-recent:])
        weights = recency_decay ** np.arange(len(rows) - 1, -1, -1, dtype=np.float64)
        out: FloatArray = weights @ self._counts[rows].astype(np.float64)
        return out

    def row_mass(self, rows: Rows, targets: Sequence[int]) -> FloatArray:
        """``T[h, t]`` for each of ``rows`` (axis 0) and ``targets`` (axis 1): what each item
        alone sent to each target."""
        at = np.ix_(np.asarray(rows, dtype=np.intp), np.asarray(targets, dtype=np.intp))
        out: FloatArray = self._counts[at].astype(np.float64)
        return out

"""Which items the same users engage with: online co-occurrence counts, cosine-scored.

Transitions (``embeddings.transitions``) capture what comes *next*; co-occurrence captures
what belongs *together* in a user's whole history, order aside, which carries a user's
taste once they have a few events. Every new click on ``j`` by a user who had ``H``
before adds 1 to ``C[j, h]`` and ``C[h, j]`` for ``h`` in ``H``; a user with history ``H``
scores item ``j`` by ``sum_h C[h, j] / sqrt(n_h * n_j)`` (item-item cosine on the binary
user-item matrix), divided by ``sqrt(|H|)`` so long histories do not dominate a blend.

Memory: a dense ``n_items x n_items`` float32 matrix (11 MB for ml-100k).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from embeddings.vectors import Rows

FloatArray = npt.NDArray[np.float64]
#: Up to this many history items, their rows are gathered; beyond, one dense product.
_SUBSET_ROWS = 256


class CoOccurrence:
    def __init__(self, n_items: int) -> None:
        self._co = np.zeros((n_items, n_items), dtype=np.float32)
        self._counts = np.zeros(n_items, dtype=np.float64)

    @property
    def n_items(self) -> int:
        return int(self._counts.shape[0])

    def grow(self, n_items: int) -> None:
        """Make room for ``n_items`` (a catalog that grows while the stream runs)."""
        n = self.n_items
        if n_items <= n:
            return
        co = np.zeros((n_items, n_items), dtype=np.float32)
        co[:n, :n] = self._co
        counts = np.zeros(n_items, dtype=np.float64)
        counts[:n] = self._counts
        self._co, self._counts = co, counts

    def add(self, history: Rows, row: int) -> None:
        """Count ``row`` with the user's earlier distinct items ``history``."""
        if len(history):
            rows = np.asarray(history, dtype=np.intp)  # converted once, indexed twice
            self._co[row, rows] += 1.0
            self._co[rows, row] += 1.0
        self._counts[row] += 1.0

    def scores(self, history: Rows) -> FloatArray:
        n = len(self._counts)
        if not len(history):
            return np.zeros(n, dtype=np.float64)
        rows = np.asarray(history, dtype=np.intp)
        norm = np.sqrt(np.maximum(self._counts, 1.0))
        if len(rows) <= _SUBSET_ROWS:
            weights = 1.0 / norm[rows]
            mass = weights @ self._co[rows].astype(np.float64)
        else:
            # A long history: one vector-matrix product over the whole (symmetric) matrix
            # instead of copying hundreds of its rows first (the copy was most of the time).
            dense = np.zeros(n, dtype=np.float32)
            dense[rows] = 1.0 / norm[rows]
            mass = (dense @ self._co).astype(np.float64)
        sims: FloatArray = mass / norm
        out: FloatArray = sims / np.sqrt(len(rows))
        return out

    def row_mass(self, history: Rows, targets: Sequence[int]) -> FloatArray:
        """Each of ``history``'s term (axis 0) in each target's score (axis 1), up to the
        normalization they share."""
        rows = np.asarray(history, dtype=np.intp)
        mass = self._co[np.ix_(rows, np.asarray(targets, dtype=np.intp))]
        out: FloatArray = mass / np.sqrt(np.maximum(self._counts[rows], 1.0))[:, None]
        return out

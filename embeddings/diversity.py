"""A diversity knob: maximal marginal relevance (Carbonell & Goldstein, 1998) over a top-k.

A list ranked by score alone repeats itself: the five most popular sequels of one
franchise. MMR builds the list greedily, each time taking the candidate that maximises
``λ · rel(i) - (1 - λ) · max_{j in list} cos(i, j)``: ``λ = 1`` is the plain top-k,
smaller ``λ`` trades relevance for items unlike those already chosen. Scores of a blend
have no fixed scale, so relevance is the score min-max scaled to [0, 1] over the
candidate pool (the ``pool`` best items), which keeps ``λ`` meaning the same for every
user and every blend.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from embeddings.blend import top_k

FloatArray = npt.NDArray[np.float64]

#: How many of the best-scored items MMR chooses from.
DEFAULT_POOL = 100


def mmr(
    scores: FloatArray,
    vectors: npt.NDArray[np.float32],
    k: int,
    lam: float,
    exclude_rows: Iterable[int] = (),
    pool: int = DEFAULT_POOL,
) -> list[int]:
    """Rows of a ``k``-list by MMR with trade-off ``lam`` in [0, 1] (1: plain top-k).

    ``vectors`` are unit-norm item vectors by row (cosine = dot product). Ties keep the
    score order, so ``lam = 1`` returns exactly :func:`embeddings.blend.top_k`.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    cand = top_k(scores, max(pool, k), exclude_rows)
    if lam >= 1.0 or len(cand) <= 1:
        return cand[:k]
    rel = np.asarray(scores, dtype=np.float64)[cand]
    finite = np.isfinite(rel)
    lo, hi = float(rel[finite].min()), float(rel[finite].max())
    rel = np.where(finite, (rel - lo) / (hi - lo) if hi > lo else 1.0, 0.0)
    vecs = vectors[cand].astype(np.float64)
    # Largest cosine of each candidate to anything chosen so far (nothing yet: no penalty).
    max_sim = np.full(len(cand), -np.inf)
    taken = np.zeros(len(cand), dtype=np.bool_)
    chosen: list[int] = []
    for _ in range(min(k, len(cand))):
        penalty = np.where(np.isfinite(max_sim), max_sim, 0.0)
        value = lam * rel - (1.0 - lam) * penalty
        value[taken] = -np.inf
        pick = int(np.argmax(value))  # first of equal values: the better-scored one
        taken[pick] = True
        chosen.append(cand[pick])
        max_sim = np.maximum(max_sim, vecs @ vecs[pick])
    return chosen

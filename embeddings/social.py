"""Social influence: a user's vector moves toward the vectors of the people they follow.

``u' = (1 - λ) · u + λ · mean_{f in follows(u)} u_f``, each vector normalized first, with
``λ`` the social strength (tuned on held-out data: ``evaluation.lastfm``). A user with no
vector of their own takes the friends' mean; one who follows nobody keeps their own. The
same step works on any representation of a user: the text-space running mean that
``UserState`` keeps, or a row of the user-item matrix (item space), which is what carries
the collaborative signal on lastfm-2k.

``UserState.apply_social`` is the streaming form of the same idea, one follow event at a
time with a fixed rate per event kind; :func:`social_mix` is the batch form used when the
whole follow graph is known (lastfm's friendships have no timestamps).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from embeddings.vectors import Vector, normalize

FloatMatrix = npt.NDArray[np.float32]


class SocialGraph:
    """Who follows whom (directed; self-loops and repeats dropped)."""

    def __init__(self, edges: Iterable[tuple[str, str]]) -> None:
        follows: dict[str, dict[str, None]] = {}
        for source, target in edges:
            if source != target:
                follows.setdefault(source, {})[target] = None
        self._follows = {u: list(f) for u, f in follows.items()}

    def followed(self, user: str) -> list[str]:
        return self._follows.get(user, [])

    def __len__(self) -> int:
        return sum(len(f) for f in self._follows.values())


def social_mix(own: Vector | None, followed: Sequence[Vector], strength: float) -> Vector | None:
    """``(1 - strength) · own + strength · mean(followed)``, on normalized vectors."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    if not followed or strength == 0.0:
        return own
    mean = normalize(np.mean([normalize(v) for v in followed], axis=0).astype(np.float32))
    if own is None:
        return mean
    return normalize(((1.0 - strength) * normalize(own) + strength * mean).astype(np.float32))


def socialize_rows(
    matrix: FloatMatrix, rows: Mapping[str, int], graph: SocialGraph, strength: float
) -> FloatMatrix:
    """:func:`social_mix` for every user with a row of ``matrix`` (users x dimensions).

    Rows that are all zeros count as "no vector yet"; friends without a row are skipped.
    """
    out = matrix.copy()
    if strength == 0.0:
        return out
    nonzero = np.linalg.norm(matrix, axis=1) > 0
    for user, r in rows.items():
        friends = [
            matrix[k]
            for k in (rows.get(v) for v in graph.followed(user))
            if k is not None and nonzero[k]
        ]
        mixed = social_mix(matrix[r] if nonzero[r] else None, friends, strength)
        if mixed is not None:
            out[r] = mixed
    return out

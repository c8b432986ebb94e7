"""Small, pure vector helpers shared by the model code."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]
Matrix = npt.NDArray[np.float32]
#: Item rows: a list, or an array of them (what ``ItemIndex.rows`` gives).
Rows = Sequence[int] | npt.NDArray[np.intp]

_EPS = 1e-12


def normalize(v: Vector) -> Vector:
    """``v / ||v||``; a zero vector stays zero instead of becoming NaN.

    ``v @ v`` is the same float32 dot product ``np.linalg.norm`` takes the root of, and a
    float32 root rounded from the double root is the float32 root (double rounding is
    exact for square roots), so this is ``v / np.linalg.norm(v)`` bit for bit, without
    its per-call overhead (it runs twice per click).
    """
    if v.dtype == np.float32 and v.ndim == 1:  # the per-click path
        norm = float(np.float32(math.sqrt(float(v @ v))))
    else:
        norm = float(np.linalg.norm(v))
    if norm < _EPS:
        return np.zeros_like(v, dtype=np.float32)
    out: Vector = (v / norm).astype(np.float32, copy=False)
    return out


def move_toward(current: Vector | None, target: Vector, rate: float) -> Vector:
    """One incremental step ``(1 - rate) * current + rate * target``, re-normalized.

    ``current=None`` (nothing known yet) simply adopts the target: that is what makes a
    user's first event enough to recommend from. ``rate`` may be negative (move away).
    """
    if current is None:
        return normalize(target.astype(np.float32, copy=False))
    rate = min(max(float(rate), -1.0), 1.0)
    # Python floats are weak scalars (NEP 50): float32 in, float32 out, so this is the
    # same array a float32 cast would give, without the copy (it runs twice per click).
    step = (1.0 - abs(rate)) * current + rate * target
    return normalize(step.astype(np.float32, copy=False))

"""Scene gating vectors ``s`` in ``r = (u ⊙ s) · i``.

A scene without a gate uses all ones, so ``r`` is the plain dot product of the user's
(scene) vector and the item. Learned gates (``embeddings.colearn.fit_gates``, BPR on the
training events) plug in through ``set_gate``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from embeddings.vectors import Vector


class SceneGates:
    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._gates: dict[str, Vector] = {}

    def gate(self, scene: str) -> Vector | None:
        """The learned gate of ``scene``, or None for the fixed all-ones gate."""
        return self._gates.get(scene)

    def set_gate(self, scene: str, gate: Vector) -> None:
        if gate.shape != (self.dim,):
            raise ValueError(f"gate: expected shape ({self.dim},), got {gate.shape}")
        self._gates[scene] = gate.astype(np.float32)

    def items(self) -> Iterator[tuple[str, Vector]]:
        """Every learned ``(scene, gate)``, in the order they were set."""
        yield from self._gates.items()

    def apply(self, scene: str, user_vec: Vector) -> Vector:
        """``u ⊙ s``; with the all-ones gate that is ``u`` itself (no copy)."""
        gate = self._gates.get(scene)
        return user_vec if gate is None else (user_vec * gate).astype(np.float32)

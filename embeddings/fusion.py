"""Fusing what is known about an item into the one vector that is stored and ranked."""

from __future__ import annotations

from collections.abc import Sequence

from embeddings.vectors import Vector, normalize

#: Weight of the knowledge-graph part relative to the text part (text weight 1).
KG_WEIGHT = 0.5


def item_text(title: str, description: str, scenes: Sequence[str]) -> str:
    """The text the encoder sees for an item."""
    parts = [title.strip()]
    if description.strip():
        parts.append(description.strip())
    parts.append("Genres: " + ", ".join(scenes))
    return ". ".join(parts)


def fuse_item(text_vec: Vector, kg_vec: Vector | None, kg_weight: float = KG_WEIGHT) -> Vector:
    """Text embedding + weighted KG embedding, normalized; an item without KG keeps text."""
    if kg_vec is None:
        return normalize(text_vec)
    return normalize(normalize(text_vec) + kg_weight * kg_vec)

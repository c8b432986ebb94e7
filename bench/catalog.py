"""Catalogs for the benchmarks: ml-100k's 1,682 items, and a larger synthetic one.

The synthetic catalog (labelled ``synthetic`` wherever it is reported) is ml-100k's items
followed by items whose titles and descriptions come from templates, so that the ml-100k
click stream still finds its items and the worker ranks every user against the whole,
larger catalog. Texts are deterministic (a seeded generator), so encoded vectors can be
cached between runs by their texts' hash (see :mod:`bench.encoder_cache`).
"""

from __future__ import annotations

import random
from typing import Any

from scenerec.datasets import Dataset

_ADJ = [
    "silent",
    "forgotten",
    "golden",
    "broken",
    "hidden",
    "last",
    "midnight",
    "crimson",
    "electric",
    "frozen",
    "wild",
    "distant",
    "burning",
    "secret",
    "lonely",
    "iron",
    "velvet",
    "hollow",
    "bright",
    "savage",
    "gentle",
    "restless",
]
_NOUN = [
    "river",
    "empire",
    "garden",
    "signal",
    "harbor",
    "kingdom",
    "station",
    "memory",
    "frontier",
    "orchard",
    "engine",
    "lighthouse",
    "canyon",
    "archive",
    "circus",
    "voyage",
    "island",
    "festival",
    "mirror",
    "citadel",
]
_WHO = [
    "a retired detective",
    "two estranged sisters",
    "a young chef",
    "an android",
    "a small-town teacher",
    "a jazz drummer",
    "a rookie pilot",
    "a disgraced scientist",
    "a family of farmers",
    "a street magician",
    "an exiled prince",
    "a marine biologist",
]
_WHAT = [
    "uncover a conspiracy",
    "rebuild a ruined theatre",
    "cross a frozen continent",
    "win a championship",
    "solve a string of thefts",
    "survive one last night",
    "find a lost sibling",
    "save the family restaurant",
    "decode an alien message",
    "escape a collapsing city",
]
_SCENES = ("action", "comedy", "drama", "family", "scifi", "thriller")
_RELATIONS = ("film.film.genre", "film.film.actor", "film.film.director", "film.film.country")


def ml100k_items(data: Dataset) -> list[dict[str, Any]]:
    return list(data.items)


def synthetic_item(i: int, rng: random.Random) -> dict[str, Any]:
    scenes = rng.sample(_SCENES, k=rng.choice((1, 1, 2, 3)))
    title = f"The {rng.choice(_ADJ).title()} {rng.choice(_NOUN).title()} ({1950 + i % 75})"
    desc = f"{rng.choice(_WHO).capitalize()} must {rng.choice(_WHAT)}. Synthetic item {i}."
    relations = [
        {"relation": rng.choice(_RELATIONS), "target": f"syn.e{rng.randrange(20_000)}"}
        for _ in range(rng.randrange(0, 6))
    ]
    return {
        "item_id": f"syn-{i}",
        "scenes": scenes,
        "title": title,
        "description": desc,
        "relations": relations,
    }


def synthetic_items(
    n: int, base: Dataset | None = None, seed: int = 100_000
) -> list[dict[str, Any]]:
    """``n`` items: ``base``'s items first (if given), then synthetic ones up to ``n``."""
    items = ml100k_items(base) if base is not None else []
    rng = random.Random(seed)
    for i in range(max(0, n - len(items))):
        items.append(synthetic_item(i, rng))
    return items[:n]

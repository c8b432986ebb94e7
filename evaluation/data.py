"""The harness's data format (typed, immutable) and loaders for ml-100k and lastfm-2k.

One format for every data set, so protocols and models never look at raw files:
items (id, scenes, text, optional relations), events in time order, optional social edges
and optional user profiles, plus the train/valid/test split the protocols use. The format
is written down in ``docs/data-format.md``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from embeddings.fusion import item_text
from scenerec.datasets import load_lastfm2k as _load_lastfm2k_records
from scenerec.datasets import load_ml100k as _load_ml100k_records

#: EVALUATION.md, Protocol A: first 80,000 train, next 10,000 valid, last 10,000 test.
ML100K_SPLIT = (80_000, 10_000, 10_000)
#: lastfm-2k has no timestamps: a seeded random 80/20 split of the listening pairs.
LASTFM_TRAIN_FRACTION = 0.8
LASTFM_SEED = 2024


class DataError(Exception):
    """A data set is missing or not in the expected format."""


@dataclass(frozen=True, slots=True)
class Event:
    """One interaction. ``kind`` is ``click`` (ml-100k ratings) or ``listen`` (lastfm)."""

    user: str
    item: str
    scene: str
    kind: str
    timestamp: float
    text: str | None = None
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Item:
    id: str
    scenes: tuple[str, ...]
    #: Exactly what the sentence encoder sees (``embeddings.fusion.item_text``).
    text: str
    title: str
    #: Knowledge-graph ``(relation, target)`` pairs; empty when the data set has none.
    relations: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class SocialEdge:
    source: str
    target: str
    kind: str = "follow"
    timestamp: float | None = None


@dataclass(frozen=True, slots=True)
class Profile:
    user: str
    text: str
    attributes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Split:
    train: tuple[Event, ...]
    valid: tuple[Event, ...]
    test: tuple[Event, ...]


@dataclass(frozen=True)
class Dataset:
    name: str
    #: Catalog order: row ``r`` of every score vector is ``items[r]``.
    items: tuple[Item, ...]
    split: Split
    profiles: dict[str, Profile] = field(default_factory=dict)
    social: tuple[SocialEdge, ...] = ()

    @property
    def events(self) -> tuple[Event, ...]:
        """All events, train then valid then test (time order where the data has time)."""
        return self.split.train + self.split.valid + self.split.test


class Catalog:
    """Item id <-> row. Rows follow the data set's item order, which also breaks score ties."""

    def __init__(self, items: Sequence[Item]) -> None:
        self.items = tuple(items)
        self.ids = tuple(it.id for it in self.items)
        self._row = {item_id: r for r, item_id in enumerate(self.ids)}
        if len(self._row) != len(self.ids):
            raise DataError("duplicate item ids in the catalog")

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._row

    def row(self, item_id: str) -> int:
        return self._row[item_id]

    def rows(self, item_ids: Sequence[str] | set[str]) -> list[int]:
        return [self._row[i] for i in item_ids if i in self._row]


def split_by_sizes(events: Sequence[Event], sizes: tuple[int, int, int]) -> Split:
    n_train, n_valid, n_test = sizes
    if n_train + n_valid + n_test != len(events):
        raise DataError(f"split sizes {sizes} do not add up to {len(events)} events")
    return Split(
        train=tuple(events[:n_train]),
        valid=tuple(events[n_train : n_train + n_valid]),
        test=tuple(events[n_train + n_valid :]),
    )


def load_ml100k(data_dir: Path, with_kg: bool = True) -> Dataset:
    """ml-100k: ratings as clicks, stable-sorted by timestamp, split 80,000/10,000/10,000.

    ``scenerec.datasets.load_ml100k`` already does the stable sort (``sorted`` keeps file
    order for equal timestamps, as EVALUATION.md requires), the genre -> scene mapping,
    the KG relations through ``ml-100k.link`` and the profile text; this only converts.
    """
    try:
        raw = _load_ml100k_records(data_dir, with_kg=with_kg)
    except Exception as exc:  # DatasetError or a malformed file: one error type for callers
        raise DataError(str(exc)) from exc
    items = tuple(
        Item(
            id=r["item_id"],
            scenes=tuple(r["scenes"]),
            text=item_text(r["title"], r["description"], r["scenes"]),
            title=r["title"],
            relations=tuple((rel["relation"], rel["target"]) for rel in r["relations"]),
        )
        for r in raw.items
    )
    events = [
        Event(
            user=c["user_id"],
            item=c["item_id"],
            scene=c["scene"],
            kind="click",
            timestamp=float(c["ts"]),
        )
        for c in raw.clicks
    ]
    profiles = {
        p["user_id"]: Profile(
            user=p["user_id"],
            text=p["profile_text"],
            attributes=tuple((k, str(v)) for k, v in p["attributes"].items()),
        )
        for p in raw.profiles
    }
    return Dataset("ml-100k", items, split_by_sizes(events, ML100K_SPLIT), profiles)


def load_lastfm2k(data_dir: Path, seed: int = LASTFM_SEED) -> Dataset:
    """lastfm-2k: artists as items, listening pairs as events, friendships as social edges.

    ``scenerec.datasets.load_lastfm2k`` reads the files (file order, ``ts = 0``); the data
    has no timestamps, so the split is a seeded random 80/20 of the listening pairs (no
    valid part: tune by carving one out of train). The listening count is the event weight.
    """
    try:
        raw = _load_lastfm2k_records(data_dir)
    except Exception as exc:  # DatasetError or a malformed file: one error type for callers
        raise DataError(str(exc)) from exc
    items = tuple(
        Item(
            id=r["item_id"],
            scenes=tuple(r["scenes"]),
            text=item_text(r["title"], r["description"], r["scenes"]),
            title=r["title"],
        )
        for r in raw.items
    )
    events = [
        Event(
            user=c["user_id"],
            item=c["item_id"],
            scene=c["scene"],
            kind="listen",
            timestamp=float(c["ts"]),
            weight=float(c["weight"]),
        )
        for c in raw.clicks
    ]
    random.Random(seed).shuffle(events)
    n_train = round(LASTFM_TRAIN_FRACTION * len(events))
    split = Split(train=tuple(events[:n_train]), valid=(), test=tuple(events[n_train:]))
    social = tuple(
        SocialEdge(source=r["source"], target=r["target"], kind=r["kind"], timestamp=r["ts"])
        for r in raw.social
    )
    return Dataset("lastfm-2k", items, split, social=social)


LOADERS: dict[str, Callable[[Path], Dataset]] = {
    "ml-100k": load_ml100k,
    "lastfm-2k": load_lastfm2k,
}


def load(name: str, data_dir: Path) -> Dataset:
    try:
        loader = LOADERS[name]
    except KeyError:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(LOADERS)}") from None
    return loader(data_dir)

"""The harness's data format (typed, immutable), built from RecBole atomic files.

One format for every data set, so protocols and models never look at raw files:
items (id, scenes, text, optional relations), events in replay order, optional social
edges and optional user profiles, plus the train/valid/test split of the protocol. Every
data set arrives as atomic files (``scenerec.atomic``: a folder, or a built-in data set
converted in memory by the same converters); ``docs/data-format.md`` has the format.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from embeddings.fusion import item_text
from scenerec import datasets
from scenerec.atomic import AtomicDataset, Interaction, ItemRecord

#: EVALUATION.md, Protocol A: first 80% train, next 10% valid, last 10% test (of ml-100k's
#: 100,000: 80,000 / 10,000 / 10,000).
TEMPORAL_FRACTIONS = (0.8, 0.1)
#: Data with neither time nor order: a seeded random split instead.
RANDOM_SEED = 2024
#: lastfm-2k's own social experiment: a seeded random 80/20 split of the listening pairs.
LASTFM_TRAIN_FRACTION = 0.8
LASTFM_SEED = RANDOM_SEED
PROTOCOLS = ("temporal", "loo")
#: What an event's ``timestamp`` counts: seconds, or event steps (the position in the
#: replay) where the data has an order but no time; ``none``: no order at all.
CLOCKS = ("time", "order", "none")


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
    #: Exactly what the sentence encoder sees (``embeddings.fusion.item_text``); empty for
    #: an item with neither title nor text (ids only: it gets no text vector).
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
    #: One of :data:`CLOCKS`.
    clock: str = "time"
    #: How the split was made: ``temporal`` (or random, without order) or ``loo``.
    protocol: str = "temporal"

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


def split_temporal(events: Sequence[Event], clock: str, seed: int = RANDOM_SEED) -> Split:
    """Protocol A's global split: the first 80% train, the next 10% valid, the rest test,
    in replay order; data with neither time nor order is shuffled (seeded) first."""
    if clock == "none":
        events = list(events)
        random.Random(seed).shuffle(events)
    n_train = round(TEMPORAL_FRACTIONS[0] * len(events))
    n_valid = round(TEMPORAL_FRACTIONS[1] * len(events))
    return split_by_sizes(events, (n_train, n_valid, len(events) - n_train - n_valid))


def split_loo(events: Sequence[Event]) -> Split:
    """Protocol L: per user, the last event is test, the one before valid, the rest train.

    Every part keeps replay order. A user with two events has no train event, with one
    only a test event.
    """
    count: dict[str, int] = defaultdict(int)
    for e in events:
        count[e.user] += 1
    position: dict[str, int] = defaultdict(int)
    train: list[Event] = []
    valid: list[Event] = []
    test: list[Event] = []
    for e in events:
        position[e.user] += 1
        left = count[e.user] - position[e.user]
        (test if left == 0 else valid if left == 1 else train).append(e)
    return Split(tuple(train), tuple(valid), tuple(test))


def _encoder_text(item: ItemRecord) -> str:
    """What the encoder sees: title and text (either may be missing), then the scenes."""
    first = item.title or item.text
    if first is None:
        return ""
    rest = item.text if item.title is not None else None
    return item_text(first, rest or "", datasets.scenes_of(item))


def from_atomic(data: AtomicDataset, protocol: str = "temporal") -> Dataset:
    """The harness's form of an atomic data set, split for ``protocol`` (:data:`PROTOCOLS`)."""
    if protocol not in PROTOCOLS:
        raise DataError(f"unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    ds, events = _unsplit(data)
    if protocol == "loo" and ds.clock == "none":
        raise DataError(
            f"{data.name}: leave-one-out needs each user's order, and the interactions have "
            "neither a timestamp nor an order column"
        )
    split = split_loo(events) if protocol == "loo" else split_temporal(events, ds.clock)
    return replace(ds, split=split, protocol=protocol)


def _unsplit(data: AtomicDataset) -> tuple[Dataset, list[Event]]:
    """Everything but the split (left empty), and the events in replay order."""
    if not data.interactions:
        raise DataError(f"{data.name}: no interactions")
    relations = datasets.relations_by_item(data)
    items = tuple(
        Item(
            id=it.id,
            scenes=datasets.scenes_of(it),
            text=_encoder_text(it),
            title=it.title or it.text or it.id,
            relations=tuple(relations.get(it.id, ())),
        )
        for it in datasets.catalog(data)
    )
    first_scene = {it.id: it.scenes[0] for it in items}
    clock = datasets.clock(data)
    events = [
        Event(
            user=e.user,
            item=e.item,
            scene=datasets.scene_of(e, first_scene),
            kind=e.kind or "click",
            timestamp=_time(e, step, clock),
            text=e.text,
            weight=1.0 if e.weight is None else e.weight,
        )
        for step, e in enumerate(data.interactions[k] for k in datasets.ordered(data))
    ]
    profiles = {
        u.id: Profile(user=u.id, text=u.profile_text, attributes=u.attributes)
        for u in data.users
        if u.profile_text
    }
    social = tuple(
        SocialEdge(source=e.source, target=e.target, kind=e.kind or "follow", timestamp=e.timestamp)
        for e in data.net
    )
    return Dataset(data.name, items, Split((), (), ()), profiles, social, clock), events


def _time(e: Interaction, step: int, clock: str) -> float:
    if clock == "time":
        return float(e.timestamp or 0.0)
    return float(step) if clock == "order" else 0.0


def load_folder(folder: Path, protocol: str = "temporal") -> Dataset:
    """Any folder of atomic files (``python -m evaluation.cli --dataset DIR``)."""
    try:
        return from_atomic(datasets.read(folder), protocol)
    except datasets.DatasetError as exc:
        raise DataError(str(exc)) from exc


def _builtin(name: str, data_dir: Path, with_kg: bool = True) -> AtomicDataset:
    try:
        return datasets.builtin(name, data_dir, with_kg)
    except datasets.DatasetError as exc:
        raise DataError(str(exc)) from exc


def load_ml100k(data_dir: Path, with_kg: bool = True) -> Dataset:
    """ml-100k: ratings as clicks, stable-sorted by timestamp, split 80,000/10,000/10,000.

    The converter (``scenerec.convert.ratings.ml100k``) maps genres to scenes, adds the
    year to the title and builds the profile text; the stable sort keeps file order for
    equal timestamps, as EVALUATION.md requires.
    """
    return from_atomic(_builtin("ml-100k", data_dir, with_kg))


def load_lastfm2k(data_dir: Path, seed: int = LASTFM_SEED) -> Dataset:
    """lastfm-2k for its social experiment: artists as items, listening pairs as events,
    friendships as social edges.

    The data has no timestamps, so the split is a seeded random 80/20 of the listening
    pairs (no valid part: ``evaluation.lastfm`` carves one out of train). The listening
    count is the event weight.
    """
    ds, events = _unsplit(_builtin("lastfm-2k", data_dir))
    random.Random(seed).shuffle(events)
    n_train = round(LASTFM_TRAIN_FRACTION * len(events))
    return replace(ds, split=Split(tuple(events[:n_train]), (), tuple(events[n_train:])))


LOADERS = {"ml-100k": load_ml100k, "lastfm-2k": load_lastfm2k}


def load(name: str, data_dir: Path) -> Dataset:
    try:
        loader = LOADERS[name]
    except KeyError:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(LOADERS)}") from None
    return loader(data_dir)

"""Data sets -> SceneRec's input records (catalog items, profiles, events, social edges).

Every data set goes through one form, RecBole's atomic files (``scenerec.atomic``):
``scenerec convert`` writes them from a source format, and :func:`load_folder` reads any
folder of them. The built-in names (``ml-100k``, ``lastfm-2k``) convert their folder of
``../shared/data/`` in memory, with the same converters.

The rules the loader applies to any atomic data set (``docs/data-format.md``):

* **order**: interactions are stable-sorted by ``timestamp``, else by ``order``, else kept
  in file order (:func:`clock`); ties keep file order, as EVALUATION.md requires;
* **scene**: an interaction without a scene happens in its item's first scene; an item
  without scenes is in :data:`DEFAULT_SCENE`;
* **relations**: an item's knowledge-graph facts are the ``.kg`` triples whose head or tail
  is the item's ``.link`` entity (a tail's facts with the relation prefixed ``~``), at
  most :data:`MAX_RELATIONS` per item.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scenerec.atomic import AtomicDataset, AtomicError, Interaction, ItemRecord, read_dataset
from scenerec.convert.common import DEFAULT_SCENE, ConvertError, Options
from scenerec.convert.ratings import LASTFM_SCENE, ML100K_SCENES, lastfm2k, ml100k, profile_text

__all__ = [
    "DATASETS",
    "DEFAULT_SCENE",
    "LASTFM_SCENE",
    "ML100K_SCENES",
    "Dataset",
    "DatasetError",
    "clock",
    "load_folder",
    "load_lastfm2k",
    "load_ml100k",
    "ordered",
    "profile_text",
    "relations_by_item",
]

#: Relations kept per item (one entity per relation is plenty of signal).
MAX_RELATIONS = 64
#: Social kinds the stream knows; a data set's own kinds (``friend``) publish as a follow.
STREAM_SOCIAL_KINDS = ("follow", "unfollow", "like", "share")


class DatasetError(Exception):
    """A data set is missing or not in the expected format."""


@dataclass(frozen=True)
class Dataset:
    name: str
    items: list[dict[str, Any]]
    profiles: list[dict[str, Any]]
    #: Events in order: clicks, and comments (a ``text`` field).
    clicks: list[dict[str, Any]]
    #: Directed ``{"source", "target", "kind", "ts"}`` edges (``ts`` None when unknown).
    social: list[dict[str, Any]] = field(default_factory=list)


def clock(data: AtomicDataset) -> str:
    """``time`` (interactions have a timestamp), ``order`` (an order column) or ``none``.

    The reader refuses a file where the column is filled on some lines only.
    """
    first = data.interactions[0] if data.interactions else None
    if first is not None and first.timestamp is not None:
        return "time"
    return "order" if first is not None and first.order is not None else "none"


def ordered(data: AtomicDataset) -> list[int]:
    """Indices of ``data.interactions`` in replay order (stable: ties keep file order)."""
    inter = data.interactions
    kind = clock(data)
    if kind == "none":
        return list(range(len(inter)))
    key: Callable[[int], float] = (
        (lambda k: inter[k].timestamp or 0.0)
        if kind == "time"
        else (lambda k: inter[k].order or 0.0)
    )
    return sorted(range(len(inter)), key=key)


def catalog(data: AtomicDataset) -> list[ItemRecord]:
    """The ``.item`` records, then items only the interactions name (first seen first)."""
    listed = {it.id for it in data.items}
    extra = dict.fromkeys(i.item for i in data.interactions if i.item not in listed)
    return [*data.items, *(ItemRecord(i) for i in extra)]


def scenes_of(item: ItemRecord) -> tuple[str, ...]:
    return item.scenes or (DEFAULT_SCENE,)


def scene_of(event: Interaction, first_scene: dict[str, str]) -> str:
    return event.scene or first_scene.get(event.item, DEFAULT_SCENE)


def relations_by_item(data: AtomicDataset) -> dict[str, list[tuple[str, str]]]:
    """item id -> ``(relation, target)`` facts from ``.kg`` through ``.link``."""
    if not data.kg:
        return {}
    link = {entity: item for item, entity in data.links}
    out: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for t in data.kg:
        item = link.get(t.head)
        if item is not None and len(out[item]) < MAX_RELATIONS:
            out[item].append((t.relation, t.tail))
        item = link.get(t.tail)
        if item is not None and len(out[item]) < MAX_RELATIONS:
            out[item].append(("~" + t.relation, t.head))
    return out


def records(data: AtomicDataset, prefix: str | None = None) -> Dataset:
    """The stream's records: catalog items, profiles, events in order, social edges."""
    prefix = prefix or data.name
    relations = relations_by_item(data)
    items = catalog(data)
    first_scene = {it.id: scenes_of(it)[0] for it in items}
    clicks = []
    for k in ordered(data):
        e = data.interactions[k]
        click: dict[str, Any] = {
            "event_id": f"{prefix}-{k}",
            "user_id": e.user,
            "item_id": e.item,
            "scene": scene_of(e, first_scene),
            "ts": e.timestamp if e.timestamp is not None else e.order or 0.0,
        }
        if e.weight is not None:
            click["weight"] = e.weight
        if e.text is not None:
            click["text"] = e.text
        clicks.append(click)
    return Dataset(
        data.name,
        [
            {
                "item_id": it.id,
                "scenes": list(scenes_of(it)),
                "title": it.title or it.id,
                "description": it.text or "",
                "relations": [{"relation": r, "target": t} for r, t in relations.get(it.id, [])],
            }
            for it in items
        ],
        [
            {"user_id": u.id, "profile_text": u.profile_text, "attributes": dict(u.attributes)}
            for u in data.users
            if u.profile_text
        ],
        clicks,
        [
            {"source": e.source, "target": e.target, "kind": e.kind or "follow", "ts": e.timestamp}
            for e in data.net
        ],
    )


def read(folder: Path) -> AtomicDataset:
    """A folder of atomic files, with one error type for callers."""
    try:
        return read_dataset(folder)
    except AtomicError as exc:
        raise DatasetError(str(exc)) from exc


def builtin(name: str, data_dir: Path, with_kg: bool = True) -> AtomicDataset:
    """A built-in data set of ``data_dir`` converted in memory (as ``scenerec convert`` does)."""
    try:
        if name == "ml-100k":
            return ml100k(data_dir / "ml-100k", Options(), with_kg=with_kg)
        if name == "lastfm-2k":
            return lastfm2k(data_dir / "lastfm-2k", Options())
    except ConvertError as exc:
        raise DatasetError(f"{exc} (see ../shared/data/README.md)") from exc
    raise DatasetError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")


def load_ml100k(data_dir: Path, with_kg: bool = True) -> Dataset:
    return records(builtin("ml-100k", data_dir, with_kg), prefix="ml100k")


def load_lastfm2k(data_dir: Path) -> Dataset:
    """lastfm-2k: artists, listening pairs (as weighted clicks, file order), friendships."""
    return records(builtin("lastfm-2k", data_dir), prefix="lastfm2k")


def load_folder(folder: Path) -> Dataset:
    """Any folder of atomic files (``scenerec load --dataset DIR``)."""
    return records(read(folder))


def stream_social_kind(kind: str) -> str:
    return kind if kind in STREAM_SOCIAL_KINDS else "follow"


DATASETS: dict[str, Callable[[Path], Dataset]] = {
    "ml-100k": load_ml100k,
    "lastfm-2k": load_lastfm2k,
}


def check_scenes(data: Dataset, declared: Sequence[str]) -> None:
    """Every scene of the data is one the worker declares (events in others go to the DLQ)."""
    used = {s for it in data.items for s in it["scenes"]} | {c["scene"] for c in data.clicks}
    missing = sorted(used - set(declared))
    if missing:
        raise DatasetError(
            f"scene(s) {', '.join(missing)} are not declared: add them to SCENEREC_SCENES "
            f"(now {','.join(declared)})"
        )

"""Real data sets -> SceneRec events (catalog items, profiles, clicks, social edges).

ml-100k has no scenes of its own, so its 19 genres are grouped into six scenes
(:data:`ML100K_SCENES`); an item belongs to every scene one of its genres maps to, and a
rating happens in the scene of the item's first genre. Ratings become clicks, ordered by
timestamp with a stable sort (ties keep file order, as in EVALUATION.md).

lastfm-2k (HetRec 2011) has one scene, ``music``: artists are the items, every
(user, artist) listening pair is one event weighted by its listening count, and the
friendships are social edges. It has no timestamps at all: events and edges keep file
order with ``ts = 0``, and a split has to be random (``evaluation.data.load_lastfm2k``).
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Genre -> scene. Written down here, used by the loader and the docs.
ML100K_SCENES: dict[str, str] = {
    "Action": "action",
    "Adventure": "action",
    "War": "action",
    "Western": "action",
    "Comedy": "comedy",
    "Drama": "drama",
    "Romance": "drama",
    "Documentary": "drama",
    "Animation": "family",
    "Children's": "family",
    "Musical": "family",
    "Fantasy": "family",
    "Sci-Fi": "scifi",
    "Crime": "thriller",
    "Film-Noir": "thriller",
    "Horror": "thriller",
    "Mystery": "thriller",
    "Thriller": "thriller",
    "unknown": "drama",
}

#: Relations kept from the Freebase triples (one entity per relation is plenty of signal).
_MAX_RELATIONS = 64


class DatasetError(Exception):
    """A data set is missing or not in the expected format."""


@dataclass(frozen=True)
class Dataset:
    name: str
    items: list[dict[str, Any]]
    profiles: list[dict[str, Any]]
    clicks: list[dict[str, Any]]
    #: Directed ``{"source", "target", "kind", "ts"}`` edges (``ts`` None when unknown).
    social: list[dict[str, Any]] = field(default_factory=list)


def _rows(path: Path) -> Iterator[dict[str, str]]:
    if not path.is_file():
        raise DatasetError(f"{path} not found (see ../shared/data/README.md)")
    with path.open(encoding="utf-8", errors="replace", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.split(":", 1)[0] for h in next(reader)]
        for row in reader:
            if row:
                yield dict(zip(header, row, strict=False))


def _relations(root: Path) -> dict[str, list[dict[str, str]]]:
    """item_id -> [{relation, target}] from ml-100k.kg through ml-100k.link."""
    link = {r["entity_id"]: r["item_id"] for r in _rows(root / "ml-100k.link")}
    out: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in _rows(root / "ml-100k.kg"):
        item = link.get(r["head_id"])
        if item is not None and len(out[item]) < _MAX_RELATIONS:
            out[item].append({"relation": r["relation_id"], "target": r["tail_id"]})
        item = link.get(r["tail_id"])
        if item is not None and len(out[item]) < _MAX_RELATIONS:
            out[item].append({"relation": "~" + r["relation_id"], "target": r["head_id"]})
    return out


def profile_text(age: str, gender: str, occupation: str) -> str:
    who = {"M": "man", "F": "woman"}.get(gender, "person")
    job = occupation if occupation not in ("none", "other") else "no stated occupation"
    return f"A {age} year old {who} working as {job}."


def load_ml100k(data_dir: Path, with_kg: bool = True) -> Dataset:
    root = data_dir / "ml-100k"
    relations = _relations(root) if with_kg else {}
    items: list[dict[str, Any]] = []
    first_scene: dict[str, str] = {}
    for r in _rows(root / "ml-100k.item"):
        genres = r.get("class", "").split() or ["unknown"]
        scenes = list(dict.fromkeys(ML100K_SCENES.get(g, "drama") for g in genres))
        first_scene[r["item_id"]] = scenes[0]
        year = r.get("release_year", "").strip()
        items.append(
            {
                "item_id": r["item_id"],
                "scenes": scenes,
                "title": f"{r['movie_title']} ({year})" if year else r["movie_title"],
                "description": "Genres: " + ", ".join(genres),
                "relations": relations.get(r["item_id"], []),
            }
        )
    profiles = [
        {
            "user_id": r["user_id"],
            "profile_text": profile_text(r["age"], r["gender"], r["occupation"]),
            "attributes": {
                "age": int(r["age"]),
                "gender": r["gender"],
                "occupation": r["occupation"],
            },
        }
        for r in _rows(root / "ml-100k.user")
    ]
    ratings = list(_rows(root / "ml-100k.inter"))
    order = sorted(range(len(ratings)), key=lambda i: float(ratings[i]["timestamp"]))
    clicks = [
        {
            "event_id": f"ml100k-{i}",
            "user_id": ratings[i]["user_id"],
            "item_id": ratings[i]["item_id"],
            "scene": first_scene.get(ratings[i]["item_id"], "drama"),
            "ts": float(ratings[i]["timestamp"]),
        }
        for i in order
    ]
    return Dataset("ml-100k", items, profiles, clicks)


#: lastfm-2k's only scene.
LASTFM_SCENE = "music"


def load_lastfm2k(data_dir: Path) -> Dataset:
    """lastfm-2k: artists, listening pairs (as weighted clicks, file order), friendships."""
    root = data_dir / "lastfm-2k"
    items = [
        {
            "item_id": r["id"],
            "scenes": [LASTFM_SCENE],
            "title": r["name"],
            "description": "",
            "relations": [],
        }
        for r in _rows(root / "artists.dat")
        if r.get("name") is not None
    ]
    known = {it["item_id"] for it in items}
    clicks = [
        {
            "event_id": f"lastfm2k-{k}",
            "user_id": r["userID"],
            "item_id": r["artistID"],
            "scene": LASTFM_SCENE,
            "ts": 0.0,
            "weight": float(r["weight"]),
        }
        for k, r in enumerate(_rows(root / "user_artists.dat"))
        if r.get("weight") is not None and r["artistID"] in known
    ]
    social = [
        {"source": r["userID"], "target": r["friendID"], "kind": "friend", "ts": None}
        for r in _rows(root / "user_friends.dat")
        if r.get("friendID") is not None
    ]
    return Dataset("lastfm-2k", items, [], clicks, social)


DATASETS = {"ml-100k": load_ml100k, "lastfm-2k": load_lastfm2k}

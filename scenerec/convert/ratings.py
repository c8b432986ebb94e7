"""Rating-style sources: ml-100k (RecBole's own files), lastfm-2k, yelp-core40.

ml-100k has no scenes of its own, so its 19 genres are grouped into six scenes
(:data:`ML100K_SCENES`); an item belongs to every scene one of its genres maps to, and a
rating happens in the scene of the item's first genre (the loader's rule for an
interaction without a scene). lastfm-2k has one scene, ``music``, and no time at all.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from scenerec.atomic import AtomicDataset, Edge, Interaction, ItemRecord, Triple, UserRecord
from scenerec.convert.common import ConvertError, Options, need, number, tsv_rows, whitespace_rows

#: Genre -> scene. Written down here, used by the converter and the docs.
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
#: lastfm-2k's only scene.
LASTFM_SCENE = "music"


def profile_text(age: str, gender: str, occupation: str) -> str:
    who = {"M": "man", "F": "woman"}.get(gender, "person")
    job = occupation if occupation not in ("none", "other") else "no stated occupation"
    return f"A {age} year old {who} working as {job}."


def ml100k(src: Path, options: Options, with_kg: bool = True) -> AtomicDataset:
    """RecBole's ml-100k folder -> titles with years, genre scenes, profile text, the KG."""
    items: list[ItemRecord] = []
    for r in tsv_rows(src / "ml-100k.item"):
        genres = r.get("class", "").split() or ["unknown"]
        scenes = tuple(dict.fromkeys(ML100K_SCENES.get(g, "drama") for g in genres))
        year = r.get("release_year", "").strip()
        title = f"{r['movie_title']} ({year})" if year else r["movie_title"]
        items.append(ItemRecord(r["item_id"], title, "Genres: " + ", ".join(genres), scenes))
    users = tuple(
        UserRecord(
            r["user_id"],
            profile_text(r["age"], r["gender"], r["occupation"]),
            (("age", r["age"]), ("gender", r["gender"]), ("occupation", r["occupation"])),
        )
        for r in tsv_rows(src / "ml-100k.user")
    )
    inter = tuple(
        Interaction(
            r["user_id"],
            r["item_id"],
            timestamp=float(r["timestamp"]),
            rating=float(r["rating"]),
        )
        for r in tsv_rows(src / "ml-100k.inter")
    )
    kg: tuple[Triple, ...] = ()
    links: tuple[tuple[str, str], ...] = ()
    if with_kg:
        kg = tuple(
            Triple(r["head_id"], r["relation_id"], r["tail_id"])
            for r in tsv_rows(src / "ml-100k.kg")
        )
        links = tuple((r["item_id"], r["entity_id"]) for r in tsv_rows(src / "ml-100k.link"))
    return AtomicDataset("ml-100k", inter, tuple(items), users, kg=kg, links=links)


def lastfm2k(src: Path, options: Options) -> AtomicDataset:
    """Artists (names as titles), listening pairs in file order, friendships."""
    items = tuple(
        ItemRecord(r["id"], r["name"], None, (LASTFM_SCENE,))
        for r in tsv_rows(src / "artists.dat")
        if r.get("name") is not None
    )
    known = {it.id for it in items}
    inter = tuple(
        Interaction(r["userID"], r["artistID"], weight=float(r["weight"]), kind="listen")
        for r in tsv_rows(src / "user_artists.dat")
        if r.get("weight") is not None and r["artistID"] in known
    )
    net = tuple(
        Edge(r["userID"], r["friendID"], kind="friend")
        for r in tsv_rows(src / "user_friends.dat")
        if r.get("friendID") is not None
    )
    return AtomicDataset("lastfm-2k", inter, items, net=net)


def yelp_core40(src: Path, options: Options) -> AtomicDataset:
    """Ratings (no time), categories as item text, gender as an attribute, friendships."""
    categories: dict[str, list[str]] = defaultdict(list)
    for _, (item, category) in whitespace_rows(need(src / "items.txt"), 2):
        categories[item].append(category.strip())
    ratings_path = need(src / "ratings.txt")
    inter = tuple(
        Interaction(user, item, rating=number(ratings_path, n, "rating", rating))
        for n, (user, item, rating) in whitespace_rows(ratings_path, 3)
    )
    rated = dict.fromkeys(i.item for i in inter)
    ordered = sorted(set(categories) | set(rated), key=_numeric_first)
    items = tuple(
        ItemRecord(
            item,
            None,
            ("Categories: " + ", ".join(categories[item])) if categories.get(item) else None,
            (options.scene,),
        )
        for item in ordered
    )
    users = tuple(
        UserRecord(user, None, (("gender", gender.strip()),))
        for _, (user, gender) in whitespace_rows(need(src / "users.txt"), 2)
    )
    net_path = need(src / "friendships.txt")
    net = []
    for n, (source, target, value) in whitespace_rows(net_path, 3):
        if number(net_path, n, "trust value", value) <= 0:
            raise ConvertError(f"{net_path}, line {n}: trust value {value!r} is not positive")
        net.append(Edge(source, target, kind="friend"))
    return AtomicDataset("yelp-core40", inter, items, users, tuple(net))


def _numeric_first(key: str) -> tuple[int, str]:
    return (int(key), "") if key.isdigit() else (1 << 62, key)

"""Sequence sources without time: S3-Rec's ``user item item ...`` lines and UniSRec's folders.

Both only know each user's order, so the atomic files carry an ``order`` column: the
position of the interaction in its user's sequence (1, 2, ...). The loader orders all
interactions by it (a stable sort: position 1 of every user, then position 2, ...), so a
replay walks the users' sequences side by side, and the leave-one-out split takes each
user's last two.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from scenerec.atomic import AtomicDataset, Interaction, ItemRecord, Triple
from scenerec.convert.common import ConvertError, Options, need, open_text

ATTRIBUTE = "attribute"
#: A UniSRec row: its file, line, the history (item indices) and the next item.
_Row = tuple[Path, int, list[str], str]


def _single(src: Path, pattern: str) -> Path:
    if src.is_file():
        return src
    found = sorted(src.glob(pattern))
    if len(found) != 1:
        raise ConvertError(f"{src}: expected one {pattern} file, found {len(found)}")
    return found[0]


def s3rec(src: Path, options: Options) -> AtomicDataset:
    """``user item_1 item_2 ...`` per line -> ordered interactions (+ attributes as a KG)."""
    path = _single(src, "*.txt")
    inter: list[Interaction] = []
    users: set[str] = set()
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise ConvertError(f"{path}, line {lineno}: a user with no item")
            if parts[0] in users:
                raise ConvertError(f"{path}, line {lineno}: user {parts[0]!r} appears twice")
            users.add(parts[0])
            inter.extend(
                Interaction(parts[0], item, order=float(k)) for k, item in enumerate(parts[1:], 1)
            )
    ids = sorted({i.item for i in inter}, key=_numeric_first)
    kg: list[Triple] = []
    links: list[tuple[str, str]] = []
    if options.attributes is not None:
        kg, links = _attributes(need(options.attributes))
    items = tuple(ItemRecord(i, scenes=(options.scene,)) for i in ids)
    return AtomicDataset(path.stem, tuple(inter), items, kg=tuple(kg), links=tuple(links))


def _attributes(path: Path) -> tuple[list[Triple], list[tuple[str, str]]]:
    """``{item: [attribute, ...]}`` -> triples ``(item, attribute, a<id>)`` and the links."""
    try:
        raw = json.loads(need(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConvertError(f"{path}, line {exc.lineno}: not JSON ({exc.msg})") from None
    if not isinstance(raw, dict):
        raise ConvertError(f"{path}: expected an object item id -> list of attribute ids")
    kg: list[Triple] = []
    links: list[tuple[str, str]] = []
    for item in sorted(raw, key=_numeric_first):
        values = raw[item]
        if not isinstance(values, list):
            raise ConvertError(f"{path}: item {item!r}: expected a list of attribute ids")
        links.append((item, item))
        kg.extend(Triple(item, ATTRIBUTE, f"a{v}") for v in values)
    return kg, links


def unisrec(src: Path, options: Options) -> AtomicDataset:
    """UniSRec's folder: ``NAME.{train,valid,test}.inter`` rows (history, next item) rebuilt
    into each user's sequence; items by their ASIN with ``NAME.text`` as their text."""
    name = _single(src, "*.text").stem
    item_of = _index(src / f"{name}.item2index")
    user_of = _index(src / f"{name}.user2index")
    texts = _texts(need(src / f"{name}.text"))
    rows: dict[str, list[_Row]] = defaultdict(list)
    for part in ("train", "valid", "test"):
        path = need(src / f"{name}.{part}.inter")
        user_rows: dict[str, list[_Row]] = defaultdict(list)
        for lineno, (user, history, target) in _tab_rows(path, 3, header=True):
            user_rows[user].append((path, lineno, history.split(), target))
        for user, found in user_rows.items():
            rows[user].extend(_ascending(found) if part == "train" else found)
    inter: list[Interaction] = []
    for user in sorted(rows, key=_numeric_first):
        for k, item in enumerate(_sequence(rows[user]), start=1):
            inter.append(
                Interaction(
                    _lookup(user_of, user, "user"), _lookup(item_of, item, "item"), order=float(k)
                )
            )
    items = tuple(
        ItemRecord(item_of[k], *_title_and_text(texts.get(item_of[k])), (options.scene,))
        for k in sorted(item_of, key=_numeric_first)
    )
    return AtomicDataset(name, tuple(inter), items)


def _ascending(rows: list[_Row]) -> list[_Row]:
    """A user's train rows in sequence order: UniSRec writes them longest history first."""
    backwards = rows[::-1]
    try:
        _sequence(backwards)
    except ConvertError:
        return rows  # in order already (or inconsistent: _sequence reports where)
    return backwards


def _sequence(rows: list[_Row]) -> list[str]:
    """A user's items: the first row's history, then each row's next item, every row's
    history being the end of what came before (histories are cut to their last items)."""
    seq = list(rows[0][2])
    for path, lineno, history, target in rows:
        if history != seq[len(seq) - len(history) :]:
            raise ConvertError(
                f"{path}, line {lineno}: item_id_list does not continue the user's earlier rows"
            )
        seq.append(target)
    return seq


def _tab_rows(path: Path, n: int, header: bool) -> Iterator[tuple[int, list[str]]]:
    """``(line number, fields)`` of a tab-separated file of exactly ``n`` fields a line."""
    with open_text(path) as fh:
        if header:
            next(fh, None)
        for lineno, line in enumerate(fh, start=2 if header else 1):
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) != n:
                raise ConvertError(f"{path}, line {lineno}: {len(fields)} fields, expected {n}")
            yield lineno, fields


def _index(path: Path) -> dict[str, str]:
    """``NAME.item2index``: ``id<TAB>index`` -> index -> id."""
    return {index: key for _, (key, index) in _tab_rows(path, 2, header=False)}


def _lookup(index: dict[str, str], key: str, what: str) -> str:
    try:
        return index[key]
    except KeyError:
        raise ConvertError(f"{what} index {key!r} is not in the {what}2index file") from None


def _texts(path: Path) -> dict[str, str]:
    return {item: text.strip() for _, (item, text) in _tab_rows(path, 2, header=True)}


def _title_and_text(text: str | None) -> tuple[str | None, str | None]:
    """``title. categories. brand.`` -> the title, and the rest as the item's text."""
    if not text:
        return None, None
    title, _, rest = text.partition(". ")
    return title.strip() or None, rest.strip().rstrip(".").strip() or None


def _numeric_first(key: str) -> tuple[int, str]:
    return (int(key), "") if key.isdigit() else (1 << 62, key)

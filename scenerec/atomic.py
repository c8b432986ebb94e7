"""RecBole atomic files: the on-disk format every data set is converted to.

A data set is a folder ``DIR`` holding ``NAME.inter`` (required) and, optionally,
``NAME.item``, ``NAME.user``, ``NAME.net``, ``NAME.kg`` + ``NAME.link``. Each file is
tab-separated text with a header of ``column:type`` fields (types ``token``,
``token_seq``, ``float``, ``float_seq``), one record per line, as RecBole reads them.
``docs/data-format.md`` lists the columns this project reads and has a complete example.

Every error names the file, the line and the column (:class:`AtomicError`), so a
malformed line in a million-line file is found at once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

TYPES = ("token", "token_seq", "float", "float_seq")
#: File -> (required columns, optional columns), each ``name: type``. Unknown columns of
#: ``.user`` are the user's attributes; elsewhere they are ignored (and logged).
COLUMNS: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "inter": (
        {"user_id": "token", "item_id": "token"},
        {
            "timestamp": "float",
            "order": "float",
            "rating": "float",
            "weight": "float",
            "scene": "token",
            "kind": "token",
            "text": "token_seq",
        },
    ),
    "item": (
        {"item_id": "token"},
        {"title": "token_seq", "text": "token_seq", "scenes": "token_seq"},
    ),
    "user": ({"user_id": "token"}, {"profile_text": "token_seq"}),
    "net": (
        {"source": "token", "target": "token"},
        {"timestamp": "float", "kind": "token"},
    ),
    "kg": ({"head_id": "token", "relation_id": "token", "tail_id": "token"}, {}),
    "link": ({"item_id": "token", "entity_id": "token"}, {}),
}
#: RecBole's own names for the social file's columns, read as ``source`` / ``target``.
ALIASES = {"net": {"source_id": "source", "target_id": "target"}}


class AtomicError(ValueError):
    """A missing or malformed atomic file; the message names file, line and column."""

    def __init__(
        self, path: Path, message: str, line: int | None = None, column: str | None = None
    ) -> None:
        where = str(path) if line is None else f"{path}, line {line}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {message}")
        self.path, self.line, self.column = path, line, column


@dataclass(frozen=True, slots=True)
class Interaction:
    """One line of ``NAME.inter``; absent optional columns are None."""

    user: str
    item: str
    timestamp: float | None = None
    order: float | None = None
    rating: float | None = None
    weight: float | None = None
    scene: str | None = None
    kind: str | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True)
class ItemRecord:
    id: str
    title: str | None = None
    text: str | None = None
    scenes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: str
    profile_text: str | None = None
    attributes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    timestamp: float | None = None
    kind: str | None = None


@dataclass(frozen=True, slots=True)
class Triple:
    head: str
    relation: str
    tail: str


@dataclass(frozen=True)
class AtomicDataset:
    """Everything one folder of atomic files holds, in file order."""

    name: str
    interactions: tuple[Interaction, ...]
    items: tuple[ItemRecord, ...] = ()
    users: tuple[UserRecord, ...] = ()
    net: tuple[Edge, ...] = ()
    kg: tuple[Triple, ...] = ()
    #: ``(item_id, entity_id)`` pairs of ``NAME.link``.
    links: tuple[tuple[str, str], ...] = ()


# --- reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Header:
    names: tuple[str, ...]
    types: tuple[str, ...]


def _header(path: Path, line: str, kind: str) -> _Header:
    names: list[str] = []
    types: list[str] = []
    required, optional = COLUMNS[kind]
    aliases = ALIASES.get(kind, {})
    for field_ in line.rstrip("\r\n").split("\t"):
        name, sep, typ = field_.partition(":")
        name = aliases.get(name, name)
        if not sep or not name:
            raise AtomicError(path, f"header field {field_!r} is not 'name:type'", 1, field_)
        if typ not in TYPES:
            raise AtomicError(
                path, f"unknown type {typ!r} (use one of {', '.join(TYPES)})", 1, name
            )
        want = required.get(name) or optional.get(name)
        if want is not None and typ != want:
            raise AtomicError(path, f"must be of type {want}, the header says {typ}", 1, name)
        if name in names:
            raise AtomicError(path, "appears twice in the header", 1, name)
        names.append(name)
        types.append(typ)
    if kind == "inter" and "timestamp" in names and "order" in names:
        raise AtomicError(path, "has both a timestamp and an order column: keep one", 1, "order")
    missing = [c for c in required if c not in names]
    if missing:
        raise AtomicError(
            path, f"required column(s) {', '.join(missing)} missing from the header", 1
        )
    return _Header(tuple(names), tuple(types))


Row = dict[str, str | float | tuple[str, ...] | tuple[float, ...]]


def _value(
    path: Path, lineno: int, name: str, typ: str, raw: str
) -> str | float | tuple[str, ...] | tuple[float, ...]:
    if typ == "token":
        return raw
    if typ == "token_seq":
        return tuple(raw.split(" ")) if raw else ()
    parts = raw.split(" ") if typ == "float_seq" else [raw]
    values: list[float] = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise AtomicError(path, f"{part!r} is not a number", lineno, name) from None
        if not math.isfinite(value):
            raise AtomicError(path, f"{part!r} is not a finite number", lineno, name)
        values.append(value)
    return tuple(values) if typ == "float_seq" else values[0]


def read_table(path: Path, kind: str) -> tuple[tuple[str, ...], Iterator[tuple[int, Row]]]:
    """``(columns, rows)`` of one atomic file; rows are ``(line number, {column: value})``.

    A required token may not be empty; an empty optional field is absent. Blank lines are
    skipped (RecBole's files end with one).
    """
    if not path.is_file():
        raise AtomicError(path, "file not found")
    fh = path.open(encoding="utf-8", newline="")
    try:
        first = fh.readline()
        if not first.strip():
            raise AtomicError(path, "empty file: the first line must be the header", 1)
        header = _header(path, first, kind)
    except UnicodeDecodeError as exc:
        fh.close()
        raise AtomicError(path, f"not UTF-8 text ({exc.reason})", 1) from None
    except AtomicError:
        fh.close()
        raise
    return header.names, _rows(path, fh, header, set(COLUMNS[kind][0]))


def _rows(
    path: Path, fh: Iterable[str], header: _Header, required: set[str]
) -> Iterator[tuple[int, Row]]:
    n = len(header.names)
    with fh:  # type: ignore[attr-defined]
        lineno = 1
        try:
            for lineno, line in enumerate(fh, start=2):
                text = line.rstrip("\r\n")
                if not text.strip():
                    continue
                fields = text.split("\t")
                if len(fields) > n:
                    raise AtomicError(
                        path, f"{len(fields)} fields, the header has {n}", lineno, f"#{n + 1}"
                    )
                if len(fields) < n:
                    # Trailing optional fields may be left off (an editor trims the tabs);
                    # a missing required one is an error.
                    lacking = [c for c in header.names[len(fields) :] if c in required]
                    if lacking:
                        raise AtomicError(
                            path,
                            f"missing (line has {len(fields)} of {n} fields)",
                            lineno,
                            lacking[0],
                        )
                    fields += [""] * (n - len(fields))
                row: Row = {}
                for name, typ, raw in zip(header.names, header.types, fields, strict=True):
                    if raw == "":
                        if name in required:
                            raise AtomicError(
                                path, "empty, but the column is required", lineno, name
                            )
                        continue
                    row[name] = _value(path, lineno, name, typ, raw)
                yield lineno, row
        except UnicodeDecodeError as exc:
            raise AtomicError(path, f"not UTF-8 text ({exc.reason})", lineno + 1) from None


def find_name(folder: Path) -> str:
    """The data set's ``NAME``: the stem of the folder's one ``*.inter`` file."""
    if not folder.is_dir():
        raise AtomicError(folder, "not a folder (expected a folder of atomic files)")
    inters = sorted(p for p in folder.glob("*.inter") if p.is_file())
    if not inters:
        raise AtomicError(folder, "no NAME.inter file in this folder")
    if len(inters) > 1:
        names = ", ".join(p.name for p in inters)
        raise AtomicError(folder, f"several .inter files ({names}): keep one data set per folder")
    return inters[0].stem


def _text(row: Row, name: str) -> str | None:
    value = row.get(name)
    if value is None:
        return None
    return " ".join(value) if isinstance(value, tuple) else str(value)  # type: ignore[arg-type]


def _float(row: Row, name: str) -> float | None:
    value = row.get(name)
    return None if value is None else float(value)  # type: ignore[arg-type]


def _read_inter(path: Path) -> list[Interaction]:
    names, rows = read_table(path, "inter")
    out = [
        Interaction(
            user=str(row["user_id"]),
            item=str(row["item_id"]),
            timestamp=_float(row, "timestamp"),
            order=_float(row, "order"),
            rating=_float(row, "rating"),
            weight=_float(row, "weight"),
            scene=_text(row, "scene"),
            kind=_text(row, "kind"),
            text=_text(row, "text"),
        )
        for _, row in rows
    ]
    for col in ("timestamp", "order"):
        if col in names:
            _all_or_none(path, [getattr(i, col) for i in out], col)
    _ignored(path, names, "inter")
    return out


def _all_or_none(path: Path, values: Sequence[float | None], column: str) -> None:
    """An ordering column must be filled on every line, or the order is undefined."""
    for k, value in enumerate(values):
        if value is None:
            raise AtomicError(
                path, "empty: every interaction needs it to be ordered", k + 2, column
            )


def _read_items(path: Path) -> list[ItemRecord]:
    names, rows = read_table(path, "item")
    out: list[ItemRecord] = []
    seen: set[str] = set()
    for lineno, row in rows:
        item = str(row["item_id"])
        if item in seen:
            raise AtomicError(path, f"item {item!r} is listed twice", lineno, "item_id")
        seen.add(item)
        scenes = row.get("scenes", ())
        out.append(
            ItemRecord(item, _text(row, "title"), _text(row, "text"), tuple(scenes))  # type: ignore[arg-type]
        )
    _ignored(path, names, "item")
    return out


def _read_users(path: Path) -> list[UserRecord]:
    names, rows = read_table(path, "user")
    out: list[UserRecord] = []
    for _, row in rows:
        attrs = tuple(
            (k, _text(row, k) or "")
            for k in names
            if k not in ("user_id", "profile_text") and k in row
        )
        out.append(UserRecord(str(row["user_id"]), _text(row, "profile_text"), attrs))
    return out


def _ignored(path: Path, names: Sequence[str], kind: str) -> None:
    required, optional = COLUMNS[kind]
    extra = [n for n in names if n not in required and n not in optional]
    if extra:
        log.info("%s: columns %s are not used", path, ", ".join(extra))


def read_dataset(folder: Path) -> AtomicDataset:
    """Read every atomic file of ``folder`` (``NAME.inter`` required, the rest optional)."""
    name = find_name(folder)
    inters = _read_inter(folder / f"{name}.inter")
    items: list[ItemRecord] = []
    users: list[UserRecord] = []
    net: list[Edge] = []
    kg: list[Triple] = []
    links: list[tuple[str, str]] = []
    if (folder / f"{name}.item").is_file():
        items = _read_items(folder / f"{name}.item")
    if (folder / f"{name}.user").is_file():
        users = _read_users(folder / f"{name}.user")
    if (folder / f"{name}.net").is_file():
        _, rows = read_table(folder / f"{name}.net", "net")
        net = [
            Edge(str(r["source"]), str(r["target"]), _float(r, "timestamp"), _text(r, "kind"))
            for _, r in rows
        ]
    has_kg, has_link = (folder / f"{name}.kg").is_file(), (folder / f"{name}.link").is_file()
    if has_kg != has_link:
        missing = f"{name}.link" if has_kg else f"{name}.kg"
        raise AtomicError(
            folder / missing, "file not found: a knowledge graph needs both .kg and .link"
        )
    if has_kg:
        _, rows = read_table(folder / f"{name}.kg", "kg")
        kg = [Triple(str(r["head_id"]), str(r["relation_id"]), str(r["tail_id"])) for _, r in rows]
        _, rows = read_table(folder / f"{name}.link", "link")
        links = [(str(r["item_id"]), str(r["entity_id"])) for _, r in rows]
    return AtomicDataset(
        name, tuple(inters), tuple(items), tuple(users), tuple(net), tuple(kg), tuple(links)
    )


# --- writing ---------------------------------------------------------------------------------


def _clean(value: str) -> str:
    """Tabs and line breaks would split a field or a record: they become spaces."""
    return " ".join(value.replace("\t", " ").replace("\r", " ").replace("\n", " ").split(" "))


def _fmt(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
    if isinstance(value, tuple):
        return " ".join(_clean(str(v)) for v in value)
    return _clean(str(value))


def write_table(
    path: Path, header: Sequence[tuple[str, str]], rows: Iterable[Sequence[object]]
) -> int:
    """One atomic file; ``header`` is ``(name, type)`` pairs. Returns the number of rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        fh.write("\t".join(f"{name}:{typ}" for name, typ in header) + "\n")
        for row in rows:
            fh.write("\t".join(_fmt(v) for v in row) + "\n")
            n += 1
    tmp.replace(path)
    return n


def _used(records: Sequence[object], names: Sequence[str]) -> list[str]:
    """The optional columns at least one record fills (the others are not written)."""
    return [n for n in names if any(getattr(r, n) is not None for r in records)]


_INTER_OPTIONAL = ("timestamp", "order", "rating", "weight", "scene", "kind", "text")


def write_dataset(data: AtomicDataset, folder: Path) -> dict[str, int]:
    """Write ``data`` as atomic files into ``folder``; returns rows written per file."""
    name = data.name
    out: dict[str, int] = {}
    types = COLUMNS["inter"][1]
    cols = _used(data.interactions, _INTER_OPTIONAL)
    out[f"{name}.inter"] = write_table(
        folder / f"{name}.inter",
        [("user_id", "token"), ("item_id", "token"), *((c, types[c]) for c in cols)],
        ([i.user, i.item, *(getattr(i, c) for c in cols)] for i in data.interactions),
    )
    if data.items:
        cols = _used(data.items, ("title", "text"))
        scenes = any(it.scenes for it in data.items)
        out[f"{name}.item"] = write_table(
            folder / f"{name}.item",
            [("item_id", "token"), *((c, "token_seq") for c in cols)]
            + ([("scenes", "token_seq")] if scenes else []),
            (
                [it.id, *(getattr(it, c) for c in cols), *([it.scenes] if scenes else [])]
                for it in data.items
            ),
        )
    if data.users:
        attrs = list(dict.fromkeys(k for u in data.users for k, _ in u.attributes))
        text = any(u.profile_text is not None for u in data.users)
        out[f"{name}.user"] = write_table(
            folder / f"{name}.user",
            [("user_id", "token")]
            + ([("profile_text", "token_seq")] if text else [])
            + [(a, "token") for a in attrs],
            (
                [
                    u.id,
                    *([u.profile_text] if text else []),
                    *(dict(u.attributes).get(a) for a in attrs),
                ]
                for u in data.users
            ),
        )
    if data.net:
        cols = _used(data.net, ("timestamp", "kind"))
        types = COLUMNS["net"][1]
        out[f"{name}.net"] = write_table(
            folder / f"{name}.net",
            [("source", "token"), ("target", "token"), *((c, types[c]) for c in cols)],
            ([e.source, e.target, *(getattr(e, c) for c in cols)] for e in data.net),
        )
    if data.kg:
        out[f"{name}.kg"] = write_table(
            folder / f"{name}.kg",
            [("head_id", "token"), ("relation_id", "token"), ("tail_id", "token")],
            ([t.head, t.relation, t.tail] for t in data.kg),
        )
        out[f"{name}.link"] = write_table(
            folder / f"{name}.link", [("item_id", "token"), ("entity_id", "token")], data.links
        )
    return out

"""Amazon review JSON lines (McAuley's 2014/2018 dumps): each review a comment with its text.

Fields read: ``reviewerID``, ``asin``, ``unixReviewTime`` (required), ``overall`` (the
rating), ``summary`` and ``reviewText`` (the comment: ``summary. reviewText``). The dumps
repeat some reviews verbatim; a repeat of the same user, item, time and text is kept
once. Items have no text of their own here (the dumps' metadata is a separate file).
"""

from __future__ import annotations

import json
from pathlib import Path

from scenerec.atomic import AtomicDataset, Interaction, ItemRecord
from scenerec.convert.common import ConvertError, Options, open_text

COMMENT = "comment"


def amazon_reviews(src: Path, options: Options) -> AtomicDataset:
    path = _single(src)
    inter: list[Interaction] = []
    seen: set[tuple[str, str, float, str | None]] = set()
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            review = _review(path, lineno, line)
            key = (review.user, review.item, review.timestamp or 0.0, review.text)
            if key not in seen:
                seen.add(key)
                inter.append(review)
    items = tuple(
        ItemRecord(item, scenes=(options.scene,)) for item in dict.fromkeys(i.item for i in inter)
    )
    name = path.name.split(".")[0]
    return AtomicDataset(name, tuple(inter), items)


def _single(src: Path) -> Path:
    if src.is_file():
        return src
    found = sorted([*src.glob("*.json"), *src.glob("*.json.gz"), *src.glob("*.jsonl")])
    if len(found) != 1:
        raise ConvertError(f"{src}: expected one .json/.json.gz/.jsonl file, found {len(found)}")
    return found[0]


def _review(path: Path, lineno: int, line: str) -> Interaction:
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConvertError(f"{path}, line {lineno}: not JSON ({exc.msg})") from None
    if not isinstance(raw, dict):
        raise ConvertError(f"{path}, line {lineno}: expected a JSON object")
    for key in ("reviewerID", "asin", "unixReviewTime"):
        if raw.get(key) in (None, ""):
            raise ConvertError(f"{path}, line {lineno}: field {key!r} is missing")
    try:
        timestamp = float(raw["unixReviewTime"])
        rating = None if raw.get("overall") is None else float(raw["overall"])
    except (TypeError, ValueError):
        raise ConvertError(
            f"{path}, line {lineno}: unixReviewTime/overall is not a number"
        ) from None
    parts = [str(raw[k]).strip() for k in ("summary", "reviewText") if raw.get(k)]
    text = ". ".join(p for p in parts if p) or None
    return Interaction(
        str(raw["reviewerID"]),
        str(raw["asin"]),
        timestamp=timestamp,
        rating=rating,
        kind=COMMENT if text else None,
        text=text,
    )

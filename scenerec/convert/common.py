"""What every converter shares: options, the error type, reading a source's lines."""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

#: The scene of data sets that have none of their own (Amazon, Yelp): one of the scenes
#: the worker declares by default (``SCENEREC_SCENES``).
DEFAULT_SCENE = "ecommerce"


class ConvertError(ValueError):
    """A source file is missing or malformed; the message names file and line."""


@dataclass(frozen=True)
class Options:
    #: The data set's NAME (the atomic files' stem); None: the destination folder's name.
    name: str | None = None
    #: Scene of every item of a data set without scenes.
    scene: str = DEFAULT_SCENE
    #: s3rec: item id -> attribute ids (JSON), written as a knowledge graph.
    attributes: Path | None = None


def need(path: Path) -> Path:
    if not path.is_file():
        raise ConvertError(f"{path}: file not found")
    return path


def open_text(path: Path) -> IO[str]:
    """A text file, gzip-compressed or not (by its name)."""
    need(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8", newline="")


def tsv_rows(path: Path) -> Iterator[dict[str, str]]:
    """Rows of a tab-separated file with a header line (field types after ``:`` dropped).

    A short row lacks the trailing keys, which callers test for (as ml-100k's own loader
    always did); undecodable bytes are replaced rather than fatal.
    """
    with need(path).open(encoding="utf-8", errors="replace", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.split(":", 1)[0] for h in next(reader)]
        for row in reader:
            if row:
                yield dict(zip(header, row, strict=False))


def whitespace_rows(path: Path, fields: int) -> Iterator[tuple[int, list[str]]]:
    """``(line number, fields)`` of a headerless whitespace-separated file with at least
    ``fields`` fields per line (the last one keeps its inner spaces)."""
    with open_text(path) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\r\n").split(None, fields - 1)
            if len(parts) < fields:
                raise ConvertError(f"{path}, line {lineno}: {len(parts)} fields, expected {fields}")
            yield lineno, parts


def number(path: Path, lineno: int, what: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ConvertError(f"{path}, line {lineno}: {what} {raw!r} is not a number") from None

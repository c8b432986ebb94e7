"""``scenerec convert FORMAT SRC DST_DIR``: source formats -> RecBole atomic files.

One converter per format of ``../shared/data/`` (and of the many data sets published in
the same shapes); each returns an :class:`~scenerec.atomic.AtomicDataset`, which
:func:`~scenerec.atomic.write_dataset` writes. The harness, ``scenerec load`` and the
demo read the same in-memory form, so a data set evaluated from its atomic files is the
one the loaders built in code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from scenerec.atomic import AtomicDataset, write_dataset
from scenerec.convert import ratings, reviews, sequences
from scenerec.convert.common import ConvertError, Options


@dataclass(frozen=True)
class Format:
    convert: Callable[[Path, Options], AtomicDataset]
    help: str


FORMATS: dict[str, Format] = {
    "ml-100k": Format(
        ratings.ml100k,
        "MovieLens 100K as RecBole ships it (a folder with ml-100k.inter/.item/.user/.kg/.link): "
        "genres grouped into scenes, titles with years, profile text from age/gender/occupation",
    ),
    "lastfm-2k": Format(
        ratings.lastfm2k,
        "HetRec 2011 Last.fm (a folder with user_artists.dat, artists.dat, user_friends.dat): "
        "listening counts as weights, no time, friendships as the social graph",
    ),
    "s3rec": Format(
        sequences.s3rec,
        "one 'user item item ...' line per user in time order (S3-Rec's Beauty.txt, Yelp.txt; "
        "a file, or a folder holding one .txt); --attributes FILE.json adds item -> attribute "
        "ids as a knowledge graph",
    ),
    "unisrec": Format(
        sequences.unisrec,
        "UniSRec's folder (NAME.text, NAME.item2index, NAME.user2index, "
        "NAME.{train,valid,test}.inter): the sequences rebuilt, item text kept",
    ),
    "yelp-core40": Format(
        ratings.yelp_core40,
        "the yelp_core40 folder (ratings.txt, friendships.txt, items.txt, users.txt): "
        "ratings without time, friendships as the social graph, categories as item text",
    ),
    "amazon-reviews": Format(
        reviews.amazon_reviews,
        "Amazon review JSON lines (.json or .json.gz: reviewerID, asin, overall, reviewText, "
        "summary, unixReviewTime): each distinct review a comment with its text",
    ),
}


def convert(fmt: str, src: Path, dst: Path, options: Options) -> dict[str, int]:
    """Convert ``src`` (format ``fmt``) into atomic files under ``dst``; rows per file."""
    try:
        spec = FORMATS[fmt]
    except KeyError:
        raise ConvertError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}") from None
    if not src.exists():
        raise ConvertError(f"{src}: not found")
    data = spec.convert(src, options)
    return write_dataset(replace(data, name=options.name or dst.name or data.name), dst)


__all__ = ["FORMATS", "ConvertError", "Format", "Options", "convert"]

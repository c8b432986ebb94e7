"""RecBole atomic files: reading with file/line/column errors, writing, the converters."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from evaluation.data import load_folder, load_ml100k, split_loo
from scenerec.atomic import AtomicError, read_dataset
from scenerec.cli import main as cli
from scenerec.convert import ConvertError, Options, convert
from scenerec.datasets import DatasetError, check_scenes
from scenerec.datasets import load_folder as load_records
from tests.unit.helpers.files import write

DATA_DIR = Path(os.environ.get("SCENEREC_DATA_DIR", "../shared/data"))


def inter(tmp_path: Path, body: str, header: str = "user_id:token\titem_id:token") -> Path:
    write(tmp_path / "d" / "d.inter", header + "\n" + body)
    return tmp_path / "d"


# --- reading ---------------------------------------------------------------------------------


def test_a_minimal_folder_needs_only_users_and_items(tmp_path: Path) -> None:
    folder = inter(tmp_path, "u1\ti1\nu1\ti2\nu2\ti1\n")
    data = read_dataset(folder)
    assert [(i.user, i.item) for i in data.interactions] == [
        ("u1", "i1"),
        ("u1", "i2"),
        ("u2", "i1"),
    ]
    ds = load_folder(folder)
    assert [it.id for it in ds.items] == ["i1", "i2"]
    assert ds.clock == "none"
    assert ds.items[0].text == ""  # no title, no text: no text vector


@pytest.mark.parametrize(
    ("header", "body", "expected"),
    [
        ("user_id:token\titem_id:token", "u1\n", "d.inter, line 2, column 'item_id': missing"),
        ("user_id:token\titem_id:token", "u1\ti1\tx\n", "d.inter, line 2, column '#3'"),
        ("user_id:token\titem_id:token", "u1\ti1\n\t i2\n", "line 3, column 'user_id': empty"),
        (
            "user_id:token\titem_id:token\ttimestamp:float",
            "u1\ti1\t12\nu1\ti2\tyesterday\n",
            "d.inter, line 3, column 'timestamp': 'yesterday' is not a number",
        ),
        ("user_id:token\titem_id:token\ttimestamp:float", "u1\ti1\tnan\n", "not a finite number"),
        ("user_id:token\titem_id:token\ttimestamp:token", "u1\ti1\t1\n", "must be of type float"),
        ("user_id:token\titem:token", "u1\ti1\n", "required column(s) item_id missing"),
        ("user_id:token\titem_id", "u1\ti1\n", "line 1, column 'item_id': header field"),
        ("user_id:token\titem_id:int", "u1\ti1\n", "unknown type 'int'"),
        (
            "user_id:token\titem_id:token\ttimestamp:float\torder:float",
            "u1\ti1\t1\t1\n",
            "both a timestamp and an order column",
        ),
        (
            "user_id:token\titem_id:token\torder:float",
            "u1\ti1\t1\nu1\ti2\t\n",
            "line 3, column 'order'",
        ),
    ],
)
def test_a_malformed_file_names_its_line_and_column(
    tmp_path: Path, header: str, body: str, expected: str
) -> None:
    folder = inter(tmp_path, body, header)
    with pytest.raises(AtomicError) as err:
        read_dataset(folder)
    assert expected in str(err.value)


def test_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(AtomicError, match=r"no NAME\.inter"):
        read_dataset(write(tmp_path / "e" / "readme.txt", "x").parent)
    folder = inter(tmp_path, "u1\ti1\n")
    write(folder / "d.kg", "head_id:token\trelation_id:token\ttail_id:token\ne1\tr\te2\n")
    with pytest.raises(AtomicError, match=r"d\.link: file not found"):
        read_dataset(folder)


def test_optional_files_and_recbole_social_names(tmp_path: Path) -> None:
    folder = inter(
        tmp_path,
        "u1\ti1\t1\tshop\nu2\ti2\t2\t\n",
        "user_id:token\titem_id:token\ttimestamp:float\tscene:token",
    )
    write(
        folder / "d.item",
        "item_id:token\ttitle:token_seq\tscenes:token_seq\n"
        "i1\tRed shoe\tshop\ni2\tBlue hat\thats\n",
    )
    write(
        folder / "d.user", "user_id:token\tprofile_text:token_seq\tage:token\nu1\tLikes shoes\t30\n"
    )
    write(folder / "d.net", "source_id:token\ttarget_id:token\nu1\tu2\n")
    ds = load_folder(folder)
    assert [e.scene for e in ds.events] == ["shop", "hats"]  # an unscened event: its item's
    assert ds.items[0].text == "Red shoe. Genres: shop"
    assert ds.profiles["u1"].attributes == (("age", "30"),)
    assert [(e.source, e.target) for e in ds.social] == [("u1", "u2")]


def test_events_are_ordered_by_time_then_order_stably(tmp_path: Path) -> None:
    folder = inter(
        tmp_path,
        "u1\ta\t5\nu2\tb\t1\nu1\tc\t1\nu2\td\t2\n",
        "user_id:token\titem_id:token\torder:float",
    )
    ds = load_folder(folder)
    assert [e.item for e in ds.events] == ["b", "c", "d", "a"]
    assert [e.timestamp for e in ds.events] == [0.0, 1.0, 2.0, 3.0]  # event steps
    loo = load_folder(folder, "loo")
    assert [e.item for e in loo.split.test] == ["d", "a"]
    assert [e.item for e in loo.split.valid] == ["b", "c"]


def test_split_loo_keeps_the_last_two_events_of_each_user() -> None:
    ds = load_ml100k(DATA_DIR, with_kg=False)
    split = split_loo(ds.events)
    users = {e.user for e in ds.events}
    assert len(split.test) == len(users) == len(split.valid)
    last = {e.user: e for e in ds.events}
    assert {(e.user, e.item) for e in split.test} == {(e.user, e.item) for e in last.values()}
    assert len(split.train) + len(split.valid) + len(split.test) == len(ds.events)


# --- writing and converting -----------------------------------------------------------------


def test_ml100k_through_atomic_files_is_the_built_in_data_set(tmp_path: Path) -> None:
    written = convert("ml-100k", DATA_DIR / "ml-100k", tmp_path / "ml-100k", Options())
    assert written["ml-100k.inter"] == 100_000
    assert written["ml-100k.kg"] == 91_631
    again, built = load_folder(tmp_path / "ml-100k"), load_ml100k(DATA_DIR)
    assert again.items == built.items
    assert again.split == built.split
    assert again.profiles == built.profiles


def test_s3rec_sequences_and_attributes(tmp_path: Path) -> None:
    src = write(tmp_path / "Toy.txt", "1 1 2 3\n2 2 3 1 4\n")
    attrs = write(tmp_path / "attrs.json", json.dumps({"1": [7, 8], "3": [7]}))
    convert("s3rec", src, tmp_path / "toy", Options(attributes=attrs))
    ds = load_folder(tmp_path / "toy", "loo")
    assert ds.clock == "order"
    assert [(e.user, e.item) for e in ds.split.test] == [("1", "3"), ("2", "4")]
    assert [(e.user, e.item) for e in ds.split.valid] == [("1", "2"), ("2", "1")]
    rel = {it.id: it.relations for it in ds.items}
    assert rel["1"] == (("attribute", "a7"), ("attribute", "a8"))
    assert rel["2"] == ()
    assert {it.scenes for it in ds.items} == {("ecommerce",)}
    with pytest.raises(ConvertError, match=r"Bad.txt, line 2: user '1' appears twice"):
        convert("s3rec", write(tmp_path / "Bad.txt", "1 1 2\n1 3\n"), tmp_path / "bad", Options())


def test_unisrec_rebuilds_each_sequence(tmp_path: Path) -> None:
    src = tmp_path / "uni"
    write(
        src / "S.text",
        "item_id:token\ttext:token_seq\nA1\tRed shoe. Shoes. Acme. \nB2\tHat. Hats. \nC3\tSock. \n",
    )
    write(src / "S.item2index", "A1\t0\nB2\t1\nC3\t2\n")
    write(src / "S.user2index", "R9\t0\n")
    head = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    # Longest history first, as UniSRec writes train rows.
    write(src / "S.train.inter", head + "0\t0 1\t2\n0\t0\t1\n")
    write(src / "S.valid.inter", head + "0\t0 1 2\t0\n")
    write(src / "S.test.inter", head + "0\t1 2 0\t1\n")  # history cut to its last 3
    convert("unisrec", src, tmp_path / "sci", Options())
    ds = load_folder(tmp_path / "sci", "loo")
    assert [e.item for e in ds.events] == ["A1", "B2", "C3", "A1", "B2"]
    assert ds.split.test[0].user == "R9"
    assert ds.items[0].title == "Red shoe"
    assert ds.items[0].text == "Red shoe. Shoes. Acme. Genres: ecommerce"
    write(src / "S.test.inter", head + "0\t2 2\t1\n")
    with pytest.raises(ConvertError, match=r"S.test.inter, line 2: item_id_list does not"):
        convert("unisrec", src, tmp_path / "sci2", Options())


def test_amazon_reviews_are_comments_once(tmp_path: Path) -> None:
    review = {
        "reviewerID": "R1",
        "asin": "X",
        "overall": 4.0,
        "summary": "Nice",
        "reviewText": "Smells good",
        "unixReviewTime": 100,
    }
    lines = [review, review, {**review, "asin": "Y", "unixReviewTime": 50}]
    src = tmp_path / "All.json.gz"
    with gzip.open(src, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(json.dumps(r) for r in lines) + "\n")
    convert("amazon-reviews", src, tmp_path / "rev", Options())
    ds = load_folder(tmp_path / "rev")
    assert [(e.item, e.kind, e.text) for e in ds.events] == [
        ("Y", "comment", "Nice. Smells good"),
        ("X", "comment", "Nice. Smells good"),
    ]
    with gzip.open(src, "wt", encoding="utf-8") as fh:
        fh.write('{"reviewerID": "R1", "asin": "X"}\n')
    with pytest.raises(ConvertError, match=r"line 1: field 'unixReviewTime' is missing"):
        convert("amazon-reviews", src, tmp_path / "rev2", Options())


def test_yelp_core40_ratings_categories_and_friends(tmp_path: Path) -> None:
    src = tmp_path / "y"
    write(src / "ratings.txt", "1\t10\t4\n2\t10\t5\n2\t11\t3\n")
    write(src / "items.txt", "10\tBars\n10\tFood\n11\tTacos\n")
    write(src / "users.txt", "1\tF\n2\tM\n")
    write(src / "friendships.txt", "1\t2\t1\n")
    convert("yelp-core40", src, tmp_path / "yc", Options())
    ds = load_folder(tmp_path / "yc")
    assert {it.id: it.title for it in ds.items} == {
        "10": "Categories: Bars, Food",
        "11": "Categories: Tacos",
    }
    assert [(e.source, e.target, e.kind) for e in ds.social] == [("1", "2", "friend")]
    write(src / "ratings.txt", "1\t10\tfour\n")
    with pytest.raises(ConvertError, match=r"ratings.txt, line 1: rating 'four'"):
        convert("yelp-core40", src, tmp_path / "yc2", Options())


def test_cli_convert_and_the_records_load_publishes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write(tmp_path / "Toy.txt", "1 1 2 3\n2 2 3\n")
    assert cli(["convert", "s3rec", str(src), str(tmp_path / "toy")]) == 0
    assert "toy.inter (5 rows)" in capsys.readouterr().out
    data = load_records(tmp_path / "toy")
    assert [c["item_id"] for c in data.clicks] == ["1", "2", "2", "3", "3"]
    check_scenes(data, ("ecommerce",))
    with pytest.raises(DatasetError, match="not declared: add them to SCENEREC_SCENES"):
        check_scenes(data, ("music",))
    assert cli(["convert", "s3rec", str(tmp_path / "none.txt"), str(tmp_path / "x")]) == 1


def test_the_example_of_the_docs_loads(tmp_path: Path) -> None:
    doc = (Path(__file__).parents[3] / "docs" / "data-format.md").read_text(encoding="utf-8")
    for name in ("shop.inter", "shop.item", "shop.user", "shop.net"):
        block = doc.split(f"`shop/{name}`:\n\n```\n", 1)[1].split("```", 1)[0]
        write(tmp_path / "shop" / name, block)
    ds = load_folder(tmp_path / "shop")
    assert [e.kind for e in ds.events] == ["click", "comment", "click", "click"]
    assert ds.events[1].text == "Fits well, the colour is brighter than shown."
    assert ds.items[0].text.startswith("Red running shoe. Lightweight trail shoe")
    assert ds.profiles["u1"].attributes == (("country", "NL"),)
    assert [(e.source, e.target) for e in ds.social] == [("u2", "u1")]


def test_the_replay_publishes_social_edges_as_stream_records(tmp_path: Path) -> None:
    from scenerec.publish import social_events

    folder = inter(tmp_path, "u1\ti1\nu2\ti1\n")
    write(folder / "d.net", "source:token\ttarget:token\tkind:token\nu1\tu2\tfriend\n")
    (edge,) = social_events(load_records(folder))
    assert edge["user_id"] == "u1" and edge["target_user_id"] == "u2"
    assert edge["kind"] == "follow"  # the stream's kind for a friendship

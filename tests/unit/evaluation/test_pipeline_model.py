"""The in-process pipeline model: slicing, scoring, and the worker's Pipeline on a tiny slice.

No Kafka, no Ray: the real ``streams.pipeline.Pipeline`` with the bundled encoder in this
process and an embedded vector store. The replay through the real services is in
``tests/integration/test_eval_replay.py``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from embeddings.ranking import GLOBAL
from evaluation.metrics import HIT, MRR, NDCG, target_metrics
from evaluation.pipeline_model import (
    ModeResult,
    Payload,
    Record,
    ReplaySlice,
    compare,
    make_slice,
    run_in_process,
    run_slice,
)
from scenerec.config import Settings
from scenerec.datasets import Dataset, load_ml100k
from tests.conftest import bare_encoder

DATA_DIR = Settings().data_dir
needs_data = pytest.mark.skipif(
    not (DATA_DIR / "ml-100k" / "ml-100k.inter").is_file(), reason="../shared/data not present"
)
SCENES = ("action", "comedy", "drama", "family", "scifi", "thriller")


@pytest.fixture(scope="module")
def ml100k() -> Dataset:
    return load_ml100k(DATA_DIR)


# --- the slice -------------------------------------------------------------------------------


@needs_data
def test_slice_is_deterministic_and_follows_its_rule(ml100k: Dataset) -> None:
    a = make_slice(ml100k, events=40, start=5, warmup=10, items=100)
    b = make_slice(ml100k, events=40, start=5, warmup=10, items=100)
    assert a == b
    kept = [c for c in ml100k.clicks if int(c["item_id"]) <= 100]
    assert list(a.warmup) == kept[5:15] and list(a.scored) == kept[15:55]
    assert [it["item_id"] for it in a.items] == [str(i) for i in range(1, 101)]
    users = {c["user_id"] for c in a.warmup + a.scored}
    assert set(a.profiles) == users
    assert make_slice(ml100k, events=3, profiles=False).profiles == {}
    with pytest.raises(ValueError, match="slice ends"):
        make_slice(ml100k, events=10**6)
    with pytest.raises(ValueError):
        make_slice(ml100k, events=0)


# --- scoring, against a driver that answers with known lists ---------------------------------


class ScriptedDriver:
    """Answers every event with a list chosen by the test; records what it was sent."""

    def __init__(self, lists: dict[str, Sequence[str]]) -> None:
        self.lists = lists
        self.calls: list[tuple[str, Any]] = []

    def _payload(self, user: str, trigger: str) -> Payload:
        items = self.lists.get(trigger, ())
        return {
            "user_id": user,
            "trigger_event_id": trigger,
            "scenes": {GLOBAL: [{"item_id": i, "score": 0.0, "reason": "r"} for i in items]},
        }

    async def index_catalog(self, items: Sequence[Record]) -> None:
        self.calls.append(("catalog", len(items)))

    async def ingest(self, profiles: Sequence[Record], clicks: Sequence[Record]) -> None:
        self.calls.append(("ingest", ([p["user_id"] for p in profiles], len(clicks))))

    async def profile(self, profile: Record) -> Payload:
        self.calls.append(("profile", profile["user_id"]))
        return self._payload(profile["user_id"], "profile-" + profile["user_id"])

    async def click(self, click: Record) -> Payload:
        self.calls.append(("click", click["event_id"]))
        return self._payload(click["user_id"], click["event_id"])


def click(event_id: str, user: str, item: str) -> Record:
    return {"event_id": event_id, "user_id": user, "item_id": item, "scene": "drama", "ts": 1.0}


async def test_run_slice_scores_the_list_the_user_had_before_each_click() -> None:
    data = ReplaySlice(
        items=({"item_id": "x"},),
        profiles={"w": {"user_id": "w"}, "a": {"user_id": "a"}},  # "b" has no profile
        warmup=(click("w0", "w", "i0"),),
        scored=(
            click("a1", "a", "i1"),  # list from a's profile: i1 at rank 2
            click("b1", "b", "i2"),  # b has nothing yet: unserved, a miss
            click("w1", "w", "i3"),  # w's list came from the warm-up: primed, not scored
            click("a2", "a", "i4"),  # list from a1: i4 at rank 1
            click("w2", "w", "i5"),  # list from w1: i5 not in it
        ),
        start=0,
    )
    driver = ScriptedDriver(
        {
            "profile-a": ["i0", "i1", "i9"],
            "a1": ["i4", "i8"],
            "w1": ["i6", "i7"],
        }
    )
    result = await run_slice("scripted", driver, data)
    assert driver.calls[:2] == [("catalog", 1), ("ingest", (["w"], 1))]
    assert ("profile", "a") in driver.calls and ("profile", "b") not in driver.calls
    assert driver.calls.index(("profile", "a")) < driver.calls.index(("click", "a1"))
    got = {o.event_id: (o.status, o.rank, o.before) for o in result.outcomes}
    assert got == {
        "a1": ("scored", 2, ("i0", "i1", "i9")),
        "b1": ("unserved", None, ()),
        "w1": ("primed", None, ()),
        "a2": ("scored", 1, ("i4", "i8")),
        "w2": ("scored", None, ("i6", "i7")),
    }
    # primed events are left out; unserved ones count as misses
    assert [o.event_id for o in result.counted] == ["a1", "b1", "a2", "w2"]
    summary = result.summary()
    for m in (HIT, NDCG, MRR):
        want = (target_metrics(2)[m] + 0.0 + target_metrics(1)[m] + 0.0) / 4
        assert summary[m].mean == pytest.approx(want)
    js = result.to_json()
    assert (js["scored"], js["unserved"], js["primed"]) == (3, 1, 1)


def _shifted(result: ModeResult, event_id: str) -> ModeResult:
    """The same run, but the list before ``event_id`` lost its first item (a hit or not)."""
    outcomes = []
    for o in result.outcomes:
        if o.event_id == event_id:
            before = (*o.before[1:], "zz")
            rank = before.index(o.item) + 1 if o.item in before else None
            metrics = target_metrics(rank if rank is not None else 11)
            o = replace(o, before=before, rank=rank, metrics=metrics)
        outcomes.append(o)
    return ModeResult("other", outcomes, result.seconds)


# --- the worker's pipeline, in-process ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(ml100k: Dataset) -> ReplaySlice:
    return make_slice(ml100k, events=40, warmup=15, items=80)


@pytest.fixture(scope="module")
def run_twice(tiny: ReplaySlice) -> tuple[ModeResult, ModeResult]:
    first = asyncio.run(run_in_process(tiny, SCENES, encoder=bare_encoder()))
    second = asyncio.run(run_in_process(tiny, SCENES, encoder=bare_encoder()))
    return first, second


@needs_data
async def test_in_process_lists_follow_the_pipeline(
    tiny: ReplaySlice, run_twice: tuple[ModeResult, ModeResult]
) -> None:
    result, _ = run_twice
    assert [o.event_id for o in result.outcomes] == [c["event_id"] for c in tiny.scored]
    assert {o.status for o in result.outcomes} <= {"scored", "primed"}  # everyone has a profile
    had: dict[str, set[str]] = {}
    for c in tiny.warmup:
        had.setdefault(c["user_id"], set()).add(c["item_id"])
    last_after: dict[str, tuple[str, ...]] = {}
    for o in result.outcomes:
        if o.status == "scored":
            assert 0 < len(o.before) <= 10
            # what the user had is never recommended again (Protocol B's exclusion)
            assert not set(o.before) & had.get(o.user, set())
            if o.user in last_after:  # the list before = the list the previous click sent
                assert o.before == last_after[o.user]
            rank = o.before.index(o.item) + 1 if o.item in o.before else None
            assert o.rank == rank
            assert o.metrics == target_metrics(rank if rank is not None else 11)
        assert GLOBAL in o.after
        last_after[o.user] = o.after[GLOBAL]
        had.setdefault(o.user, set()).add(o.item)
    # a user's first scored click after the warm-up is only primed
    warm = {c["user_id"] for c in tiny.warmup}
    firsts: dict[str, str] = {}
    for o in result.outcomes:
        firsts.setdefault(o.user, o.status)
    assert all(status == "primed" for user, status in firsts.items() if user in warm)
    assert all(status == "scored" for user, status in firsts.items() if user not in warm)


@needs_data
async def test_in_process_is_deterministic_and_compare_sees_differences(
    run_twice: tuple[ModeResult, ModeResult],
) -> None:
    first, second = run_twice
    same = compare(first, second)
    assert same["difference"] == {HIT: 0.0, NDCG: 0.0, MRR: 0.0}
    assert same["identical_global_lists"] == 1.0
    assert same["identical_messages_all_scenes"] == 1.0
    assert same["max_abs_score_difference"] == 0.0
    assert same["differing_examples"] == []
    # one list changed: compare must notice it, and the metric moves if it was a hit
    hit = next(o for o in first.outcomes if o.rank is not None)
    other = compare(first, _shifted(first, hit.event_id))
    assert other["identical_global_lists"] == pytest.approx(1 - 1 / other["events_compared"])
    assert [d["event_id"] for d in other["differing_examples"]] == [hit.event_id]
    assert not math.isclose(other["difference"][NDCG], 0.0)

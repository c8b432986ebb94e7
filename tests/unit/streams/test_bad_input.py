"""Property-based tests of bad input: the worker's pipeline never crashes, every bad event
reaches the dead-letter topic with its reason, and good events in the same batch are
applied exactly once.

The pipeline is the worker's own (``streams.pipeline.Pipeline``) with the real encoder and
an embedded vector store; only Kafka is replaced by in-memory batches (the integration
tests cover the same path through a real broker).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.agents import handle
from streams.pipeline import Incoming, Pipeline, PipelineConfig
from streams.records import DeadLetter
from streams.state import loads
from tests.conftest import InProcessEncoder, local_pipeline

SCENES = ("scifi", "drama")
ITEMS = {"1": "scifi", "2": "scifi", "3": "drama"}
MAX_TEXT = 200
#: Fixed once: a strategy bound that moved between runs would make hypothesis flaky.
NOW = time.time()
#: How many generated cases ran (reported by the last test of the module).
CASES: Counter[str] = Counter()


class Collect:
    def __init__(self) -> None:
        self.recs: list[dict[str, Any]] = []
        self.dlq: list[DeadLetter] = []

    async def recommendations(self, user_id: str, payload: dict[str, object]) -> None:
        self.recs.append(payload)

    async def dead_letter(self, key: str | None, letter: DeadLetter) -> None:
        self.dlq.append(letter)

    async def forget(self, user_id: str) -> None:
        pass

    async def flush(self) -> None:
        pass


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pipeline]:
    p = local_pipeline(
        tmp_path_factory.mktemp("store"),
        PipelineConfig(scenes=SCENES, max_text_chars=MAX_TEXT, unknown_item_wait_s=0.0),
        InProcessEncoder(),
        Collect(),
    )
    items = [
        Incoming(orjson.dumps({"item_id": i, "scenes": [s], "title": f"Film {i}"}), "c", 0, n)
        for n, (i, s) in enumerate(ITEMS.items())
    ]
    asyncio.run(handle(p, items, Pipeline.on_catalog, "catalog.items"))
    yield p
    p.store.close()


# --- generated events: (raw bytes, expected dead-letter reason or None for good) ------------
ids = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
odd_text = st.text(st.characters(codec="utf-8", categories=None), min_size=1, max_size=40)


@st.composite
def good_click(draw: st.DrawFn) -> dict[str, Any]:
    item = draw(st.sampled_from(sorted(ITEMS)))
    return {
        "event_id": draw(ids.filter(lambda i: not i.startswith("bad-"))),
        "user_id": draw(st.sampled_from(["u1", "u2", "ü3", "用户4"])),
        "item_id": item,
        "scene": ITEMS[item],
        # out of order is fine; only the far future is refused
        "ts": draw(st.floats(0, NOW, allow_nan=False)),
        "dwell_ms": draw(st.none() | st.integers(0, 10**9)),
    }


WRONG_VALUES = st.sampled_from([None, 12, -1.5, True, [], {}, "", ["x"], {"a": 1}])


@st.composite
def bad_click(draw: st.DrawFn) -> tuple[bytes | None, str]:
    # A bad event never has an id that was applied (a replayed id is a duplicate, not bad).
    ev = {**draw(good_click()), "event_id": "bad-" + draw(ids)}
    kind = draw(
        st.sampled_from(
            [
                *("missing", "wrong_type", "nan", "unknown_item", "unknown_scene", "future"),
                *("not_json", "not_object", "empty", "too_large", "bad_utf8"),
            ]
        )
    )
    if kind == "missing":
        del ev[draw(st.sampled_from(["event_id", "user_id", "item_id", "scene", "ts"]))]
        return orjson.dumps(ev), "missing_field"
    if kind == "wrong_type":
        field = draw(st.sampled_from(["event_id", "user_id", "item_id", "scene", "ts"]))
        value = draw(WRONG_VALUES.filter(lambda v: not (field == "ts" and type(v) is int)))
        ev[field] = value
        return orjson.dumps(ev), "invalid_field"  # null included: present but not valid
    if kind == "nan":
        # JSON has no NaN/Infinity; a producer that writes them (or an exponent that
        # overflows to infinity) sends something the parser refuses as not JSON.
        lit = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999"]))
        raw = orjson.dumps({**ev, "ts": 0}).replace(b'"ts":0', f'"ts":{lit}'.encode())
        return raw, "not_json"
    if kind == "unknown_item":
        return orjson.dumps({**ev, "item_id": "no-such-item"}), "unknown_item"
    if kind == "unknown_scene":
        return orjson.dumps({**ev, "scene": "nowhere"}), "unknown_scene"
    if kind == "future":
        return orjson.dumps({**ev, "ts": NOW + 10 * 86400}), "future_timestamp"
    if kind == "not_json":
        return draw(st.binary(min_size=1).filter(_not_json)), "not_json"
    if kind == "not_object":
        return orjson.dumps(
            draw(st.lists(st.integers(-(2**53), 2**53)) | st.integers(0, 9) | ids)
        ), "not_object"
    if kind == "empty":
        return None, "empty"
    if kind == "too_large":
        return orjson.dumps({**ev, "pad": "x" * 70_000}), "too_large"
    return b'{"event_id": "\xff\xfe"}', "not_json"


def _not_json(raw: bytes) -> bool:
    try:
        orjson.loads(raw)
        return False
    except orjson.JSONDecodeError:
        return True


@st.composite
def bad_comment(draw: st.DrawFn) -> tuple[bytes, str]:
    ev = {**draw(good_click()), "event_id": "bad-" + draw(ids), "text": draw(odd_text)}
    kind = draw(st.sampled_from(["huge", "empty_text", "text_type"]))
    if kind == "huge":
        ev["text"] = draw(odd_text) * (MAX_TEXT + 1)
        return orjson.dumps(ev), "text_too_long"
    if kind == "empty_text":
        ev["text"] = ""
        return orjson.dumps(ev), "invalid_field"
    ev["text"] = draw(WRONG_VALUES.filter(lambda v: v is not None and v != ""))
    return orjson.dumps(ev), "invalid_field"


def run_batch(pipe: Pipeline, topic: str, raws: list[bytes | None]) -> Collect:
    out = Collect()
    pipe.emitter = out
    batch = [Incoming(raw, topic, 0, n, key=b"k") for n, raw in enumerate(raws)]
    handler = Pipeline.on_clicks if topic == "events.click" else Pipeline.on_comments
    asyncio.run(handle(pipe, batch, handler, topic))
    return out


def check(pipe: Pipeline, topic: str, mixed: list[tuple[bytes | None, str | None]]) -> None:
    states_before = {u: loads(v) for u, v in pipe.states.items()}
    out = run_batch(pipe, topic, [raw for raw, _ in mixed])
    expected_bad = {n: reason for n, (_, reason) in enumerate(mixed) if reason is not None}
    got = {d.offset: d.reason for d in out.dlq}
    assert got == expected_bad  # each bad event dead-lettered once, with its reason
    assert all(d.topic == topic and d.error for d in out.dlq)
    # Good events: applied once per distinct (user, event_id); a repeated id is a no-op.
    good = [orjson.loads(raw) for raw, reason in mixed if reason is None and raw is not None]
    fresh: dict[str, set[str]] = {}
    for ev in good:
        user, event_id = ev["user_id"], ev["event_id"]
        assert loads(pipe.states[user]).already_applied(event_id)
        before = states_before.get(user)
        if before is None or not before.already_applied(event_id):
            fresh.setdefault(user, set()).add(event_id)
    for user, event_ids in fresh.items():
        n_before = states_before[user].n_events if user in states_before else 0
        assert loads(pipe.states[user]).n_events == n_before + len(event_ids)
        assert any(r["user_id"] == user for r in out.recs)
    assert {r["user_id"] for r in out.recs} == set(fresh)  # nobody else got a new list
    for rec in out.recs:
        for items in rec["scenes"].values():
            assert all(math.isfinite(i["score"]) for i in items)
    CASES[topic] += 1


HYPOTHESIS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@HYPOTHESIS
@given(
    st.lists(
        good_click().map(lambda e: (orjson.dumps(e), None)) | bad_click(), min_size=1, max_size=12
    )
)
def test_bad_clicks_are_dead_lettered_and_good_ones_applied(
    pipe: Pipeline, mixed: list[tuple[bytes | None, str | None]]
) -> None:
    check(pipe, "events.click", mixed)


@HYPOTHESIS
@given(
    st.lists(
        good_click().flatmap(
            lambda e: odd_text.map(lambda t: (orjson.dumps({**e, "text": t}), None))
        )
        | bad_comment(),
        min_size=1,
        max_size=6,
    )
)
def test_bad_comments_are_dead_lettered_and_odd_unicode_is_encoded(
    pipe: Pipeline, mixed: list[tuple[bytes | None, str | None]]
) -> None:
    check(pipe, "events.comment", mixed)


def test_duplicated_event_ids_apply_once(pipe: Pipeline) -> None:
    ev = {"event_id": "dup", "user_id": "d1", "item_id": "1", "scene": "scifi", "ts": 5}
    raw = orjson.dumps(ev)
    out = run_batch(pipe, "events.click", [raw, raw, raw])
    assert out.dlq == [] and loads(pipe.states["d1"]).n_events == 1
    out = run_batch(pipe, "events.click", [raw])
    assert out.recs == [] and loads(pipe.states["d1"]).n_events == 1


def test_zz_report_how_many_cases_ran(capsys: pytest.CaptureFixture[str]) -> None:
    # Runs last in this module (pytest keeps file order): the generated-case counts.
    with capsys.disabled():
        print(f"\nbad-input property cases run: {dict(CASES)}")
    assert sum(CASES.values()) > 0

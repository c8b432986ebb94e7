"""Every kind of bad input gets a BadEvent with its reason; good events parse."""

from __future__ import annotations

import orjson
import pytest

from streams.errors import BadEvent
from streams.records import (
    CatalogItem,
    ClickEvent,
    CommentEvent,
    SocialEvent,
    UserProfile,
    parse_event,
)

CLICK = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "scene": "drama", "ts": 1.5}


def parse(raw: bytes, record: type = ClickEvent, **kw: int) -> object:
    return parse_event(
        raw,
        record,
        max_bytes=kw.get("max_bytes", 4096),
        max_text_chars=kw.get("max_text_chars", 100),
    )


def test_good_click_parses_with_integer_timestamp() -> None:
    event = parse(orjson.dumps({**CLICK, "ts": 881250949, "dwell_ms": 1200}))
    assert isinstance(event, ClickEvent)
    assert event.ts == 881250949.0 and event.dwell_ms == 1200


def test_unknown_extra_fields_are_ignored() -> None:
    event = parse(orjson.dumps({**CLICK, "app_version": "3.1"}))
    assert isinstance(event, ClickEvent) and event.user_id == "u1"


@pytest.mark.parametrize(
    ("raw", "record", "reason"),
    [
        (b"{not json", ClickEvent, "not_json"),
        (b"\xff\xfe\x00", ClickEvent, "not_json"),
        (b"[1, 2]", ClickEvent, "not_object"),
        (
            orjson.dumps({k: v for k, v in CLICK.items() if k != "item_id"}),
            ClickEvent,
            "missing_field",
        ),
        (orjson.dumps({**CLICK, "ts": "yesterday"}), ClickEvent, "invalid_field"),
        (orjson.dumps({**CLICK, "ts": "12.5"}), ClickEvent, "invalid_field"),
        (orjson.dumps({**CLICK, "user_id": 7}), ClickEvent, "invalid_field"),
        (orjson.dumps({**CLICK, "ts": -1}), ClickEvent, "invalid_field"),
        (orjson.dumps({**CLICK, "dwell_ms": -5}), ClickEvent, "invalid_field"),
        (orjson.dumps({**CLICK, "user_id": ""}), ClickEvent, "invalid_field"),
        (
            b'{"event_id":"e","user_id":"u","target_user_id":"v","kind":"poke","ts":1}',
            SocialEvent,
            "unknown_kind",
        ),
        (orjson.dumps({**CLICK, "text": "x" * 101}), CommentEvent, "text_too_long"),
        (orjson.dumps({"user_id": "u", "profile_text": "y" * 101}), UserProfile, "text_too_long"),
        (orjson.dumps({"item_id": "i", "scenes": [], "title": "t"}), CatalogItem, "invalid_field"),
        (b"x" * 5000, ClickEvent, "too_large"),
        (None, ClickEvent, "empty"),
    ],
)
def test_bad_events_name_their_reason(raw: bytes | None, record: type, reason: str) -> None:
    with pytest.raises(BadEvent) as info:
        parse(raw, record)  # type: ignore[arg-type]
    assert info.value.reason == reason
    assert str(info.value)  # a human-readable message, not just a code


def test_nan_and_infinity_are_not_json() -> None:
    for raw in (b'{"ts": NaN}', b'{"ts": Infinity}'):
        with pytest.raises(BadEvent) as info:
            parse(raw)
        assert info.value.reason == "not_json"


def test_error_message_names_the_field() -> None:
    with pytest.raises(BadEvent, match="ts"):
        parse(orjson.dumps({**CLICK, "ts": "soon"}))

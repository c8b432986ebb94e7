"""The terminal demo's view (scenerec/demo.py): what it shows and what it counts as lag."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from scenerec.demo import GROUP_TOPICS, DemoState, render, status_line


def items(*ids: str) -> list[dict[str, Any]]:
    return [{"item_id": i, "score": 1.0, "reason": f"because of {i}"} for i in ids]


def shown(state: DemoState, titles: dict[str, str]) -> str:
    console = Console(width=200, record=True)
    console.print(render(state, titles))
    return console.export_text()


def test_lag_counts_the_groups_topics_not_the_catalog() -> None:
    from scenerec.config import Settings
    from streams.worker import create_worker

    settings = Settings()
    stream = create_worker(settings).topics.stream
    assert "catalog.items" not in GROUP_TOPICS
    assert {settings.topic(t) for t in GROUP_TOPICS} == {t.get_topic_name() for t in stream}


def test_view_shows_scene_feeds_the_newcomer_and_both_progresses() -> None:
    titles = {"1": "Alien", "2": "Heat", "3": "Fargo", "4": "Babe"}
    state = DemoState(catalog_total=4, catalog_indexed=3, lag=12)
    state.watched["u1"] = {
        "scenes": {"global": items("1", "2"), "drama": items("2", "3"), "family": items("4")}
    }
    text = shown(state, titles)
    assert "drama: Heat, Fargo" in text and "family: Babe" in text
    assert "3/4" in text and "12" in text
    assert "waiting for the catalog" in text
    state.newcomer_sent, state.newcomer_first_s = 1.0, 0.42
    state.newcomer_list = {"scenes": {"global": items("3")}}
    text = shown(state, titles)
    assert "Fargo" in text and "because of 3" in text and "0.42s after the profile" in text
    assert "consumer lag 12, catalog 3/4 items indexed" in status_line(state)

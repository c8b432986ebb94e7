"""The topics of ARCHITECTURE.md: names, keys and how they are configured."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the specs are plain data; only a worker declares Faust topics
    from faust.types import TopicT


@dataclass(frozen=True)
class TopicSpec:
    name: str
    keyed_by: str
    compacted: bool = False


CLICKS = TopicSpec("events.click", "user_id")
COMMENTS = TopicSpec("events.comment", "user_id")
SOCIAL = TopicSpec("events.social", "user_id")
CATALOG = TopicSpec("catalog.items", "item_id", compacted=True)
PROFILES = TopicSpec("users.profiles", "user_id", compacted=True)
# Compacted: the latest list per user is what readers need, and a tombstone (``forget``)
# erases a user's older lists.
RECOMMENDATIONS = TopicSpec("recommendations", "user_id", compacted=True)
DLQ = TopicSpec("events.dlq", "user_id")
# Click deltas re-keyed by item (``streams/itemstats.py``): one message per partition per
# batch, sent to the partition of the items it names.
ITEM_DELTAS = TopicSpec("items.deltas", "item key")

INPUT_TOPICS = (CLICKS, COMMENTS, SOCIAL, CATALOG, PROFILES)
ALL_TOPICS = (*INPUT_TOPICS, RECOMMENDATIONS, DLQ, ITEM_DELTAS)
#: The topics the agents consume (the catalog is read outside the consumer group).
STREAM_TOPICS = (CLICKS, COMMENTS, SOCIAL, PROFILES, ITEM_DELTAS)


class Topics:
    """One worker's Faust topics, one per spec of ``ALL_TOPICS`` (streams/worker.py declares
    them): ``topics[RECOMMENDATIONS].send(...)``."""

    def __init__(self, declared: Mapping[str, TopicT]) -> None:
        missing = {spec.name for spec in ALL_TOPICS} - set(declared)
        if missing:
            raise ValueError(f"topics not declared: {sorted(missing)}")
        self._by_name = dict(declared)

    def __getitem__(self, spec: TopicSpec) -> TopicT:
        return self._by_name[spec.name]

    @property
    def stream(self) -> tuple[TopicT, ...]:
        """The Faust topics of ``STREAM_TOPICS``, those the consumer group reads."""
        return tuple(self[spec] for spec in STREAM_TOPICS)

"""The topics of ARCHITECTURE.md: names, keys and how they are configured."""

from __future__ import annotations

from dataclasses import dataclass


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

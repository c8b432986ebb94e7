"""Every user's latest lists and the open feed streams, fed from the ``recommendations`` topic.

The pull API's replica reads the compacted topic from the beginning (``serving.api_app``)
and hands each record to :meth:`FeedHub.apply`, which keeps the user's latest list (what
``GET /users/{id}/recommendations`` answers), a bounded ring of recent records (what a
reconnecting stream resumes from) and puts the record on the queue of every stream open for
that user. Everything runs on the replica's event loop, so a stream registers and takes its
backlog between two records: nothing lands in neither, nothing in both.

A record's id is ``<partition>-<offset>``: the worker keys lists by user, so all of a user's
lists live in one partition and their offsets grow; naming the partition lets a resume read
the topic again without knowing the producer's partitioner.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson

logger = logging.getLogger(__name__)

_EVENT_ID = re.compile(r"^(\d{1,9})-(\d{1,19})$")


@dataclass(frozen=True, slots=True)
class FeedRecord:
    """One record of the recommendations topic; ``value`` None is a tombstone (forget)."""

    partition: int
    offset: int
    user_id: str
    value: bytes | None
    timestamp_ms: int | None = None
    #: The user's merged latest lists (every feed) rather than one message (the feeds that
    #: message changed): what a new stream starts with.
    snapshot: bool = False

    @property
    def event_id(self) -> str:
        return f"{self.partition}-{self.offset}"


def parse_event_id(text: str) -> tuple[int, int]:
    """``"3-1207"`` -> (3, 1207); ValueError naming the expected form otherwise."""
    match = _EVENT_ID.match(text.strip())
    if match is None:
        raise ValueError(f"Last-Event-ID {text!r} is not '<partition>-<offset>' (e.g. '3-1207')")
    return int(match.group(1)), int(match.group(2))


class StreamLimitError(Exception):
    """Opening one more stream would pass a limit; ``status`` is the HTTP answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(eq=False)
class Subscription:
    """One open stream: records for its user arrive on ``queue`` as they land."""

    user_id: str
    queue: asyncio.Queue[FeedRecord]
    #: Set when the queue was full (a client that does not read): the stream ends and the
    #: client resumes from its Last-Event-ID, so nothing is lost and memory stays bounded.
    overflowed: bool = False


@dataclass
class HubLimits:
    max_open: int = 2000
    max_per_user: int = 8
    replay_records: int = 20_000
    queue_size: int = 64


@dataclass
class FeedHub:
    limits: HubLimits = field(default_factory=HubLimits)
    #: The latest list of every user (parsed), and where it sits in the topic.
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    latest_at: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: Per partition, the offset after the last record applied.
    next_offset: dict[int, int] = field(default_factory=dict)
    _ring: deque[FeedRecord] = field(default_factory=deque)
    #: The ring's records by user, oldest first (a resume reads only its user's).
    _ring_of: dict[str, deque[FeedRecord]] = field(default_factory=dict)
    #: Per partition, the highest offset pushed out of the ring (a resume from at or before
    #: it must read the topic again).
    _evicted: dict[int, int] = field(default_factory=dict)
    _subs: dict[str, set[Subscription]] = field(default_factory=dict)
    open_streams: int = 0

    # --- the follower's side -----------------------------------------------------------------
    def apply(self, record: FeedRecord) -> None:
        self.next_offset[record.partition] = record.offset + 1
        if record.value is None:
            self.latest.pop(record.user_id, None)
            self.latest_at.pop(record.user_id, None)
        else:
            try:
                payload = orjson.loads(record.value)
            except orjson.JSONDecodeError:
                logger.warning("skipping an unreadable list for %r", record.user_id)
                return
            # A message carries the feeds its event changed; the others keep their last list.
            if (before := self.latest.get(record.user_id)) is not None:
                payload["scenes"] = {**before.get("scenes", {}), **payload.get("scenes", {})}
            self.latest[record.user_id] = payload
            self.latest_at[record.user_id] = (record.partition, record.offset)
        self._remember(record)
        for sub in self._subs.get(record.user_id, ()):
            try:
                sub.queue.put_nowait(record)
            except asyncio.QueueFull:
                sub.overflowed = True

    def _remember(self, record: FeedRecord) -> None:
        self._ring.append(record)
        self._ring_of.setdefault(record.user_id, deque()).append(record)
        while len(self._ring) > self.limits.replay_records:
            old = self._ring.popleft()
            self._evicted[old.partition] = max(old.offset, self._evicted.get(old.partition, -1))
            theirs = self._ring_of[old.user_id]
            theirs.popleft()  # the ring and this deque hold a user's records in one order
            if not theirs:
                del self._ring_of[old.user_id]

    # --- the streams' side -------------------------------------------------------------------
    def subscribe(self, user_id: str) -> Subscription:
        if self.open_streams >= self.limits.max_open:
            raise StreamLimitError(
                503, f"this replica has {self.open_streams} streams open, its limit; retry later"
            )
        mine = self._subs.setdefault(user_id, set())
        if len(mine) >= self.limits.max_per_user:
            raise StreamLimitError(
                429, f"user {user_id!r} already has {len(mine)} streams open, the limit"
            )
        sub = Subscription(user_id, asyncio.Queue(self.limits.queue_size))
        mine.add(sub)
        self.open_streams += 1
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        mine = self._subs.get(sub.user_id)
        if mine is None or sub not in mine:
            return
        mine.discard(sub)
        self.open_streams -= 1
        if not mine:
            del self._subs[sub.user_id]

    def replay(self, user_id: str, partition: int, after: int) -> list[FeedRecord] | None:
        """The user's records in ``partition`` after offset ``after``, from the ring; None
        when the ring no longer reaches back that far (read the topic again)."""
        if after < self._evicted.get(partition, -1):
            return None
        theirs = self._ring_of.get(user_id, ())
        return [r for r in theirs if r.partition == partition and r.offset > after]

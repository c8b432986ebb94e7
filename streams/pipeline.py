"""What the worker does with a batch of input messages, independent of Faust.

The Faust agents (``streams/agents``) take batches from their topics and hand them here.
Keeping the logic behind small interfaces (a mapping for user state, an :class:`Emitter`
for output topics, a :class:`TextEncoder`) lets the same code run in the worker, in
``agent.test_context()`` unit tests and in the in-process evaluation.

Concurrency: several agents share one event loop and the user-state table. Every
read-modify-write of a user's state happens without an ``await`` in between (encoder
calls come first), so two agents never interleave on the same user.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol, TypeVar

import numpy as np
from pydantic import BaseModel

from embeddings.blended import CandidateConfig, Feed, NearestItems
from embeddings.colearn import CoLearner
from embeddings.collaborative import DEFAULT_FEED_BLEND, FeedBlend
from embeddings.fusion import fuse_item, item_text
from embeddings.itemstats import DeltaBatch, StatsRow, loads_deltas
from embeddings.kg import HashedEntityEmbedding
from embeddings.model import SceneRecModel
from embeddings.ranking import GLOBAL, GatedScenes, ItemIndex, SceneModel, Scored, to_payload
from embeddings.scenes import SceneGates
from embeddings.user_model import UserState, click_weight
from embeddings.vectors import Matrix
from streams import state as state_codec
from streams.errors import BadEvent
from streams.itemstats import ItemStatsStage, SharedStats, source_of
from streams.metrics import WorkerMetrics
from streams.records import (
    CatalogItem,
    ClickEvent,
    CommentEvent,
    DeadLetter,
    SocialEvent,
    UserProfile,
    parse_event,
)
from vectorstore.base import ItemPoint, UserPoint, VectorStore

log = logging.getLogger(__name__)
R = TypeVar("R", bound=BaseModel)

#: After a catalog batch, clicks on unknown items wait this long for more of the catalog.
CATALOG_QUIET_S = 3.0


class Incoming(NamedTuple):
    """One message as it came off a topic.

    A named tuple, not a frozen dataclass: one is made per message, and a frozen
    dataclass's ``__init__`` (``object.__setattr__`` per field) cost 1.7 us against 0.5.
    """

    value: bytes | None
    topic: str
    partition: int
    offset: int
    key: bytes | None = None
    #: The Kafka message timestamp (seconds): when the event entered the bus.
    timestamp: float | None = None


class TextEncoder(Protocol):
    async def encode(self, texts: Sequence[str]) -> Matrix: ...


class Emitter(Protocol):
    async def recommendations(self, user_id: str, payload: dict[str, object]) -> None: ...
    async def dead_letter(self, key: str | None, letter: DeadLetter) -> None: ...
    async def forget(self, user_id: str) -> None:
        """Erase the user's stored recommendations (a tombstone on the recommendations topic)."""

    async def flush(self) -> None:
        """Return once everything emitted so far (and state changelog writes) is durable."""


class StatsSink(Protocol):
    """Where a batch's click deltas go: the item-stats stage (``streams/itemstats.py``)."""

    async def send(self, deltas: DeltaBatch) -> None:
        """Return once the deltas are durable: the users' states that count them are
        written only then, so a replay that finds a click applied finds its deltas sent."""


class LocalStats:
    """The item-stats stage in this process (unit tests, the in-process evaluation): deltas
    are applied at once, and the changed rows go straight into the ranking statistics."""

    def __init__(self, shared: SharedStats, stage: ItemStatsStage) -> None:
        self.shared, self.stage = shared, stage

    async def send(self, deltas: DeltaBatch) -> None:
        for key, row in self.stage.apply(deltas).items():
            self.shared.receive(key, row)


@dataclass(frozen=True)
class PipelineConfig:
    scenes: tuple[str, ...]
    top_k: int = 10
    max_text_chars: int = 4096
    max_event_bytes: int = 65536
    unknown_item_wait_s: float = 30.0
    model_version: str = "scenerec-0.1-mean"
    #: Event times further ahead of this host's clock are refused: one bad clock would
    #: otherwise decay every other item's popularity to nothing.
    max_future_s: float = 86400.0
    #: Co-learning fitted offline (``make eval`` writes results/colearn.json): learned scene
    #: gates, and sparse scenes borrowing from related ones. None = all-ones gates, and a
    #: sparse scene borrows from the user's global vector only.
    colearn_path: str | None = None
    #: The ranking blend (``FeedBlend`` JSON, ``make eval`` writes results/model.json);
    #: None = ``DEFAULT_FEED_BLEND``.
    model_path: str | None = None
    #: Threads that share the item product of a catalog over 4,096 items (bit for bit the
    #: same scores as one; ``ItemIndex.set_threads``).
    rank_threads: int = 1
    #: Candidate sources per feed, and the catalog size up to which feeds score every item.
    candidates: CandidateConfig = field(default_factory=CandidateConfig)
    #: A scene feed the user's events did not change is ranked again after this many events.
    refresh_events: int = 10


@dataclass
class Pipeline:
    config: PipelineConfig
    store: VectorStore
    index: ItemIndex
    encoder: TextEncoder
    states: MutableMapping[str, bytes]
    emitter: Emitter
    metrics: WorkerMetrics
    #: Where click deltas go (None: applied in this process, see :class:`LocalStats`).
    stats_sink: StatsSink | None = None
    #: The vector store's nearest-item search (None: an exact search over the index).
    nearest: NearestItems | None = None
    #: This worker's partitions of the shared item-stats table, which its ``items.deltas``
    #: agent writes (None where no deltas arrive from Kafka).
    stats_rows: MutableMapping[bytes, bytes] | None = None
    scene_model: SceneModel = field(init=False)
    kg: HashedEntityEmbedding = field(init=False)
    stage: ItemStatsStage | None = field(init=False)

    def __post_init__(self) -> None:
        self.scene_model = GatedScenes(SceneGates(self.index.dim))
        if self.config.colearn_path:
            # Gates fitted by BPR on train clicks and scene relations (embeddings/colearn.py).
            learner = CoLearner.load(Path(self.config.colearn_path))
            if learner.gates.dim != self.index.dim:
                raise ValueError(
                    f"{self.config.colearn_path}: gates of dimension {learner.gates.dim}, "
                    f"items of {self.index.dim}"
                )
            self.scene_model = learner
            log.info(
                "co-learning from %s: gates for %s, scene relations %s, %s",
                self.config.colearn_path,
                sorted(s for s, _ in learner.gates.items()),
                "learned" if learner.relations is not None else "none",
                learner.config,
            )
        self.blend = DEFAULT_FEED_BLEND
        if self.config.model_path:
            self.blend = FeedBlend.load(Path(self.config.model_path))
            gate = self.blend.global_gate
            if gate is not None and gate.shape != (self.index.dim,):
                raise ValueError(
                    f"{self.config.model_path}: a gate of shape {gate.shape},"
                    f" items of dimension {self.index.dim}"
                )
        self.index.set_threads(self.config.rank_threads)
        self.model = SceneRecModel(
            self.index,
            self.blend,
            self.scene_model,
            self.config.top_k,
            self.config.candidates,
            self.nearest,
        )
        self.shared = SharedStats(self.index, self.model.stats)
        self.stage = None
        if self.stats_rows is not None:
            self.stage = ItemStatsStage(self.stats_rows, self.model.stats.stats)
        if self.stats_sink is None:
            stage = ItemStatsStage({}, self.model.stats.stats)
            self.stats_sink = LocalStats(self.shared, stage)
        log.info(
            "ranking blend from %s: weights %s by tenure %s, %s, learned global gate: %s,"
            " every item scored up to %d items (candidates beyond: %s),"
            " %d thread(s) for the item product",
            self.config.model_path or "the built-in default",
            self.blend.blend.weights,
            self.blend.blend.edges,
            self.blend.collab,
            "yes" if self.blend.global_gate is not None else "no",
            self.config.candidates.exact_max_items,
            self.config.candidates,
            self.config.rank_threads,
        )
        self.kg = HashedEntityEmbedding(self.index.dim)
        self._scenes = frozenset(self.config.scenes)
        self._catalog_busy_until = 0.0

    # --- shared steps ----------------------------------------------------------------------
    async def _parse(self, batch: Sequence[Incoming], record: type[R]) -> list[tuple[Incoming, R]]:
        good: list[tuple[Incoming, R]] = []
        for msg in batch:
            try:
                good.append((msg, self._parse_one(msg, record)))
            except BadEvent as exc:
                await self.dead_letter(msg, exc)
        return good

    def _parse_one(self, msg: Incoming, record: type[R]) -> R:
        event = parse_event(
            msg.value,
            record,
            max_bytes=self.config.max_event_bytes,
            max_text_chars=self.config.max_text_chars,
        )
        ts = getattr(event, "ts", None)
        if isinstance(ts, float) and ts > time.time() + self.config.max_future_s:
            raise BadEvent(
                "future_timestamp",
                f"ts {ts:.0f} is more than {self.config.max_future_s:.0f} s in the future",
            )
        for scene in _scenes_of(event):
            if scene not in self._scenes:
                raise BadEvent(
                    "unknown_scene",
                    f"scene {scene!r} is not declared (declared: {', '.join(self.config.scenes)};"
                    " set SCENEREC_SCENES)",
                )
        return event

    async def dead_letter(self, msg: Incoming, exc: BadEvent) -> None:
        raw = msg.value or b""
        try:
            text: str | None = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        letter = DeadLetter(
            original_b64=base64.b64encode(raw).decode("ascii"),
            original_text=text,
            error=str(exc),
            reason=exc.reason,
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            failed_at=time.time(),
        )
        log.warning(
            "dead-letter %s[%d]@%d: %s (%s)", msg.topic, msg.partition, msg.offset, exc, exc.reason
        )
        self.metrics.events.labels(msg.topic, "", "dlq").inc()
        self.metrics.dlq.labels(exc.reason).inc()
        # Keyed like the original (the user, or the item) so a user's dead letters stay together.
        key = msg.key.decode("utf-8", errors="replace") if msg.key else None
        await self.emitter.dead_letter(key, letter)

    async def _encode(self, texts: Sequence[str]) -> Matrix:
        self.metrics.encoder_batch_size.observe(len(texts))
        with self.metrics.encoder_seconds.time():
            return await self.encoder.encode(texts)

    @contextmanager
    def _timed_store(self, operation: str) -> Iterator[None]:
        with self.metrics.vectorstore_seconds.labels(operation).time():
            yield

    async def _wait_for_items(self, item_ids: set[str]) -> None:
        """Catalog and events race at start-up: give the catalog agent time to index.

        Waits only while the catalog is plausibly still arriving (nothing indexed yet, or a
        catalog batch within the last few seconds), so one click on an unknown item does
        not stall the stream once the catalog is loaded.
        """
        deadline = time.monotonic() + self.config.unknown_item_wait_s
        while any(i not in self.index for i in item_ids) and time.monotonic() < deadline:
            if len(self.index) > 0 and time.monotonic() > self._catalog_busy_until:
                return
            await asyncio.sleep(0.2)

    async def _apply_per_user(
        self,
        topic: str,
        events: Sequence[tuple[Incoming, R]],
        user_of: Callable[[R], str],
        apply: Callable[[UserState, R, int], Awaitable[None] | None],
        every_scene: bool = False,
        deltas: DeltaBatch | None = None,
    ) -> None:
        """Apply each event to its user's state (idempotent by event_id), then emit.

        ``every_scene``: the events change every one of the user's scene vectors (social),
        not only the global vector and their own scene's. ``deltas``: what ``apply`` adds
        for the item statistics, sent (and durable) before any state is written.
        """
        changed: dict[str, Changed] = {}
        # Counted per batch, once per label set: a labels() lookup per event showed up in
        # the profile (bench/worker_profile.py), and the counts land once the batch is in.
        outcomes: collections.Counter[tuple[str, str]] = collections.Counter()
        for i, (msg, event) in enumerate(events):
            user_id = user_of(event)
            scene = getattr(event, "scene", "")
            before = changed.get(user_id)
            if before is not None:
                state, is_new = before.state, before.is_new
            else:
                raw = self.states.get(user_id)
                is_new = raw is None
                state = UserState() if raw is None else state_codec.loads(raw)
            event_id = getattr(event, "event_id", None) or f"{topic}:{msg.partition}:{msg.offset}"
            if state.already_applied(event_id):
                outcomes[scene, "duplicate"] += 1
                continue
            try:
                result = apply(state, event, i)
                if result is not None:
                    await result
            except BadEvent as exc:
                await self.dead_letter(msg, exc)
                continue
            state.mark_applied(event_id)
            c = Changed(state, event_id, msg.timestamp, is_new, topic)
            if before is not None:
                c.scenes, c.every_scene = before.scenes, before.every_scene
            if scene:
                c.scenes.add(scene)
            c.every_scene |= every_scene
            changed[user_id] = c
            outcomes[scene, "ok"] += 1
        if deltas is not None:
            await self._send_deltas(deltas)
        await self._commit_users(changed)
        for (scene, outcome), n in outcomes.items():
            self.metrics.events.labels(topic, scene, outcome).inc(n)

    async def _commit_users(self, changed: dict[str, Changed]) -> None:
        if not changed:
            return
        requests = [(c.state, self._feeds(c)) for c in changed.values()]
        for user_id, c in changed.items():
            self.states[user_id] = state_codec.dumps(c.state)
        points = [
            UserPoint(uid, vecs)
            for uid, c in changed.items()
            if (vecs := c.state.named_vectors())  # a user known only by a follow has no vector
        ]
        if points:
            with self._timed_store("upsert_users"):
                self.store.upsert_users(points)
        # Every changed feed of every user in one pass (one item product per batch).
        all_recs = self.model.rank(requests)
        self.metrics.feeds_ranked.inc(sum(len(feeds) for _, feeds in requests))
        for (user_id, c), recs in zip(changed.items(), all_recs, strict=True):
            await self.emitter.recommendations(user_id, self._payload(user_id, c.trigger, recs))
            self.metrics.recommendations.inc()
            if c.published_at is not None:
                # Kafka timestamps are wall-clock seconds from the producer's host.
                waited = max(0.0, time.time() - c.published_at)
                self.metrics.event_to_recommendation_seconds.observe(waited)
                if c.is_new and c.topic in COLD_START_TRIGGERS:
                    self.metrics.cold_start_seconds.labels(COLD_START_TRIGGERS[c.topic]).observe(
                        waited
                    )

    def _feeds(self, c: Changed) -> list[Feed]:
        """The feeds a user's events changed, marked as ranked in the state.

        Always the global feed and the events' own scenes; every scene after a social event
        (it moves every scene vector); and a scene feed last ranked ``refresh_events`` of the
        user's events ago or more: the other scenes borrow from the global vector, which
        each event moves a little, so their feeds are refreshed now and then, not each time.
        """
        state = c.state
        feeds: list[Feed] = [None]
        for scene in state.active_scenes:
            last = state.ranked_at.get(scene)
            if (
                c.every_scene
                or scene in c.scenes
                or last is None
                or state.n_events - last >= self.config.refresh_events
            ):
                feeds.append(scene)
        for feed in feeds:
            state.ranked_at[feed or GLOBAL] = state.n_events
        return feeds

    def _payload(
        self, user_id: str, trigger: str | None, recs: dict[str, list[Scored]]
    ) -> dict[str, object]:
        return {
            "user_id": user_id,
            "generated_at": time.time(),
            "trigger_event_id": trigger,
            "model_version": self.config.model_version,
            "scenes": to_payload(recs),
        }

    def recommend_now(self, user_id: str) -> dict[str, object] | None:
        """Every feed of a known user, computed now (the pull API's fallback), else None."""
        raw = self.states.get(user_id)
        if raw is None:
            return None
        state = state_codec.loads(raw)
        recs = self.model.rank([(state, [None, *state.active_scenes])])[0]
        return self._payload(user_id, state.last_event_id, recs)

    async def forget(self, user_ids: Sequence[str]) -> None:
        """Erase users everywhere this worker keeps them: state, vectors, recommendations."""
        for user_id in user_ids:
            if user_id in self.states:
                del self.states[user_id]  # the table writes a tombstone to its changelog
            with self._timed_store("delete_user"):
                self.store.delete_user(user_id)
            await self.emitter.forget(user_id)
            self.metrics.forgotten.inc()
            self.metrics.events.labels("users.profiles", "", "forgotten").inc()
            log.info("forgot user %r: state, vectors and recommendations erased", user_id)

    # --- one method per input topic ----------------------------------------------------------
    async def on_clicks(self, batch: Sequence[Incoming]) -> None:
        events = await self._parse(batch, ClickEvent)
        await self._wait_for_items({e.item_id for _, e in events})
        deltas = DeltaBatch()

        def apply(state: UserState, e: ClickEvent, i: int) -> None:
            vec = self.index.vector(e.item_id)
            if vec is None:
                raise BadEvent("unknown_item", f"item {e.item_id!r} is not in the catalog")
            # Item statistics first: transitions and co-occurrence count this click with
            # what the user had before it.
            msg = events[i][0]
            source = source_of("events.click", msg.partition)
            self.model.click_deltas(deltas, state, e.item_id, e.ts, source, msg.offset)
            state.apply_item(e.item_id, vec, e.scene, click_weight(e.dwell_ms))

        await self._apply_per_user(
            "events.click", events, lambda e: e.user_id, apply, deltas=deltas
        )

    async def on_comments(self, batch: Sequence[Incoming]) -> None:
        events = await self._parse(batch, CommentEvent)
        await self._wait_for_items({e.item_id for _, e in events})
        texts = await self._encode([e.text for _, e in events]) if events else None
        deltas = DeltaBatch()

        def apply(state: UserState, e: CommentEvent, i: int) -> None:
            vec = self.index.vector(e.item_id)
            if vec is None:
                raise BadEvent("unknown_item", f"item {e.item_id!r} is not in the catalog")
            assert texts is not None
            msg = events[i][0]
            source = source_of("events.comment", msg.partition)
            self.model.click_deltas(deltas, state, e.item_id, e.ts, source, msg.offset)
            state.apply_comment(e.item_id, vec, texts[i], e.scene)

        await self._apply_per_user(
            "events.comment", events, lambda e: e.user_id, apply, deltas=deltas
        )

    async def _send_deltas(self, deltas: DeltaBatch) -> None:
        if len(deltas):
            assert self.stats_sink is not None
            await self.stats_sink.send(deltas)
            self.metrics.item_deltas.inc(len(deltas))

    async def on_social(self, batch: Sequence[Incoming]) -> None:
        events = await self._parse(batch, SocialEvent)
        with self._timed_store("get_users"):
            targets = self.store.get_users(sorted({e.target_user_id for _, e in events}))

        def apply(state: UserState, e: SocialEvent, _: int) -> None:
            if e.target_user_id == e.user_id:
                raise BadEvent("self_reference", "a user cannot follow or like themselves")
            state.apply_social(e.kind, e.target_user_id, targets.get(e.target_user_id))

        await self._apply_per_user(
            "events.social", events, lambda e: e.user_id, apply, every_scene=True
        )

    async def on_profiles(self, batch: Sequence[Incoming]) -> None:
        # A tombstone (null value under a user's key) on this compacted topic asks to
        # forget that user (``scenerec forget``); it is applied in order with the profiles.
        forget = [m.key for m in batch if m.value is None and m.key]
        if forget:
            await self.forget([key.decode("utf-8", errors="replace") for key in forget])
            batch = [m for m in batch if m.value is not None or not m.key]
        events = await self._parse(batch, UserProfile)
        vecs = await self._encode([e.profile_text for _, e in events]) if events else None

        def apply(state: UserState, e: UserProfile, i: int) -> None:
            assert vecs is not None
            state.apply_profile(vecs[i])

        # A profile has no event_id: the message position identifies it.
        await self._apply_per_user("users.profiles", events, lambda e: e.user_id, apply)

    async def on_item_deltas(self, batch: Sequence[Incoming]) -> None:
        """Click deltas of every worker, for the rows of this worker's partitions."""
        assert self.stage is not None, "a worker that consumes items.deltas has a stage"
        deltas = DeltaBatch()
        for msg in batch:
            try:
                deltas.extend(loads_deltas(msg.value or b""))
            except ValueError as exc:
                await self.dead_letter(msg, BadEvent("bad_item_deltas", str(exc)))
        changed = self.stage.apply(deltas)
        self.metrics.item_rows_applied.inc(len(changed))

    def receive_stats(self, key: int, row: StatsRow) -> None:
        """A row of the shared item statistics, as every worker reads it back."""
        self.shared.receive(key, row)
        self.metrics.item_rows_received.inc()

    async def on_catalog(self, batch: Sequence[Incoming]) -> None:
        # Busy for the whole batch (encoding 500 items takes seconds on a CPU) and a while after.
        self._catalog_busy_until = math.inf
        try:
            await self._index_catalog(batch)
        finally:
            self._catalog_busy_until = time.monotonic() + CATALOG_QUIET_S

    async def _index_catalog(self, batch: Sequence[Incoming]) -> None:
        events = await self._parse(batch, CatalogItem)
        if not events:
            return
        texts = [item_text(e.title, e.description, e.scenes) for _, e in events]
        text_vecs = await self._encode(texts)
        points = []
        for (_, e), text_vec in zip(events, text_vecs, strict=True):
            kg_vec = self.kg.embed((r.relation, r.target) for r in e.relations)
            vec = fuse_item(np.asarray(text_vec, dtype=np.float32), kg_vec)
            facts = tuple(f"{r.relation} {r.target}" for r in e.relations)
            self.index.upsert(e.item_id, vec, e.scenes, e.title, facts)
            points.append(ItemPoint(e.item_id, vec, tuple(e.scenes), e.title, 0.0, facts))
        with self._timed_store("upsert_items"):
            self.store.upsert_items(points)
        if self.shared.pending:  # statistics that named items not indexed until now
            self.shared.retry()
        self.metrics.events.labels("catalog.items", "", "ok").inc(len(points))
        self.metrics.items_indexed.set(len(self.index))


#: Topics whose first event for a user starts that user's cold start, and the metric label.
COLD_START_TRIGGERS = {"users.profiles": "profile", "events.click": "first_click"}


@dataclass
class Changed:
    """A user touched by a batch: the new state and what the next message must name."""

    state: UserState
    trigger: str
    published_at: float | None
    is_new: bool
    topic: str
    #: The scenes of the batch's events for this user; ``every_scene``: all changed.
    scenes: set[str] = field(default_factory=set)
    every_scene: bool = False


def _scenes_of(event: BaseModel) -> list[str]:
    if isinstance(event, CatalogItem):
        return list(event.scenes)
    scene = getattr(event, "scene", None)
    return [scene] if isinstance(scene, str) else []

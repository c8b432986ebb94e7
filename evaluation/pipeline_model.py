"""The streaming worker's own pipeline, driven in-process, scored Protocol-B style.

Two ways to run the same slice of ml-100k through :class:`streams.pipeline.Pipeline`:

* in-process (this module): the pipeline object itself, with a dict as user state, the
  bundled :class:`~embeddings.encoder.SentenceEncoder` in this process, an embedded Qdrant
  Edge store in a temporary folder and an emitter that keeps the recommendation messages;
* replay (``evaluation.replay``): the same events published to Kafka, processed by a real
  Faust worker that encodes through Ray Serve, recommendations read from the output topic.

Both are *drivers* behind one small interface, and :func:`run_slice` scores either one in
the same way, so a difference in the numbers can only come from the drivers.

Scoring (EVALUATION.md, Protocol B, as a streaming app sees it): before each scored click
``(u, i)`` the list that counts is the ``global`` top-10 of the last recommendations
message ``u`` received (a streaming system pushes a list after each of the user's own
events; there is no fresher one to ask for). The target's rank is its 1-based position
in that list (the worker's lists have no ties: it breaks them by catalog row), and Hit,
NDCG and MRR at 10 follow from ``evaluation.metrics.target_metrics``. The worker never
recommends what the user had, which is Protocol B's exclusion.

Order: every scored event is processed alone, and the next one is sent only after its
recommendations came back. Popularity is shared by all users, so two users' events in
one worker batch would make each list depend on how the broker batched them; one event
at a time makes the replay deterministic. A user's profile goes right before their first
click, as ``scenerec load`` publishes it. Warm-up clicks (ingested, not scored) may go
in bulk; a user's first scored click after a warm-up is then only ingested ("primed"),
because the list before it came out of a batch.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson

from embeddings.encoder import SentenceEncoder
from embeddings.ranking import GLOBAL, ItemIndex
from embeddings.vectors import Matrix
from evaluation.metrics import HIT, MRR, NDCG, Estimate, K, summarize, target_metrics
from scenerec.datasets import Dataset
from streams.metrics import WorkerMetrics
from streams.pipeline import Incoming, Pipeline, PipelineConfig
from streams.records import DeadLetter
from vectorstore import open_store

log = logging.getLogger(__name__)

Record = dict[str, Any]
Payload = dict[str, Any]

#: The metrics of EVALUATION.md's Protocol B (Recall of one target is Hit).
METRICS = (HIT, NDCG, MRR)
#: Messages per pipeline call in bulk steps: the worker's default ``catalog_batch_max``.
#: (The warm-up's state does not depend on it: clicks are applied one by one, in order.)
CATALOG_BATCH = 500


class ReplayError(RuntimeError):
    """An event did not lead to the recommendations message it should have."""


# --- the slice ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplaySlice:
    """The whole catalog, then ``clicks[start:start+warmup]`` unscored, then ``events`` scored."""

    items: tuple[Record, ...]
    profiles: Mapping[str, Record]
    warmup: tuple[Record, ...]
    scored: tuple[Record, ...]
    start: int

    def describe(self) -> dict[str, Any]:
        users = {c["user_id"] for c in self.warmup + self.scored}
        return {
            "dataset": "ml-100k",
            "rule": "clicks on the catalog's items in time order (stable sort): "
            "[start, start+warmup) ingested, [start+warmup, start+warmup+events) scored; "
            "profile before a user's first click",
            "start": self.start,
            "warmup": len(self.warmup),
            "events": len(self.scored),
            "users": len(users),
            "profiles": len(self.profiles),
            "items": len(self.items),
        }


def make_slice(
    data: Dataset,
    events: int,
    start: int = 0,
    warmup: int = 0,
    items: int | None = None,
    profiles: bool = True,
) -> ReplaySlice:
    """A deterministic slice of the loader's time-ordered clicks (see :class:`ReplaySlice`).

    ``items``: keep only the first ``items`` catalog items and the clicks on them (a
    smaller catalog to encode, for quick runs); the slice is then taken from those clicks.
    """
    if events < 1 or start < 0 or warmup < 0 or (items is not None and items < 1):
        raise ValueError("events and items must be >= 1, start and warmup >= 0")
    catalog = data.items if items is None else data.items[:items]
    known = {it["item_id"] for it in catalog}
    all_clicks = data.clicks if items is None else [c for c in data.clicks if c["item_id"] in known]
    end = start + warmup + events
    if end > len(all_clicks):
        raise ValueError(f"the slice ends at click {end}, there are {len(all_clicks)}")
    clicks = all_clicks[start:end]
    users = {c["user_id"] for c in clicks}
    return ReplaySlice(
        items=tuple(catalog),
        profiles={p["user_id"]: p for p in data.profiles if p["user_id"] in users}
        if profiles
        else {},
        warmup=tuple(clicks[:warmup]),
        scored=tuple(clicks[warmup:]),
        start=start,
    )


# --- drivers -------------------------------------------------------------------------------


class Driver(Protocol):
    """One way to get events into the pipeline and its recommendations back."""

    async def index_catalog(self, items: Sequence[Record]) -> None: ...

    async def ingest(self, profiles: Sequence[Record], clicks: Sequence[Record]) -> None:
        """Profiles, then clicks, as fast as the pipeline takes them; their lists are ignored."""

    async def profile(self, profile: Record) -> Payload:
        """Apply one profile alone; return the recommendations message it caused."""

    async def click(self, click: Record) -> Payload:
        """Apply one click alone; return the recommendations message it caused."""


class EncoderAdapter:
    """A :class:`SentenceEncoder` behind the pipeline's async ``TextEncoder`` interface."""

    def __init__(self, encoder: SentenceEncoder) -> None:
        self.encoder = encoder

    async def encode(self, texts: Sequence[str]) -> Matrix:
        # Off the event loop, as the worker's HTTP encoder client is.
        return await asyncio.to_thread(self.encoder.encode, list(texts))


@dataclass
class CollectingEmitter:
    """Keeps every recommendations message (in order) and every dead letter."""

    recommendations_sent: list[Payload] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)

    async def recommendations(self, user_id: str, payload: dict[str, object]) -> None:
        self.recommendations_sent.append(payload)

    async def dead_letter(self, key: str | None, letter: DeadLetter) -> None:
        self.dead_letters.append(letter)

    async def forget(self, user_id: str) -> None:
        return None  # a replay never forgets anyone

    async def flush(self) -> None:
        return None


class InProcessDriver:
    """The worker's :class:`Pipeline`, called directly, one message list per call."""

    def __init__(self, pipeline: Pipeline, emitter: CollectingEmitter) -> None:
        self.pipeline = pipeline
        self.emitter = emitter
        self._offsets: dict[str, int] = defaultdict(int)

    def _messages(self, topic: str, key_field: str, records: Iterable[Record]) -> list[Incoming]:
        out = []
        for rec in records:
            out.append(
                Incoming(
                    value=orjson.dumps(rec),
                    topic=topic,
                    partition=0,
                    offset=self._offsets[topic],
                    key=str(rec[key_field]).encode(),
                )
            )
            self._offsets[topic] += 1
        return out

    def _only_message(self, before: int, what: str) -> Payload:
        new = self.emitter.recommendations_sent[before:]
        if len(new) != 1:
            dead = [d.error for d in self.emitter.dead_letters[-3:]]
            raise ReplayError(f"{what}: {len(new)} recommendations messages (dead letters {dead})")
        return new[0]

    async def index_catalog(self, items: Sequence[Record]) -> None:
        for i in range(0, len(items), CATALOG_BATCH):
            batch = self._messages("catalog.items", "item_id", items[i : i + CATALOG_BATCH])
            await self.pipeline.on_catalog(batch)

    async def ingest(self, profiles: Sequence[Record], clicks: Sequence[Record]) -> None:
        if profiles:
            await self.pipeline.on_profiles(self._messages("users.profiles", "user_id", profiles))
        for i in range(0, len(clicks), CATALOG_BATCH):
            batch = self._messages("events.click", "user_id", clicks[i : i + CATALOG_BATCH])
            await self.pipeline.on_clicks(batch)

    async def profile(self, profile: Record) -> Payload:
        before = len(self.emitter.recommendations_sent)
        await self.pipeline.on_profiles(self._messages("users.profiles", "user_id", [profile]))
        return self._only_message(before, f"profile of user {profile['user_id']}")

    async def click(self, click: Record) -> Payload:
        before = len(self.emitter.recommendations_sent)
        await self.pipeline.on_clicks(self._messages("events.click", "user_id", [click]))
        return self._only_message(before, f"click {click['event_id']}")


@asynccontextmanager
async def in_process_driver(
    scenes: Sequence[str],
    encoder: SentenceEncoder | None = None,
    store_dir: Path | None = None,
    top_k: int = K,
    colearn_path: Path | None = None,
    model_path: Path | None = None,
) -> AsyncIterator[InProcessDriver]:
    """A fresh pipeline: empty user state and index, a vector store in a temporary folder.

    ``colearn_path``: the worker's ``SCENEREC_COLEARN_PATH`` (None: plain scene model);
    ``model_path``: its ``SCENEREC_MODEL_PATH`` (None: the built-in ranking blend).
    """
    enc = encoder if encoder is not None else await asyncio.to_thread(SentenceEncoder)
    with tempfile.TemporaryDirectory(prefix="scenerec-pipeline-model-") as tmp:
        store = open_store(store_dir if store_dir is not None else Path(tmp) / "qdrant")
        try:
            store.ensure_collections(enc.dim, scenes)
            emitter = CollectingEmitter()
            pipeline = Pipeline(
                # Every item is indexed before any click: never wait for the catalog.
                config=PipelineConfig(
                    scenes=tuple(scenes),
                    top_k=top_k,
                    unknown_item_wait_s=0,
                    colearn_path=str(colearn_path) if colearn_path else None,
                    model_path=str(model_path) if model_path else None,
                ),
                store=store,
                index=ItemIndex(enc.dim),
                encoder=EncoderAdapter(enc),
                states={},
                emitter=emitter,
                metrics=WorkerMetrics.create(),
            )
            yield InProcessDriver(pipeline, emitter)
        finally:
            store.close()


# --- scoring -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """One scored-phase click: the list the user had before it and what it caused."""

    index: int
    user: str
    item: str
    event_id: str
    #: ``scored``; ``primed`` (the list before it came from the warm-up: not scored);
    #: ``unserved`` (no list at all: scored as a miss).
    status: str
    before: tuple[str, ...]
    rank: int | None
    metrics: dict[str, float]
    #: Every scene's list (item ids) of the message this click caused.
    after: dict[str, tuple[str, ...]]
    #: Scores of the global list of that message (to compare modes to the last digit).
    after_scores: tuple[float, ...]


@dataclass
class ModeResult:
    mode: str
    outcomes: list[Outcome]
    seconds: dict[str, float]

    @property
    def counted(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != "primed"]

    def summary(self) -> dict[str, Estimate]:
        return summarize([(o.user, o.metrics) for o in self.counted], METRICS)

    def to_json(self) -> dict[str, Any]:
        status = [o.status for o in self.outcomes]
        return {
            "events": len(self.outcomes),
            "scored": status.count("scored"),
            "unserved": status.count("unserved"),
            "primed": status.count("primed"),
            "metrics": {
                m: {"mean": e.mean, "low": e.low, "high": e.high, "users": e.n_users}
                for m, e in self.summary().items()
            },
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
        }


def lists_of(payload: Payload) -> dict[str, tuple[str, ...]]:
    return {s: tuple(r["item_id"] for r in recs) for s, recs in payload["scenes"].items()}


def _judge(
    latest: Mapping[str, tuple[str, ...] | None], user: str, item: str
) -> tuple[str, tuple[str, ...], int | None, dict[str, float]]:
    """Status, the list that counts, the target's rank in it, and the metrics."""
    miss = target_metrics(K + 1)
    if user not in latest:
        return "unserved", (), None, miss
    before = latest[user]
    if before is None:
        return "primed", (), None, miss
    rank = before.index(item) + 1 if item in before else None
    return "scored", before, rank, target_metrics(rank) if rank is not None else miss


async def run_slice(mode: str, driver: Driver, data: ReplaySlice) -> ModeResult:
    """Index the catalog, ingest the warm-up, then score every scored click in order."""
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    await driver.index_catalog(data.items)
    seconds["catalog"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    warm_users = list(dict.fromkeys(c["user_id"] for c in data.warmup))
    await driver.ingest([data.profiles[u] for u in warm_users if u in data.profiles], data.warmup)
    seconds["warmup"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    # user -> the global list of their latest message, None while it came from the warm-up
    latest: dict[str, tuple[str, ...] | None] = dict.fromkeys(warm_users)
    outcomes: list[Outcome] = []
    for idx, click in enumerate(data.scored):
        user = click["user_id"]
        if user not in latest and user in data.profiles:
            latest[user] = lists_of(await driver.profile(data.profiles[user])).get(GLOBAL, ())
        status, before, rank, metrics = _judge(latest, user, click["item_id"])
        payload = await driver.click(click)
        after = lists_of(payload)
        latest[user] = after.get(GLOBAL, ())
        outcomes.append(
            Outcome(
                index=idx,
                user=user,
                item=click["item_id"],
                event_id=click["event_id"],
                status=status,
                before=before,
                rank=rank,
                metrics=metrics,
                after=after,
                after_scores=tuple(float(r["score"]) for r in payload["scenes"].get(GLOBAL, [])),
            )
        )
    seconds["scored"] = time.perf_counter() - t0
    seconds["total"] = sum(seconds.values())
    return ModeResult(mode, outcomes, seconds)


async def run_in_process(
    data: ReplaySlice,
    scenes: Sequence[str],
    encoder: SentenceEncoder | None = None,
    colearn_path: Path | None = None,
    model_path: Path | None = None,
) -> ModeResult:
    t0 = time.perf_counter()
    async with in_process_driver(
        scenes, encoder, colearn_path=colearn_path, model_path=model_path
    ) as driver:
        load_s = time.perf_counter() - t0
        result = await run_slice("in-process", driver, data)
    result.seconds["encoder_load"] = load_s
    result.seconds["total"] += load_s
    return result


# --- comparing two modes -------------------------------------------------------------------


def compare(a: ModeResult, b: ModeResult, examples: int = 10) -> dict[str, Any]:
    """How far apart two runs of the same slice are: metrics, lists, scores."""
    if [o.event_id for o in a.outcomes] != [o.event_id for o in b.outcomes]:
        raise ValueError("the two results are not of the same slice")
    sa, sb = a.summary(), b.summary()
    pairs = list(zip(a.outcomes, b.outcomes, strict=True))
    counted = [(x, y) for x, y in pairs if x.status != "primed" and y.status != "primed"]
    same_before = [x.before == y.before for x, y in counted]
    same_set = [set(x.before) == set(y.before) for x, y in counted]
    overlap = [len(set(x.before) & set(y.before)) / K for x, y in counted]
    same_after = [x.after == y.after for x, y in pairs]
    score_diffs = [
        abs(p - q)
        for x, y in pairs
        if x.after.get(GLOBAL) == y.after.get(GLOBAL)
        for p, q in zip(x.after_scores, y.after_scores, strict=True)
    ]
    differing = [
        {
            "event": x.index,
            "event_id": x.event_id,
            "user": x.user,
            "target": x.item,
            a.mode: list(x.before),
            b.mode: list(y.before),
        }
        for x, y in counted
        if x.before != y.before
    ]
    return {
        "difference": {m: sb[m].mean - sa[m].mean for m in METRICS},
        "events_compared": len(counted),
        "same_status": sum(x.status == y.status for x, y in pairs) / max(1, len(pairs)),
        "identical_global_lists": _share(same_before),
        "same_global_sets": _share(same_set),
        "mean_overlap_at_10": float(np.mean(overlap)) if overlap else float("nan"),
        "identical_messages_all_scenes": _share(same_after),
        "max_abs_score_difference": max(score_diffs, default=0.0),
        "differing_examples": differing[:examples],
    }


def _share(flags: Sequence[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")

"""Many users at once: the event stream of the many-users benchmark (issue 20).

    python -m bench.workload --catalog 1682 --events 100000          # what it draws
    python -m bench.workload --catalog 1682 --out /tmp/stream.jsonl  # profiles, then events
    python -m bench.workload --catalog 1682 --publish --rate 500 --seconds 60
    python -m bench.workload --help

``N`` users (default 10,000), each with a profile that is published first (on
``users.profiles``). Then every event comes from a user drawn uniformly among the ``N``;
90% are clicks, 7% comments (a short text), 3% social (follow, like or share, to another of
the ``N`` users). A click's or comment's item is drawn Zipf(1.1) over the catalog (the item
of rank ``r`` has probability proportional to ``r ** -1.1``; ranks are given to the items
by a seeded shuffle, so the most popular item is not simply the first published) and its
scene uniformly among the item's scenes (ml-100k's items and the synthetic ones of
bench/catalog.py span six scenes). New users (the new-user phase) come from their own
stream: a profile, then a first click.

Everything is a function of the seed, the catalog and ``N``, except each event's ``ts``
(the generator's clock when it is drawn): the same arguments give the same users,
profiles, kinds, items, scenes, texts and targets, whatever the size of the pieces they
are read in. Event ids carry a run tag, so two runs never share one.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

CLICK = "events.click"
COMMENT = "events.comment"
SOCIAL = "events.social"
PROFILES = "users.profiles"
#: The input topics this workload's events go to (profiles are sent before, and apart).
EVENT_TOPICS = (CLICK, COMMENT, SOCIAL)
SOCIAL_KINDS = ("follow", "like", "share")

#: Events drawn per numpy call; reading in other pieces draws the same stream.
_CHUNK = 4096

_OPENERS = (
    "Loved",
    "Really enjoyed",
    "Not a fan of",
    "Would watch again for",
    "Disappointed by",
    "Great",
    "Surprised by",
    "Could not stand",
)
_ASPECTS = (
    "the ending",
    "the soundtrack",
    "the cast",
    "the pacing",
    "the story",
    "the visuals",
    "the dialogue",
    "every minute",
)
_CLOSERS = ("", "!", ", would recommend", ", too long though", ", my kids too")
_OCCUPATIONS = (
    "student",
    "engineer",
    "nurse",
    "teacher",
    "writer",
    "programmer",
    "artist",
    "retired",
    "salesman",
    "librarian",
    "doctor",
    "homemaker",
)


@dataclass(frozen=True)
class WorkloadConfig:
    users: int = 10_000
    zipf_exponent: float = 1.1
    click_share: float = 0.90
    comment_share: float = 0.07
    social_share: float = 0.03
    seed: int = 20

    def __post_init__(self) -> None:
        if self.users < 2:
            raise ValueError(
                f"users: at least 2 (social events need a second user), got {self.users}"
            )
        if self.zipf_exponent <= 0:
            raise ValueError(f"zipf_exponent must be > 0, got {self.zipf_exponent}")
        shares = (self.click_share, self.comment_share, self.social_share)
        if min(shares) < 0 or abs(sum(shares) - 1.0) > 1e-9:
            raise ValueError(f"click/comment/social shares must be >= 0 and sum to 1, got {shares}")


def zipf_cdf(n: int, exponent: float) -> npt.NDArray[np.float64]:
    """Cumulative probabilities of ranks 1..n under Zipf(``exponent``)."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    return cdf


class Workload:
    """The many-users stream over ``items`` (catalog records: ``item_id`` and ``scenes``)."""

    def __init__(
        self,
        items: Sequence[dict[str, Any]],
        config: WorkloadConfig | None = None,
        tag: str = "mu",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not items:
            raise ValueError("the workload needs a catalog of at least one item")
        self.config = config or WorkloadConfig()
        self.tag = tag
        self._clock = clock
        self._item_ids = [str(i["item_id"]) for i in items]
        self._scenes = [tuple(i["scenes"]) for i in items]
        self._scene_names = sorted({s for ss in self._scenes for s in ss})
        seed = self.config.seed
        #: ``by_rank[r]``: the catalog position of the item of popularity rank ``r`` (0-based).
        self.by_rank = np.random.default_rng([seed, 0]).permutation(len(items))
        self._cdf = zipf_cdf(len(items), self.config.zipf_exponent)
        self._rng = np.random.default_rng([seed, 1])
        self._new_rng = np.random.default_rng([seed, 2])
        self._chunk: Iterator[tuple[str, dict[str, Any]]] = iter(())
        self._seq = 0
        self._new = 0
        self.users = [f"{tag}-u{i}" for i in range(self.config.users)]

    @property
    def item_ids(self) -> list[str]:
        return self._item_ids

    # --- users ---------------------------------------------------------------------------
    def profile(self, user_id: str, draw: int) -> dict[str, Any]:
        """A profile for ``user_id``: age, occupation and two liked scenes from ``draw``."""
        scenes = self._scene_names
        age = 16 + draw % 60
        occupation = _OCCUPATIONS[(draw // 60) % len(_OCCUPATIONS)]
        first = scenes[(draw // 720) % len(scenes)]
        second = scenes[(draw // 7) % len(scenes)]
        likes = first if first == second else f"{first} and {second}"
        return {
            "user_id": user_id,
            "profile_text": f"A {age}-year-old {occupation} who likes {likes}.",
            "attributes": {"age": age, "occupation": occupation},
        }

    def profiles(self) -> list[tuple[bytes, dict[str, Any]]]:
        """Every user's profile, keyed by user id (published before any event)."""
        draws = np.random.default_rng([self.config.seed, 3]).integers(0, 2**31, len(self.users))
        return [
            (u.encode(), self.profile(u, int(d))) for u, d in zip(self.users, draws, strict=True)
        ]

    # --- the stream ----------------------------------------------------------------------
    def next_event(self, phase: str = "") -> tuple[str, dict[str, Any]]:
        """The next ``(topic, event)`` of the stream (``phase`` is kept in the event id)."""
        try:
            topic, event = next(self._chunk)
        except StopIteration:
            self._chunk = iter(self._draw_chunk())
            topic, event = next(self._chunk)
        self._seq += 1
        event["event_id"] = (
            f"{self.tag}-{phase}-{self._seq}" if phase else f"{self.tag}-{self._seq}"
        )
        event["ts"] = self._clock()
        return topic, event

    def events(self, n: int, phase: str = "") -> list[tuple[str, dict[str, Any]]]:
        return [self.next_event(phase) for _ in range(n)]

    def _items(self, rng: np.random.Generator, n: int) -> npt.NDArray[np.intp]:
        ranks = np.searchsorted(self._cdf, rng.random(n), side="right")
        return self.by_rank[np.minimum(ranks, len(self._cdf) - 1)]

    def _draw_chunk(self) -> list[tuple[str, dict[str, Any]]]:
        rng, cfg, n = self._rng, self.config, _CHUNK
        users = rng.integers(0, cfg.users, n)
        kind = rng.random(n)
        items = self._items(rng, n)
        scene_draw = rng.integers(0, 2**31, n)
        text_draw = rng.integers(0, 2**31, n)
        other = rng.integers(1, cfg.users, n)  # target = (user + other) % N: never the user
        social_kind = rng.integers(0, len(SOCIAL_KINDS), n)
        out: list[tuple[str, dict[str, Any]]] = []
        comment_edge = cfg.click_share + cfg.comment_share
        for j in range(n):
            user = self.users[users[j]]
            if kind[j] >= comment_edge:
                target = self.users[(users[j] + other[j]) % cfg.users]
                out.append(
                    (
                        SOCIAL,
                        {
                            "user_id": user,
                            "target_user_id": target,
                            "kind": SOCIAL_KINDS[social_kind[j]],
                        },
                    )
                )
                continue
            row = int(items[j])
            scenes = self._scenes[row]
            event = {
                "user_id": user,
                "item_id": self._item_ids[row],
                "scene": scenes[scene_draw[j] % len(scenes)],
            }
            if kind[j] < cfg.click_share:
                out.append((CLICK, event))
            else:
                out.append((COMMENT, {**event, "text": comment_text(int(text_draw[j]))}))
        return out

    # --- new users -----------------------------------------------------------------------
    def new_user(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """A user never seen before: ``(profile, first click)`` (the click's ``ts`` is the
        clock now; the caller restamps it when it sends it later)."""
        rng = self._new_rng
        uid = f"{self.tag}-new{self._new}"
        self._new += 1
        profile = self.profile(uid, int(rng.integers(0, 2**31)))
        row = int(self._items(rng, 1)[0])
        scenes = self._scenes[row]
        click = {
            "event_id": f"{uid}-e0",
            "user_id": uid,
            "item_id": self._item_ids[row],
            "scene": scenes[int(rng.integers(0, len(scenes)))],
            "ts": self._clock(),
        }
        return profile, click


def comment_text(draw: int) -> str:
    opener = _OPENERS[draw % len(_OPENERS)]
    aspect = _ASPECTS[(draw // len(_OPENERS)) % len(_ASPECTS)]
    closer = _CLOSERS[(draw // (len(_OPENERS) * len(_ASPECTS))) % len(_CLOSERS)]
    return f"{opener} {aspect}{closer}"


# --- what a stream holds -------------------------------------------------------------------


def fitted_zipf_exponent(counts: npt.NDArray[np.int64], top: int = 200) -> float:
    """The Zipf exponent of rank counts: minus the slope of log count on log rank over the
    ``top`` ranks (least squares; ranks never drawn are left out)."""
    c = counts[:top].astype(np.float64)
    ranks = np.arange(1, c.size + 1, dtype=np.float64)
    keep = c > 0
    slope = np.polyfit(np.log(ranks[keep]), np.log(c[keep]), 1)[0]
    return float(-slope)


def describe(workload: Workload, events: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Shares of each kind, distinct users and items, and the fitted Zipf exponent."""
    kinds = Counter(topic for topic, _ in events)
    rank_of = np.empty(len(workload.by_rank), dtype=np.int64)
    rank_of[workload.by_rank] = np.arange(len(workload.by_rank))
    row_of = {item: row for row, item in enumerate(workload.item_ids)}
    item_rows = [row_of[e["item_id"]] for t, e in events if t != SOCIAL]
    counts = np.bincount(rank_of[item_rows], minlength=len(rank_of)) if item_rows else None
    scenes = Counter(e["scene"] for t, e in events if t != SOCIAL)
    n = len(events) or 1
    return {
        "events": len(events),
        "shares": {t: round(kinds[t] / n, 4) for t in EVENT_TOPICS},
        "distinct_users": len({e["user_id"] for _, e in events}),
        "distinct_items": len(set(item_rows)),
        "scenes": dict(sorted(scenes.items())),
        "zipf_exponent_fitted": None if counts is None else round(fitted_zipf_exponent(counts), 3),
        "top_item_share": None if counts is None else round(float(counts[0]) / len(item_rows), 4),
    }


# --- command line --------------------------------------------------------------------------


def catalog_items(size: int) -> list[dict[str, Any]]:
    """ml-100k's items (1682), or ml-100k's followed by synthetic ones (labelled) up to size."""
    from bench.catalog import synthetic_items
    from scenerec.config import Settings
    from scenerec.datasets import load_ml100k

    data = load_ml100k(Settings().data_dir)
    return list(data.items) if size <= len(data.items) else synthetic_items(size, data)


async def publish_stream(workload: Workload, rate: float, seconds: float) -> dict[str, float]:
    """Profiles, then ``rate`` events/s for ``seconds`` to the broker of ``Settings()``."""
    from bench.load import paced, publish
    from scenerec.config import Settings
    from scenerec.kafka import producer

    settings = Settings()
    t_profiles = await publish(settings, PROFILES, workload.profiles(), "profiles")
    prod = producer(settings)
    await prod.start()
    try:
        sent = await paced(prod, settings, workload, rate, seconds, "cli")
    finally:
        await prod.stop()
    return {"profiles_seconds": round(t_profiles, 1), **sent}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.workload",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--catalog", type=int, default=1682, help="catalog size (above 1682: synthetic)")
    p.add_argument("--users", type=int, default=WorkloadConfig.users)
    p.add_argument("--zipf", type=float, default=WorkloadConfig.zipf_exponent, help="item exponent")
    p.add_argument("--seed", type=int, default=WorkloadConfig.seed)
    p.add_argument("--events", type=int, default=100_000, help="events to draw and describe")
    p.add_argument("--out", type=Path, default=None, help="write profiles + events as JSON lines")
    p.add_argument("--publish", action="store_true", help="send to the configured broker instead")
    p.add_argument("--rate", type=float, default=500.0, help="events/s with --publish")
    p.add_argument("--seconds", type=float, default=60.0, help="seconds of events with --publish")
    p.add_argument("--tag", default=None, help="user/event id prefix (default: a fresh one)")
    args = p.parse_args(argv)
    tag = args.tag or f"mu{time.strftime('%H%M%S')}"
    try:
        config = WorkloadConfig(users=args.users, zipf_exponent=args.zipf, seed=args.seed)
    except ValueError as exc:
        p.error(str(exc))
    workload = Workload(catalog_items(args.catalog), config, tag)
    if args.publish:
        print(orjson.dumps(asyncio.run(publish_stream(workload, args.rate, args.seconds))).decode())
        return 0
    events = workload.events(args.events)
    if args.out is not None:
        with args.out.open("wb") as f:
            for key, profile in workload.profiles():
                f.write(orjson.dumps({"topic": PROFILES, "key": key.decode(), "value": profile}))
                f.write(b"\n")
            for topic, event in events:
                f.write(orjson.dumps({"topic": topic, "key": event["user_id"], "value": event}))
                f.write(b"\n")
    summary = describe(workload, events)
    summary["catalog"] = args.catalog
    summary["config"] = config.__dict__
    sys.stdout.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

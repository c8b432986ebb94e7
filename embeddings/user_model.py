"""A user's state and how each kind of event changes it.

A user has a global vector and one vector per scene. Each is an exponentially weighted
running mean of the vectors of what the user engaged with: early events move it a lot
(rate ``1 / (n + 1)``, a plain mean), later ones at least ``MIN_RATE`` so that tastes can
drift. All vectors are unit length, so ``(u ⊙ s) · i`` stays comparable across users.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from embeddings.vectors import Vector, move_toward, normalize

MIN_RATE = 0.05
#: Pseudo-count of the global vector when a sparse scene borrows from it.
SCENE_PRIOR = 3.0
#: How strongly one social signal pulls a user toward the other user's vector.
SOCIAL_RATE = {"follow": 0.2, "like": 0.1, "share": 0.15, "unfollow": -0.1}
#: A comment says more than a click: its text and the item both count, with more weight.
COMMENT_WEIGHT = 1.5
PROFILE_RATE = 0.3
RECENT_ITEMS = 50
#: Followed users whose pull on this user is kept (their vector as it was when it pulled),
#: so a recommendation can name the one it came from.
FOLLOWED_KEPT = 8
SEEN_ITEMS = 5000
APPLIED_EVENTS = 1024


def _rate(n: int, weight: float) -> float:
    return min(1.0, max(MIN_RATE, 1.0 / (n + 1)) * weight)


def click_weight(dwell_ms: int | None) -> float:
    """Longer dwell = stronger signal, capped at 2x (30 s or more)."""
    if dwell_ms is None:
        return 1.0
    return 1.0 + min(dwell_ms / 30_000.0, 1.0)


@dataclass
class UserState:
    """Everything the worker keeps about one user (persisted in a Faust table)."""

    global_vec: Vector | None = None
    scene_vecs: dict[str, Vector] = field(default_factory=dict)
    scene_counts: dict[str, int] = field(default_factory=dict)
    n_events: int = 0
    profile_vec: Vector | None = None
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_ITEMS))
    seen: dict[str, None] = field(default_factory=dict)  # insertion-ordered set
    applied: deque[str] = field(default_factory=lambda: deque(maxlen=APPLIED_EVENTS))
    following: dict[str, None] = field(default_factory=dict)
    #: Other users' global vectors that pulled this one (follow, like, share), latest last.
    pulled_by: dict[str, Vector] = field(default_factory=dict)
    last_event_id: str | None = None
    #: Feed (``global`` or a scene) -> ``n_events`` when it was last ranked and sent.
    ranked_at: dict[str, int] = field(default_factory=dict)
    #: ``applied`` as a set, built on the first look-up: a scan of up to 1,024 ids per
    #: event showed in the worker's profile. Not state: the codec keeps ``applied``.
    _applied_ids: set[str] | None = field(default=None, repr=False, compare=False)

    # --- idempotence ----------------------------------------------------------------------
    def already_applied(self, event_id: str) -> bool:
        return event_id in self._applied_set()

    def mark_applied(self, event_id: str) -> None:
        ids = self._applied_set()
        if event_id not in ids:  # one entry per id: the set and the deque stay the same
            if len(self.applied) == self.applied.maxlen:
                ids.discard(self.applied[0])  # the deque drops it on the append below
            self.applied.append(event_id)
            ids.add(event_id)
        self.last_event_id = event_id

    def _applied_set(self) -> set[str]:
        if self._applied_ids is None:
            self._applied_ids = set(self.applied)
        return self._applied_ids

    # --- event kinds ----------------------------------------------------------------------
    def apply_item(self, item_id: str, item_vec: Vector, scene: str, weight: float = 1.0) -> None:
        """A click (or the item side of a comment) on ``item_id`` in ``scene``."""
        n_scene = self.scene_counts.get(scene, 0)
        self.scene_vecs[scene] = move_toward(
            self.scene_vecs.get(scene), item_vec, _rate(n_scene, weight)
        )
        self.global_vec = move_toward(self.global_vec, item_vec, _rate(self.n_events, weight))
        self.scene_counts[scene] = n_scene + 1
        self.n_events += 1
        self._saw(item_id)

    def apply_comment(self, item_id: str, item_vec: Vector, text_vec: Vector, scene: str) -> None:
        self.apply_item(item_id, normalize(item_vec + text_vec), scene, COMMENT_WEIGHT)

    def apply_social(self, kind: str, target_user: str, target: dict[str, Vector] | None) -> None:
        """Move toward (or, for unfollow, away from) another user's vectors."""
        if kind == "follow":
            self.following[target_user] = None
        elif kind == "unfollow":
            self.following.pop(target_user, None)
            self.pulled_by.pop(target_user, None)
        if not target:
            return  # the other user is not known yet: the relation is still recorded
        rate = SOCIAL_RATE[kind]
        if rate > 0 and "global" in target:
            self.pulled_by.pop(target_user, None)
            self.pulled_by[target_user] = target["global"]
            while len(self.pulled_by) > FOLLOWED_KEPT:
                self.pulled_by.pop(next(iter(self.pulled_by)))
        if "global" in target and (self.global_vec is not None or rate > 0):
            self.global_vec = move_toward(self.global_vec, target["global"], rate)
        for scene, vec in target.items():
            if scene != "global" and scene in self.scene_vecs:
                self.scene_vecs[scene] = move_toward(self.scene_vecs[scene], vec, rate)

    def apply_profile(self, profile_vec: Vector) -> None:
        """A profile seeds a new user's global vector and nudges a known one."""
        self.profile_vec = profile_vec
        rate = 1.0 if self.global_vec is None else PROFILE_RATE
        self.global_vec = move_toward(self.global_vec, profile_vec, rate)

    def _saw(self, item_id: str) -> None:
        self.recent.append(item_id)
        self.seen.pop(item_id, None)
        self.seen[item_id] = None
        while len(self.seen) > SEEN_ITEMS:
            self.seen.pop(next(iter(self.seen)))

    # --- reading ----------------------------------------------------------------------------
    @property
    def active_scenes(self) -> list[str]:
        return [s for s, n in self.scene_counts.items() if n > 0]

    def scene_vector(self, scene: str) -> Vector | None:
        """The user's vector for ``scene``; a sparse scene borrows from the global vector.

        With ``n`` events in the scene the result is ``n * u_scene + SCENE_PRIOR * u_global``
        (normalized): one click in a scene does not throw away all that is known.
        """
        own = self.scene_vecs.get(scene)
        if own is None:
            return self.global_vec
        if self.global_vec is None:
            return own
        n = self.scene_counts.get(scene, 0)
        return normalize((n * own + SCENE_PRIOR * self.global_vec).astype(np.float32))

    def named_vectors(self) -> dict[str, Vector]:
        """What goes into the vector store's ``users`` collection."""
        out = dict(self.scene_vecs)
        if self.global_vec is not None:
            out["global"] = self.global_vec
        return out

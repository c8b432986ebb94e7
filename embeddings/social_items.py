"""What the people a user follows engaged with: a per-item social signal, learned online.

``UserState.apply_social`` pulls a user's vector toward a followed user's vector *at the
moment of the follow*; when the graph is known before anyone has clicked (friendships
without time, as in lastfm-2k or yelp-core40), that pull finds nothing to pull toward.
This signal reads the follows at ranking time instead: item ``j`` scores

    log(1 + sum_f [j in I_f] / sqrt(|I_f|)) ,   f over the users ``u`` follows,

with ``I_f`` the last :data:`KEPT_ITEMS` distinct items of ``f`` (a friend with a long
history counts as one friend, not as many). Every step is incremental: a follow, an
unfollow, a click; memory is bounded by :data:`KEPT_ITEMS` per user.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
#: Distinct recent items kept per user for their followers' signal.
KEPT_ITEMS = 100


class FriendItems:
    def __init__(self, n_items: int, kept: int = KEPT_ITEMS) -> None:
        if kept < 1:
            raise ValueError("kept must be >= 1")
        self.n_items = n_items
        self.kept = kept
        self._follows: dict[str, dict[str, None]] = {}
        self._items: dict[str, dict[int, None]] = {}

    def grow(self, n_items: int) -> None:
        """Make room for ``n_items`` (a catalog that grows while the stream runs)."""
        self.n_items = max(self.n_items, n_items)

    def follow(self, source: str, target: str) -> None:
        if source != target:
            self._follows.setdefault(source, {})[target] = None

    def unfollow(self, source: str, target: str) -> None:
        self._follows.get(source, {}).pop(target, None)

    def followed(self, user: str) -> list[str]:
        return list(self._follows.get(user, ()))

    def observe(self, user: str, row: int) -> None:
        """``user`` engaged with item ``row``: their followers' signal now includes it."""
        items = self._items.setdefault(user, {})
        items.pop(row, None)
        items[row] = None
        if len(items) > self.kept:
            items.pop(next(iter(items)))

    def feature(self, user: str) -> FloatArray:
        """``log(1 + friend mass)`` of every item for ``user`` (zeros if they follow no one
        who engaged with anything)."""
        mass = np.zeros(self.n_items, dtype=np.float64)
        for friend in self._follows.get(user, ()):
            items = self._items.get(friend)
            if items:
                rows = np.fromiter(items, dtype=np.intp, count=len(items))
                mass[rows] += 1.0 / math.sqrt(len(items))
        out: FloatArray = np.log1p(mass)
        return out

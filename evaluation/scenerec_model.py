"""SceneRec under the harness's contract, built from the streaming worker's model code.

Item vectors are the worker's: encoder text vector fused with the hashed KG embedding
(``fuse_item``), stored in an ``ItemIndex``. Each user is a ``UserState`` updated by
``apply_item`` on every click, seeded from the profile text by ``apply_profile``. The
score of item ``i`` for user ``u`` blends three per-item components:

* ``popularity``: log recency-decayed click counts (``embeddings.popularity``), what is
  popular *now*, the prior every user starts from;
* ``transitions``: log of the next-item mass from the user's last items, or, for a user
  with no events yet, from the start row (what new users start with lately)
  (``embeddings.transitions``);
* ``similarity``: ``(u ⊙ s) · i`` with the user's global vector (the profile vector for a
  user not seen clicking yet) and the global scene gate, exactly the worker's ranking score;
* ``cooccurrence``: log of the item-item cosine mass from everything the user had
  (``embeddings.cooccurrence``), taste once a few events are known;
* ``gated_similarity``: ``(u ⊙ g) · i`` with the global gate ``g`` learned by BPR on the
  training events (``embeddings.colearn.fit_gates``): the same user vector, with the
  dimensions that separated clicked from unclicked items weighted up. The tuner picks
  either this or the plain similarity (or neither) per tenure bucket;
* ``social`` (only for a data set with a social graph, ``NAME.net``): what the people the
  user follows engaged with (``embeddings.social_items``). The worker's blend has no slot
  for it yet (``COMPONENTS``): a blend that weighs it is measured here, not served.

Comments (events with text) go through the worker's comment path,
``UserState.apply_comment``, when the harness has encoded their text.

The blend weights depend on the user's tenure (``embeddings.blend.TenureBlend``); they and
the decay constants are chosen on the valid split only (``evaluation.tuning``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from embeddings.blend import TenureBlend
from embeddings.colearn import GateFitConfig, GateSamples, fit_gates
from embeddings.collaborative import COMPONENTS, CollabConfig, Collaborative, FeedBlend
from embeddings.diversity import mmr
from embeddings.popularity import DecayedPopularity
from embeddings.ranking import GLOBAL, ItemIndex
from embeddings.scenes import SceneGates
from embeddings.social_items import FriendItems
from embeddings.user_model import SOCIAL_RATE, UserState
from evaluation.baselines import DAY_S, Recommender
from evaluation.data import Catalog, Event, SocialEdge

FloatArray = npt.NDArray[np.float64]
Vector = npt.NDArray[np.float32]

__all__ = ["COMPONENTS", "SOCIAL", "Diversified", "SceneRec", "SceneRecConfig"]
#: The extra component of a data set with a social graph, after ``COMPONENTS``.
SOCIAL = len(COMPONENTS)
#: Called with (event, the user's state before the event, item row) for every event the
#: model ingests, before it is applied: how per-scene models collect their training data.
Observer = Callable[[Event, UserState, int], None]


@dataclass(frozen=True)
class SceneRecConfig:
    #: Popularity's and the start row's half-lives, in days (``math.inf``: no decay,
    #: all-time counts); on an event-step clock a "day" is :attr:`clock_unit_s` events.
    half_life_days: float = 14.0
    start_half_life_days: float = 14.0
    #: Seconds per knob "day": 86,400, or 1 where timestamps are event steps (no time).
    clock_unit_s: float = DAY_S
    #: Transition counting: how many earlier items a click is credited to, and how fast
    #: the credit falls with distance.
    window: int = 5
    step_decay: float = 0.7
    #: Transition scoring: how many recent items query the counts, and their decay.
    recent: int = 5
    recency_decay: float = 0.6
    use_profiles: bool = True
    #: Fit the global gate of ``gated_similarity`` on train (BPR, L2 ``gate_reg``); off,
    #: that component is zero.
    learn_gate: bool = True
    gate_reg: float = 1e-5
    gate_negatives: str = "popular"
    #: Freshness: the popularity component is ``log pop - age_weight * log(1 + age)``,
    #: ``age`` being days since the item's first click in the stream. Among equally popular
    #: items, one that just appeared is rising; one that has been around is fading.
    age_weight: float = 0.0
    blend: TenureBlend = field(
        default_factory=lambda: TenureBlend.uniform((1.0, 2.0, 2.0, 1.0, 0.0))
    )

    def label(self) -> str:
        unit = "d" if self.clock_unit_s == DAY_S else f"x{self.clock_unit_s:g}ev"
        return (
            f"hl={self.half_life_days:g}{unit} start={self.start_half_life_days:g}{unit} "
            f"win={self.window} recent={self.recent} age={self.age_weight:g}"
        )

    @property
    def half_life_s(self) -> float:
        return self.half_life_days * self.clock_unit_s

    def with_blend(self, blend: TenureBlend) -> SceneRecConfig:
        return replace(self, blend=blend)

    def collab(self) -> CollabConfig:
        return CollabConfig(
            window=self.window,
            step_decay=self.step_decay,
            start_half_life_s=self.start_half_life_days * self.clock_unit_s,
            recent=self.recent,
            recency_decay=self.recency_decay,
            age_weight=self.age_weight,
        )


class SceneRec(Recommender):
    name = "scenerec"

    def __init__(
        self,
        catalog: Catalog,
        item_vectors: npt.NDArray[np.float32],
        profiles: Mapping[str, Vector],
        config: SceneRecConfig | None = None,
        social: Sequence[SocialEdge] = (),
        comment_vectors: Mapping[str, Vector] | None = None,
    ) -> None:
        super().__init__(catalog)
        if item_vectors.shape[0] != len(catalog):
            raise ValueError("one item vector per catalog row is needed")
        self.config = config or SceneRecConfig()
        dim = int(item_vectors.shape[1])
        self.index = ItemIndex(dim)
        for row, item in enumerate(catalog.items):
            self.index.upsert(item.id, item_vectors[row], item.scenes, item.title)
        # Ranking needs every item's score, not a top-k; ItemIndex.rank only returns the
        # top-k, so the same vectors are also kept as one matrix in catalog row order.
        self._mat = np.stack([self._vector(i) for i in catalog.ids]).astype(np.float32)
        self._has_vectors = bool(np.any(self._mat))
        self.gates = SceneGates(dim)
        self._profiles = profiles if self.config.use_profiles else {}
        n = len(catalog)
        self.popularity = DecayedPopularity(n, self.config.half_life_s)
        # Transitions, co-occurrence and freshness: the worker's own code (the same class
        # ranks its feeds), so what is measured here is what it serves.
        self.collab = Collaborative(n, self.config.collab())
        self._states: dict[str, UserState] = {}
        self.observers: list[Observer] = []
        self._gate_learned = False
        # Edges without a time are known from the start; timed ones apply in time order.
        self.friends = FriendItems(n) if social else None
        edges = sorted(social, key=lambda e: -math.inf if e.timestamp is None else e.timestamp)
        self._edges = deque(edges)
        self._comments = comment_vectors or {}
        #: Extra popularity clocks (half-life in days -> counts) the tuner compares.
        self._clocks: dict[float, DecayedPopularity] = {}
        self._first = np.full(n, np.nan)
        self._now = -math.inf
        self._follow_until(-math.inf)

    @property
    def n_components(self) -> int:
        return len(COMPONENTS) + (1 if self.friends is not None else 0)

    def track_half_lives(self, half_lives_days: Sequence[float]) -> None:
        """Also count popularity at these half-lives (before :meth:`fit`), so that one fit
        lets the tuner compare them all (:meth:`popularity_row`)."""
        for hl in half_lives_days:
            if hl != self.config.half_life_days and hl not in self._clocks:
                self._clocks[hl] = DecayedPopularity(
                    len(self.catalog), hl * self.config.clock_unit_s
                )

    def popularity_row(self, half_life_days: float, age_weight: float) -> FloatArray:
        """The popularity component a model with this half-life and freshness would have:
        bit for bit the ``components()[0]`` of that model."""
        if half_life_days == self.config.half_life_days:
            log_pop = self.popularity.log_scores()
        else:
            log_pop = self._clocks[half_life_days].log_scores()
        if age_weight == 0.0:
            return log_pop
        # Collaborative.fresh_popularity's arithmetic, with the same first-click times.
        age_days = np.nan_to_num((self._now - self._first) / DAY_S, nan=0.0)
        out: FloatArray = log_pop - age_weight * np.log1p(np.maximum(age_days, 0.0))
        return out

    def _follow_until(self, timestamp: float) -> None:
        while self._edges and (
            self._edges[0].timestamp is None or self._edges[0].timestamp <= timestamp
        ):
            edge = self._edges.popleft()
            if self.friends is None:  # pragma: no cover - edges imply the tracker
                break
            if edge.kind == "unfollow":
                self.friends.unfollow(edge.source, edge.target)
            else:
                self.friends.follow(edge.source, edge.target)
            target = self._states.get(edge.target)
            pulled = None if target is None else target.named_vectors()
            kind = edge.kind if edge.kind in SOCIAL_RATE else "follow"
            self.state(edge.source).apply_social(kind, edge.target, pulled or None)

    def _vector(self, item_id: str) -> Vector:
        vec = self.index.vector(item_id)
        if vec is None:  # pragma: no cover - every catalog item was just upserted
            raise KeyError(item_id)
        return vec

    def _new_state(self, user: str) -> UserState:
        state = UserState()
        profile = self._profiles.get(user)
        if profile is not None:
            state.apply_profile(profile)
        return state

    def state(self, user: str) -> UserState:
        state = self._states.get(user)
        if state is None:
            state = self._states[user] = self._new_state(user)
        return state

    def n_events(self, user: str) -> int:
        state = self._states.get(user)
        return 0 if state is None else state.n_events

    def fit(self, train: Sequence[Event]) -> None:
        # A streaming model learns from train exactly as it learns online: event by event.
        learn = self.config.learn_gate and self._has_vectors
        samples = GateSamples(self._mat.shape[1]) if learn else None
        if samples is not None:

            def collect(event: Event, state: UserState, row: int) -> None:
                samples.add(GLOBAL, state.global_vec, row)

            self.observers.append(collect)
        try:
            for event in train:
                self.update(event)
        finally:
            if samples is not None:
                self.observers.remove(collect)
        if samples is not None and len(samples):
            gate = fit_gates(
                samples,
                self._mat,
                {GLOBAL: np.arange(len(self.catalog))},
                GateFitConfig(
                    mode="independent",
                    reg=self.config.gate_reg,
                    negatives=self.config.gate_negatives,
                ),
            )[GLOBAL]
            self.gates.set_gate(GLOBAL, gate)
            self._gate_learned = True

    def update(self, event: Event) -> None:
        if event.item not in self.catalog:
            return
        if self._edges:
            self._follow_until(event.timestamp)
        row = self.catalog.row(event.item)
        state = self.state(event.user)
        for observe in self.observers:
            observe(event, state, row)
        history = [self.catalog.row(i) for i in state.recent]
        # Co-occurrence is over distinct items: a repeat click adds no pairs.
        seen = None if event.item in state.seen else [self.catalog.row(i) for i in state.seen]
        self.collab.observe(history, seen, row, event.timestamp)
        self.popularity.add(row, event.timestamp)
        for clock in self._clocks.values():
            clock.add(row, event.timestamp)
        if np.isnan(self._first[row]):
            self._first[row] = event.timestamp
        self._now = max(self._now, event.timestamp)
        self.index.count_click(event.item, event.timestamp)
        if self.friends is not None:
            self.friends.observe(event.user, row)
        text_vec = self._comments.get(event.text) if event.text is not None else None
        if text_vec is not None:
            state.apply_comment(event.item, self._mat[row], text_vec, event.scene)
        else:
            # Event weights (lastfm listening counts) are not click strengths: every click
            # counts 1.
            state.apply_item(event.item, self._mat[row], event.scene)

    def components(self, user: str) -> FloatArray:
        """``(len(COMPONENTS), n_items)`` features of every item for ``user``."""
        state = self.known_state(user)
        history = [self.catalog.row(i) for i in state.recent]
        n = len(self.catalog)
        sim = gated = np.zeros(n, dtype=np.float64)
        if state.global_vec is not None and self._has_vectors:
            sim = (self._mat @ state.global_vec).astype(np.float64)
            if self._gate_learned:
                query = self.gates.apply(GLOBAL, state.global_vec)
                gated = (self._mat @ query).astype(np.float64)
        seen = [self.catalog.row(i) for i in state.seen]
        rows = [
            self.collab.fresh_popularity(self.popularity.log_scores()),
            self.collab.transition_feature(history),
            sim,
            self.collab.cooccurrence_feature(seen),
            gated,
        ]
        if self.friends is not None:
            rows.append(self.friends.feature(user))
        return np.stack(rows)

    def feed_blend(self) -> FeedBlend | None:
        """This model as the worker's ranking (``results/model.json``, SCENEREC_MODEL_PATH);
        None where the worker cannot serve it: a blend that weighs the social component,
        or knobs counted in event steps (the worker's clock is seconds)."""
        blend = self.config.blend
        if len(blend.weights[0]) > len(COMPONENTS):
            if any(w[SOCIAL] for w in blend.weights):
                return None
            blend = TenureBlend(tuple(w[:SOCIAL] for w in blend.weights), blend.edges)
        if self.config.clock_unit_s != DAY_S:
            return None
        return FeedBlend(
            blend,
            self.config.collab(),
            self.config.half_life_s,
            self.gates.gate(GLOBAL) if self._gate_learned else None,
        )

    @property
    def item_matrix(self) -> npt.NDArray[np.float32]:
        """Item vectors by catalog row (read only)."""
        return self._mat

    def known_state(self, user: str) -> UserState:
        """The user's state, or a fresh one (profile-seeded) that is not stored."""
        return self._states.get(user) or self._new_state(user)

    def score(self, user: str) -> FloatArray:
        return self.config.blend.score(self.components(user), self.n_events(user))


class Diversified(Recommender):
    """Any fitted system with its lists re-ranked by MMR (``embeddings.diversity``).

    Learning and scores are the wrapped system's; only the top-k list changes, so the
    protocols score the list as shown (``Recommender.rerank``).
    """

    def __init__(self, model: Recommender, vectors: npt.NDArray[np.float32], lam: float) -> None:
        super().__init__(model.catalog)
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {lam}")
        self.model, self.vectors, self.lam = model, vectors, lam
        self.name = f"{model.name}-mmr{lam:g}"

    def fit(self, train: Sequence[Event]) -> None:
        self.model.fit(train)

    def update(self, event: Event) -> None:
        self.model.update(event)

    def score(self, user: str) -> FloatArray:
        return self.model.score(user)

    def rerank(self, scores: FloatArray, k: int, exclude_rows: Sequence[int]) -> list[int] | None:
        if self.lam >= 1.0:
            return None
        return mmr(scores, self.vectors, k, self.lam, exclude_rows)

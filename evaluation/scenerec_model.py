"""SceneRec under the harness's contract, built from the streaming worker's model code.

Item vectors are the worker's: encoder text vector fused with the hashed KG embedding
(``fuse_item``), stored in an ``ItemIndex``. Each user is a ``UserState`` updated by
``apply_item`` on every click, seeded from the profile text by ``apply_profile``. The
score of item ``i`` for user ``u`` blends three per-item components:

* ``popularity``: log recency-decayed click counts (``embeddings.itemstats``), what is
  popular *now*, the prior every user starts from;
* ``transitions``: log of the next-item mass from the user's last items, or, for a user
  with no events yet, from the start row (what new users start with lately)
  (``embeddings.itemstats``);
* ``similarity``: ``(u ⊙ s) · i`` with the user's global vector (the profile vector for a
  user not seen clicking yet) and the global scene gate, exactly the worker's ranking score;
* ``cooccurrence``: log of the item-item cosine mass from the user's last distinct items
  (``embeddings.itemstats``), taste once a few events are known;
* ``gated_similarity``: ``(u ⊙ g) · i`` with the global gate ``g`` learned by BPR on the
  training events (``embeddings.colearn.fit_gates``): the same user vector, with the
  dimensions that separated clicked from unclicked items weighted up. The tuner picks
  either this or the plain similarity (or neither) per tenure bucket;
* ``social`` (only for a data set with a social graph, ``NAME.net``): what the people the
  user follows engaged with (``embeddings.social_items``). The worker's blend has no slot
  for it yet (``COMPONENTS``): a blend that weighs it is measured here, not served.

Comments (events with text) go through the worker's comment path,
``UserState.apply_comment``, when the harness has encoded their text.

The model is the streaming worker's own (``embeddings.model.SceneRecModel``): the same
statistics code learns each click and the same ranker scores, over every item or, with
``candidates``, over each feed's candidates. The blend weights depend on the user's
tenure (``embeddings.blend.TenureBlend``); they and the decay constants are chosen on the
valid split only (``evaluation.tuning``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from embeddings.blend import TenureBlend
from embeddings.blended import CandidateConfig, Ranker
from embeddings.colearn import GateFitConfig, GateSamples, fit_gates
from embeddings.collaborative import (
    COMPONENTS,
    GATED,
    SIMILARITY,
    CollabConfig,
    Collaborative,
    FeedBlend,
)
from embeddings.diversity import mmr
from embeddings.model import SceneRecModel
from embeddings.popularity import DecayedPopularity
from embeddings.ranking import GLOBAL, GatedScenes, ItemIndex
from embeddings.scenes import SceneGates
from embeddings.social_items import FriendItems
from embeddings.user_model import SOCIAL_RATE, UserState
from evaluation.baselines import DAY_S, Recommender
from evaluation.data import Catalog, Event, SocialEdge
from evaluation.metrics import K

FloatArray = npt.NDArray[np.float64]
Vector = npt.NDArray[np.float32]

__all__ = ["COMPONENTS", "SOCIAL", "Diversified", "SceneRec", "SceneRecConfig"]
#: The extra component of a data set with a social graph, after ``COMPONENTS``.
SOCIAL = len(COMPONENTS)
#: The harness ranks every item (the protocols' full ranking), whatever the catalog's size;
#: the worker ranks over candidates past ``CandidateConfig.exact_max_items``.
FULL_RANKING = CandidateConfig(exact_max_items=1 << 62)
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
    #: Co-occurrence: the user's last this many distinct items count and score, and the
    #: neighbours kept per item (the worker's bounds).
    cooc_history: int = 20
    neighbours: int = 200
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
        cooc = self.cooc_history
        return (
            f"hl={self.half_life_days:g}{unit} start={self.start_half_life_days:g}{unit} "
            f"win={self.window} recent={self.recent} age={self.age_weight:g} cooc={cooc}"
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
            cooc_history=self.cooc_history,
            neighbours=self.neighbours,
        )


class SceneRec(Recommender):
    """The worker's model (``embeddings.model.SceneRecModel``) under the harness's contract."""

    name = "scenerec"

    def __init__(
        self,
        catalog: Catalog,
        item_vectors: npt.NDArray[np.float32],
        profiles: Mapping[str, Vector],
        config: SceneRecConfig | None = None,
        social: Sequence[SocialEdge] = (),
        comment_vectors: Mapping[str, Vector] | None = None,
        candidates: CandidateConfig | None = FULL_RANKING,
    ) -> None:
        super().__init__(catalog)
        if item_vectors.shape[0] != len(catalog):
            raise ValueError("one item vector per catalog row is needed")
        self.config = config or SceneRecConfig()
        dim = int(item_vectors.shape[1])
        self.index = ItemIndex(dim)
        for row, item in enumerate(catalog.items):
            self.index.upsert(item.id, item_vectors[row], item.scenes, item.title)
        self._mat = np.ascontiguousarray(item_vectors, dtype=np.float32)
        self._has_vectors = bool(np.any(self._mat))
        self.gates = SceneGates(dim)
        self._profiles = profiles if self.config.use_profiles else {}
        self._candidates = candidates
        self._gate_learned = False
        self.model = self._model()
        self._states: dict[str, UserState] = {}
        self.observers: list[Observer] = []
        # Edges without a time are known from the start; timed ones apply in time order.
        self.friends = FriendItems(len(catalog)) if social else None
        edges = sorted(social, key=lambda e: -math.inf if e.timestamp is None else e.timestamp)
        self._edges = deque(edges)
        self._comments = comment_vectors or {}
        #: Popularity at other half-lives (days -> counts), which the tuner compares.
        self._clocks: dict[float, DecayedPopularity] = {}
        self._first = np.full(len(catalog), np.nan)
        self._now = -math.inf
        self._follow_until(-math.inf)

    def _model(self) -> SceneRecModel:
        return SceneRecModel(
            self.index, self._worker_blend(), GatedScenes(self.gates), K, self._candidates
        )

    def _probe(self) -> Ranker:
        """The same ranking with every weight 1: every component computed, whatever the
        blend weighs (the tuner needs them all)."""
        blend = self._worker_blend()
        ones = TenureBlend.uniform((1.0,) * len(COMPONENTS), blend.blend.edges)
        return Ranker(
            self.index, self.stats, GatedScenes(self.gates), replace(blend, blend=ones), K
        )

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
        """The popularity component a model with this half-life and freshness would have
        (its own one exactly; another's up to float rounding)."""
        return self.popularity_rows([(half_life_days, age_weight)])[0]

    def popularity_rows(self, variants: Sequence[tuple[float, float]]) -> list[FloatArray]:
        """:meth:`popularity_row` of each ``(half-life, freshness)``, sharing the work."""
        own: FloatArray = self.stats.log_popularity()[: len(self.catalog)]
        age = self._age_term()
        out: list[FloatArray] = []
        for hl, a in variants:
            if hl == self.config.half_life_days:
                same = a == self.config.age_weight
                out.append(own if same else own + (self.config.age_weight - a) * age)
            else:
                pop = self._clocks[hl].log_scores()
                out.append(pop - a * age if a else pop)
        return out

    def _age_term(self) -> FloatArray:
        """``log(1 + days since each item's first click)``, freshness's term."""
        age_days = np.nan_to_num((self._now - self._first) / DAY_S, nan=0.0)
        out: FloatArray = np.log1p(np.maximum(age_days, 0.0))
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

    @property
    def stats(self) -> Collaborative:
        """What the clicks so far taught about items (the worker's own statistics code)."""
        return self.model.stats

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
            self.model.ranker.blend = self._worker_blend()

    def update(self, event: Event) -> None:
        if event.item not in self.catalog:
            return
        row = self.catalog.row(event.item)
        if self._edges:
            self._follow_until(event.timestamp)
        state = self.state(event.user)
        for observe in self.observers:
            observe(event, state, row)
        self.model.learn_click(state, event.item, event.timestamp)
        for clock in self._clocks.values():
            clock.add(row, event.timestamp)
        if np.isnan(self._first[row]):
            self._first[row] = event.timestamp
        self._now = max(self._now, event.timestamp)
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
        """``(n_components, n_items)`` features of every item for ``user``: the worker's
        ``COMPONENTS``, then the social one where the data set has a social graph."""
        state = self.known_state(user)
        comps = self._probe().global_components(state)
        if not self._has_vectors:  # ids only: no similarity (the probe gives zeros too)
            comps[SIMILARITY] = comps[GATED] = 0.0
        if self.friends is None:
            return comps
        return np.vstack([comps, self.friends.feature(user)[None, :]])

    def _worker_blend(self) -> FeedBlend:
        """The blend over ``COMPONENTS`` the worker's ranker runs (a social weight, which it
        cannot serve yet, left out)."""
        blend = self.config.blend
        if len(blend.weights[0]) > len(COMPONENTS):
            blend = TenureBlend(tuple(w[:SOCIAL] for w in blend.weights), blend.edges)
        return FeedBlend(
            blend,
            self.config.collab(),
            self.config.half_life_s,
            self.gates.gate(GLOBAL) if self._gate_learned else None,
        )

    def feed_blend(self) -> FeedBlend | None:
        """This model as the worker's ranking (``results/model.json``, SCENEREC_MODEL_PATH);
        None where the worker cannot serve it: a blend that weighs the social component, or
        knobs counted in event steps (the worker's clock is seconds)."""
        weights = self.config.blend.weights
        if any(any(w[SOCIAL:]) for w in weights):
            return None
        if self.config.clock_unit_s != DAY_S:
            return None
        return self._worker_blend()

    @property
    def item_matrix(self) -> npt.NDArray[np.float32]:
        """Item vectors by catalog row (read only)."""
        return self._mat

    def known_state(self, user: str) -> UserState:
        """The user's state, or a fresh one (profile-seeded) that is not stored."""
        return self._states.get(user) or self._new_state(user)

    def score(self, user: str) -> FloatArray:
        if self.friends is None:
            return self.model.ranker.global_scores(self.known_state(user))
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

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
  either this or the plain similarity (or neither) per tenure bucket.

The model is the streaming worker's own (``embeddings.model.SceneRecModel``): the same
statistics code learns each click and the same ranker scores, over every item or, with
``candidates``, over each feed's candidates. The blend weights depend on the user's
tenure (``embeddings.blend.TenureBlend``); they and the decay constants are chosen on the
valid split only (``evaluation.tuning``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from embeddings.blend import TenureBlend
from embeddings.blended import CandidateConfig
from embeddings.colearn import GateFitConfig, GateSamples, fit_gates
from embeddings.collaborative import COMPONENTS, CollabConfig, Collaborative, FeedBlend
from embeddings.diversity import mmr
from embeddings.model import SceneRecModel
from embeddings.ranking import GLOBAL, GatedScenes, ItemIndex
from embeddings.scenes import SceneGates
from embeddings.user_model import UserState
from evaluation.baselines import DAY_S, Recommender
from evaluation.data import Catalog, Event
from evaluation.metrics import K

FloatArray = npt.NDArray[np.float64]
Vector = npt.NDArray[np.float32]

__all__ = ["COMPONENTS", "Diversified", "SceneRec", "SceneRecConfig"]
#: Called with (event, the user's state before the event, item row) for every event the
#: model ingests, before it is applied: how per-scene models collect their training data.
Observer = Callable[[Event, UserState, int], None]


@dataclass(frozen=True)
class SceneRecConfig:
    half_life_days: float = 14.0
    start_half_life_days: float = 14.0
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
        return (
            f"hl={self.half_life_days:g}d start={self.start_half_life_days:g}d "
            f"win={self.window} recent={self.recent} age={self.age_weight:g}"
        )

    def with_blend(self, blend: TenureBlend) -> SceneRecConfig:
        return replace(self, blend=blend)

    def collab(self) -> CollabConfig:
        return CollabConfig(
            window=self.window,
            step_decay=self.step_decay,
            start_half_life_s=self.start_half_life_days * DAY_S,
            recent=self.recent,
            recency_decay=self.recency_decay,
            age_weight=self.age_weight,
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
        candidates: CandidateConfig | None = None,
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
        self.gates = SceneGates(dim)
        self._profiles = profiles if self.config.use_profiles else {}
        self._candidates = candidates
        self._gate_learned = False
        self.model = self._model()
        self._states: dict[str, UserState] = {}
        self.observers: list[Observer] = []

    def _model(self) -> SceneRecModel:
        return SceneRecModel(
            self.index, self.feed_blend(), GatedScenes(self.gates), K, self._candidates
        )

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
        samples = GateSamples(self._mat.shape[1]) if self.config.learn_gate else None
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
            self.model.ranker.blend = self.feed_blend()

    def update(self, event: Event) -> None:
        if event.item not in self.catalog:
            return
        row = self.catalog.row(event.item)
        state = self.state(event.user)
        for observe in self.observers:
            observe(event, state, row)
        self.model.learn_click(state, event.item, event.timestamp)
        # Event weights (lastfm listening counts) are not click strengths: every click counts 1.
        state.apply_item(event.item, self._mat[row], event.scene)

    def components(self, user: str) -> FloatArray:
        """``(len(COMPONENTS), n_items)`` features of every item for ``user``."""
        return self.model.ranker.global_components(self.known_state(user))

    def feed_blend(self) -> FeedBlend:
        """This model as the worker's ranking (``results/model.json``, SCENEREC_MODEL_PATH)."""
        return FeedBlend(
            self.config.blend,
            self.config.collab(),
            self.config.half_life_days * DAY_S,
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
        return self.model.ranker.global_scores(self.known_state(user))


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

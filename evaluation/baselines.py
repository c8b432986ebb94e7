"""The contract every evaluated model fulfils, and the baselines EVALUATION.md requires.

``fit(train)`` learns from the train events, ``update(event)`` ingests one later event
(Protocols B and C; a frozen system simply never gets it), ``score(user)`` returns one
score per catalog row, and ``recommend(user, k, exclude)`` the top-k item ids. Scores
are all the protocols need: the harness does the exclusion and the ranking, so every
system is ranked by the same code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt
import torch

from embeddings.blend import top_k
from embeddings.popularity import DecayedPopularity
from evaluation.data import Catalog, Event

FloatArray = npt.NDArray[np.float64]
DAY_S = 86_400.0


class Recommender(ABC):
    name: str = "recommender"

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    @abstractmethod
    def fit(self, train: Sequence[Event]) -> None: ...

    @abstractmethod
    def update(self, event: Event) -> None: ...

    @abstractmethod
    def score(self, user: str) -> FloatArray:
        """One finite score per catalog row; higher is better."""

    def rerank(self, scores: FloatArray, k: int, exclude_rows: Sequence[int]) -> list[int] | None:
        """A list other than the plain top-k of ``scores`` (e.g. diversified), or None.

        A system that reranks is scored on its list: in Protocol B a target outside it is
        a miss, inside it takes its position (no mid-rank of score ties).
        """
        return None

    def recommend(self, user: str, k: int = 10, exclude: Iterable[str] = ()) -> list[str]:
        scores = self.score(user)
        excl = self.catalog.rows(set(exclude))
        rows = self.rerank(scores, k, excl)
        if rows is None:
            rows = top_k(scores, k, excl)
        return [self.catalog.ids[r] for r in rows]


class MostPopular(Recommender):
    """Click counts; ``update`` keeps counting (the frozen variant stops after train)."""

    name = "most-popular"

    def __init__(self, catalog: Catalog) -> None:
        super().__init__(catalog)
        self._counts = np.zeros(len(catalog), dtype=np.float64)

    def fit(self, train: Sequence[Event]) -> None:
        self._counts[:] = 0.0
        for e in train:
            self.update(e)

    def update(self, event: Event) -> None:
        if event.item in self.catalog:
            self._counts[self.catalog.row(event.item)] += 1.0

    def score(self, user: str) -> FloatArray:
        return self._counts.copy()


class RecentPopular(Recommender):
    """Click counts over the last ``window_days`` before the latest event seen."""

    name = "recent-popular"

    def __init__(self, catalog: Catalog, window_days: float = 14.0) -> None:
        super().__init__(catalog)
        self.window_s = window_days * DAY_S
        self._counts = np.zeros(len(catalog), dtype=np.float64)
        self._events: deque[tuple[float, int]] = deque()
        self._now = -np.inf

    def fit(self, train: Sequence[Event]) -> None:
        self._counts[:] = 0.0
        self._events.clear()
        self._now = -np.inf
        for e in train:
            self.update(e)

    def update(self, event: Event) -> None:
        if event.item not in self.catalog:
            return
        row = self.catalog.row(event.item)
        self._events.append((event.timestamp, row))
        self._counts[row] += 1.0
        self._now = max(self._now, event.timestamp)
        # The window is (now - window, now]: an event exactly window_s old has left it.
        while self._events and self._events[0][0] <= self._now - self.window_s:
            _, old = self._events.popleft()
            self._counts[old] -= 1.0

    def score(self, user: str) -> FloatArray:
        return self._counts.copy()


class DecayedPopular(Recommender):
    """Click counts that halve every ``half_life_days`` (EVALUATION.md's Protocol B anchor)."""

    name = "decayed-popular"

    def __init__(self, catalog: Catalog, half_life_days: float = 14.0) -> None:
        super().__init__(catalog)
        self._half_life_s = half_life_days * DAY_S
        self._pop = DecayedPopularity(len(catalog), self._half_life_s)

    def fit(self, train: Sequence[Event]) -> None:
        self._pop = DecayedPopularity(len(self.catalog), self._half_life_s)
        for e in train:
            self.update(e)

    def update(self, event: Event) -> None:
        if event.item in self.catalog:
            self._pop.add(self.catalog.row(event.item), event.timestamp)

    def score(self, user: str) -> FloatArray:
        return self._pop.counts().copy()


class ItemKNN(Recommender):
    """Item-item cosine on the binary user-item matrix: ``s_j = sum_h cos(h, j)`` over history.

    Co-occurrence counts and histories are both updated online, so the online variant
    learns new similarities as well as new history. Ties (a user with no history scores 0
    everywhere) break by popularity through a term far below any cosine difference.
    """

    name = "item-knn"
    _TIE = 1e-9

    def __init__(self, catalog: Catalog) -> None:
        super().__init__(catalog)
        n = len(catalog)
        self._co = np.zeros((n, n), dtype=np.float32)
        self._counts = np.zeros(n, dtype=np.float64)
        self._hist: dict[str, list[int]] = defaultdict(list)
        self._seen: dict[str, set[int]] = defaultdict(set)

    def fit(self, train: Sequence[Event]) -> None:
        for e in train:
            self.update(e)

    def update(self, event: Event) -> None:
        if event.item not in self.catalog:
            return
        row = self.catalog.row(event.item)
        seen = self._seen[event.user]
        if row in seen:
            return  # binary matrix: a repeat adds nothing
        hist = self._hist[event.user]
        if hist:
            self._co[row, hist] += 1.0
            self._co[hist, row] += 1.0
        hist.append(row)
        seen.add(row)
        self._counts[row] += 1.0

    def score(self, user: str) -> FloatArray:
        norm = np.sqrt(np.maximum(self._counts, 1.0))
        tie = self._TIE * self._counts / max(float(self._counts.max()), 1.0)
        hist = self._hist.get(user)
        if not hist:
            return tie
        weights = 1.0 / norm[hist]
        sims: FloatArray = (weights @ self._co[hist].astype(np.float64)) / norm
        return sims + tie


class BPRMF(Recommender):
    """BPR matrix factorisation with item biases, trained in torch on CPU, seeded.

    Online, a user's vector is refitted by a few SGD steps on the new event with the item
    factors fixed ("fold-in"); that is also how a user first seen after train gets a
    vector. A user without one scores by item bias alone, a learned popularity.
    """

    name = "bpr-mf"

    def __init__(
        self,
        catalog: Catalog,
        dim: int = 64,
        epochs: int = 20,
        lr: float = 0.01,
        reg: float = 1e-4,
        batch_size: int = 2048,
        seed: int = 2020,
        fold_in_steps: int = 5,
        fold_in_lr: float = 0.05,
        fold_in_negatives: int = 8,
    ) -> None:
        super().__init__(catalog)
        self.dim, self.epochs, self.lr, self.reg = dim, epochs, lr, reg
        self.batch_size, self.seed = batch_size, seed
        self.fold_in_steps, self.fold_in_lr = fold_in_steps, fold_in_lr
        self.fold_in_negatives = fold_in_negatives
        n = len(catalog)
        self._items = np.zeros((n, dim), dtype=np.float64)
        self._bias = np.zeros(n, dtype=np.float64)
        self._users: dict[str, FloatArray] = {}
        self._rng = np.random.default_rng(seed)

    def fit(self, train: Sequence[Event]) -> None:
        pairs = [(e.user, self.catalog.row(e.item)) for e in train if e.item in self.catalog]
        if not pairs:
            return
        user_ids = sorted({u for u, _ in pairs})
        uidx = {u: k for k, u in enumerate(user_ids)}
        users = torch.tensor([uidx[u] for u, _ in pairs], dtype=torch.long)
        pos = torch.tensor([r for _, r in pairs], dtype=torch.long)
        gen = torch.Generator().manual_seed(self.seed)
        n_items = len(self.catalog)
        # nn.Embedding rather than indexing a Parameter: its backward is a fused
        # scatter-add, about 5x faster on CPU for these batch sizes.
        u_emb = torch.nn.Embedding(len(user_ids), self.dim)
        i_emb = torch.nn.Embedding(n_items, self.dim)
        bias = torch.nn.Embedding(n_items, 1)
        with torch.no_grad():
            u_emb.weight.copy_(torch.randn(len(user_ids), self.dim, generator=gen) * 0.01)
            i_emb.weight.copy_(torch.randn(n_items, self.dim, generator=gen) * 0.01)
            bias.weight.zero_()
        params = [u_emb.weight, i_emb.weight, bias.weight]
        opt = torch.optim.Adam(params, lr=self.lr)
        for _ in range(self.epochs):
            order = torch.randperm(len(pairs), generator=gen)
            for start in range(0, len(pairs), self.batch_size):
                b = order[start : start + self.batch_size]
                u, i = users[b], pos[b]
                # Uniform negatives; hitting a positive by chance is rare and only adds noise.
                j = torch.randint(0, n_items, (len(b),), generator=gen)
                pu, qi, qj = u_emb(u), i_emb(i), i_emb(j)
                x = (pu * (qi - qj)).sum(1) + bias(i).squeeze(1) - bias(j).squeeze(1)
                penalty = (pu.pow(2).sum() + qi.pow(2).sum() + qj.pow(2).sum()) / len(b)
                loss = -torch.nn.functional.logsigmoid(x).mean() + self.reg * penalty
                opt.zero_grad()
                loss.backward()
                opt.step()
        self._items = i_emb.weight.detach().double().numpy()
        self._bias = bias.weight.detach().double().numpy()[:, 0].copy()
        user_mat = u_emb.weight.detach().double().numpy()
        self._users = {u: user_mat[k].copy() for u, k in uidx.items()}

    def update(self, event: Event) -> None:
        if event.item not in self.catalog:
            return
        i = self.catalog.row(event.item)
        p = self._users.get(event.user)
        if p is None:
            p = np.zeros(self.dim, dtype=np.float64)
        for _ in range(self.fold_in_steps):
            j = self._rng.integers(0, len(self.catalog), self.fold_in_negatives)
            diff = self._items[i] - self._items[j]  # (neg, dim)
            x = diff @ p + self._bias[i] - self._bias[j]
            g = 1.0 / (1.0 + np.exp(x))  # d(-log sigmoid(x))/dx, negated
            p = p + self.fold_in_lr * ((g[:, None] * diff).mean(0) - self.reg * p)
        self._users[event.user] = p

    def score(self, user: str) -> FloatArray:
        p = self._users.get(user)
        if p is None:
            return self._bias.copy()
        out: FloatArray = self._items @ p + self._bias
        return out

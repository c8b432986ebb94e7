"""Social on lastfm-2k: does moving a user toward their friends improve their top-10?

Data (``evaluation.data.load_lastfm2k``): 17,632 artists, the 92,834 (user, artist)
listening pairs split 80/20 at random with seed 2024 (the data has no timestamps), and the
25,434 directed friendship edges as follows. Nothing is tuned on test: a seeded 10% of
train is held out as valid, every knob is chosen there (fit on the other 90%), then the
systems are refitted on all of train and test is scored once.

Protocol (frozen, like EVALUATION.md's A): every user with test pairs ranks all artists
minus the ones they have in train; truth: their test artists; Hit, NDCG, Recall and MRR at
10 with a 95% bootstrap over users.

SceneRec's components on this data (no time, so no recency, no transitions):

* ``popularity``: log of each artist's train listeners;
* ``similarity``: the user's text vector (mean of the MiniLM vectors of their artists'
  names) against each artist's;
* ``collaborative``: item-kNN cosine mass from the user's item-space vector (their
  binary, L2-normalized row of the user-artist matrix), log1p;
* social: both user vectors moved toward their friends' (``embeddings.social``) with
  strength ``λ > 0``, tuned on valid (the row without social is the same grid at
  ``λ = 0``, so the paired difference of the two rows is what social adds).

Ablation rows, each tuned on valid within its own subset of the grid: text only
(popularity + similarity), + collaborative, + social.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from embeddings.social import SocialGraph, socialize_rows
from evaluation.data import Catalog, Dataset, Event
from evaluation.encoding import VectorCache, item_vectors
from evaluation.metrics import HIT, NDCG, K, list_metrics, paired_delta, summarize
from evaluation.protocols import items_by_user

logger = logging.getLogger(__name__)

FloatMatrix = npt.NDArray[np.float64]
VALID_FRACTION = 0.1
VALID_SEED = 2025
#: Social strengths of the "+ social" row: never 0, so that the row shows what the best
#: social setting on valid does on test even where no social at all would win on valid.
STRENGTHS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
SIM_WEIGHTS = (0.0, 1.0, 4.0)
KNN_WEIGHTS = (0.0, 1.0, 4.0, 16.0, 64.0, 256.0)
#: Ablation rows: which knobs each may use (the rest fixed at 0).
ROWS = {
    "text only": {"knn": False, "social": False},
    "+ collaborative": {"knn": True, "social": False},
    "+ social": {"knn": True, "social": True},
}


@dataclass(frozen=True)
class Setting:
    strength: float
    sim: float
    knn: float

    def label(self) -> str:
        return f"social={self.strength:g} sim={self.sim:g} knn={self.knn:g}"


class LastfmModel:
    """The components of every user x artist, fitted on some listening pairs."""

    def __init__(
        self,
        catalog: Catalog,
        text: npt.NDArray[np.float32],
        graph: SocialGraph,
        events: Sequence[Event],
        users: Sequence[str],
    ) -> None:
        """``users``: everyone to score, with or without events here (a row of zeros)."""
        self.catalog = catalog
        self.graph = graph
        users = sorted(set(users) | {e.user for e in events})
        self.users = {u: k for k, u in enumerate(users)}
        rows = [self.users[e.user] for e in events]
        cols = [catalog.row(e.item) for e in events]
        x = sp.csr_matrix(
            (np.ones(len(rows), dtype=np.float32), (rows, cols)),
            shape=(len(users), len(catalog)),
        )
        x.data[:] = 1.0  # binary: a repeated pair counts once
        self.counts = np.asarray(x.sum(axis=0)).ravel().astype(np.float64)
        inv = 1.0 / np.sqrt(np.maximum(self.counts, 1.0))
        self._xn = (x @ sp.diags(inv.astype(np.float32))).tocsr()  # column-normalized
        row_norm = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
        row_norm[row_norm == 0] = 1.0
        self._xr = (sp.diags((1.0 / row_norm).astype(np.float32)) @ x).tocsr()
        text_users = np.asarray(self._xr @ text, dtype=np.float32)
        norms = np.linalg.norm(text_users, axis=1, keepdims=True)
        self._text_users: npt.NDArray[np.float32] = (
            text_users / np.where(norms > 0, norms, 1.0)
        ).astype(np.float32)
        self._text = text
        self.log_pop = np.log(self.counts + 1e-3 * max(float(self.counts.max()), 1.0))
        self._cache: dict[tuple[float, tuple[str, ...]], tuple[FloatMatrix, FloatMatrix]] = {}

    def sim_and_knn(self, strength: float, users: Sequence[str]) -> tuple[FloatMatrix, FloatMatrix]:
        """``(similarity, log1p kNN mass)``, each ``len(users) x n_items``, at ``strength``."""
        key = (strength, tuple(users))
        if key not in self._cache:
            text_users = socialize_rows(self._text_users, self.users, self.graph, strength)
            dense = np.asarray(self._xr.toarray(), dtype=np.float32)
            item_space = socialize_rows(dense, self.users, self.graph, strength)
            rows = [self.users[u] for u in users]
            sim = (text_users[rows] @ self._text.T).astype(np.float64)
            # s_u = x_u Xn^T Xn: the item-item cosine applied to the user's vector,
            # computed through the users (two sparse products) instead of the 17,632^2
            # item-item matrix.
            via_users = (self._xn @ item_space[rows].T).T
            knn = np.asarray((self._xn.T @ via_users.T).T, dtype=np.float64)
            # One entry: callers go through the settings strength by strength.
            self._cache = {key: (sim, np.log1p(np.maximum(knn, 0.0)))}
        return self._cache[key]


def holdout(
    train: Sequence[Event], fraction: float = VALID_FRACTION
) -> tuple[list[Event], list[Event]]:
    order = list(range(len(train)))
    random.Random(VALID_SEED).shuffle(order)
    n_valid = round(fraction * len(train))
    held = set(order[:n_valid])
    return (
        [e for k, e in enumerate(train) if k not in held],
        [e for k, e in enumerate(train) if k in held],
    )


def _top(
    scores: FloatMatrix, users: Sequence[str], seen: Mapping[str, set[str]], catalog: Catalog
) -> list[list[str]]:
    out: list[list[str]] = []
    for k, u in enumerate(users):
        row = scores[k].copy()
        row[catalog.rows(seen.get(u, set()))] = -np.inf
        # The K-th best value, then a stable sort of everything at least as good: equal
        # scores keep catalog order, as a full stable sort would, at O(n) instead of
        # O(n log n) over 17,632 artists.
        kth = np.partition(row, len(row) - K)[len(row) - K]
        cand = np.flatnonzero(row >= kth)
        best = cand[np.argsort(-row[cand], kind="stable")][:K]
        out.append([catalog.ids[r] for r in best])
    return out


def _evaluate(
    model: LastfmModel,
    setting: Setting,
    users: Sequence[str],
    seen: Mapping[str, set[str]],
    truth: Mapping[str, set[str]],
) -> list[tuple[str, dict[str, float]]]:
    sim, knn = model.sim_and_knn(setting.strength, users)
    scores = model.log_pop[None, :] + setting.sim * sim + setting.knn * knn
    lists = _top(scores, users, seen, model.catalog)
    return [(u, list_metrics(lst, truth[u])) for u, lst in zip(users, lists, strict=True)]


def _grid(row: Mapping[str, bool]) -> list[Setting]:
    strengths = STRENGTHS if row["social"] else (0.0,)
    knns = KNN_WEIGHTS if row["knn"] else (0.0,)
    return [Setting(st, s, k) for st, s, k in itertools.product(strengths, SIM_WEIGHTS, knns)]


def run(ds: Dataset, cache: VectorCache) -> dict[str, Any]:
    """Tune every row on valid, refit on train, score test: the JSON for ``eval.json``."""
    catalog = Catalog(ds.items)
    text = item_vectors(ds, cache)
    graph = SocialGraph((e.source, e.target) for e in ds.social)
    train, test = list(ds.split.train), list(ds.split.test)
    fit_part, valid = holdout(train)
    everyone = sorted(
        {e.user for e in ds.events} | {u for e in ds.social for u in (e.source, e.target)}
    )

    tuned: dict[str, tuple[Setting, float]] = {}
    valid_scores: dict[str, float] = {}
    model = LastfmModel(catalog, text, graph, fit_part, everyone)
    truth_v = items_by_user(valid)
    users_v = sorted(truth_v)
    seen_v = items_by_user(fit_part)
    # Strength-major order: each strength's components are computed once.
    all_settings = sorted({s for row in ROWS.values() for s in _grid(row)}, key=_order)
    for setting in all_settings:
        recs = _evaluate(model, setting, users_v, seen_v, truth_v)
        valid_scores[setting.label()] = round(summarize(recs)[NDCG].mean, 6)
    for name, row in ROWS.items():
        best = max(_grid(row), key=lambda s: (valid_scores[s.label()], -_order(s)[0]))
        tuned[name] = (best, valid_scores[best.label()])

    model = LastfmModel(catalog, text, graph, train, everyone)
    truth = items_by_user(test)
    users = sorted(truth)
    seen = items_by_user(train)
    without_train = sorted(set(users) - set(seen))
    records: dict[str, list[tuple[str, dict[str, float]]]] = {}
    for name, (setting, _) in sorted(tuned.items(), key=lambda kv: _order(kv[1][0])):
        records[name] = _evaluate(model, setting, users, seen, truth)
    lists_pop = _top(np.tile(model.log_pop, (len(users), 1)), users, seen, catalog)
    records["most-popular"] = [
        (u, list_metrics(lst, truth[u])) for u, lst in zip(users, lists_pop, strict=True)
    ]
    _, knn = model.sim_and_knn(0.0, users)
    # Item-kNN alone; popularity only breaks its ties (1e-9 is far below any cosine step).
    lists_knn = _top(knn + 1e-9 * model.log_pop[None, :], users, seen, catalog)
    records["item-knn"] = [
        (u, list_metrics(lst, truth[u])) for u, lst in zip(users, lists_knn, strict=True)
    ]
    out: dict[str, Any] = {"systems": {}}
    for name in ("most-popular", "item-knn", *ROWS):
        est = summarize(records[name])
        row_out: dict[str, Any] = {}
        for m in (HIT, NDCG):
            row_out[m] = round(est[m].mean, 6)
            row_out[f"{m}_lo"] = round(est[m].low, 6)
            row_out[f"{m}_hi"] = round(est[m].high, 6)
        row_out["n_users"] = est[NDCG].n_users
        if name in tuned:
            row_out["tuned"] = tuned[name][0].label()
            row_out["valid_ndcg@10"] = tuned[name][1]
        out["systems"][name] = row_out
    out["social_minus_no_social"] = {
        m: paired_delta(records["+ social"], records["+ collaborative"], m) for m in (NDCG, HIT)
    }
    out["meta"] = {
        "split": {"train": len(train), "test": len(test), "valid_of_train": len(valid)},
        "valid": f"{VALID_FRACTION:g} of train, seed {VALID_SEED}",
        "test_users": len(users),
        "test_users_without_train": len(without_train),
        "follow_edges": len(graph),
        "valid_ndcg@10": valid_scores,
    }
    return out


def _order(s: Setting) -> tuple[float, float, float]:
    return (s.strength, s.sim, s.knn)

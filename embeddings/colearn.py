"""Multi-scene co-learning: learned scene gates and sparse scenes borrowing from the rest.

The scene-conditioned score is ``r = (u_s ⊙ g_s) · i``. Two things are learned from the
training events, and both let a scene with few events lean on the others:

* **the user's scene vector** ``u_s``. A user's own running mean of their items in scene
  ``s`` (``UserState.scene_vecs``) is noisy when they have clicked there once or twice and
  missing when never. Co-learning shrinks it toward a *borrowed* vector,
  ``b_s = β · u_global + (1 - β) · Σ_t w_st n_t u_t / Σ_t w_st n_t``: the user's global
  vector mixed with their other scenes' vectors, each weighted by how related the scenes are
  (``w_st``, from which scenes the same users are active in) and by how many events the user
  has there. The result is ``normalize(n_s u_s + κ b_s)``: with ``n_s`` own events against a
  pseudo-count ``κ`` the own vector takes over as evidence grows (a scene the user never
  visited is the borrowed vector alone). ``UserState.scene_vector`` is the special case
  ``β = 1``.
* **the gates** ``g_s``, one per scene and one for the global feed: a per-dimension
  reweighting of the text/KG space, fitted with BPR (Rendle et al., 2009) on the training
  events. For event ``(u, i)`` in scene ``s`` with a sampled in-scene negative ``j`` the loss
  is ``-log σ(g_s · (q ⊙ (v_i - v_j)))``, ``q`` being the user's query vector *before* the
  event (what the ranking would have used). With co-learning the gates are
  ``g_s = a_s (1 + δ_0 + δ_s)``: a shared shape ``δ_0`` fitted on every scene's events plus a
  scene-specific ``δ_s`` under a stronger L2 penalty, so a sparse scene keeps mostly the
  shared shape; ``a_s`` is a free scale. The independent variant fits ``a_s (1 + δ_s)`` on its
  own scene's events only. Gates are returned with mean 1, so a gated similarity stays on the
  scale of the plain cosine that blend weights were chosen for.

Everything here is pure numpy/torch and cheap: a few epochs over at most one query vector
per training event (80,000 x 384 for ml-100k) in one thread.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from embeddings.scenes import SceneGates
from embeddings.user_model import UserState
from embeddings.vectors import Matrix, Vector, normalize

GLOBAL = "global"
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class CoLearnConfig:
    """How much a user's scene vector borrows, and from what."""

    #: Pseudo-count ``κ`` of the borrowed vector against the user's own events in the scene.
    prior: float = 3.0
    #: ``β``: share of the global vector in the borrowed vector (the rest: related scenes).
    global_share: float = 0.5


class SceneRelations:
    """Scene-scene weights ``w_st`` (zero diagonal), from users' activity across scenes."""

    def __init__(self, scenes: Sequence[str], weights: npt.NDArray[np.float64]) -> None:
        if weights.shape != (len(scenes), len(scenes)):
            raise ValueError(f"weights: expected {len(scenes)}x{len(scenes)}, got {weights.shape}")
        self.scenes = tuple(scenes)
        self.weights = weights.astype(np.float64)
        self._index = {s: k for k, s in enumerate(self.scenes)}

    @classmethod
    def from_activity(cls, counts: Mapping[str, Mapping[str, int]]) -> SceneRelations:
        """Cosine between scenes' columns of the user x scene event-count matrix.

        Two scenes are related when the same users are active in both, in proportion; the
        counts are log-damped so that a few heavy users do not decide it alone.
        """
        scenes = sorted({s for per_user in counts.values() for s in per_user})
        mat = np.zeros((len(counts), len(scenes)), dtype=np.float64)
        col = {s: k for k, s in enumerate(scenes)}
        for row, per_user in enumerate(counts.values()):
            for s, n in per_user.items():
                mat[row, col[s]] = np.log1p(n)
        norms = np.linalg.norm(mat, axis=0)
        norms[norms == 0] = 1.0
        sim = (mat.T @ mat) / np.outer(norms, norms)
        np.fill_diagonal(sim, 0.0)
        return cls(scenes, sim)

    def related(self, scene: str) -> dict[str, float]:
        k = self._index.get(scene)
        if k is None:
            return {}
        return {t: float(w) for t, w in zip(self.scenes, self.weights[k], strict=True) if w > 0}

    def to_dict(self) -> dict[str, object]:
        return {"scenes": list(self.scenes), "weights": self.weights.round(6).tolist()}

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> SceneRelations:
        scenes = [str(s) for s in raw["scenes"]]  # type: ignore[attr-defined]
        return cls(scenes, np.asarray(raw["weights"], dtype=np.float64))


def borrowed_vector(
    state: UserState, scene: str, relations: SceneRelations | None, global_share: float
) -> Vector | None:
    """``β u_global + (1 - β) Σ_t w_st n_t u_t / Σ_t w_st n_t`` (normalized), or what exists."""
    mix: Vector | None = None
    if relations is not None and global_share < 1.0:
        acc = np.zeros(0, dtype=np.float64)
        total = 0.0
        for other, w in relations.related(scene).items():
            vec = state.scene_vecs.get(other)
            n = state.scene_counts.get(other, 0)
            if vec is None or n == 0:
                continue
            weight = w * n
            acc = weight * vec.astype(np.float64) if total == 0.0 else acc + weight * vec
            total += weight
        if total > 0.0:
            mix = normalize((acc / total).astype(np.float32))
    glob = state.global_vec
    if mix is None:
        return glob
    if glob is None:
        return mix
    return normalize((global_share * glob + (1.0 - global_share) * mix).astype(np.float32))


def colearned_scene_vector(
    state: UserState,
    scene: str,
    relations: SceneRelations | None,
    config: CoLearnConfig,
) -> Vector | None:
    """The user's vector for ``scene``: own events shrunk toward the borrowed vector."""
    prior = borrowed_vector(state, scene, relations, config.global_share)
    own = state.scene_vecs.get(scene)
    n = state.scene_counts.get(scene, 0)
    if own is None or n == 0:
        return prior
    if prior is None or config.prior <= 0.0:
        return own
    return normalize((n * own + config.prior * prior).astype(np.float32))


def independent_scene_vector(state: UserState, scene: str) -> Vector | None:
    """The user's own running mean in ``scene`` only (None until they click there)."""
    if state.scene_counts.get(scene, 0) == 0:
        return None
    return state.scene_vecs.get(scene)


@dataclass
class CoLearner:
    """What the ranking needs to turn a ``UserState`` into a scene query ``u_s ⊙ g_s``.

    ``gates`` holds one learned gate per scene and ``"global"`` (missing ones are all ones),
    ``relations`` the scene-scene weights; both are fitted offline on training events and
    saved as one JSON file (:meth:`save` / :meth:`load`).
    """

    gates: SceneGates
    relations: SceneRelations | None = None
    config: CoLearnConfig = field(default_factory=CoLearnConfig)

    def scene_vector(self, state: UserState, scene: str | None) -> Vector | None:
        if scene is None or scene == GLOBAL:
            return state.global_vec
        return colearned_scene_vector(state, scene, self.relations, self.config)

    def query(self, state: UserState, scene: str | None) -> Vector | None:
        """``u_s ⊙ g_s`` for a scene feed, or ``u_global ⊙ g_global`` for ``scene=None``."""
        vec = self.scene_vector(state, scene)
        return None if vec is None else self.gates.apply(scene or GLOBAL, vec)

    def to_dict(self) -> dict[str, object]:
        return {
            "dim": self.gates.dim,
            "gates": {s: g.round(6).tolist() for s, g in self.gates.items()},
            "relations": None if self.relations is None else self.relations.to_dict(),
            "config": asdict(self.config),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> CoLearner:
        gates = SceneGates(int(raw["dim"]))  # type: ignore[call-overload]
        for scene, gate in dict(raw["gates"]).items():  # type: ignore[call-overload]
            gates.set_gate(str(scene), np.asarray(gate, dtype=np.float32))
        rel = raw.get("relations")
        relations = None if rel is None else SceneRelations.from_dict(rel)  # type: ignore[arg-type]
        return cls(gates, relations, CoLearnConfig(**dict(raw["config"])))  # type: ignore[call-overload]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict()) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> CoLearner:
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


# --- fitting the gates ---------------------------------------------------------------------


class GateSamples:
    """``(scene, query vector before the event, positive item row)`` per training event."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._scenes: list[str] = []
        self._queries: list[Vector] = []
        self._rows: list[int] = []

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, scene: str, query: Vector | None, row: int) -> None:
        if query is None:
            return  # nothing to gate before the user's first event (in the scene)
        self._scenes.append(scene)
        self._queries.append(query.astype(np.float32, copy=False))
        self._rows.append(row)

    def arrays(self) -> tuple[list[str], Matrix, IntArray]:
        queries = (
            np.stack(self._queries) if self._queries else np.zeros((0, self.dim), dtype=np.float32)
        )
        return list(self._scenes), queries, np.asarray(self._rows, dtype=np.int64)


@dataclass(frozen=True)
class GateFitConfig:
    #: ``shared``: ``a_s (1 + δ_0 + δ_s)`` over all scenes (co-learning);
    #: ``independent``: ``a_s (1 + δ_s)`` from each scene's own events only.
    mode: str = "shared"
    #: L2 penalty on the scene-specific ``δ_s`` (and, with ``shared``, on ``δ_0``).
    reg: float = 1e-2
    shared_reg: float = 1e-3
    #: ``uniform`` negatives over the scene's candidates, or ``popular``: the positive of
    #: another random event of the scene (so, in proportion to clicks). With popular
    #: negatives the gate learns what separates a click from a popular item, which is
    #: what a blend that already has a popularity term needs from it.
    negatives: str = "uniform"
    epochs: int = 4
    lr: float = 0.05
    batch_size: int = 1024
    seed: int = 2024


def fit_gates(
    samples: GateSamples,
    items: Matrix,
    candidates: Mapping[str, Sequence[int] | npt.NDArray[np.intp]],
    config: GateFitConfig | None = None,
) -> dict[str, Vector]:
    """BPR-fit one gate per scene in ``samples`` (negatives: uniform over its candidates).

    ``candidates[scene]`` are the item rows a feed of that scene ranks (every row for the
    global feed). Returns gates scaled to mean 1 (the shape is what ranks; the scale is the
    blend weight's job).
    """
    cfg = config or GateFitConfig()
    if cfg.mode not in ("shared", "independent"):
        raise ValueError(f"mode: expected 'shared' or 'independent', got {cfg.mode!r}")
    scene_of, queries, rows = samples.arrays()
    scenes = sorted(set(scene_of))
    if not scenes:
        return {}
    sid = {s: k for k, s in enumerate(scenes)}
    gen = torch.Generator().manual_seed(cfg.seed)
    dim = items.shape[1]
    item_t = torch.from_numpy(np.ascontiguousarray(items, dtype=np.float32))
    q_t = torch.from_numpy(queries)
    pos_t = torch.from_numpy(rows)
    s_t = torch.tensor([sid[s] for s in scene_of], dtype=torch.long)
    if cfg.negatives == "popular":
        cand = [pos_t[s_t == k] for k in range(len(scenes))]
    elif cfg.negatives == "uniform":
        cand = [torch.as_tensor(np.asarray(candidates[s], dtype=np.int64)) for s in scenes]
    else:
        raise ValueError(f"negatives: expected 'uniform' or 'popular', got {cfg.negatives!r}")
    delta = torch.zeros(len(scenes), dim, requires_grad=True)
    shared = torch.zeros(dim, requires_grad=cfg.mode == "shared")
    log_scale = torch.zeros(len(scenes), requires_grad=True)
    params = [delta, log_scale] + ([shared] if cfg.mode == "shared" else [])
    opt = torch.optim.Adam(params, lr=cfg.lr)
    n = len(rows)
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, cfg.batch_size):
            b = order[start : start + cfg.batch_size]
            sb = s_t[b]
            neg = torch.empty_like(b)
            for k in torch.unique(sb).tolist():
                mask = sb == k
                pick = torch.randint(0, len(cand[k]), (int(mask.sum()),), generator=gen)
                neg[mask] = cand[k][pick]
            feat = q_t[b] * (item_t[pos_t[b]] - item_t[neg])
            gate = torch.exp(log_scale[sb])[:, None] * (1.0 + shared + delta[sb])
            x = (gate * feat).sum(1)
            # The full objective is mean loss + λ Σ_s ||δ_s||²: a scene's data pulls on its
            # δ_s in proportion to its share of the events, so a sparse scene stays close to
            # the shared shape (co-learning) or to all ones (independent).
            loss = torch.nn.functional.softplus(-x).mean() + cfg.reg * (delta**2).sum()
            if cfg.mode == "shared":
                loss = loss + cfg.shared_reg * (shared**2).sum()
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    out: dict[str, Vector] = {}
    with torch.no_grad():
        for s, k in sid.items():
            g = (1.0 + shared + delta[k]).numpy().astype(np.float64)
            mean = float(g.mean())
            out[s] = (g / mean if mean > 1e-6 else np.ones(dim)).astype(np.float32)
    return out


def scene_candidates(item_scenes: Sequence[Sequence[str]]) -> dict[str, npt.NDArray[np.intp]]:
    """Rows of the items in each scene, plus every row under ``"global"``."""
    out: dict[str, list[int]] = {}
    for row, scenes in enumerate(item_scenes):
        for s in scenes:
            out.setdefault(s, []).append(row)
    cands = {s: np.asarray(r, dtype=np.intp) for s, r in out.items()}
    cands[GLOBAL] = np.arange(len(item_scenes), dtype=np.intp)
    return cands


def fit_colearner(
    events: Iterable[tuple[str, str, str]],
    item_ids: Sequence[str],
    item_matrix: Matrix,
    item_scenes: Sequence[Sequence[str]],
    config: CoLearnConfig | None = None,
    scene_gates: GateFitConfig | None = None,
    global_gate: GateFitConfig | None = None,
) -> CoLearner:
    """Everything co-learning needs, from a log of ``(user, item_id, scene)`` in time order.

    The offline job behind the worker's learned gates: replays the log through fresh
    ``UserState``s (as the worker builds them, clicks only), collects each event's query
    before it is applied, and fits the scene gates (``scene_gates``, default: shared shape,
    uniform in-scene negatives) and the global feed's gate (``global_gate``, default:
    popular negatives). Unknown items are skipped.
    """
    cfg = config or CoLearnConfig()
    log = list(events)
    row = {item: r for r, item in enumerate(item_ids)}
    counts: dict[str, dict[str, int]] = {}
    for user, item, scene in log:
        if item in row:
            per_user = counts.setdefault(user, {})
            per_user[scene] = per_user.get(scene, 0) + 1
    relations = SceneRelations.from_activity(counts)
    dim = item_matrix.shape[1]
    scene_samples, global_samples = GateSamples(dim), GateSamples(dim)
    states: dict[str, UserState] = {}
    for user, item, scene in log:
        r = row.get(item)
        if r is None:
            continue
        state = states.setdefault(user, UserState())
        scene_samples.add(scene, colearned_scene_vector(state, scene, relations, cfg), r)
        global_samples.add(GLOBAL, state.global_vec, r)
        state.apply_item(item, item_matrix[r], scene)
    candidates = scene_candidates(item_scenes)
    gates = SceneGates(dim)
    fitted = fit_gates(scene_samples, item_matrix, candidates, scene_gates or GateFitConfig())
    glob = global_gate or GateFitConfig(mode="independent", reg=1e-5, negatives="popular")
    fitted.update(fit_gates(global_samples, item_matrix, candidates, glob))
    for scene, gate in fitted.items():
        gates.set_gate(scene, gate)
    return CoLearner(gates, relations, cfg)

"""A trained knowledge-graph embedding: TransE (Bordes et al., 2013), pure torch on CPU.

Every entity ``e`` and relation ``r`` of the graph gets a ``dim``-vector such that for a
true triple ``(h, r, t)`` the translation ``h + r`` lands near ``t``: the distance
``||h + r - t||`` (L2 or L1) is trained to be at least ``margin`` smaller than for a
corrupted triple, in which the head or the tail (one of the two, uniformly) is replaced by
an entity drawn uniformly from all entities. Entity vectors are kept on the unit sphere
(renormalised after every step, as in the paper), relation vectors are free. Training is
seeded (initialisation, shuffling and corruption all come from one ``torch.Generator``)
and single-process, so the same triples, hyper-parameters and seed give the same vectors.

For the items of a catalog, :func:`project_vectors` maps the ``dim``-d entity vectors to
the text encoder's space with one fixed, seeded Gaussian random projection
(Johnson-Lindenstrauss): inner products and distances between entities are preserved up to
a small distortion, so films that TransE places close together stay close after fusion,
while the projection itself adds no learned parameter and needs no alignment with the text
space (the hashed KG vectors of :mod:`embeddings.kg` are not aligned with it either).

:func:`cached_transe` trains once per (KG file content, hyper-parameters) and keeps the
vectors as one ``.npz`` under a cache folder (``results/cache/`` in the harness).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from embeddings.vectors import Vector, normalize

logger = logging.getLogger(__name__)

Matrix = npt.NDArray[np.float32]
Triple = tuple[str, str, str]

#: Bump when the training code changes in a way that changes the vectors.
CACHE_VERSION = 2


@dataclass(frozen=True)
class TransEParams:
    """Hyper-parameters of :func:`train_transe` (also the cache key)."""

    dim: int = 64
    epochs: int = 50
    seed: int = 0
    margin: float = 1.0
    lr: float = 0.01
    batch_size: int = 4096
    norm: int = 2  # 1: L1 distance, 2: L2 distance


@dataclass
class TransEModel:
    """Trained TransE vectors; entity rows are unit-norm."""

    entities: tuple[str, ...]
    relations: tuple[str, ...]
    entity_matrix: Matrix
    relation_matrix: Matrix
    params: TransEParams
    losses: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._entity_row = {e: i for i, e in enumerate(self.entities)}
        self._relation_row = {r: i for i, r in enumerate(self.relations)}

    @property
    def dim(self) -> int:
        return int(self.entity_matrix.shape[1])

    def entity_vector(self, entity: str) -> Vector | None:
        """The entity's vector, or None for an entity absent from the training triples."""
        row = self._entity_row.get(entity)
        return None if row is None else self.entity_matrix[row]

    def relation_vector(self, relation: str) -> Vector | None:
        row = self._relation_row.get(relation)
        return None if row is None else self.relation_matrix[row]

    def tail_distances(self, head: str, relation: str) -> npt.NDArray[np.float32]:
        """``||h + r - t||`` for every entity ``t``, in ``entities`` order."""
        h, r = self.entity_vector(head), self.relation_vector(relation)
        if h is None or r is None:
            raise KeyError((head, relation))
        diff = (h + r)[None, :] - self.entity_matrix
        out: npt.NDArray[np.float32] = np.linalg.norm(diff, ord=self.params.norm, axis=1).astype(
            np.float32
        )
        return out

    def tail_rank(self, head: str, relation: str, tail: str) -> int:
        """1-based rank of ``tail`` among all entities by distance to ``h + r`` (ties: worst)."""
        row = self._entity_row[tail]
        dist = self.tail_distances(head, relation)
        return int((dist <= dist[row]).sum())

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(
            tmp,
            entities=np.asarray(self.entities, dtype=str),
            relations=np.asarray(self.relations, dtype=str),
            entity_matrix=self.entity_matrix,
            relation_matrix=self.relation_matrix,
            params=np.asarray(json.dumps(asdict(self.params))),
            losses=np.asarray(self.losses, dtype=np.float64),
        )
        tmp.replace(path)  # atomic: a killed run never leaves a truncated cache file

    @classmethod
    def load(cls, path: Path) -> TransEModel:
        with np.load(path) as data:  # plain arrays only: no pickle
            return cls(
                entities=tuple(str(e) for e in data["entities"]),
                relations=tuple(str(r) for r in data["relations"]),
                entity_matrix=data["entity_matrix"].astype(np.float32),
                relation_matrix=data["relation_matrix"].astype(np.float32),
                params=TransEParams(**json.loads(str(data["params"]))),
                losses=[float(x) for x in data["losses"]],
            )


def _distance(h: torch.Tensor, r: torch.Tensor, t: torch.Tensor, norm: int) -> torch.Tensor:
    out: torch.Tensor = torch.linalg.vector_norm(h + r - t, ord=norm, dim=-1)
    return out


def train_transe(
    triples: Sequence[Triple],
    dim: int = 64,
    epochs: int = 50,
    seed: int = 0,
    margin: float = 1.0,
    lr: float = 0.01,
    batch_size: int = 4096,
    norm: int = 2,
) -> TransEModel:
    """TransE on ``(head, relation, tail)`` triples; seeded and deterministic on CPU."""
    if not triples:
        raise ValueError("no triples to train on")
    if norm not in (1, 2):
        raise ValueError("norm must be 1 (L1) or 2 (L2)")
    params = TransEParams(dim, epochs, seed, margin, lr, batch_size, norm)
    entities = tuple(sorted({h for h, _, _ in triples} | {t for _, _, t in triples}))
    relations = tuple(sorted({r for _, r, _ in triples}))
    e_row = {e: i for i, e in enumerate(entities)}
    r_row = {r: i for i, r in enumerate(relations)}
    data = torch.tensor([(e_row[h], r_row[r], e_row[t]) for h, r, t in triples], dtype=torch.long)
    n_ent, n_trip = len(entities), data.shape[0]

    gen = torch.Generator().manual_seed(seed)
    bound = 6.0 / dim**0.5  # the paper's uniform initialisation
    ent = (torch.rand(n_ent, dim, generator=gen) * 2 - 1) * bound
    rel = (torch.rand(len(relations), dim, generator=gen) * 2 - 1) * bound
    rel = rel / rel.norm(dim=1, keepdim=True)
    ent = torch.nn.Parameter(ent)
    rel = torch.nn.Parameter(rel)
    opt = torch.optim.Adam([ent, rel], lr=lr)

    losses: list[float] = []
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(n_trip, generator=gen)
        total = 0.0
        for lo in range(0, n_trip, batch_size):
            batch = data[order[lo : lo + batch_size]]
            n = batch.shape[0]
            with torch.no_grad():
                ent.div_(ent.norm(dim=1, keepdim=True).clamp_min(1e-12))
            corrupt = torch.randint(0, n_ent, (n,), generator=gen)
            tail_side = torch.rand(n, generator=gen) < 0.5
            neg_h = torch.where(tail_side, batch[:, 0], corrupt)
            neg_t = torch.where(tail_side, corrupt, batch[:, 2])
            idx = torch.cat([batch[:, 0], batch[:, 2], neg_h, neg_t])
            vecs = torch.nn.functional.embedding(idx, ent)
            h, t, nh, nt = vecs[:n], vecs[n : 2 * n], vecs[2 * n : 3 * n], vecs[3 * n :]
            r = torch.nn.functional.embedding(batch[:, 1], rel)
            pos = _distance(h, r, t, norm)
            neg = _distance(nh, r, nt, norm)
            loss = torch.relu(margin + pos - neg).mean()
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            total += float(loss.detach()) * n
        losses.append(total / n_trip)
        if epoch % 25 == 0 or epoch == epochs - 1:
            logger.info("TransE epoch %d/%d loss %.4f", epoch + 1, epochs, losses[-1])
    with torch.no_grad():
        ent.div_(ent.norm(dim=1, keepdim=True).clamp_min(1e-12))
    logger.info("TransE trained in %.1f s", time.perf_counter() - start)
    return TransEModel(
        entities=entities,
        relations=relations,
        entity_matrix=ent.detach().numpy().astype(np.float32),
        relation_matrix=rel.detach().numpy().astype(np.float32),
        params=params,
        losses=losses,
    )


def _tsv(path: Path) -> Iterator[list[str]]:
    with path.open(encoding="utf-8", errors="replace", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader, None)  # RecBole atomic-file header
        for row in reader:
            if len(row) >= 2:
                yield row


def read_triples(kg_path: Path) -> list[Triple]:
    """``(head, relation, tail)`` rows of a RecBole ``.kg`` file."""
    return [(r[0], r[1], r[2]) for r in _tsv(kg_path) if len(r) >= 3]


def read_links(link_path: Path) -> dict[str, str]:
    """item id -> KG entity id from a RecBole ``.link`` file."""
    return {r[0]: r[1] for r in _tsv(link_path)}


def cached_transe(kg_path: Path, cache_dir: Path, params: TransEParams) -> TransEModel:
    """:func:`train_transe` on ``kg_path``, cached by a hash of the file and the params."""
    digest = hashlib.sha256(kg_path.read_bytes())
    digest.update(json.dumps({"v": CACHE_VERSION, **asdict(params)}, sort_keys=True).encode())
    path = cache_dir / f"transe-{digest.hexdigest()[:16]}.npz"
    if path.is_file():
        logger.info("TransE vectors from %s", path)
        return TransEModel.load(path)
    model = train_transe(
        read_triples(kg_path),
        dim=params.dim,
        epochs=params.epochs,
        seed=params.seed,
        margin=params.margin,
        lr=params.lr,
        batch_size=params.batch_size,
        norm=params.norm,
    )
    model.save(path)
    return model


def random_projection(in_dim: int, out_dim: int, seed: int = 2024) -> Matrix:
    """A fixed Gaussian ``(in_dim, out_dim)`` projection scaled by ``1/sqrt(out_dim)``."""
    rng = np.random.default_rng(seed)
    out: Matrix = (rng.standard_normal((in_dim, out_dim)) / np.sqrt(out_dim)).astype(np.float32)
    return out


def project_vectors(
    model: TransEModel,
    item_entities: Mapping[str, str],
    out_dim: int,
    seed: int = 2024,
) -> dict[str, Vector | None]:
    """item id -> unit ``out_dim`` KG vector (entity vector times a seeded JL projection).

    None for an item whose entity is not in the trained graph (fusion then keeps the text).
    """
    proj = random_projection(model.dim, out_dim, seed)
    out: dict[str, Vector | None] = {}
    for item, entity in item_entities.items():
        vec = model.entity_vector(entity)
        out[item] = None if vec is None else normalize(vec @ proj)
    return out

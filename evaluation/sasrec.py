"""SASRec (Kang & McAuley 2018), in torch on CPU: the field's sequential baseline.

As in the paper and its PyTorch port (pmixer/SASRec.pytorch): item and learned position
embeddings, two pre-norm blocks of causal single-head self-attention and a point-wise
feed-forward layer, each position trained to score the next item above one uniformly
drawn negative (binary cross-entropy), Adam (lr 1e-3, betas 0.9/0.98). Sequences are
cut to their last :attr:`SASRec.max_len` items. Training stops at a wall-clock budget (or
after ``patience`` checks without progress) and keeps the checkpoint with the best
NDCG@10 on valid (leave-one-out, full ranking), as published runs do.

Under the harness's contract: :meth:`SASRec.fit_with_valid` trains; ``update(event)``
appends to the user's sequence without training (a sequence model reads each user's
whole prefix when it ranks, as the published rows do); ``score`` ranks every item for
the user's current sequence, and :meth:`SASRec.score_many` does so for a batch.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from evaluation.baselines import Recommender
from evaluation.data import Catalog, Event

logger = logging.getLogger(__name__)
FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class SASRecConfig:
    dim: int = 64
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.5
    max_len: int = 50
    lr: float = 1e-3
    batch_size: int = 128
    #: Wall-clock budget of the training, checks on valid included.
    minutes: float = 30.0
    max_epochs: int = 400
    eval_every: int = 5
    #: Checks on valid without a better NDCG@10 before training stops.
    patience: int = 6
    seed: int = 2020


class _Net(nn.Module):
    def __init__(self, n_items: int, cfg: SASRecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.items = nn.Embedding(n_items + 1, cfg.dim, padding_idx=0)
        self.positions = nn.Embedding(cfg.max_len, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        self.attn_norms = nn.ModuleList(nn.LayerNorm(cfg.dim, eps=1e-8) for _ in range(cfg.blocks))
        self.attns = nn.ModuleList(
            nn.MultiheadAttention(cfg.dim, cfg.heads, dropout=cfg.dropout, batch_first=True)
            for _ in range(cfg.blocks)
        )
        self.ff_norms = nn.ModuleList(nn.LayerNorm(cfg.dim, eps=1e-8) for _ in range(cfg.blocks))
        self.ffs = nn.ModuleList(
            nn.Sequential(
                nn.Linear(cfg.dim, cfg.dim),
                nn.Dropout(cfg.dropout),
                nn.ReLU(),
                nn.Linear(cfg.dim, cfg.dim),
                nn.Dropout(cfg.dropout),
            )
            for _ in range(cfg.blocks)
        )
        self.last_norm = nn.LayerNorm(cfg.dim, eps=1e-8)
        causal = torch.triu(torch.ones(cfg.max_len, cfg.max_len, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal", causal)

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` item ids, left-padded with 0, ``L <= max_len`` -> ``(B, L, dim)``.

        A batch is padded only to its longest sequence: positions count back from the end
        (the last item is always at ``max_len - 1``) and padding is masked out of the keys,
        so the states are those of a batch padded to ``max_len``, at a fraction of the cost.
        """
        length = seqs.shape[1]
        x = self.items(seqs) * math.sqrt(self.cfg.dim)
        start = self.cfg.max_len - length
        x = x + self.positions(torch.arange(start, start + length, device=seqs.device))[None]
        x = self.drop(x)
        pad = seqs == 0
        keep = (~pad).unsqueeze(-1).to(x.dtype)
        x = x * keep
        causal: torch.Tensor = self.causal  # type: ignore[assignment]
        # Future items and padding are hidden; every position still sees itself (a padded
        # one would otherwise attend to nothing, and softmax over nothing is NaN).
        mask = causal[:length, :length][None] | pad[:, None, :]
        mask = mask & ~torch.eye(length, dtype=torch.bool)[None]
        mask = mask.repeat_interleave(self.cfg.heads, dim=0)
        for norm, attn, ff_norm, ff in zip(
            self.attn_norms, self.attns, self.ff_norms, self.ffs, strict=True
        ):
            q = norm(x)
            attended, _ = attn(q, x, x, attn_mask=mask, need_weights=False)
            x = ff_norm(q + attended)
            x = (x + ff(x)) * keep
        out: torch.Tensor = self.last_norm(x)
        return out


class SASRec(Recommender):
    name = "sasrec"

    def __init__(self, catalog: Catalog, config: SASRecConfig | None = None) -> None:
        super().__init__(catalog)
        self.config = config or SASRecConfig()
        self._net: _Net | None = None
        self._hist: dict[str, list[int]] = defaultdict(list)
        self.log: list[dict[str, float]] = []
        self.best_epoch = 0
        self.best_valid = 0.0

    # --- the contract ----------------------------------------------------------------------
    def fit(self, train: Sequence[Event]) -> None:
        """Train without a valid split: the whole budget, the last epoch kept."""
        self.fit_with_valid(train, ())

    def update(self, event: Event) -> None:
        if event.item in self.catalog:
            self._hist[event.user].append(self.catalog.row(event.item) + 1)

    def score(self, user: str) -> FloatArray:
        out: FloatArray = self.score_many([user])[0]
        return out

    def score_many(self, users: Sequence[str]) -> FloatArray:
        """``(len(users), n_items)`` scores: each user's last state against every item."""
        if self._net is None:
            return np.zeros((len(users), len(self.catalog)), dtype=np.float64)
        self._net.eval()
        with torch.no_grad():
            states = self._net(self._batch([self._hist.get(u, []) for u in users]))[:, -1]
            scores = states @ self._net.items.weight[1:].T
        out: FloatArray = scores.double().numpy()
        return out

    # --- training --------------------------------------------------------------------------
    def _batch(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        """Each sequence's last ``max_len`` items, left-padded to the longest of them."""
        tails = [seq[-self.config.max_len :] for seq in seqs]
        length = max(1, max((len(t) for t in tails), default=1))
        out = torch.zeros(len(tails), length, dtype=torch.long)
        for k, tail in enumerate(tails):
            if tail:
                out[k, length - len(tail) :] = torch.tensor(tail, dtype=torch.long)
        return out

    def _batches(self, users: Sequence[str], gen: torch.Generator) -> list[list[str]]:
        """One epoch's batches: shuffled, then sorted by length within chunks of 64 batches
        so that a batch pads little."""
        size = self.config.batch_size
        order = [users[k] for k in torch.randperm(len(users), generator=gen).tolist()]
        out: list[list[str]] = []
        for c0 in range(0, len(order), 64 * size):
            chunk = sorted(order[c0 : c0 + 64 * size], key=lambda u: len(self._hist[u]))
            out += [chunk[b0 : b0 + size] for b0 in range(0, len(chunk), size)]
        perm = torch.randperm(len(out), generator=gen).tolist()
        return [out[k] for k in perm]

    def fit_with_valid(self, train: Sequence[Event], valid: Sequence[Event]) -> None:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        self._hist = defaultdict(list)
        for e in train:
            self.update(e)
        users = [u for u, s in self._hist.items() if len(s) >= 2]
        if not users:
            return
        n = len(self.catalog)
        net = _Net(n, cfg)
        for p in net.parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)
        with torch.no_grad():
            net.items.weight[0].zero_()
        self._net = net
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(0.9, 0.98))
        start = time.perf_counter()
        best_state = copy.deepcopy(net.state_dict())
        misses = 0
        for epoch in range(1, cfg.max_epochs + 1):
            net.train()
            total = 0.0
            for batch in self._batches(users, gen):
                seq = self._batch([self._hist[u][:-1] for u in batch])
                pos = self._batch([self._hist[u][1:] for u in batch])
                neg = torch.randint(1, n + 1, pos.shape, generator=gen)
                h = net(seq)
                pos_logit = (h * net.items(pos)).sum(-1)
                neg_logit = (h * net.items(neg)).sum(-1)
                live = pos != 0
                loss = nn.functional.binary_cross_entropy_with_logits(
                    pos_logit[live], torch.ones_like(pos_logit[live])
                ) + nn.functional.binary_cross_entropy_with_logits(
                    neg_logit[live], torch.zeros_like(neg_logit[live])
                )
                opt.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                total += float(loss.detach())
            elapsed = time.perf_counter() - start
            out_of_time = elapsed > cfg.minutes * 60
            if valid and (epoch % cfg.eval_every == 0 or out_of_time):
                ndcg = self.valid_ndcg(valid)
                self.log.append(
                    {"epoch": epoch, "loss": round(total, 3), "valid_ndcg@10": ndcg}
                    | {"s": round(elapsed, 1)}
                )
                logger.info(
                    "sasrec epoch %d loss %.1f valid NDCG@10 %.4f (%.0f s)",
                    epoch,
                    total,
                    ndcg,
                    elapsed,
                )
                if ndcg > self.best_valid:
                    self.best_valid, self.best_epoch = ndcg, epoch
                    best_state = copy.deepcopy(net.state_dict())
                    misses = 0
                else:
                    misses += 1
                if misses >= cfg.patience:
                    break
            if out_of_time:
                break
        if valid:
            net.load_state_dict(best_state)
        else:
            self.best_epoch = epoch

    def valid_ndcg(self, valid: Sequence[Event], batch: int = 1024) -> float:
        """Mean NDCG@10 of the valid targets, each user's earlier items left out."""
        total, count = 0.0, 0
        events = [e for e in valid if e.item in self.catalog]
        for b0 in range(0, len(events), batch):
            chunk = events[b0 : b0 + batch]
            scores = self.score_many([e.user for e in chunk])
            for k, e in enumerate(chunk):
                target = self.catalog.row(e.item)
                row = scores[k]
                own = row[target]
                hist = [r - 1 for r in self._hist.get(e.user, ()) if r - 1 != target]
                row[hist] = -np.inf
                rank = float((row > own).sum()) + ((row == own).sum() + 1) / 2.0
                total += 1.0 / math.log2(rank + 1.0) if rank <= 10 else 0.0
                count += 1
        return round(total / max(count, 1), 6)

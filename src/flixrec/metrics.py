"""Ranking metrics on a candidate score matrix whose column 0 is the held-out item.

Tie rule (DESIGN.md): the rank of the held-out item is the number of OTHER candidates scoring at
least as high, so ties count against it and a constant scorer gets rank C-1 (HR@10 = 0). A NaN
score for the held-out item ranks last; NaN scores of other candidates are ignored.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric


def positive_rank(scores: Tensor) -> Tensor:
    """0-based rank of column 0 among the C columns of `scores` (B, C); int64 (B,)."""
    scores = scores.float()
    pos = scores[:, :1]
    rank = (scores[:, 1:] >= pos).sum(dim=1)
    return torch.where(torch.isnan(pos[:, 0]), scores.shape[1] - 1, rank)


def hit_rate(scores: Tensor, k: int) -> Tensor:
    """Mean HR@k over rows: the held-out item is among the top k."""
    return (positive_rank(scores) < k).float().mean()


def ndcg(scores: Tensor, k: int) -> Tensor:
    """Mean NDCG@k over rows with one relevant item: 1/log2(rank+2) if rank < k, else 0."""
    return rank_gains(positive_rank(scores), k)[1].mean()


def rank_gains(rank: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per-row (hit, ndcg) at cut-off k from 0-based ranks; float32 (B,), (B,)."""
    hit = (rank < k).float()
    return hit, hit / torch.log2(rank.float() + 2.0)


class RankingMetrics(Metric):
    """HR@k, NDCG@k for each k in `ks`, and MRR, accumulated over batches of candidate scores.

    `update(scores)` takes (B, C) scores (column 0 held out), `update(ranks=...)` precomputed
    (B,) ranks (e.g. from `full_positive_rank`). States are sums, reduced by summation across processes, so the result is exact
    under DDP whatever the batch split. `compute()` returns {"hr@10": ..., "ndcg@10": ..., "mrr": ...}.
    """

    full_state_update = False

    def __init__(self, ks: tuple[int, ...] = (5, 10, 20), **kwargs) -> None:
        super().__init__(**kwargs)
        self.ks = tuple(int(k) for k in ks)
        self.add_state("hits", default=torch.zeros(len(self.ks), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("gains", default=torch.zeros(len(self.ks), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("rr", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, scores: Tensor | None = None, ranks: Tensor | None = None) -> None:
        """Add a batch: (B, C) candidate `scores` (column 0 held out), or 0-based `ranks` (B,)
        computed elsewhere (full ranking). Through `update`, torchmetrics knows it was called."""
        self.update_ranks(positive_rank(scores) if ranks is None else ranks)

    def update_ranks(self, rank: Tensor) -> None:
        for j, k in enumerate(self.ks):
            hit, gain = rank_gains(rank, k)
            self.hits[j] += hit.sum().double()
            self.gains[j] += gain.sum().double()
        self.rr += (1.0 / (rank.double() + 1.0)).sum()
        self.count += rank.numel()

    def compute(self) -> dict[str, Tensor]:
        n = self.count.clamp(min=1)
        out = {}
        for j, k in enumerate(self.ks):
            out[f"hr@{k}"] = (self.hits[j] / n).float()
            out[f"ndcg@{k}"] = (self.gains[j] / n).float()
        out["mrr"] = (self.rr / n).float()
        return out


def full_positive_rank(scores: Tensor, positives: Tensor, excluded: Tensor) -> Tensor:
    """0-based rank of each row's held-out item among every item of the catalogue not excluded.

    scores: (B, I) over all I items; positives: (B,) int64 column of the held-out item;
    excluded: (B, I) bool, True for items that are not candidates (the user's training items).
    The rank is the number of OTHER non-excluded items scoring at least as high (ties count
    against the held-out item, as for sampled candidates); a NaN held-out score ranks last,
    NaN scores of other items are ignored. Returns int64 (B,).
    """
    scores = scores.float()
    pos = scores.gather(1, positives[:, None].long())
    others = ~excluded
    others.scatter_(1, positives[:, None].long(), False)
    rank = ((scores >= pos) & others).sum(dim=1)
    return torch.where(torch.isnan(pos[:, 0]), others.sum(dim=1), rank)

"""Ranking metrics on torchmetrics' ``Metric`` base (imported when evaluation first runs:
torchmetrics pulls in scipy and matplotlib, seconds of start-up a training run need not wait
for before its first step)."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class RankingMetrics(Metric):
    """HR@K (= recall@K with one target), NDCG@K and MRR@K from 0-based target ranks.

    Sums and counts are torchmetrics states reduced by sum, so they aggregate across
    processes.
    """

    full_state_update = False

    def __init__(self, ks: list[int]) -> None:
        super().__init__()
        self.ks = sorted(ks)
        for k in self.ks:
            for name in ("hr", "ndcg", "mrr"):
                self.add_state(
                    f"{name}_{k}",
                    default=torch.tensor(0.0, dtype=torch.float64),
                    dist_reduce_fx="sum",
                )
        self.add_state("count", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, ranks: torch.Tensor) -> None:
        ranks = ranks.to(torch.float64)
        for k in self.ks:
            hit = ranks < k
            setattr(self, f"hr_{k}", getattr(self, f"hr_{k}") + hit.sum())
            ndcg = torch.where(hit, 1.0 / torch.log2(ranks + 2.0), 0.0)
            setattr(self, f"ndcg_{k}", getattr(self, f"ndcg_{k}") + ndcg.sum())
            mrr = torch.where(hit, 1.0 / (ranks + 1.0), 0.0)
            setattr(self, f"mrr_{k}", getattr(self, f"mrr_{k}") + mrr.sum())
        self.count += ranks.numel()

    def compute(self) -> dict[str, float]:
        count = max(int(self.count), 1)
        return {
            f"{name}@{k}": float(getattr(self, f"{name}_{k}")) / count
            for name in ("hr", "ndcg", "mrr")
            for k in self.ks
        }

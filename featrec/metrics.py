"""Ranking metrics on torchmetrics' ``Metric`` base (imported when evaluation first runs:
torchmetrics pulls in scipy and matplotlib, seconds of start-up a training run need not wait
for before its first step)."""

from __future__ import annotations

import torch
from torchmetrics import Metric

from featrec.formulas import NAMES, per_user_metric


class RankingMetrics(Metric):
    """HR@K (= recall@K with one target), NDCG@K and MRR@K from 0-based target ranks.

    Sums and counts are torchmetrics states reduced by sum, so they aggregate across
    processes.
    """

    full_state_update = False

    def __init__(self, ks: list[int], **kwargs) -> None:
        super().__init__(**kwargs)  # torchmetrics' options (sync_on_compute, ...)
        self.ks = sorted(ks)
        for k in self.ks:
            for name in NAMES:
                self.add_state(
                    f"{name}_{k}",
                    default=torch.tensor(0.0, dtype=torch.float64),
                    dist_reduce_fx="sum",
                )
        self.add_state("count", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, ranks: torch.Tensor) -> None:
        values = ranks.detach().cpu().numpy()
        for k in self.ks:
            for name in NAMES:
                total = float(per_user_metric(values, f"{name}@{k}").sum())
                setattr(self, f"{name}_{k}", getattr(self, f"{name}_{k}") + total)
        self.count += ranks.numel()

    def compute(self) -> dict[str, float]:
        count = max(int(self.count), 1)
        return {
            f"{name}@{k}": float(getattr(self, f"{name}_{k}")) / count
            for name in NAMES
            for k in self.ks
        }

"""HR@K, NDCG@K and MRR@K of 0-based target ranks: the one definition, used by evaluation
(:class:`featrec.metrics.RankingMetrics`, summed over users) and by the ablation report
(per user, for paired differences). numpy only, so the report needs no torch.

With one target per user: HR@K = 1 if rank < K (= recall@K); NDCG@K = 1 / log2(rank + 2)
if rank < K (the ideal DCG is 1); MRR@K = 1 / (rank + 1) if rank < K; else 0.
"""

from __future__ import annotations

import numpy as np

NAMES = ("hr", "ndcg", "mrr")


def per_user_metric(ranks: np.ndarray, metric: str) -> np.ndarray:
    """``metric`` (``"ndcg@10"``) of each 0-based rank, as float64."""
    name, k = metric.split("@")
    ranks = np.asarray(ranks, dtype=np.float64)
    hit = ranks < int(k)
    if name == "hr":
        return hit.astype(np.float64)
    if name == "mrr":
        return np.where(hit, 1.0 / (ranks + 1.0), 0.0)
    if name == "ndcg":
        return np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)
    raise ValueError(f"unknown metric {metric!r}; expected hr@K, ndcg@K or mrr@K")

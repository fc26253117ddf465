"""Evaluation: full ranking over all items (docs/design.md §5), and the most-popular baseline.

A target's rank counts the candidate items scoring at least as high as it (ties go against
the target, so constant scores earn nothing). Reserved ids are never candidates; with
``exclude_seen`` the items of the user's history are not candidates either, except the
target itself. The optional popularity-sampled protocol ranks the target among N sampled
negatives and is reported under separate keys (``sampled100/ndcg@10``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from featrec.batching import SequenceData, request_batch, seen_items
from featrec.devices import model_device
from featrec.ids import N_RESERVED

# Users scored per model call in evaluation and inference. On the 2-core CPU of bench/RESULTS.md
# 128 scores all ML-1M users 20-35% faster than 512 (activations stay in cache), and a little
# faster than 256.
SCORE_BATCH = 128


def target_ranks(
    scores: torch.Tensor, targets: torch.Tensor, excluded: torch.Tensor | None
) -> torch.Tensor:
    """0-based rank of each target among the candidates: scores (B, I), targets (B,)."""
    scores = scores.clone()
    scores[:, :N_RESERVED] = float("-inf")
    rows = torch.arange(len(targets), device=scores.device)
    target_scores = scores[rows, targets]  # (B,)
    if excluded is not None:
        scores = scores.masked_fill(excluded, float("-inf"))
    at_least = scores >= target_scores[:, None]  # (B, I)
    at_least[rows, targets] = False
    return at_least.sum(dim=1)


def sampled_ranks(
    scores: torch.Tensor,
    targets: torch.Tensor,
    excluded: torch.Tensor,
    popularity: torch.Tensor,
    negatives: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Rank among ``negatives`` items drawn by popularity, not seen, not the target."""
    weights = popularity.to(torch.float64).clamp(min=0).expand_as(scores).clone()
    weights[:, :N_RESERVED] = 0
    weights = weights.masked_fill(excluded, 0)
    weights[torch.arange(len(targets)), targets] = 0
    drawn = torch.multinomial(weights + 1e-12, negatives, replacement=False, generator=generator)
    target_scores = scores[torch.arange(len(targets)), targets]
    return (scores.gather(1, drawn) >= target_scores[:, None]).sum(dim=1)


def popularity(data: SequenceData, num_items: int) -> torch.Tensor:
    """(I,) how often each item occurs among the training events."""
    lengths = data.train_len.clamp(min=0)
    starts = torch.repeat_interleave(data.offsets[:-1], lengths)
    within = torch.arange(int(lengths.sum())) - torch.repeat_interleave(
        lengths.cumsum(0) - lengths, lengths
    )
    return torch.bincount(data.item[starts + within], minlength=num_items).to(torch.float32)


def evaluate_ranking(
    score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    data: SequenceData,
    split: str,
    num_items: int,
    ks: list[int],
    exclude_seen: bool = True,
    batch_size: int = SCORE_BATCH,
    sampled_negatives: int | None = None,
    seed: int = 0,
) -> tuple[dict[str, float], torch.Tensor]:
    """Metrics over the users evaluated on ``split``, and each user's target rank.

    ``score_fn(users, targets)`` returns (B, I) scores; the model and the most-popular
    baseline plug in here so both are measured by the same code.
    """
    users, positions = data.targets(split)
    # batches of similar history length pad less; ranks are put back in user order below
    order = torch.argsort(positions, stable=True)
    users, positions = users[order], positions[order]
    from featrec.metrics import RankingMetrics  # torchmetrics takes ~1.5 s to import

    metrics = RankingMetrics(ks)
    sampled = RankingMetrics(ks) if sampled_negatives else None
    pop = popularity(data, num_items) if sampled_negatives else None
    generator = torch.Generator().manual_seed(seed)
    all_ranks = []
    for start in range(0, len(users), batch_size):
        batch_users = users[start : start + batch_size]
        batch_positions = positions[start : start + batch_size]
        targets = data.item[data.offsets[batch_users] + batch_positions]
        scores = score_fn(batch_users, batch_positions).float()  # on the model's device
        seen = seen_items(data, batch_users, batch_positions, num_items)
        excluded = seen.to(scores.device) if exclude_seen else None
        ranks = target_ranks(scores, targets.to(scores.device), excluded).cpu()
        metrics.update(ranks)
        all_ranks.append(ranks)
        if sampled is not None:  # drawn on the CPU, from the seed's generator
            sampled.update(
                sampled_ranks(scores.cpu(), targets, seen, pop, sampled_negatives, generator)
            )
    results = metrics.compute()
    if sampled is not None:
        results |= {f"sampled{sampled_negatives}/{k}": v for k, v in sampled.compute().items()}
    ranks = torch.zeros(len(order), dtype=torch.int64)
    if all_ranks:
        ranks[order] = torch.cat(all_ranks)
    return results, ranks


def model_scorer(model, data: SequenceData, max_len: int) -> Callable:
    """Scores from the model for the slot at ``positions``: the same input inference builds."""

    device = model_device(model)

    @torch.inference_mode()
    def score(users: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        batch = request_batch(data, users, positions, max_len).to(device)
        return model.predict(batch)  # (B, I): the predicted slot

    return score


def popularity_scorer(data: SequenceData, num_items: int) -> Callable:
    counts = popularity(data, num_items)

    def score(users: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return counts.expand(len(users), -1)

    return score

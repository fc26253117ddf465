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

from featrec import distributed
from featrec.batching import SequenceData, request_batch, seen_pairs
from featrec.devices import model_device
from featrec.memory import tune_allocator
from featrec.ranking import Scorer, as_index, sampled_ranks, target_ranks

# Users scored per model call in evaluation and inference. On the 2-core CPU of bench/RESULTS.md
# 128 scores all ML-1M users 20-35% faster than 512 (activations stay in cache), and a little
# faster than 256.
SCORE_BATCH = 128


def popularity(data: SequenceData, num_items: int) -> torch.Tensor:
    """(I,) how often each item occurs among the training events."""
    lengths = data.train_len.clamp(min=0)
    starts = torch.repeat_interleave(data.offsets[:-1], lengths)
    within = torch.arange(int(lengths.sum())) - torch.repeat_interleave(
        lengths.cumsum(0) - lengths, lengths
    )
    return torch.bincount(data.item[starts + within], minlength=num_items).to(torch.float32)


def evaluate_ranking(
    score_fn: Callable[[torch.Tensor, torch.Tensor], Scorer],
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

    ``score_fn(users, positions)`` returns a scorer of those users' slots (see
    :mod:`featrec.ranking`); the model and the most-popular baseline plug in here so both
    are measured by the same code. The items are ranked in chunks.
    """
    users, positions = data.targets(split)
    # batches of similar history length pad less; ranks are put back in user order below
    order = torch.argsort(positions, stable=True, descending=True)
    users, positions = users[order], positions[order]
    from featrec.metrics import RankingMetrics  # torchmetrics takes ~1.5 s to import

    tune_allocator()  # chunks of scores are tens of MB: kept in the heap, not mmapped each time
    # several ranks (torchrun): each ranks every size()-th user, then all gather the ranks;
    # the metrics are computed from all of them in one order, as by one process
    mine = torch.arange(distributed.rank(), len(users), distributed.size())
    per_rank = max(1, batch_size // distributed.size())  # a global batch, as in training
    sampled = RankingMetrics(ks) if sampled_negatives else None
    pop = popularity(data, num_items) if sampled_negatives else None
    generator = torch.Generator().manual_seed(seed)
    own_ranks, device = [], score_fn.device
    for start in range(0, len(mine), per_rank):
        at = mine[start : start + per_rank]
        batch_users, batch_positions = users[at], positions[at]
        targets = data.item[data.offsets[batch_users] + batch_positions]
        score = score_fn(batch_users, batch_positions)
        seen = seen_pairs(data, batch_users, batch_positions)
        ranks = target_ranks(
            score, num_items, targets.to(device), seen if exclude_seen else None
        ).cpu()
        own_ranks.append(ranks)
        if sampled is not None:  # drawn on the CPU, from the seed's generator
            sampled.update(
                sampled_ranks(score, targets, seen, pop, sampled_negatives, generator, device)
            )
    sorted_ranks = torch.zeros(len(users), dtype=torch.int64)
    if own_ranks:
        sorted_ranks[mine] = torch.cat(own_ranks)
    if distributed.size() > 1:
        sorted_ranks[distributed.gather(mine)] = distributed.gather(sorted_ranks[mine])
    metrics = RankingMetrics(ks, sync_on_compute=False)  # every rank holds every rank
    for part in sorted_ranks.split(batch_size):
        metrics.update(part)
    results = metrics.compute()
    if sampled is not None:  # reduced across ranks by torchmetrics (sums)
        results |= {f"sampled{sampled_negatives}/{k}": v for k, v in sampled.compute().items()}
    ranks = torch.zeros(len(order), dtype=torch.int64)
    ranks[order] = sorted_ranks
    return results, ranks


class ModelScorer:
    """Scorers from the model for the slot at ``positions``: the same input inference
    builds (:meth:`RecModel.item_scorer`)."""

    def __init__(self, model, data: SequenceData, max_len: int) -> None:
        self.model, self.data, self.max_len = model, data, max_len
        self.device = model_device(model)

    @torch.inference_mode()
    def __call__(self, users: torch.Tensor, positions: torch.Tensor) -> Scorer:
        batch = request_batch(self.data, users, positions, self.max_len).to(self.device)
        return self.model.item_scorer(batch)  # called by ranking, in inference mode


class PopularityScorer:
    """The most-popular baseline: every request scores an item by its training events."""

    device = torch.device("cpu")

    def __init__(self, data: SequenceData, num_items: int) -> None:
        self.counts = popularity(data, num_items)

    def __call__(self, users: torch.Tensor, positions: torch.Tensor) -> Scorer:
        rows = len(users)

        def score(items: torch.Tensor | range) -> torch.Tensor:
            found = self.counts[as_index(items)]
            if isinstance(items, torch.Tensor) and items.dim() == 2:
                return found
            return found.expand(rows, -1).clone()  # a new tensor: ranking writes into it

        return score


class RecencyScorer:
    """Most-popular over the ``days`` before each request: an item scores its events (any
    user's) in ``[t - days, t)``, ``t`` the request's target event's time, so nothing from
    the prediction's future counts; ties go by each item's events at any time before ``t``
    (a fraction below one).

    A batch's counts come from one sweep over the events in time order: requests sorted by
    time, a window of counts slid forward (events entering added, leaving subtracted), one
    (I,) snapshot per request."""

    device = torch.device("cpu")

    def __init__(self, data: SequenceData, num_items: int, days: int) -> None:
        if data.time is None:
            raise ValueError("recency baselines need the events' times")
        self.data, self.num_items, self.seconds = data, num_items, days * 86_400
        self.order = torch.argsort(data.time, stable=True)
        self.times = data.time[self.order]
        self.items = data.item[self.order]

    def __call__(self, users: torch.Tensor, positions: torch.Tensor) -> Scorer:
        at = self.data.time[self.data.offsets[users] + positions]  # (B,) request times
        ends = torch.searchsorted(self.times, at)  # events strictly before t
        starts = torch.searchsorted(self.times, at - self.seconds)
        snapshots = torch.empty(len(users), self.num_items)
        window, before = torch.zeros(self.num_items), torch.zeros(self.num_items)
        low = high = 0
        for row in torch.argsort(at).tolist():
            start, end = int(starts[row]), int(ends[row])
            if end > high:
                window.index_add_(0, self.items[high:end], torch.ones(end - high))
                before.index_add_(0, self.items[high:end], torch.ones(end - high))
            if start > low:
                window.index_add_(0, self.items[low:start], -torch.ones(start - low))
            low, high = max(low, start), max(high, end)
            # ties go by every event before t, a fraction below one
            snapshots[row] = window + before / (before.sum() + 1)

        def score(items: torch.Tensor | range) -> torch.Tensor:
            if isinstance(items, range):  # a new tensor, not a view: ranking writes into it
                return snapshots[:, items.start : items.stop].clone()
            return snapshots.gather(1, items) if items.dim() == 2 else snapshots[:, items]

        return score

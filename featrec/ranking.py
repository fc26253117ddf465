"""Full ranking over the items in chunks: each target's rank and each request's top-k, with
never more than one chunk of scores per request in memory (docs/design.md §10).

A scorer is a function from item ids to scores of one batch of requests: ``score(items)``
with ``items`` (C,), shared by the batch, or a ``range`` of ids (ranking's chunks: read as
slices, no gather), gives (B, C); with (B, C), one row of items per request, it gives (B, C)
too; a new tensor each call, which ranking may overwrite. Models
give one from :meth:`RecModel.item_scorer` (the request's hidden state is computed once, then
every chunk is one product); baselines give theirs. Ranking runs in inference mode. Items a
request must not get (seen items, the target when counting its rank) are (row, item) pairs
written into each chunk's scores as -inf; reserved ids are never scored; so a catalog of a
million items costs no (B, items) matrix or mask.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from featrec.ids import N_RESERVED

Scorer = Callable[["torch.Tensor | range"], torch.Tensor]


def as_index(items: torch.Tensor | range) -> torch.Tensor | slice:
    """A scorer's items as an index: a ``range`` of ids (ranking's chunks) becomes a slice,
    so tables are read as views, not gathered."""
    return slice(items.start, items.stop) if isinstance(items, range) else items


# Items scored per chunk. 128 requests by 65,536 items are 32 MiB of float scores; ML-1M's
# 3,706 items are one chunk, so small catalogs rank exactly as one product did.
ITEM_CHUNK = 65_536


@dataclass(frozen=True)
class Excluded:
    """(row, item) pairs a request may not get: ``rows`` (S,), ``items`` (S,)."""

    rows: torch.Tensor
    items: torch.Tensor

    @classmethod
    def none(cls, device: torch.device | None = None) -> Excluded:
        empty = torch.empty(0, dtype=torch.long, device=device)
        return cls(empty, empty)

    def to(self, device: torch.device) -> Excluded:
        return Excluded(self.rows.to(device), self.items.to(device))

    def mask(self, rows: int, start: int, stop: int) -> torch.Tensor:
        """(rows, stop - start) bool: True where an excluded pair falls in [start, stop)."""
        out = torch.zeros(rows, stop - start, dtype=torch.bool, device=self.items.device)
        return self.fill(out, start, True)

    def fill(self, scores: torch.Tensor, start: int, value: float | bool) -> torch.Tensor:
        """``scores`` (rows, C) of items [start, start + C), with ``value`` written in place
        where an excluded pair falls."""
        inside = (self.items >= start) & (self.items < start + scores.shape[1])
        scores[self.rows[inside], self.items[inside] - start] = value
        return scores


@torch.inference_mode()
def target_ranks(
    score: Scorer,
    num_items: int,
    targets: torch.Tensor,
    excluded: Excluded | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """(B,) 0-based rank of each target: how many candidates score at least as high (ties
    go against the target, so constant scores earn nothing). Reserved ids and ``excluded``
    items are no candidates; the target itself never is counted, excluded or not."""
    device, chunk = targets.device, chunk or ITEM_CHUNK
    rows = torch.arange(len(targets), device=device)
    # a nan score (a diverged model) earns nothing: the target's ranks below every candidate
    # (the lowest number, so the excluded items' -inf stay below it), another's counts
    # against the target as a tie does
    target_scores = _nan_lowest(score(targets.unsqueeze(1)).squeeze(1))  # (B,)
    excluded = excluded.to(device) if excluded is not None else Excluded.none(device)
    own = Excluded(torch.cat([excluded.rows, rows]), torch.cat([excluded.items, targets]))
    ranks = torch.zeros(len(targets), dtype=torch.long, device=device)
    for start in range(N_RESERVED, num_items, chunk):
        stop = min(start + chunk, num_items)
        scores = own.fill(_nan_highest(score(range(start, stop))), start, -math.inf)
        ranks += (scores >= target_scores.unsqueeze(1)).sum(dim=1)
    return ranks


@torch.inference_mode()
def top_k(
    score: Scorer,
    num_items: int,
    rows: int,
    k: int,
    excluded: Excluded | None = None,
    allowed: torch.Tensor | None = None,
    chunk: int | None = None,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best items of each of ``rows`` requests: (values, item ids), (rows, k'),
    k' = min(k, real items), best first; slots beyond the rankable items hold -inf.
    ``allowed`` (items,) bool limits the candidates (a candidate list).

    Equal scores rank by item id, lower first, also where a tie straddles the k-th place:
    the same items in the same order on every device and chunk size (``torch.topk`` orders
    ties as its kernel happens to, differently on a CPU and a GPU)."""
    excluded = excluded.to(device) if excluded is not None else Excluded.none(device)
    chunk = chunk or ITEM_CHUNK
    width = min(k, num_items - N_RESERVED)
    # each chunk's best ``width`` in the order (score, then id) holds the overall best;
    # they are merged when they outgrow a chunk (a large k), else once at the end
    best = [torch.full((rows, 0), float("-inf"), device=device)]
    best_items = [torch.zeros((rows, 0), dtype=torch.long, device=device)]
    held = 0
    for start in range(N_RESERVED, num_items, chunk):
        stop = min(start + chunk, num_items)
        scores = excluded.fill(score(range(start, stop)), start, -math.inf)
        if allowed is not None:
            scores = scores.masked_fill(~allowed[start:stop], float("-inf"))
        values, indices = _chunk_top(scores, min(width, stop - start))
        best.append(values)
        best_items.append(indices + start)
        held += values.shape[1]
        if held > chunk:
            merged = best_by_score_then_id(torch.cat(best, 1), torch.cat(best_items, 1), width)
            best, best_items, held = [merged[0]], [merged[1]], width
    return best_by_score_then_id(torch.cat(best, dim=1), torch.cat(best_items, dim=1), width)


def _chunk_top(scores: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk`` of one chunk, except in the rows where the item after the k-th ties
    with it: there a stable sort keeps the lowest ids (ties are rare in a model's scores,
    common in popularity's counts). One more item from topk costs no extra pass."""
    if width == 0 or width >= scores.shape[1]:  # no k-th place to straddle
        return torch.topk(scores, width, dim=1)
    top = torch.topk(scores, width + 1, dim=1)
    values, indices = top.values[:, :width], top.indices[:, :width]
    kth, after = top.values[:, width - 1], top.values[:, width]
    tied = (after == kth) | (torch.isnan(after) & torch.isnan(kth))
    rows = torch.nonzero(tied & (kth != float("-inf"))).squeeze(1)
    if len(rows):
        exact = torch.sort(scores[rows], dim=1, descending=True, stable=True)
        values, indices = values.clone(), indices.clone()
        values[rows], indices[rows] = exact.values[:, :width], exact.indices[:, :width]
    return values, indices


def score_then_id_keys(values: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """int64 keys in the order (value, higher first; then item id, lower first): the float32
    value's bits mapped to an order-preserving int32 (negative floats' magnitude bits
    flipped; -0.0 read as 0.0) above the id's complement. Branch-free, so an exported
    program can rank with them too."""
    bits = (values.float() + 0.0).contiguous().view(torch.int32)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).to(torch.int64)
    return ordered * 2**32 + (2**32 - 1 - items)


def best_by_score_then_id(
    values: torch.Tensor, items: torch.Tensor, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's ``width`` best (value, item) pairs, by value, higher first, then by id."""
    keys = score_then_id_keys(values, items)
    order = torch.topk(keys, min(width, keys.shape[1]), dim=1).indices
    return values.gather(1, order), items.gather(1, order)


def _nan_highest(scores: torch.Tensor) -> torch.Tensor:
    return scores.nan_to_num(math.inf, math.inf, -math.inf)


def _nan_lowest(scores: torch.Tensor) -> torch.Tensor:
    return scores.nan_to_num(torch.finfo(scores.dtype).min, math.inf, -math.inf)


@torch.inference_mode()
def sampled_ranks(
    score: Scorer,
    targets: torch.Tensor,
    excluded: Excluded,
    popularity: torch.Tensor,
    negatives: int,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """Rank among ``negatives`` items drawn by popularity (on the CPU, from ``generator``),
    not excluded, not the target (the optional sampled protocol; one (B, items) weight
    matrix per batch)."""
    rows = len(targets)
    weights = popularity.to(torch.float64).clamp(min=0).expand(rows, -1).clone()
    weights[:, :N_RESERVED] = 0
    weights[excluded.rows, excluded.items] = 0
    weights[torch.arange(rows), targets] = 0
    drawn = torch.multinomial(weights + 1e-12, negatives, replacement=False, generator=generator)
    target_scores = _nan_lowest(score(targets.to(device).unsqueeze(1)))  # (B, 1)
    others = _nan_highest(score(drawn.to(device)))  # nan earns nothing, as above
    return (others >= target_scores).sum(dim=1).cpu()

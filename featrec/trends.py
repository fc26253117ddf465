"""Trend features: what is true of a candidate item at request time (docs/design.md §3).

A ``popularity`` feature is an item's events (any user's) in the ``window_days`` whole days
before the request's day, as its rank among the catalog (default) or as the count; an
``age`` feature is the days since the item's first event, if that came on an earlier day.
Both count only days strictly before the request's own day, so nothing at or after the
request (the target event included) counts. Both are
log2-bucketed into :data:`BUCKETS` ids, and the model adds ``query · E[bucket]`` to each
candidate's score (:meth:`featrec.model.bert4rec.BERT4Rec.score_query`): a lookup of N x C
bucket ids per ranking chunk, no per-request vectors of width D.

The tables are model buffers (saved in checkpoints, so serving has them), built from the
events the run's data holds:

- ``trend_popularity<W><measure>`` (days + W + 1, I) uint8: row ``k`` holds each item's
  bucket of events in the W days before ``day0 + k``: of its rank by them (``rank``), or of
  their number (``count``); one per window and measure declared; past the last row no item
  has events;
- ``trend_first`` (I,) int32: each item's first day, relative to ``day0`` (far in the
  future for items without events);
- ``trend_day0`` (): the first day of the data, in unix days.

Requests later than the data see only the data's events (those the model was not given do
not count): a popularity window sliding past the data's end empties, as it would in a
deployment that stopped logging; ages keep growing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from featrec.datasets import has_clock_times
from featrec.errors import DataError

if TYPE_CHECKING:
    from featrec.spec import Spec

DAY = "@day"  # the batches' event column holding each event's unix day (trend features)
SECONDS_PER_DAY = 86_400
BUCKETS = 32  # log2 buckets: 0 (none), 1 (1), 2 (2-3), 3 (4-7) ... 31 (2^30 and more)
MAX_CELLS = 1 << 30  # the (days x items) popularity tables together: 1 GiB (uint8) at most
NEVER = 1 << 30  # trend_first of an item without events: no request is after it
PREFIX = "_trend_"  # item_tables keys (the model registers them as item_table_<key>)


def event_days(times: torch.Tensor) -> torch.Tensor:
    """Unix seconds → unix days (floor, so times before 1970 stay in their own day)."""
    return torch.div(times, SECONDS_PER_DAY, rounding_mode="floor")


def trend_tables(
    spec: Spec, times: torch.Tensor | None, items: torch.Tensor, num_items: int
) -> dict[str, torch.Tensor]:
    """The tables ``spec``'s trend features look up, from every event's time (unix seconds)
    and item id; keyed for ``item_tables`` (empty without trend features)."""
    trends = spec.trend_features
    if not trends:
        return {}
    names = ", ".join(f.name for f in trends)
    if times is None or len(times) == 0 or not has_clock_times(spec.data):
        raise DataError(
            f"{spec.source}: features {names}: trend features count events by day, and "
            "these events have no clock times (only their order)"
        )
    days = event_days(times)
    day0 = int(days.min())
    relative = (days - day0).to(torch.int64)
    span = int(relative.max()) + 1
    tables = {f"{PREFIX}day0": torch.tensor(day0, dtype=torch.int64)}
    wanted = sorted({(f.window_days, f.measure) for f in trends if f.type == "popularity"})
    if wanted:
        cells = sum(span + 1 + window for window, _ in wanted) * num_items
        if cells > MAX_CELLS:
            raise DataError(
                f"{spec.source}: features {names}: the popularity tables need {cells:,} "
                f"cells (({span:,} days + each window) x {num_items:,} items, one byte each: "
                f"{cells / 2**30:.1f} GiB); at most {MAX_CELLS / 2**30:.0f} GiB: declare fewer "
                "or shorter windows, or keep fewer days of events"
            )
        rows = span + 1 + max(window for window, _ in wanted)
        before = torch.zeros(rows * num_items, dtype=torch.int32)
        # row k + 1 counts the events of day k: the cumulative sum's row k is "before day k"
        before.index_add_(
            0, (relative + 1) * num_items + items, torch.ones(len(items), dtype=torch.int32)
        )
        before = before.view(rows, num_items).cumsum_(0)  # (rows, I), in place
        step = max(1, (1 << 22) // num_items)  # rows per slice: ~4M cells of temporaries
        for window, measure in wanted:
            own = span + 1 + window  # past its last row no item has events in the window
            buckets = torch.empty(own, num_items, dtype=torch.uint8)
            for start in range(0, own, step):
                stop = min(start + step, own)
                counts = before[start:stop].clone()
                lower = max(start - window, 0)  # events in [k - window, k)
                if stop > lower + window:
                    counts[lower + window - start :] -= before[lower : stop - window]
                counts = rank_buckets(counts) if measure == "rank" else log2_bucket(counts)
                buckets[start:stop] = counts.to(torch.uint8)
            tables[f"{PREFIX}popularity{window}{measure}"] = buckets
        del before
    first = torch.full((num_items,), NEVER, dtype=torch.int32)
    first.scatter_reduce_(0, items, relative.to(torch.int32), reduce="amin")
    tables[f"{PREFIX}first"] = first
    return tables


def log2_bucket(values: torch.Tensor) -> torch.Tensor:
    """Bucket ids of non-negative counts: 0 → 0, 1 → 1, 2-3 → 2, 4-7 → 3, ... (capped):
    1 + floor(log2(v)), the exponent ``frexp`` gives (exact below 2^53 in float64)."""
    exponent = torch.frexp(values.to(torch.float64)).exponent.to(torch.int64)
    return exponent.clamp_(0, BUCKETS - 1)


def rank_buckets(counts: torch.Tensor) -> torch.Tensor:
    """(R, I) counts → bucket ids of each item's rank in its row: 0 for no events, else
    1 + floor(log2(rank)), rank 1 the most events (ties share the best rank)."""
    ascending = -torch.sort(counts, dim=1, descending=True).values  # -counts, ascending
    # rank = 1 + the items with more events: the count's first place in the descending row
    ahead = torch.searchsorted(ascending, -counts, right=False)
    return torch.where(counts > 0, log2_bucket(ahead + 1), 0)


def trend_buckets(
    kind: str,
    window: int,
    tables: dict[str, torch.Tensor],
    days: torch.Tensor,
    items: torch.Tensor | range | None,
    measure: str = "rank",
) -> torch.Tensor:
    """(N, C) bucket ids of ``items`` (None: every item id; a range of ids; (C,) ids for
    every row; or (N, C)) for requests on (N,) unix ``days``: the popularity
    (``measure``) in the ``window`` days before, or the age."""
    relative = days.to(torch.int64) - tables["day0"]  # (N,)
    if kind == "popularity":
        table = tables[f"popularity{window}{measure}"]  # (rows, I) buckets
        day = relative.clamp(0, table.shape[0] - 1)  # (N,); the last row is 0s
        if items is None or isinstance(items, range):  # whole rows: one copy each
            if isinstance(items, range):
                table = table[:, items.start : items.stop]
            return table.index_select(0, day).to(torch.int64)
        columns = items.unsqueeze(0) if items.dim() == 1 else items  # (1, C) or (N, C)
        return table[day.unsqueeze(1), columns].to(torch.int64)
    first = tables["first"]
    if items is None:
        first = first.unsqueeze(0)  # (1, I)
    elif isinstance(items, range):
        first = first[items.start : items.stop].unsqueeze(0)
    else:
        first = first[items.unsqueeze(0) if items.dim() == 1 else items]  # (1, C) or (N, C)
    age = relative.unsqueeze(1) - first  # (N, C) days since the first event
    return log2_bucket(age.clamp_(min=0))  # 0: first seen on the request's day or later


def grouped_terms(
    per_bucket: list[torch.Tensor], buckets: list[torch.Tensor], inverse: torch.Tensor
) -> torch.Tensor:
    """(N, C) trend terms ``sum_f per_bucket[f][n, buckets[f][inverse[n], c]]`` of N rows
    whose requests fall on U distinct days (``inverse``: each row's day, 0..U-1), from F
    (N, 32) per-bucket products and F (U, C) bucket ids of those days.

    Training's case: thousands of target slots share a few hundred days, so the rows are
    grouped by day and each group reads the F features' buckets through one shared index:
    U x F x C ids instead of F (N, C) int64 index matrices for ``gather`` (and its backward
    scatter), which made a full-catalog step with four trend features ~5x the plain step
    (``bench/trend_step.py``)."""
    rows, days = inverse.shape[0], buckets[0].shape[0]
    features, columns = len(buckets), buckets[0].shape[1]
    offsets = torch.arange(0, features * BUCKETS, BUCKETS, device=inverse.device)
    index = torch.stack(buckets).to(torch.int64) + offsets.view(features, 1, 1)  # (F, U, C)
    index = index.transpose(0, 1).reshape(days, features * columns)  # (U, F * C)
    order = torch.argsort(inverse, stable=True)  # the rows, grouped by day
    products = torch.cat(per_bucket, dim=1).index_select(0, order)  # (N, F * 32)
    sizes = torch.bincount(inverse, minlength=days).tolist()
    groups, start = [], 0
    for day, size in enumerate(sizes):
        if size:
            group = products[start : start + size].index_select(1, index[day])
            groups.append(group.view(size, features, columns).sum(1))  # (size, C)
            start += size
    rank = torch.empty_like(order)
    rank[order] = torch.arange(rows, device=order.device)
    return torch.cat(groups).index_select(0, rank)  # back to the rows' order

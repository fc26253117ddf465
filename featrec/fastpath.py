"""One recommendation request → model input without a polars query.

A polars query costs ~0.5 ms an expression however small the frame, so encoding one
request through :func:`featrec.sequences.encode_requests` takes longer than scoring it. This
module builds the same :class:`~featrec.batching.SequenceData` from plain Python values with
the encoders' ``encode_values``. It handles the common request (item ids of the vocabulary's
type, integer or datetime times, UTC time features, plain attribute values) and answers
None for anything else, which then takes the polars path; tests check both give identical
tensors on random requests, odd ones included.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np
import polars as pl
import torch

from featrec.batching import SequenceData, _tensor, event_column_kinds
from featrec.encoders import Encoder, MultiCategoricalEncoder, TimeEncoder
from featrec.errors import FeatrecError
from featrec.ids import OOV
from featrec.spec import Spec
from featrec.trends import DAY, event_days

Columns = dict[str, list[Any]]


# Polars turns seconds into microsecond datetimes: beyond ~9.2e12 s that overflows int64, and
# what polars does then (wrap, null, error) is its own; such requests take the polars path.
MAX_SECONDS = 8 * 10**12
# columns the polars path itself adds to the events frame
_RESERVED_COLUMNS = {"item_id", "request", "slot", "row"}


def request_data(
    spec: Spec,
    encoders: dict[str, Encoder],
    item_index: dict[Any, int],
    item_type: type,
    history: Any,
    user: dict[str, Any] | None,
    context: dict[str, Any] | None,
    to_seconds: Any,
) -> tuple[SequenceData, int] | None:
    """(model input of one request, unknown history items dropped), or None: use polars.

    Mirrors ``Recommender.request_events`` + ``encode_requests``: unknown items dropped and
    counted; events ordered by time (missing times first, ties in given order); the
    predicted slot last, its item OOV and its event values from ``context``. Any value it
    cannot convert exactly as polars would (or that fails to convert) sends the request to
    the polars path, which then gives the answer or the error.
    """
    try:
        time_column = spec.data.columns.time
        event_features = spec.features_in("event")
        for feature in event_features:
            is_time = feature.type == "time"
            if is_time != (feature.column in (time_column, "timestamp")):
                return None  # a time feature on another column, or a feature on the time column
            if isinstance(encoders[feature.name], MultiCategoricalEncoder):
                return None
            if feature.column in _RESERVED_COLUMNS:
                return None
        wanted = [f.column for f in event_features if f.type != "time"]
        columns = _history_columns(history, wanted, time_column)
        if columns is None:
            return None
        items = columns["item_id"]
        if any(item is not None and type(item) is not item_type for item in items):
            return None
        kept = [i for i, item in enumerate(items) if item in item_index]
        dropped = len(items) - len(kept)
        raw_times = columns["timestamp"]
        if len({type(t) for t in raw_times if t is not None}) > 1:
            return None  # e.g. ints and datetimes: polars' supertype rules decide
        all_stamps = [to_seconds(t) for t in raw_times]  # every row, as polars converts them
        stamps = [all_stamps[i] for i in kept]
        context = dict(context or {})
        slot_stamp = to_seconds(context.pop("timestamp", None))
        if slot_stamp is None and spec.trend_features:  # items scored as of today
            slot_stamp = int(time.time())
        if any(abs(t) > MAX_SECONDS for t in [*stamps, slot_stamp] if t is not None):
            return None
        order = sorted(range(len(kept)), key=lambda j: (stamps[j] is not None, stamps[j] or 0, j))
        rows = [kept[j] for j in order]
        seconds = [stamps[j] for j in order] + [slot_stamp]
        item_ids = [item_index[items[i]] for i in rows] + [OOV]

        event: dict[str, torch.Tensor] = {}
        for feature in event_features:
            encoder = encoders[feature.name]
            if isinstance(encoder, TimeEncoder):
                gaps = [None] + [
                    None if a is None or b is None else max(b - a, 0)
                    for a, b in itertools.pairwise(seconds)
                ]
                parts = encoder.encode_parts_values(seconds, gaps)
                if parts is None:
                    return None
                for part, ids in parts.items():
                    event[f"{feature.name}.{part}"] = torch.tensor(ids, dtype=torch.int64)
                continue
            values = [columns[feature.column][i] for i in rows] + [context.get(feature.column)]
            if len({type(v) for v in values if v is not None}) > 1:
                return None  # mixed types: polars' supertype rules decide
            ids = encoder.encode_values(values)
            if ids is None:
                return None
            event[feature.name] = _tensor(np.asarray(ids))

        user_values: dict[str, torch.Tensor] = {}
        for feature in spec.features_in("user"):
            value = (user or {}).get(feature.column)
            separator = getattr(feature, "separator", None)
            if separator is not None and isinstance(value, str):
                value = [part for part in value.split(separator) if part != ""]
            ids = encoders[feature.name].encode_values([value])
            if ids is None:
                return None
            user_values[feature.name] = _tensor(np.asarray(ids))  # (1,) or (1, K)

        times = None
        if spec.trend_features:  # as SequenceData.from_tensors: missing times count as 0
            times = torch.tensor([t or 0 for t in seconds], dtype=torch.int64)
            event[DAY] = event_days(times)
        hidden, floats = event_column_kinds(spec, encoders)
        length = len(item_ids)
        data = SequenceData(
            offsets=torch.tensor([0, length]),
            item=torch.tensor(item_ids, dtype=torch.int64),
            event=event,
            user=user_values,
            train_len=torch.tensor([length - 1]),
            valid_idx=torch.tensor([-1]),
            test_idx=torch.tensor([length - 1]),
            hidden_event=hidden,
            float_event=floats,
            user_ids=[0],
            time=times,
        )
        return data, dropped

    except (ValueError, TypeError, OverflowError, FeatrecError):
        return None


def _history_columns(history: Any, wanted: list[str], time_column: str) -> Columns | None:
    """item_id, timestamp and the wanted columns of a history as lists (absent → None)."""
    if history is None:
        return {"item_id": [], "timestamp": []} | {c: [] for c in wanted}
    if isinstance(history, pl.DataFrame):
        frame = history
        if "timestamp" not in frame.columns and time_column in frame.columns:
            frame = frame.rename({time_column: "timestamp"})
        if "item_id" not in frame.columns:
            return None  # the polars path explains what is missing
        n = frame.height
        return {
            c: frame.get_column(c).to_list() if c in frame.columns else [None] * n
            for c in ("item_id", "timestamp", *wanted)
        }
    if not isinstance(history, list):
        return None
    if history and all(isinstance(row, dict) for row in history):
        key = "timestamp" if any("timestamp" in row for row in history) else time_column
        if not all("item_id" in row for row in history):
            return None
        return {
            "item_id": [row["item_id"] for row in history],
            "timestamp": [row.get(key) for row in history],
        } | {c: [row.get(c) for row in history] for c in wanted}
    if any(isinstance(v, (dict, list)) for v in history):
        return None
    return {"item_id": list(history), "timestamp": [None] * len(history)} | {
        c: [None] * len(history) for c in wanted
    }

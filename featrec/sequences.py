"""Canonical tables + spec → encoded per-user sequences with a split (docs/design.md §1).

Output (:class:`Prepared`):

* ``sequences``: one row per user, ordered by user id. ``item`` (list of item ids), ``timestamp``
  (list of unix seconds), one list column per event feature (``time`` expands to
  ``time.hour``, ``time.weekday``, ``time.gap``), one column per user feature, and the split:
  ``train_len`` (events ``[0, train_len)`` are training events), ``valid_idx`` / ``test_idx``
  (position of the validation / test target; null when the user is not evaluated).
* ``items``: the item-feature table, row ``i`` = item id ``i``. Item features follow the
  item, so they are looked up by id rather than copied into every sequence; the reserved
  rows make the leakage rule structural: the ``[MASK]`` item's features are all ``MASK``.

Events of a user are ordered by (timestamp, original row order). Encoders see the training
split only; the item vocabulary covers every item in the interactions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl

from featrec.atomic import write_folder
from featrec.datasets import (
    Tables,
    cache_dir,
    epoch_seconds,
    fingerprint,
    has_clock_times,
    load_tables,
    spec_named,
)
from featrec.encoders import (
    ID_DTYPE,
    Encoder,
    ItemVocab,
    MultiCategoricalEncoder,
    StandardEncoder,
    TimeEncoder,
    encoder_for,
    load_encoders,
    save_encoders,
)
from featrec.errors import DataError, first_line
from featrec.ids import MASK, MISSING, OOV, PAD
from featrec.spec import TREND_TYPES, AnyFeature, Spec

log = logging.getLogger(__name__)

MIN_EVENTS = 3  # fewer events than this: the user trains but is not evaluated
FORMAT_VERSION = 3  # 2: flat tensor files beside the sequences; 3: target gaps in stats
_TABLE_OF_SCOPE = {"event": "interactions", "user": "users", "item": "items"}
_KEY_OF_SCOPE = {"user": "user_id", "item": "item_id"}


@dataclass
class Prepared:
    """Encoded, split data: per-user sequences, the item table, vocabulary, encoders and
    statistics. From the cache (``folder``), the sequences are read when first used."""

    items: pl.DataFrame
    item_vocab: ItemVocab
    encoders: dict[str, Encoder]
    stats: dict[str, Any]
    folder: Path | None = None  # the cache entry holding it, if any
    _sequences: pl.DataFrame | None = field(default=None, repr=False)

    @property
    def sequences(self) -> pl.DataFrame:
        if self._sequences is None:
            self._sequences = pl.read_parquet(self.folder / "sequences.parquet")
        return self._sequences

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.sequences.write_parquet(directory / "sequences.parquet")
        self.items.write_parquet(directory / "items.parquet")
        save_encoders(directory / "encoders.json", self.item_vocab, self.encoders)
        (directory / "stats.json").write_text(
            json.dumps(self.stats, indent=1, allow_nan=False), encoding="utf-8"
        )

    @classmethod
    def load(cls, directory: Path) -> Prepared:
        item_vocab, encoders = load_encoders(directory / "encoders.json")
        return cls(
            items=pl.read_parquet(directory / "items.parquet"),
            item_vocab=item_vocab,
            encoders=encoders,
            stats=json.loads((directory / "stats.json").read_text(encoding="utf-8")),
            folder=directory,
        )


def feature_columns(name: str, encoder: Encoder) -> list[str]:
    """Columns an encoded feature occupies (a time feature: one per part)."""
    if isinstance(encoder, TimeEncoder):
        return [f"{name}.{part}" for part in encoder.parts]
    return [name]


# ---------------------------------------------------------------------------------------
# cache


def cache_key(spec: Spec) -> str:
    """Everything the prepared data depends on: the input files, features and split."""
    with spec_named(spec.source):
        data = fingerprint(spec.data)
    parts = {
        "version": FORMAT_VERSION,
        "data": data,
        "columns": spec.data.columns.model_dump(),
        "features": [f.model_dump(exclude={"dim"}) for f in spec.input_features],
        "split": spec.eval.model_dump(
            include={"split", "valid_quantile", "test_quantile", "cold_items"}
        ),
        "cold_items": spec.fusion.output_items,  # the vocabulary takes the items table's
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def complete_entry(folder: Path) -> bool:
    """Whether a cache entry is whole: ``stats.json`` is written with the rest."""
    return (folder / "stats.json").is_file()


def prepare(spec: Spec, cache: bool = True, refresh: bool = False) -> tuple[Prepared, Path | None]:
    """Load the prepared data for ``spec`` from the cache, or build it (and cache it).

    ``refresh`` rebuilds even when cached. Returns the data and the cache folder it lives in
    (None with ``cache=False``).
    """
    folder = cache_dir() / "prepared" / f"{spec.name}-{cache_key(spec)}"
    if cache and not refresh and complete_entry(folder):
        log.info("prepared data from cache %s", folder)
        return Prepared.load(folder), folder
    started = time.perf_counter()
    tables = load_tables(spec.data, spec.source)
    log.info(
        "read %s interactions in %.2f s",
        f"{tables.interactions.height:,}",
        time.perf_counter() - started,
    )
    prepared = build(spec, tables)
    log.info(
        "built %s user sequences in %.2f s",
        f"{prepared.stats['users']:,}",
        time.perf_counter() - started,
    )
    if not cache:
        return prepared, None

    def fill(directory: Path) -> None:
        from featrec.batching import write_sequence_tensors  # batching imports this module

        prepared.save(directory)
        write_sequence_tensors(directory, prepared, spec)

    # a failure never leaves a half-written cache; a complete entry another process wrote
    # meanwhile (same key, same content) is kept, since that process may be reading it
    # already (--force replaces it all the same)
    write_folder(folder, fill, keep=None if refresh else complete_entry)
    prepared.folder = folder
    return prepared, folder


# ---------------------------------------------------------------------------------------
# build


def build(spec: Spec, tables: Tables) -> Prepared:
    _check_inputs(spec, tables)
    events = order_and_split(_event_frame(spec, tables), spec).collect()
    held = held_out_items(events, spec.eval.cold_items)
    raw = _event_frame(spec, tables).collect_schema().names()
    while held:  # held items only as test events: split again until none is anything else
        stray = pl.col("item_id").is_in(held) & (
            pl.col("test_idx").is_null() | (pl.col("pos") != pl.col("test_idx"))
        )  # a user left with too few events has no test event: theirs go too
        if events.filter(stray).is_empty():
            break
        events = order_and_split(events.filter(~stray).select(raw).lazy(), spec).collect()
    warm = events.filter(~pl.col("item_id").is_in(held)).get_column("item_id").unique().sort()
    cold = sorted(held)
    if spec.fusion.output_items and tables.items is not None:  # cold items after the rest
        known = set(warm.to_list()) | set(held)
        cold += [i for i in tables.items.get_column("item_id").unique().sort() if i not in known]
    item_vocab = ItemVocab(warm.to_list() + cold, cold=len(cold))
    train = events.filter(pl.col("pos") < pl.col("train_len"))
    if train.is_empty():
        where = tables.origin.get("interactions", "interactions")
        raise DataError(
            f"{where}: the {spec.eval.split} split leaves no events to train on "
            f"({events.height:,} events, all held for validation and test); a temporal "
            "split needs events before its validation cutoff"
        )

    user_raw = _scope_frame(spec, tables, "user")
    item_raw = _scope_frame(spec, tables, "item")
    train_users = train.select("user_id").unique()
    train_items = train.select("item_id").unique()
    encoders: dict[str, Encoder] = {}
    for feature in spec.input_features:
        if feature.scope == "user":
            source = user_raw.join(train_users, on="user_id", how="semi")
        elif feature.scope == "item":
            source = item_raw.join(train_items, on="item_id", how="semi")
        else:
            source = train
        encoders[feature.name] = encoder_for(feature).fit(source.get_column(feature.name))

    split = pl.col("train_len", "valid_idx", "test_idx").first()
    sequences = (
        sequence_rows(events.lazy(), spec, encoders, item_vocab, "user_id", split)
        .join(
            user_raw.lazy().select("user_id", *_encode(spec, encoders, "user")),
            on="user_id",
            how="left",
        )
        .with_columns(_fill_missing(spec, encoders, "user"))
        .sort("user_id")
        .collect()
    )
    items = _item_table(spec, encoders, item_vocab, item_raw)
    stats = _stats(spec, events, sequences, item_vocab, encoders)
    if not stats["split"]["test_users"]:
        where = tables.origin.get("interactions", "interactions")
        raise DataError(
            f"{where}: no user can be evaluated: leave_one_out needs users with "
            f"{MIN_EVENTS} or more events (a temporal split, events in its windows); "
            "the largest history here has "
            f"{int(sequences.get_column('item').list.len().max() or 0)}"
        )
    return Prepared(items, item_vocab, encoders, stats, _sequences=sequences)


def held_out_items(events: pl.DataFrame, share: float) -> list:
    """``eval.cold_items``: that share of the items with events, drawn with seed 0."""
    if share <= 0:
        return []
    items = events.get_column("item_id").unique().sort()
    count = max(1, round(share * len(items)))
    return sorted(items.sample(count, seed=0).to_list())


def encode_requests(
    spec: Spec,
    encoders: dict[str, Encoder],
    item_vocab: ItemVocab,
    events: pl.DataFrame,
    users: pl.DataFrame,
) -> pl.DataFrame:
    """Raw events of recommendation requests → rows in the layout of ``Prepared.sequences``.

    ``events``: columns ``request``, ``item_id``, ``timestamp``, ``slot`` (true for the
    predicted slot, one per request, its item null) and the spec's event columns; ``users``:
    ``request`` and the spec's user columns. The predicted slot comes last in each request
    and is its ``test_idx``; encoders apply exactly as in :func:`build`.
    """
    raw = events.lazy().select(
        "request", "item_id", "timestamp", "slot",
        *(_raw_value(f, events) for f in spec.features_in("event")),
    )  # fmt: skip
    test_idx = (pl.len() - 1).cast(pl.Int32).alias("test_idx")
    rows = sequence_rows(order_events(raw, spec, "request"), spec, encoders, item_vocab,
                         "request", test_idx)  # fmt: skip
    user_features = spec.features_in("user")
    encoded_users = (
        users.lazy()
        .select("request", *(_raw_value(f, users) for f in user_features))
        .select("request", *_encode(spec, encoders, "user"))
    )
    return (
        rows.join(encoded_users, on="request", how="left")
        .with_columns(
            *_fill_missing(spec, encoders, "user"),
            pl.col("request").alias("user_id"),
            pl.col("test_idx").alias("train_len"),
            pl.lit(None, pl.Int32).alias("valid_idx"),
        )
        .sort("request")
        .collect()
    )


def _check_inputs(spec: Spec, tables: Tables) -> None:
    interactions = tables.interactions
    where = tables.origin.get("interactions", "interactions")
    if interactions.height == 0:
        raise DataError(f"{where}: the interactions table is empty (no rows to learn from)")
    for key in ("user_id", "item_id", "timestamp"):
        values = interactions.get_column(key)
        nulls = values.null_count()
        if values.dtype.is_float():
            nulls += int(values.is_nan().sum())
        if nulls:
            raise DataError(
                f"{where}: {nulls:,} interactions have no {key} (null or NaN); drop or fix them"
            )
    for table_name, key in (("users", "user_id"), ("items", "item_id")):
        table = getattr(tables, table_name)
        scope = table_name[:-1]
        if table is None or not spec.features_in(scope):
            continue
        keys = table.get_column(key)
        repeated = keys.filter(keys.is_duplicated()).unique(maintain_order=True)
        if len(repeated):
            examples = ", ".join(map(repr, repeated.head(3).to_list()))
            raise DataError(
                f"{tables.origin.get(table_name, table_name)}: {len(repeated):,} {key}s "
                f"appear on more than one row (e.g. {examples}); the {table_name} table "
                f"holds one row per {scope}"
            )
    for table_name, key in (("users", "user_id"), ("items", "item_id")):
        table = getattr(tables, table_name)
        if table is None or not spec.features_in(table_name[:-1]):
            continue
        _check_overlap(table, interactions, key, tables.origin.get(table_name, table_name), where)
    for i, feature in enumerate(spec.features):
        if feature.type in TREND_TYPES:
            if not has_clock_times(spec.data):
                raise DataError(
                    f"{spec.source}: features[{i}] ({feature.name}): a {feature.type} feature "
                    f"counts events by day, but data set {spec.data.dataset} has no clock "
                    "times (only the events' order)"
                )
            continue
        table_name = _TABLE_OF_SCOPE[feature.scope]
        table = getattr(tables, table_name)
        if table is None:
            raise DataError(
                f"{spec.source}: features[{i}] ({feature.name}): a {feature.scope} feature needs "
                f"a {table_name} table, but the data has none (set data.{table_name})"
            )
        if feature.column not in table.columns:
            raise DataError(
                f"{spec.source}: features[{i}].column: column '{feature.column}' not in the "
                f"{table_name} table ({tables.origin.get(table_name, table_name)}); "
                f"columns: {', '.join(table.columns)}"
            )
        dtype = table.schema[feature.column]
        problem = None
        if feature.type == "numeric" and not dtype.is_numeric():
            problem = f"holds {dtype}; a numeric feature needs numbers"
        elif feature.type == "numeric" and dtype.is_float():
            infinite = int(table.get_column(feature.column).is_infinite().sum())
            if infinite:
                problem = f"holds {infinite:,} infinite values; drop them or set them to null"
        unsplit = getattr(feature, "separator", None) is None
        if feature.type == "multi_categorical" and not isinstance(dtype, pl.List) and unsplit:
            problem = f"holds {dtype}, not lists; set separator to split the text"
        splits = feature.type == "multi_categorical" and not unsplit
        if splits and dtype not in (pl.String, pl.Null) and not isinstance(dtype, pl.List):
            problem = f"holds {dtype}; separator splits text (a list column needs none)"
        if feature.type == "categorical" and isinstance(dtype, (pl.List, pl.Array, pl.Struct)):
            problem = (
                f"holds {dtype}; a categorical feature takes one value per row "
                "(for lists of values: type multi_categorical)"
            )
        if feature.type == "time" and dtype == pl.String:
            try:
                table.select(epoch_seconds(table, feature.column))
            except pl.exceptions.PolarsError as err:
                problem = (
                    f"cannot be read as times ({first_line(err)[:120]}); expected unix "
                    "seconds, a date or ISO date-times"
                )
        if problem:
            raise DataError(
                f"{spec.source}: features[{i}].column: column '{feature.column}' {problem}"
            )


def _check_overlap(
    table: pl.DataFrame, interactions: pl.DataFrame, key: str, where: str, events_where: str
) -> None:
    """A users / items table that names none of the interactions' users / items is a
    mistake (wrong ids: its features would all be missing): one DataError; one that names
    fewer than half of them is logged."""
    used = interactions.get_column(key).unique()
    named = used.is_in(table.get_column(key).implode()).sum()
    if named == 0:
        ours, theirs = table.get_column(key).head(3).to_list(), used.head(3).to_list()
        raise DataError(
            f"{where}: none of its {table.height:,} {key}s occurs in the interactions "
            f"({events_where}): e.g. {ours!r} against {theirs!r}; its features would all be "
            "missing: use the interactions' ids"
        )
    if named < 0.5 * len(used):
        log.warning(
            "%s: only %d of the interactions' %d %ss have a row; the rest get missing values",
            where, named, len(used), key,
        )  # fmt: skip


def _raw_value(feature: AnyFeature, frame: pl.DataFrame, time_unit: str = "auto") -> pl.Expr:
    """The feature's input values, named after the feature (times: numbers in
    ``time_unit``)."""
    if feature.type == "time":
        return epoch_seconds(frame, feature.column, time_unit).alias(feature.name)
    column = pl.col(feature.column)
    if feature.type == "multi_categorical" and frame.schema[feature.column] == pl.Null:
        column = column.cast(pl.List(pl.String))  # nothing but nulls: still a list column
    separator = getattr(feature, "separator", None)
    if separator is not None and frame.schema[feature.column] == pl.String:
        parts = column.str.split(separator)
        column = parts.list.eval(pl.element().filter(pl.element() != ""))  # "" is no value
    return column.alias(feature.name)


def _event_frame(spec: Spec, tables: Tables) -> pl.LazyFrame:
    frame = tables.interactions
    features = spec.features_in("event")
    return frame.lazy().select(
        "user_id",
        "item_id",
        "timestamp",
        *(_raw_value(f, frame, spec.data.columns.time_unit) for f in features),
    )


def _scope_frame(spec: Spec, tables: Tables, scope: str) -> pl.DataFrame:
    """One row per user / item with the raw values of that scope's features."""
    key = _KEY_OF_SCOPE[scope]
    table = getattr(tables, _TABLE_OF_SCOPE[scope])
    features = spec.features_in(scope)
    if table is None or not features:
        return pl.DataFrame({key: []}, schema={key: tables.interactions.schema[key]})
    return table.select(key, *(_raw_value(f, table) for f in features)).unique(
        subset=key, keep="first", maintain_order=True
    )


def order_events(events: pl.LazyFrame, spec: Spec, key: str) -> pl.LazyFrame:
    """Raw events (one sequence per ``key``: a user, or a request) in sequence order, the one
    order training data and requests share: by time, missing times first, ties in the given
    row order; with a ``slot`` column (requests), the predicted slot last. Adds ``row`` (the
    given order), ``pos`` (0-based position in the sequence) and, per time feature,
    ``<name>.gap_s``: seconds since the sequence's previous event (≥ 0; null for the first).
    """
    slot = ["slot"] if "slot" in events.collect_schema().names() else []
    return (
        events.with_row_index("row")
        .sort(key, *slot, "timestamp", "row", nulls_last=False)
        .with_columns(pl.int_range(pl.len(), dtype=pl.Int32).over(key).alias("pos"))
        .with_columns(
            pl.col(f.name).diff().over(key).clip(lower_bound=0).alias(f"{f.name}.gap_s")
            for f in spec.features_in("event")
            if f.type == "time"
        )
    )


def sequence_rows(
    events: pl.LazyFrame,
    spec: Spec,
    encoders: dict[str, Encoder],
    item_vocab: ItemVocab,
    key: str,
    *carried: pl.Expr,
) -> pl.LazyFrame:
    """Ordered raw events (:func:`order_events`) → one row per ``key``: ``item`` (item ids),
    ``timestamp`` and each encoded event column as lists, and the ``carried`` aggregates."""
    event_columns = [
        c for f in spec.features_in("event") for c in feature_columns(f.name, encoders[f.name])
    ]
    return (
        events.with_columns(
            item_vocab.encode(pl.col("item_id")).alias("item"), *_encode(spec, encoders, "event")
        )
        .group_by(key, maintain_order=True)
        .agg(pl.col("item", "timestamp", *event_columns), *carried)
    )


def order_and_split(events: pl.LazyFrame, spec: Spec) -> pl.LazyFrame:
    """Order each user's events (:func:`order_events`) and add the split columns
    ``train_len``, ``valid_idx`` and ``test_idx``."""
    ordered = order_events(events, spec, "user_id").with_columns(
        pl.len().over("user_id").cast(pl.Int32).alias("n")
    )
    evaluated = pl.col("n") >= MIN_EVENTS
    if spec.eval.split == "leave_one_out":
        return ordered.with_columns(
            pl.when(evaluated).then(pl.col("n") - 2).otherwise(pl.col("n")).alias("train_len"),
            pl.when(evaluated).then(pl.col("n") - 2).alias("valid_idx"),
            pl.when(evaluated).then(pl.col("n") - 1).alias("test_idx"),
        ).drop("row", "n")
    valid_from, test_from = temporal_cutoffs(events, spec)

    def first_in_window(start: int, end: int) -> pl.Expr:
        """Position of the user's first event in [start, end) that has some history."""
        time = pl.col("timestamp")
        inside = (time >= start) & (time < end) & (pl.col("pos") > 0)
        return pl.col("pos").filter(inside).min().over("user_id")

    return ordered.with_columns(
        (pl.col("timestamp") < valid_from).sum().over("user_id").cast(pl.Int32).alias("train_len"),
        pl.when(evaluated).then(first_in_window(valid_from, test_from)).alias("valid_idx"),
        pl.when(evaluated).then(first_in_window(test_from, 2**62)).alias("test_idx"),
    ).drop("row", "n")


def temporal_cutoffs(events: pl.LazyFrame, spec: Spec) -> tuple[int, int]:
    """Global time cutoffs (unix seconds) at the spec's quantiles of all event times."""
    quantiles = events.select(
        pl.col("timestamp").quantile(spec.eval.valid_quantile, "lower").alias("valid"),
        pl.col("timestamp").quantile(spec.eval.test_quantile, "lower").alias("test"),
    ).collect()
    return int(quantiles.item(0, "valid")), int(quantiles.item(0, "test"))


def _encode(spec: Spec, encoders: dict[str, Encoder], scope: str) -> list[pl.Expr]:
    exprs = []
    for feature in spec.features_in(scope):
        encoder = encoders[feature.name]
        if isinstance(encoder, TimeEncoder):
            parts = encoder.encode_parts(pl.col(feature.name), pl.col(f"{feature.name}.gap_s"))
            exprs += [expr.alias(f"{feature.name}.{part}") for part, expr in parts.items()]
        else:
            exprs.append(encoder.encode(pl.col(feature.name)).alias(feature.name))
    return exprs


def _reserved(encoder: Encoder, reserved_id: int) -> Any:
    """The encoded value a reserved row / missing entity carries for this feature."""
    if isinstance(encoder, StandardEncoder):
        return 0.0
    if isinstance(encoder, MultiCategoricalEncoder):
        return [reserved_id]
    return reserved_id


def _dtype(encoder: Encoder) -> pl.DataType:
    if isinstance(encoder, StandardEncoder):
        return pl.Float32()
    if isinstance(encoder, MultiCategoricalEncoder):
        return pl.List(ID_DTYPE)
    return ID_DTYPE()


def _fill_missing(spec: Spec, encoders: dict[str, Encoder], scope: str) -> list[pl.Expr]:
    """Users / items absent from their side table: every feature is MISSING."""
    return [
        pl.col(f.name).fill_null(
            pl.lit(_reserved(encoders[f.name], MISSING), _dtype(encoders[f.name]))
        )
        for f in spec.features_in(scope)
    ]


def _item_table(
    spec: Spec, encoders: dict[str, Encoder], item_vocab: ItemVocab, item_raw: pl.DataFrame
) -> pl.DataFrame:
    """Encoded item features, row i = item id i; reserved rows carry their own reserved id."""
    ids = pl.int_range(len(item_vocab), eager=True, dtype=ID_DTYPE).alias("item")
    features = spec.features_in("item")
    if not features:
        return ids.to_frame()
    known = (
        pl.DataFrame({"item_id": item_vocab.ids}, schema={"item_id": item_raw.schema["item_id"]})
        .lazy()
        .join(item_raw.lazy(), on="item_id", how="left", maintain_order="left")
        .select(_encode(spec, encoders, "item"))
        .with_columns(_fill_missing(spec, encoders, "item"))
        .collect()
    )
    reserved = pl.DataFrame(
        [
            pl.Series(
                f.name,
                [_reserved(encoders[f.name], rid) for rid in (PAD, MASK, OOV, MISSING)],
                dtype=_dtype(encoders[f.name]),
            )
            for f in features
        ]
    )
    return pl.concat([reserved, known]).select(ids, *(f.name for f in features))


def _stats(
    spec: Spec,
    events: pl.DataFrame,
    sequences: pl.DataFrame,
    item_vocab: ItemVocab,
    encoders: dict[str, Encoder],
) -> dict[str, Any]:
    evaluated = sequences.filter(pl.col("test_idx").is_not_null()).height
    features = {}
    for feature in spec.input_features:
        encoder = encoders[feature.name]
        if isinstance(encoder, TimeEncoder):
            size: Any = encoder.cardinalities
        else:
            size = encoder.cardinality
        features[feature.name] = {"scope": feature.scope, "type": feature.type, "cardinality": size}
    split: dict[str, Any] = {
        "method": spec.eval.split,
        "train_events": int(events.filter(pl.col("pos") < pl.col("train_len")).height),
        "valid_users": int(sequences.get_column("valid_idx").is_not_null().sum()),
        "test_users": int(sequences.get_column("test_idx").is_not_null().sum()),
        "left_out_users": int(sequences.height - evaluated),
    }
    if has_clock_times(spec.data):
        split["target_gap_days"] = _target_gaps(events)
    if spec.eval.split == "temporal":
        valid_from, test_from = temporal_cutoffs(events.lazy(), spec)
        split["valid_from"] = _iso(valid_from)
        split["test_from"] = _iso(test_from)
    return {
        "users": sequences.height,
        "items": len(item_vocab.ids),
        "cold_items": item_vocab.cold,
        "events": events.height,
        "split": split,
        "features": features,
    }


def _target_gaps(events: pl.DataFrame) -> dict[str, dict[str, float]]:
    """Days from each evaluated user's last event before the target to the target, per
    split: quartiles. Leave-one-out and temporal numbers differ largely by this gap."""
    previous = pl.col("timestamp").shift(1).over("user_id", order_by="pos")
    gaps = events.with_columns(gap=(pl.col("timestamp") - previous) / 86_400)
    out = {}
    for split, column in (("valid", "valid_idx"), ("test", "test_idx")):
        found = gaps.filter(pl.col("pos") == pl.col(column)).get_column("gap").drop_nulls()
        if len(found):
            out[split] = {
                name: round(float(found.quantile(q, "linear")), 2)
                for name, q in (("q25", 0.25), ("median", 0.5), ("q75", 0.75))
            }
    return out


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat(timespec="seconds")

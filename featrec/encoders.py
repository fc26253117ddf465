"""Encoders: raw feature values → integer ids (or scaled floats), fit on the training split.

Every id space reserves the same four ids (:mod:`featrec.ids`: PAD, MASK, OOV, MISSING),
so padding, masking, unseen and missing values mean the same thing for every feature and
for the item vocabulary.

Encoders turn polars expressions into polars expressions, so encoding stays inside one
lazy query; ``fit`` takes the training split's values as a Series. ``to_dict`` /
``encoder_from_dict`` round-trip exactly through JSON.

For one recommendation request a polars query costs more than the model (~0.5 ms an
expression however small the frame), so ``encode_values`` gives the same ids for a list of
plain Python values. It answers None for any value whose conversion would need polars'
casting rules (a float for a categorical, text for a number, ...), and the caller then takes
the polars path; tests compare the two on random input.
"""

from __future__ import annotations

import functools
import json
import math
from bisect import bisect_right
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl

from featrec.errors import DataError, FeatrecError, first_line
from featrec.ids import MASK, MISSING, N_RESERVED, OOV, PAD
from featrec.spec import (
    CategoricalFeature,
    MultiCategoricalFeature,
    NumericFeature,
    TimeFeature,
)

ID_DTYPE = pl.Int32
GAP_BUCKETS = 32  # log2 buckets of seconds since the previous event: 2**31 s is ~68 years


@dataclass
class CategoricalEncoder:
    """One id per distinct training value (as text); rare and unseen values → OOV.

    Values are kept as text so the vocabulary survives JSON exactly. When the training
    column held integers (``integers=True``), lookups compare integers instead: the same
    ids, without turning a million-row column into strings.
    """

    kind: ClassVar[str] = "categorical"
    min_count: int = 1
    values: list[str] = field(default_factory=list)
    integers: bool = False

    @property
    def cardinality(self) -> int:
        return N_RESERVED + len(self.values)

    def fit(self, values: pl.Series) -> CategoricalEncoder:
        counts = values.drop_nulls().value_counts(name="n")
        kept = counts.filter(pl.col("n") >= self.min_count).get_column(values.name)
        self.integers = values.dtype.is_integer()
        self.values = sorted(kept.cast(pl.String).to_list())
        self.__dict__.pop("_mapping", None)  # refitted: rebuild the lookups
        self.__dict__.pop("_lookup", None)
        return self

    @functools.cached_property
    def _mapping(self) -> tuple[pl.Series, pl.Series]:
        """(values, ids) as Series, built once: lookups do not convert lists per call."""
        old = pl.Series([int(v) for v in self.values] if self.integers else self.values)
        new = pl.Series(range(N_RESERVED, N_RESERVED + len(self.values)), dtype=ID_DTYPE)
        return old, new

    def _ids(self, values: pl.Expr) -> pl.Expr:
        old, new = self._mapping
        # text that is no integer casts to null and so maps to OOV
        values = values.cast(pl.Int64, strict=False) if self.integers else values.cast(pl.String)
        return values.replace_strict(old, new, default=OOV, return_dtype=ID_DTYPE)

    def encode(self, values: pl.Expr) -> pl.Expr:
        return (
            pl.when(values.is_null()).then(pl.lit(MISSING, ID_DTYPE)).otherwise(self._ids(values))
        )

    @functools.cached_property
    def _lookup(self) -> dict[Any, int]:
        keys = [int(v) for v in self.values] if self.integers else self.values
        return {key: i for i, key in enumerate(keys, start=N_RESERVED)}

    def _id(self, value: Any) -> int | None:
        """The id of one value as ``encode`` gives it; None: needs polars' casting rules."""
        if value is None:
            return MISSING
        if type(value) is int:  # not bool: polars casts those its own way
            return self._lookup.get(value if self.integers else str(value), OOV)
        if type(value) is str and not self.integers:
            return self._lookup.get(value, OOV)
        return None

    def encode_values(self, values: list[Any]) -> list[int] | None:
        ids = [self._id(v) for v in values]
        return None if None in ids else ids


@dataclass
class MultiCategoricalEncoder(CategoricalEncoder):
    """A list of values per row (genres); each element as in CategoricalEncoder.

    A null or empty list encodes as ``[MISSING]`` so every row has at least one id to pool.
    """

    kind: ClassVar[str] = "multi_categorical"

    def fit(self, values: pl.Series) -> MultiCategoricalEncoder:
        super().fit(values.explode().rename(values.name))
        return self

    def encode(self, values: pl.Expr) -> pl.Expr:
        element = pl.element()
        ids = values.list.eval(
            pl.when(element.is_null()).then(pl.lit(MISSING, ID_DTYPE)).otherwise(self._ids(element))
        )
        empty = values.is_null() | (values.list.len() == 0)
        return pl.when(empty).then(pl.lit([MISSING], pl.List(ID_DTYPE))).otherwise(ids)

    def encode_values(self, values: list[Any]) -> list[list[int]] | None:  # type: ignore[override]
        out = []
        for value in values:
            if value is None or (isinstance(value, list) and not value):
                out.append([MISSING])
            elif isinstance(value, list):
                ids = [self._id(v) for v in value]
                if None in ids:
                    return None
                out.append(ids)
            else:
                return None
        return out


def quantile_edges(values: np.ndarray, bins: int) -> list[float]:
    """Inner edges of ``bins`` quantile bins, exactly as scikit-learn's
    ``KBinsDiscretizer(strategy="quantile")`` fits them (percentiles with the
    averaged-inverted-CDF method; bins narrower than 1e-8 merged). Computed with numpy
    because importing scikit-learn costs ~2 s (it loads scipy), more than the whole ML-1M
    pipeline; tests check the edges against scikit-learn's.
    """
    edges = np.percentile(values, np.linspace(0, 100, bins + 1), method="averaged_inverted_cdf")
    edges = edges[np.ediff1d(edges, to_begin=np.inf) > 1e-8]
    return [float(edge) for edge in edges[1:-1]]


def _present(values: pl.Series) -> np.ndarray:
    return values.cast(pl.Float64).fill_nan(None).drop_nulls().to_numpy()


@dataclass
class QuantileBinEncoder:
    """Quantile bins of the training values; id = N_RESERVED + bin, null / NaN → MISSING."""

    kind: ClassVar[str] = "quantile_bins"
    bins: int = 10
    edges: list[float] = field(default_factory=list)  # inner edges, ascending

    @property
    def cardinality(self) -> int:
        return N_RESERVED + len(self.edges) + 1

    def fit(self, values: pl.Series) -> QuantileBinEncoder:
        present = _present(values)
        self.edges = quantile_edges(present, self.bins) if len(present) else []
        return self

    def encode(self, values: pl.Expr) -> pl.Expr:
        number = values.cast(pl.Float64).fill_nan(None)
        # bin = number of inner edges <= value, as np.searchsorted(edges, value, "right")
        bin_index = pl.sum_horizontal([(number >= e).cast(ID_DTYPE) for e in self.edges] or [0])
        return (
            pl.when(number.is_null())
            .then(pl.lit(MISSING, ID_DTYPE))
            .otherwise((bin_index + N_RESERVED).cast(ID_DTYPE))
        )

    def encode_values(self, values: list[Any]) -> list[int] | None:
        numbers = _numbers(values)
        if numbers is None:
            return None
        return [
            MISSING if math.isnan(x) else N_RESERVED + bisect_right(self.edges, x) for x in numbers
        ]


@dataclass
class StandardEncoder:
    """z-score with the training mean and (population) standard deviation, as scikit-learn's
    ``StandardScaler``; a constant column keeps scale 1. Nulls become 0.0 (the mean)."""

    kind: ClassVar[str] = "standard"
    mean: float = 0.0
    scale: float = 1.0
    cardinality: ClassVar[None] = None  # continuous: projected, not looked up

    def fit(self, values: pl.Series) -> StandardEncoder:
        present = _present(values)
        if len(present):
            self.mean = float(present.mean())
            std = float(present.std())
            self.scale = std if std > 10 * np.finfo(np.float64).eps else 1.0
        return self

    def encode(self, values: pl.Expr) -> pl.Expr:
        number = values.cast(pl.Float64).fill_nan(None)
        return ((number - self.mean) / self.scale).fill_null(0.0).cast(pl.Float32)

    def encode_values(self, values: list[Any]) -> list[float] | None:
        numbers = _numbers(values)
        if numbers is None:
            return None
        scaled = [0.0 if math.isnan(x) else (x - self.mean) / self.scale for x in numbers]
        return np.array(scaled, dtype=np.float32).tolist()


def _numbers(values: list[Any]) -> list[float] | None:
    """Python numbers as floats (None → NaN); None when a value is not a plain number."""
    out = []
    for value in values:
        if value is None:
            out.append(math.nan)
        elif type(value) in (int, float):
            out.append(float(value))
        else:
            return None
    return out


@dataclass
class TimeEncoder:
    """Derived time parts, each its own id space: hour (24), weekday (7), gap (32 log2 buckets).

    ``encode`` takes unix seconds; the gap part needs the seconds since the user's previous
    event (null for the first event → MISSING). Nothing to learn, so ``fit`` only checks the
    time zone.
    """

    kind: ClassVar[str] = "time"
    parts: list[str] = field(default_factory=lambda: ["hour", "weekday", "gap"])
    timezone: str = "UTC"

    @property
    def cardinalities(self) -> dict[str, int]:
        sizes = {"hour": 24, "weekday": 7, "gap": GAP_BUCKETS}
        return {part: N_RESERVED + sizes[part] for part in self.parts}

    def fit(self, values: pl.Series) -> TimeEncoder:
        try:
            pl.Series([0]).cast(pl.Datetime("ms")).dt.convert_time_zone(self.timezone)
        except pl.exceptions.PolarsError:
            raise DataError(
                f"unknown time zone '{self.timezone}' (expected an IANA name)"
            ) from None
        return self

    def encode_parts(self, seconds: pl.Expr, gap_seconds: pl.Expr) -> dict[str, pl.Expr]:
        local = pl.from_epoch(seconds, "s").dt.replace_time_zone("UTC")
        local = local.dt.convert_time_zone(self.timezone)
        bucket = (gap_seconds.cast(pl.Float64) + 1.0).log(2).floor().clip(0, GAP_BUCKETS - 1)
        exprs = {
            "hour": local.dt.hour().cast(ID_DTYPE) + N_RESERVED,
            "weekday": local.dt.weekday().cast(ID_DTYPE) - 1 + N_RESERVED,  # Monday = 1
            "gap": pl.when(gap_seconds.is_null())
            .then(pl.lit(MISSING, ID_DTYPE))
            .otherwise(bucket.cast(ID_DTYPE) + N_RESERVED),
        }
        unknown = seconds.is_null()  # no time given (e.g. a bare history of item ids)
        return {
            part: pl.when(unknown)
            .then(pl.lit(MISSING, ID_DTYPE))
            .otherwise(exprs[part])
            .cast(ID_DTYPE)
            for part in self.parts
        }

    def encode_parts_values(
        self, seconds: list[int | None], gap_seconds: list[int | None]
    ) -> dict[str, list[int]] | None:
        """``encode_parts`` for plain integers; None outside UTC (polars' time-zone database
        is the reference there)."""
        if self.timezone != "UTC":
            return None
        out: dict[str, list[int]] = {part: [] for part in self.parts}
        for second, gap in zip(seconds, gap_seconds, strict=True):
            if second is None:
                for part in self.parts:
                    out[part].append(MISSING)
                continue
            ids = {
                "hour": N_RESERVED + second // 3600 % 24,
                "weekday": N_RESERVED + (second // 86400 + 3) % 7,  # 1970-01-01: a Thursday
                "gap": MISSING if gap is None else N_RESERVED + _gap_bucket(gap),
            }
            for part in self.parts:
                out[part].append(ids[part])
        return out


def _gap_bucket(gap: int) -> int:
    """As the polars expression: ln(x) / ln(2) (Rust's ``f64::log``), floor, clip."""
    return min(max(math.floor(math.log(gap + 1.0) / math.log(2.0)), 0), GAP_BUCKETS - 1)


@dataclass
class ItemVocab:
    """Item ids → contiguous ids from N_RESERVED; covers every item in the interactions."""

    ids: list[Any] = field(default_factory=list)  # raw item ids, in id order
    # the last ``cold`` ids: items of the items table without events (fusion.output_items)
    cold: int = 0

    @property
    def trained(self) -> int:
        """Ids below this are reserved or have events; from it on, cold items."""
        return len(self) - self.cold

    def __len__(self) -> int:
        return N_RESERVED + len(self.ids)

    @functools.cached_property
    def _mapping(self) -> tuple[pl.Series, pl.Series]:
        new = pl.Series(range(N_RESERVED, N_RESERVED + len(self.ids)), dtype=ID_DTYPE)
        return pl.Series(self.ids), new

    def encode(self, raw_ids: pl.Expr) -> pl.Expr:
        old, new = self._mapping
        return raw_ids.replace_strict(old, new, default=OOV, return_dtype=ID_DTYPE)


Encoder = (
    CategoricalEncoder
    | MultiCategoricalEncoder
    | QuantileBinEncoder
    | StandardEncoder
    | TimeEncoder
)
_KINDS: dict[str, type] = {
    cls.kind: cls
    for cls in (
        CategoricalEncoder,
        MultiCategoricalEncoder,
        QuantileBinEncoder,
        StandardEncoder,
        TimeEncoder,
    )
}


def encoder_for(feature: Any) -> Encoder:
    """A fresh (unfitted) encoder for a feature of the spec."""
    if isinstance(feature, MultiCategoricalFeature):
        return MultiCategoricalEncoder(min_count=feature.min_count)
    if isinstance(feature, CategoricalFeature):
        return CategoricalEncoder(min_count=feature.min_count)
    if isinstance(feature, NumericFeature):
        if feature.transform == "standard":
            return StandardEncoder()
        return QuantileBinEncoder(bins=feature.bins)
    if isinstance(feature, TimeFeature):
        return TimeEncoder(parts=list(feature.parts), timezone=feature.timezone)
    raise TypeError(f"no encoder for {type(feature).__name__}")


def encoder_to_dict(encoder: Encoder) -> dict[str, Any]:
    return {"kind": encoder.kind, **asdict(encoder)}


def encoder_from_dict(data: dict[str, Any]) -> Encoder:
    fields = dict(data)
    return _KINDS[fields.pop("kind")](**fields)


def save_encoders(path: Path, item_vocab: ItemVocab, encoders: dict[str, Encoder]) -> None:
    payload = {
        "reserved": {"PAD": PAD, "MASK": MASK, "OOV": OOV, "MISSING": MISSING},
        "item_vocab": item_vocab.ids,
        "cold_items": item_vocab.cold,
        "features": {name: encoder_to_dict(enc) for name, enc in encoders.items()},
    }
    path.write_text(json.dumps(payload, indent=1, allow_nan=False), encoding="utf-8")


def load_encoders(path: Path) -> tuple[ItemVocab, dict[str, Encoder]]:
    """The item vocabulary and encoders a run saved, or one :class:`FeatrecError` naming
    the file when it is not what featrec wrote (cut short, edited, another file)."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        features = {name: encoder_from_dict(d) for name, d in payload["features"].items()}
        return ItemVocab(payload["item_vocab"], int(payload.get("cold_items", 0))), features
    except FileNotFoundError:
        raise FeatrecError(f"{path}: missing (every run directory has one)") from None
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as err:
        detail = f"{type(err).__name__}: {first_line(err)[:120]}"
        raise FeatrecError(f"{path}: not a featrec encoders file ({detail})") from None

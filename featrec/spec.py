"""The experiment spec: pydantic models, YAML loading, ``--set`` overrides, readable errors.

A spec is frozen once loaded. Behavior-only and ablation variants are new specs made from it
(:meth:`Spec.behavior_only`), never flags that code branches on later.
"""

from __future__ import annotations

import difflib
import os
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from featrec.errors import SpecError

Scope = Literal["item", "user", "event"]
KnownAt = Literal["request", "after"]
TimePart = Literal["hour", "weekday", "gap"]
# names become file and folder names (runs/NAME/, ablations/NAME/): 64 safe characters at most
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*$", max_length=64)]
# the columns featrec's own tables of events and requests hold beside the features
OWN_COLUMNS = ("user_id", "item_id", "timestamp", "item", "row", "pos", "slot")


def _not_an_own_column(name: str) -> str:
    if name in OWN_COLUMNS:
        raise ValueError(
            f"'{name}' names one of featrec's own columns ({', '.join(OWN_COLUMNS)}); "
            "give the feature another name (its column may keep this one)"
        )
    return name


FeatureName = Annotated[Identifier, AfterValidator(_not_an_own_column)]


def _known_time_zone(zone: str) -> bool:
    """Whether this machine's time zone data has ``zone`` (True where it has none at all:
    then polars decides when the data is encoded)."""
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(zone)
        return True
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        try:
            zoneinfo.ZoneInfo("Europe/Paris")  # no data at all: nothing to check against
        except zoneinfo.ZoneInfoNotFoundError:
            return True
        return False


DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"  # train.device


# sizes that allocate memory (widths, lengths, batches, draws): beyond these no machine has
# the memory, and torch's own errors (an overflow, a failed allocation) name no field
MAX_WIDTH, MAX_COUNT = 1 << 14, 1 << 24
INT64 = (1 << 63) - 1


def _a_number(value: Any) -> Any:
    """true / false are no numbers (YAML's ``dim: true`` would train with dim 1), and an
    integer beyond int64 is no setting (torch would fail on it naming no field)."""
    kind = type(value)
    if isinstance(value, bool) or (
        kind.__module__ == "numpy" and kind.__name__ in ("bool", "bool_")
    ):
        raise ValueError(f"expected a number; got {str(value).lower()}")
    if isinstance(value, int) and abs(value) > INT64:
        raise ValueError(f"expected a number below 2**63; got {value}")
    return value


Int = Annotated[int, BeforeValidator(_a_number)]
Float = Annotated[float, BeforeValidator(_a_number)]


class _Frozen(BaseModel):
    # inf and nan are no settings (a learning rate of .inf trains to nan)
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class _FeatureBase(_Frozen):
    name: FeatureName = Field(description="Unique feature name; keys its embedding module.")
    scope: Scope = Field(
        description="item: joined by item id; user: static per user; event: column of the "
        "interaction itself."
    )
    column: str = Field(description="Column in the table of this scope that holds the values.")
    known_at: KnownAt | None = Field(
        None,
        description="Event features only. 'request': known when a recommendation is asked for "
        "(stays visible at the predicted slot); 'after' (default): known only after the "
        "interaction (hidden at the predicted slot).",
    )
    dim: Int | None = Field(
        None,
        gt=0,
        le=MAX_WIDTH,
        description="Embedding width for this feature (default: model.dim).",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_known_at(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("scope") == "event" and data.get("known_at") is None:
            data = {**data, "known_at": "after"}
        return data

    @model_validator(mode="after")
    def _known_at_only_for_events(self) -> _FeatureBase:
        if self.scope != "event" and self.known_at is not None:
            raise ValueError(
                f"known_at applies to event features only ({self.scope} features are "
                f"{'always hidden' if self.scope == 'item' else 'always visible'} at the "
                "predicted slot)"
            )
        return self

    @property
    def hidden_at_target(self) -> bool:
        """Whether this feature is hidden at a masked / predicted slot (docs/design.md §3)."""
        if self.scope == "item":
            return True
        if self.scope == "user":
            return False
        return self.known_at != "request"


class CategoricalFeature(_FeatureBase):
    type: Literal["categorical"]
    min_count: Int = Field(
        1, ge=1, description="Values seen fewer times in the training split map to OOV."
    )


class MultiCategoricalFeature(_FeatureBase):
    type: Literal["multi_categorical"]
    separator: str | None = Field(
        None,
        min_length=1,
        description="Split a string column on this separator (None: already a list).",
    )
    min_count: Int = Field(
        1, ge=1, description="Values seen fewer times in the training split map to OOV."
    )

    @model_validator(mode="after")
    def _item_or_user_scope(self) -> MultiCategoricalFeature:
        if self.scope == "event":
            raise ValueError(
                "multi_categorical features describe items or users; lists per event "
                "(a basket's categories) are not supported yet: use scope item or user, or "
                "one categorical event feature"
            )
        return self


class NumericFeature(_FeatureBase):
    type: Literal["numeric"]
    transform: Literal["quantile_bins", "standard"] = Field(
        "quantile_bins", description="quantile_bins: ids of quantile bins; standard: z-score."
    )
    bins: Int = Field(10, ge=2, le=1000, description="Number of quantile bins.")


class TimeFeature(_FeatureBase):
    type: Literal["time"]
    parts: list[TimePart] = Field(
        ["hour", "weekday", "gap"],
        min_length=1,
        description="hour of day, day of week, log2-bucketed seconds since the previous event.",
    )
    timezone: str = Field("UTC", description="IANA time zone for hour and weekday.")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        if not _known_time_zone(zone):
            raise ValueError(f"unknown time zone '{zone}' (expected an IANA name, e.g. UTC)")
        return zone

    @field_validator("parts")
    @classmethod
    def _unique_parts(cls, parts: list[str]) -> list[str]:
        if len(set(parts)) != len(parts):
            raise ValueError(f"parts must not repeat; got {parts}")
        return parts

    @model_validator(mode="after")
    def _event_scope(self) -> TimeFeature:
        if self.scope != "event":
            raise ValueError(
                f"time features describe events; expected scope event, got {self.scope}"
            )
        return self


class _TrendBase(_Frozen):
    """An item feature computed from the events themselves as of each request (no column):
    it enters where items are scored, never the tokens (docs/design.md §3)."""

    name: FeatureName = Field(description="Unique feature name; keys its embedding table.")
    scope: Literal["item"] = Field("item", description="item (the default): a candidate's.")
    dim: Int | None = Field(
        None, gt=0, description="Embedding width (must be model.dim, the default)."
    )

    @property
    def hidden_at_target(self) -> bool:
        return True  # never in the tokens at all

    @property
    def column(self) -> None:
        return None


class PopularityFeature(_TrendBase):
    type: Literal["popularity"]
    window_days: Int = Field(
        7,
        ge=1,
        le=36_500,
        description="The item's events (any user's) in the whole days [d - window_days, d) "
        "before the request's day d, log2-bucketed: what is trending at request time.",
    )
    measure: Literal["rank", "count"] = Field(
        "rank",
        description="rank: the item's place among the catalog by those events (1 = the most; "
        "log2 buckets; none: a bucket of its own), which means the same on a busy day and a "
        "quiet one. count: the number of events itself (log2 buckets).",
    )


class AgeFeature(_TrendBase):
    type: Literal["age"]


AnyFeature = (
    CategoricalFeature
    | MultiCategoricalFeature
    | NumericFeature
    | TimeFeature
    | PopularityFeature
    | AgeFeature
)
Feature = Annotated[AnyFeature, Field(discriminator="type")]
FEATURE_MODELS: dict[str, type[_Frozen]] = {
    "categorical": CategoricalFeature,
    "multi_categorical": MultiCategoricalFeature,
    "numeric": NumericFeature,
    "time": TimeFeature,
    "popularity": PopularityFeature,
    "age": AgeFeature,
}
# item features computed from the events as of each request, scored at the output only
TREND_TYPES = frozenset({"popularity", "age"})


class ColumnMap(_Frozen):
    user: str = Field("user_id", description="User id column (all tables).")
    item: str = Field("item_id", description="Item id column (all tables).")
    time: str = Field(
        "timestamp", description="Event time: unix seconds (or time_unit), date or datetime."
    )
    time_unit: Literal["auto", "s", "ms", "us", "ns"] = Field(
        "auto",
        description="Unit of numeric times. auto: from their size (below 1e11 seconds, 1e14 "
        "milliseconds, 1e17 microseconds, else nanoseconds), logged when not seconds.",
    )


class DataSpec(_Frozen):
    dataset: str | None = Field(
        None,
        description="Name of a dataset card in datasets/, or a card file (*.yaml; relative to "
        "the spec).",
    )
    interactions: Path | None = Field(
        None, description="Your own interactions file (csv, parquet, arrow); relative to the spec."
    )
    users: Path | None = Field(None, description="Optional users table (one row per user).")
    items: Path | None = Field(None, description="Optional items table (one row per item).")
    columns: ColumnMap = Field(default_factory=ColumnMap)

    @field_validator("interactions", "users", "items")
    @classmethod
    def _relative_to_spec(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        """A relative path is relative to the spec file, made absolute at load: the run
        directory's copy of the spec must find the same file from any working directory."""
        base = (info.context or {}).get("base_dir")
        if path is None or path.is_absolute() or base is None:
            return path
        return (Path(base) / path).resolve()

    @field_validator("dataset")
    @classmethod
    def _card_file_relative_to_spec(cls, name: str | None, info: ValidationInfo) -> str | None:
        """A card given as a file (``my-card.yaml``) is found from the spec file, as the
        tables are; a card's name (``ml-1m``) among featrec's own."""
        base = (info.context or {}).get("base_dir")
        if name is None or base is None or not name.endswith((".yaml", ".yml")):
            return name
        if Path(name).is_absolute():
            return name
        beside = (Path(base) / name).resolve()
        # a run stored before 2026-12-01 may hold the path from the working directory
        return name if not beside.is_file() and Path(name).is_file() else str(beside)

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        # neither is allowed here: featrec.fit takes the tables as DataFrames instead (the
        # commands that read files check with require_source)
        if self.dataset is not None and self.interactions is not None:
            raise ValueError("set exactly one of data.dataset (a card) or data.interactions")
        if self.dataset is not None and (self.users or self.items):
            raise ValueError("data.users / data.items go with data.interactions, not a card")
        if self.dataset is not None and self.columns != ColumnMap():
            raise ValueError(
                "data.columns names the columns of your own files; a card (data.dataset) "
                "names its own"
            )
        return self


class FusionSpec(_Frozen):
    method: Literal["sum", "concat", "gate", "nova", "difsr"] = Field(
        "sum",
        description="Where feature embeddings enter. Token level: sum, concat or gate them "
        "with the item embedding into each token. Attention level (values carry the item "
        "embedding alone): nova adds their sum to the queries and keys of every layer "
        "(NOVA-BERT); difsr gives each feature its own attention score map, summed with the "
        "item's (DIF-SR's decoupled attention).",
    )
    user: Literal["add", "token"] = Field(
        "add", description="User features: added to every token, or one prepended user token."
    )
    token_scopes: list[Scope] = Field(
        default_factory=list,
        description="nova / difsr only: the scopes whose features are fused into the tokens "
        "(by token_method) instead of entering the queries and keys, e.g. [event]: events "
        "carried as content, item attributes steering attention.",
    )
    token_method: Literal["sum", "concat", "gate"] = Field(
        "gate", description="How features of token_scopes are fused into the tokens."
    )
    aux_weight: Float = Field(
        0.0,
        ge=0.0,
        description="DIF-SR's auxiliary loss: weight of predicting each masked item's "
        "categorical item features from its hidden state (cross-entropy; multi-hot binary "
        "cross-entropy for lists), added to the item loss. 0: off; no effect without item "
        "features.",
    )

    output_items: bool = Field(
        False,
        description="Item features also enter where items are scored: each candidate is "
        "its id embedding plus a projection of its item features, so the items of the "
        "items table that never occur in the interactions (cold items) join the catalog "
        "and are ranked by their attributes. BERT4Rec with item features only; an "
        "ablation's variants without them (behavior-only, -item, the baselines) keep the "
        "cold items in their catalog, so every variant ranks the same items.",
    )

    @model_validator(mode="after")
    def _token_scopes_with_attention(self) -> FusionSpec:
        if self.token_scopes and self.method not in ("nova", "difsr"):
            raise ValueError(
                f"fusion.token_scopes places some features in the tokens beside an "
                f"attention-level method (nova, difsr); with {self.method} every feature is "
                "in the tokens already"
            )
        if len(set(self.token_scopes)) != len(self.token_scopes):
            raise ValueError(f"fusion.token_scopes must not repeat; got {self.token_scopes}")
        return self


class ModelSpec(_Frozen):
    kind: Literal["bert4rec", "embedding_mlp", "din"] = Field(
        "bert4rec",
        description="bert4rec: the transformer with the Cloze task. embedding_mlp: the "
        "YouTube-DNN-style baseline (mean-pooled history + features → MLP → next item). "
        "din: Deep Interest Network, target attention over the history with the candidate "
        "item as the query (trains with train.loss: sampled_softmax).",
    )
    dim: Int = Field(64, gt=0, le=MAX_WIDTH)
    layers: Int = Field(2, gt=0, le=1024)
    heads: Int = Field(2, gt=0, le=MAX_WIDTH)
    max_len: Int = Field(200, gt=1, le=MAX_COUNT)
    dropout: Float = Field(0.2, ge=0.0, lt=1.0, description="Dropout on embeddings and layers.")
    init: Literal["auto", "bert", "torch"] = Field(
        "auto",
        description="Initialisation of the transformer layers. bert: truncated normal, std "
        "0.02 (as BERT and BERT4Rec). torch: as nn.TransformerEncoderLayer (Xavier-uniform "
        "attention projections, nn.Linear's default elsewhere; at dim 64 1.8-4.4x BERT's std). "
        "auto: torch under attention-level fusion (nova, difsr with features: with BERT's "
        "small weights ML-1M sat on the popularity plateau for 100+ epochs), else bert. "
        "Embeddings, fusion and the output head keep BERT's initialisation either way.",
    )
    attention_dropout: Float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Dropout on attention probabilities. Off by default: on CPU it forces "
        "the unfused attention path, about 6x slower.",
    )

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> ModelSpec:
        if self.dim % self.heads:
            raise ValueError(
                f"model.dim ({self.dim}) is not a multiple of model.heads ({self.heads})"
            )
        return self


class TrainSpec(_Frozen):
    objective: Literal["cloze", "next_item"] = Field(
        "cloze",
        description="bert4rec's task. cloze: BERT4Rec's, bidirectional attention, masked "
        "items predicted from both sides (train.mask_prob). next_item: SASRec's, causal "
        "attention, each position predicts the item after it (train.next_item_share of "
        "them); each position carries the request-known event features of the event it "
        "predicts, so a request's time still reaches the prediction.",
    )
    mask_prob: Float = Field(0.2, gt=0.0, lt=1.0)
    next_item_share: Float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="embedding_mlp, din, bert4rec with train.objective next_item: share of "
        "the positions with history that are next-item "
        "targets in a step (drawn like Cloze masks, at least one per window). 1 trains on "
        "every position, the baseline as published; less is cheaper per step but trained "
        "ML-100K's baseline to a lower validation NDCG@10 (bench/RESULTS.md).",
    )
    last_item_share: Float = Field(
        0.1, ge=0.0, le=1.0, description="Share of sequences with only the last item masked."
    )
    crop_prob: Float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of histories longer than model.max_len trained on a window drawn "
        "uniformly from all their full windows (the newest included) instead of the newest.",
    )
    loss: Literal["ce", "sampled_softmax", "gbce"] = Field(
        "ce",
        description="ce: softmax over every item at each target. sampled_softmax: over the "
        "target and train.negatives items drawn by train.sampler, shared by the batch. gbce: "
        "gSASRec's calibrated binary cross-entropy over uniform negatives (train.gbce_t).",
    )
    negatives: Int = Field(
        100,
        gt=0,
        le=MAX_COUNT,
        description="sampled_softmax, gbce: negative items drawn per training step.",
    )
    sampler: Literal["auto", "uniform", "popularity", "in_batch"] = Field(
        "auto",
        description="sampled_softmax: how the shared negatives are drawn. uniform: over the "
        "items. popularity: in proportion to each item's training events (+1). in_batch: the "
        "batch's own targets (train.negatives does not apply). The non-uniform samplers "
        "subtract log q (the item's draw probability) from every score in the loss (Yi et "
        "al. 2019), so popular items are not over-penalised. auto: popularity for "
        "sampled_softmax (uniform draws rarely meet the popular items a target competes "
        "with, and training stalled on ML-1M: bench/RESULTS.md), uniform for gbce.",
    )
    gbce_t: Float = Field(
        0.75,
        ge=0.0,
        le=1.0,
        description="gbce: calibration t (0: plain binary cross-entropy, 1: fully "
        "calibrated against the negative sampling rate).",
    )
    optimizer: Literal["auto", "adamw", "row_adamw"] = Field(
        "auto",
        description="adamw: every parameter, every step. row_adamw: AdamW on only the item "
        "rows a step uses (sparse gradients of the item embedding; needs a sampled "
        "train.loss). auto: row_adamw from 100,000 items with a sampled loss off CUDA, else "
        "adamw (on a GPU the fused dense step is faster).",
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="bf16: the training step's forward under bf16 autocast (weights, "
        "optimizer and evaluation stay fp32). For GPUs with wider models: at dim 64 the "
        "casts cost more than they save on the CPUs measured here, and it was no faster "
        "than fp32 on an H200 (bench/RESULTS.md).",
    )
    compile: bool = Field(
        False,
        description="Train with torch.compile(model.loss, dynamic=True). The first steps "
        "compile (minutes); no gain measured on CPU (bench/RESULTS.md).",
    )
    batch_size: Int = Field(128, gt=0, le=MAX_COUNT)
    lr: Float = Field(1.0e-3, gt=0.0)
    weight_decay: Float = Field(0.01, ge=0.0)
    warmup_steps: Int = Field(100, ge=0)
    grad_clip: Float = Field(5.0, gt=0.0)
    epochs: Int = Field(200, gt=0)
    patience: Int = Field(20, gt=0)
    min_epochs: Int = Field(
        50,
        ge=0,
        description="No early stop before this epoch: BERT4Rec's validation score often "
        "plateaus for tens of epochs (the model first learns popularity) before it climbs.",
    )
    eval_every: Int = Field(1, gt=0)
    seed: Int = 0
    device: str = Field(
        "auto",
        pattern=DEVICE_PATTERN,
        description="auto (the first CUDA device when torch sees one, else the CPU), cpu, "
        "cuda or cuda:N.",
    )

    @model_validator(mode="after")
    def _rows_need_a_sampled_loss(self) -> TrainSpec:
        if self.optimizer == "row_adamw" and self.loss == "ce":
            raise ValueError(
                "train.optimizer: row_adamw updates the item rows a step uses, but with "
                "train.loss: ce every row gets a gradient at every step; use adamw, or a "
                "sampled train.loss (sampled_softmax, gbce)"
            )
        return self

    @property
    def negative_sampler(self) -> str:
        """``sampler`` with ``auto`` resolved: popularity for sampled_softmax, else uniform."""
        if self.sampler != "auto":
            return self.sampler
        return "popularity" if self.loss == "sampled_softmax" else "uniform"

    @model_validator(mode="after")
    def _sampler_fits_loss(self) -> TrainSpec:
        if self.sampler in ("auto", "uniform") or self.loss == "sampled_softmax":
            return self
        if self.loss == "ce":
            raise ValueError(
                f"train.sampler: {self.sampler} draws negatives for train.loss: "
                "sampled_softmax, but train.loss is ce (every item, nothing drawn)"
            )
        raise ValueError(
            f"train.sampler: {self.sampler} with train.loss: gbce: gBCE's calibration assumes "
            "uniform negatives; use train.sampler: uniform, or train.loss: sampled_softmax"
        )


class EvalSpec(_Frozen):
    split: Literal["leave_one_out", "temporal"] = "leave_one_out"
    ks: list[Annotated[Int, Field(gt=0)]] = Field([1, 5, 10, 20], min_length=1)
    primary: str = Field(
        "ndcg@10",
        pattern=r"^(hr|ndcg|mrr)@[1-9][0-9]*$",
        description="Validation metric for early stopping and the best checkpoint, and the "
        "headline metric of ablation reports; its K must be in ks.",
    )
    exclude_seen: bool = True
    valid_quantile: Float = Field(
        0.8, gt=0.0, lt=1.0, description="temporal split: validation window starts here."
    )
    test_quantile: Float = Field(
        0.9, gt=0.0, lt=1.0, description="temporal split: test window starts here."
    )
    sampled_negatives: Int | None = Field(
        None, gt=0, description="Also report the popularity-sampled N-negative protocol."
    )
    recency_days: list[Annotated[Int, Field(gt=0)]] = Field(
        [1, 7, 30],
        description="Recency baselines reported beside most-popular: the items most "
        "interacted with in the N days before each prediction's request time (the target "
        "event's time; never later), seen items excluded. Skipped for data without clock "
        "times (a sequences card).",
    )
    cold_items: Float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Cold-start benchmark: this share of the items (drawn with seed 0) is "
        "held out of training entirely: their events are removed except where one is a "
        "user's test event; they stay in the catalog (with their attributes) as cold items, "
        "and runs report the test metrics of the users whose target is one of them. 0: off.",
    )
    max_users: Int | None = Field(
        None,
        gt=0,
        description="Evaluate (validation, test, ablation reports) a fixed sample of this "
        "many users, drawn with seed 0, instead of all: full ranking of a million users "
        "against a million items takes hours. Reported metrics are the sample's.",
    )

    @model_validator(mode="after")
    def _primary_in_ks(self) -> EvalSpec:
        k = int(self.primary.split("@")[1])
        if k not in self.ks:
            raise ValueError(
                f"eval.primary is {self.primary!r} but {k} is not in eval.ks {self.ks}: "
                f"add {k} to eval.ks or choose a primary metric at one of them"
            )
        return self

    @model_validator(mode="after")
    def _ordered_windows(self) -> EvalSpec:
        if self.valid_quantile >= self.test_quantile:
            raise ValueError(
                f"eval.valid_quantile ({self.valid_quantile}) must be below "
                f"eval.test_quantile ({self.test_quantile})"
            )
        return self


class Spec(_Frozen):
    name: Identifier
    data: DataSpec = Field(
        default_factory=DataSpec, description="Omit the files when featrec.fit gets DataFrames."
    )
    features: list[Feature] = Field(default_factory=list, description="Empty: behavior-only.")
    fusion: FusionSpec = Field(default_factory=FusionSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    _source: str = PrivateAttr("spec")

    @property
    def source(self) -> str:
        """The file the spec was loaded from, for error messages."""
        return self._source

    @field_validator("features")
    @classmethod
    def _unique_names(cls, features: list[AnyFeature]) -> list[AnyFeature]:
        first: dict[str, int] = {}
        for i, feature in enumerate(features):
            if feature.name in first:
                raise ValueError(
                    f"duplicate feature name '{feature.name}' "
                    f"(features[{first[feature.name]}] and features[{i}])"
                )
            first[feature.name] = i
        return features

    @model_validator(mode="after")
    def _trends_fit(self) -> Spec:
        for feature in self.trend_features:
            if self.model.kind != "bert4rec":
                raise ValueError(
                    f"feature {feature.name} (type {feature.type}) is scored in BERT4Rec's "
                    f"output layer; model.kind {self.model.kind} has none (use bert4rec)"
                )
            if feature.dim is not None and feature.dim != self.model.dim:
                raise ValueError(
                    f"feature {feature.name}: a trend feature ({feature.type}) is compared "
                    f"with the model's query, so its dim must be model.dim ({self.model.dim}); got "
                    f"{feature.dim} (leave it out)"
                )
        return self

    @model_validator(mode="after")
    def _objective_fits_model(self) -> Spec:
        if self.train.objective == "next_item" and self.model.kind != "bert4rec":
            raise ValueError(
                f"train.objective next_item is for model.kind bert4rec; {self.model.kind} "
                "always predicts the next item (leave train.objective out)"
            )
        return self

    @model_validator(mode="after")
    def _loss_fits_model(self) -> Spec:
        if self.model.kind == "din" and self.train.loss == "ce":
            raise ValueError(
                "model.kind din scores every candidate against the whole history, so it "
                "trains with train.loss: sampled_softmax (got ce: a full softmax per target)"
            )
        return self

    def check_output_items(self) -> None:
        """A spec written for a run (not an ablation's variant of one) refuses
        fusion.output_items where it cannot score item features."""
        if not self.fusion.output_items or self.scores_item_features:
            return
        if self.model.kind != "bert4rec":
            raise SpecError(
                f"{self.source}: fusion.output_items scores items with their features in "
                f"BERT4Rec's output layer; model.kind {self.model.kind} has its own (use "
                "bert4rec, or fusion.output_items: false)"
            )
        raise SpecError(f"{self.source}: fusion.output_items needs item features (none declared)")

    @property
    def scores_item_features(self) -> bool:
        """fusion.output_items takes effect: BERT4Rec scores candidates by their item
        features (else cold items are in the catalog with their id embeddings only)."""
        return (
            self.fusion.output_items and self.model.kind == "bert4rec"
            and bool(self.features_in("item"))
        )  # fmt: skip

    def behavior_only(self) -> Spec:
        """The same experiment with item ids only: same data, split, seed and model size."""
        return self.model_copy(update={"features": []})

    def features_in(self, scope: Scope) -> list[AnyFeature]:
        """The features of ``scope`` read from a column (trend features excluded)."""
        return [f for f in self.features if f.scope == scope and f.type not in TREND_TYPES]

    @property
    def trend_features(self) -> list[PopularityFeature | AgeFeature]:
        """Item features computed from the events as of each request (popularity, age)."""
        return [f for f in self.features if f.type in TREND_TYPES]

    @property
    def input_features(self) -> list[AnyFeature]:
        """The features read from a column: every one but the trend features."""
        return [f for f in self.features if f.type not in TREND_TYPES]

    def require_source(self) -> None:
        """A spec that reads its data itself names a card or a file."""
        if self.data.dataset is None and self.data.interactions is None:
            raise SpecError(
                f"{self.source}: data: set exactly one of data.dataset (a card) or "
                "data.interactions (your file); only featrec.fit takes DataFrames instead"
            )


# ---------------------------------------------------------------------------------------
# loading


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> Spec:
    """Read a YAML spec, apply ``a.b=c`` overrides, validate.

    Raises :class:`SpecError` whose message names the file (or the override), the field
    path and what was expected.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise SpecError(f"spec: expected a path to a YAML file; got {type(path).__name__}")
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise SpecError(f"{path}: cannot read spec file ({err.strerror or err})") from None
    return load_spec_text(decode_text(data, str(path)), str(path), path.parent, overrides)


def decode_text(data: bytes, source: str) -> str:
    """UTF-8 text, or a :class:`SpecError` naming the first bad byte and its line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise SpecError(
            f"{source}: not UTF-8 text: byte 0x{data[err.start]:02x} at line {line} "
            f"(offset {err.start}); save the file as UTF-8"
        ) from None


class _SpecLoader(yaml.SafeLoader):
    """yaml's safe loader that refuses a key given twice in one mapping (plain YAML keeps
    the last one silently: a second ``train:`` would replace the first)."""

    def construct_mapping(self, node, deep=False):  # yaml's signature
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value", key_node.start_mark
                ) from None
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    f"key '{key}' first given at line {seen[key].line + 1}",
                    None,
                    f"key '{key}' given twice in one mapping",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, source: str) -> Any:
    """``yaml`` with :class:`_SpecLoader`; any failure is one :class:`SpecError` line."""
    try:
        return yaml.load(text, Loader=_SpecLoader)  # a SafeLoader subclass: safe
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        problem = getattr(err, "problem", None) or str(err)
        raise SpecError(f"{source}: not valid YAML at {where}: {problem}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as err:
        # a tag yaml cannot construct (``!!float notanumber``, ``!!int 1e999``, ...)
        raise SpecError(f"{source}: not valid YAML: {type(err).__name__}: {err}") from None


def load_spec_text(
    text: str, source: str = "spec", base_dir: Path | None = None, overrides: Sequence[str] = ()
) -> Spec:
    """A spec from YAML text; relative data paths are relative to ``base_dir`` (default: the
    working directory). ``source`` names the text in errors."""
    base_dir = Path.cwd() if base_dir is None else base_dir
    raw = parse_yaml(text, source)
    if raw is None:
        raise SpecError(f"{source}: empty (a spec needs at least name, and data or tables to fit)")
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: expected a mapping at the top level; got {type(raw).__name__}")
    return _validate(raw, source, base_dir, overrides)


def _validate(raw: dict, source: str, base_dir: Path | None, overrides: Sequence[str]) -> Spec:
    given = overrides
    try:  # a generator is read once, here
        overrides = [] if isinstance(given, (str, bytes)) else list(given)
    except TypeError:
        overrides = []
    if isinstance(given, (str, bytes)) or not all(isinstance(o, str) for o in overrides):
        raise SpecError(
            f"overrides: expected a list of KEY=VALUE strings, e.g. ['train.epochs=5']; "
            f"got {given!r}"[:300]
        )
    applied = [apply_override(raw, text_) for text_ in overrides]
    try:
        spec = Spec.model_validate(raw, context={"base_dir": base_dir})
    except ValidationError as err:
        raise SpecError(format_validation_error(err, source, applied)) from None
    spec._source = source
    return spec


def with_overrides(spec: Spec, overrides: Sequence[str]) -> Spec:
    """``spec`` with ``a.b=c`` overrides applied and validated again."""
    if not overrides:
        return spec
    return _validate(spec.model_dump(mode="json"), spec.source, None, overrides)


# Fields that say where a run executes, not what it computes: a run started on a GPU
# resumes on a CPU (and an ablation mixes pairs trained on either) as the same run.
PLACEMENT_FIELDS = frozenset({"train.device"})


def spec_differences(stored: Any, given: Spec, limit: int = 5) -> list[str]:
    """Where ``given`` differs from a stored spec (a raw YAML mapping, or a Spec):
    ``"train.epochs: 200 → 300"`` per field, at most ``limit`` (then a count of the rest).

    A spec stored before a field was added compares with that field's default; one that is
    no valid spec any more differs as a whole. ``PLACEMENT_FIELDS`` are not compared.
    """
    if not isinstance(stored, Spec):
        try:
            stored = Spec.model_validate(stored)
        except (ValueError, TypeError):
            return ["the stored spec is not a valid spec any more"]
    old, new = _flatten(stored.model_dump(mode="json")), _flatten(given.model_dump(mode="json"))
    # what a run draws from, not how it was written: a spec stored before train.sampler's
    # `auto` wrote `uniform`, which a ce or gbce spec still resolves to
    old["train.sampler"] = stored.train.negative_sampler
    new["train.sampler"] = given.train.negative_sampler

    def shown(values: dict[str, Any], key: str) -> str:
        return repr(values[key]) if key in values else "(none)"

    changed = [
        f"{key}: {shown(old, key)} → {shown(new, key)}"
        for key in sorted((old.keys() | new.keys()) - PLACEMENT_FIELDS)
        if key not in old or key not in new or old[key] != new[key]
    ]
    if len(changed) > limit:
        changed = [*changed[:limit], f"{len(changed) - limit} more"]
    return changed


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts → ``{"a.b": value}``; lists (of features) by index: ``features.0.name``."""
    if isinstance(node, dict):
        items = node.items()
    elif isinstance(node, list) and node and all(isinstance(v, dict) for v in node):
        items = ((str(i), v) for i, v in enumerate(node))
    else:
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in items:
        out |= _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def apply_override(raw: dict, text: str) -> tuple[tuple[str | int, ...], str]:
    """Set ``a.b=c`` (or ``features.NAME.key=v``, ``features[0].key=v``) in ``raw``.

    Scalars stay strings and pydantic converts them to the field's type; values starting
    with ``[`` or ``{`` are parsed as YAML; ``null`` / ``~`` mean None. Returns the
    normalized path and the override's text, for error messages.
    """
    key, sep, value_text = text.partition("=")
    if not sep or not key.strip():
        raise SpecError(f"--set {text!r}: expected KEY=VALUE, e.g. train.epochs=5")
    if ":" in key:
        raise SpecError(
            f"--set {text}: VARIANT:KEY=VALUE sets one variant of featrec ablate; "
            "elsewhere give KEY=VALUE"
        )
    tokens = _path_tokens(key.strip(), text)
    value = _parse_value(value_text.strip(), text)
    node: Any = raw
    resolved: list[str | int] = []
    for depth, token in enumerate(tokens):
        last = depth == len(tokens) - 1
        where = ".".join(map(str, resolved)) or "the spec"
        if isinstance(node, list):
            index = _list_index(node, token, text, where)
            resolved.append(index)
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            resolved.append(token)
            if last:
                node[token] = value
            else:
                node = node.setdefault(token, {})
        else:
            raise SpecError(
                f"--set {text}: {where} is a {type(node).__name__} ({node!r}), not a section"
            )
    return tuple(resolved), text


def _path_tokens(key: str, text: str) -> list[str]:
    tokens: list[str] = []
    for part in key.replace("[", ".").replace("]", "").split("."):
        if not part:
            raise SpecError(f"--set {text!r}: empty field name in '{key}'")
        tokens.append(part)
    return tokens


def _list_index(node: list, token: str, text: str, where: str) -> int:
    if token.isdigit():
        index = int(token)
        if index >= len(node):
            raise SpecError(f"--set {text}: {where} has {len(node)} entries; no index {index}")
        return index
    names = [entry.get("name") for entry in node if isinstance(entry, dict)]
    if token in names:
        return names.index(token)
    raise SpecError(
        f"--set {text}: {where} has no entry named '{token}' "
        f"(names: {', '.join(map(str, names)) or 'none'}; or use an index)"
    )


def _parse_value(value_text: str, text: str) -> Any:
    if value_text in ("null", "~", "None"):
        return None
    if value_text[:1] in ("[", "{"):
        return parse_yaml(value_text, f"--set {text!r}")
    return value_text


# ---------------------------------------------------------------------------------------
# error messages


def format_validation_error(
    err: ValidationError, source: str, overrides: Sequence[tuple[tuple[str | int, ...], str]] = ()
) -> str:
    """One readable line per problem: ``source: field.path: expected ...; got ...``."""
    lines = []
    for problem in err.errors():
        loc = _display_loc(problem["loc"])
        origin = source
        for path, text in overrides:
            if tuple(loc[: len(path)]) == path:
                origin = f"--set {text}"
        field = _format_loc(loc)
        lines.append(f"{origin}: {field}: {_describe(problem, loc)}")
    return " | ".join(lines)


def _display_loc(loc: tuple) -> tuple:
    """Drop the discriminator tag pydantic inserts after a list index (features[2].numeric)."""
    out: list = []
    for part in loc:
        if out and isinstance(out[-1], int) and part in FEATURE_MODELS:
            continue
        out.append(part)
    return tuple(out)


def _format_loc(loc: Sequence[str | int]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _describe(problem: dict, loc: tuple) -> str:
    kind, ctx, value = problem["type"], problem.get("ctx", {}), problem.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(problem["loc"][:-1])  # with the feature type tag, if any
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
        return f"unknown key (allowed: {', '.join(allowed)}){suggestion}"
    if kind == "missing":
        return "required field is missing"
    if kind == "literal_error":
        return f"expected one of {ctx['expected']}; got {value!r}"
    if kind == "union_tag_invalid":
        return f"type: expected one of {ctx['expected_tags']}; got {ctx['tag']!r}"
    if kind == "union_tag_not_found":
        return f"missing key 'type' (one of {', '.join(map(repr, FEATURE_MODELS))})"
    if kind in ("string_too_short", "too_short"):
        least = ctx.get("min_length", 1)
        unit = "character" if kind == "string_too_short" else "entry"
        many = unit if least == 1 else ("characters" if unit == "character" else "entries")
        return f"expected at least {least} {many}; got {value!r}"
    if kind == "string_pattern_mismatch" and loc and loc[-1] == "name":
        return (
            "expected letters, digits, '_' and '-', starting with a letter or '_' "
            f"(it names files and folders); got {value!r}"
        )
    if kind == "string_too_long":
        return f"expected at most {ctx.get('max_length')} characters; got {len(value)}"
    if kind == "string_pattern_mismatch" and loc and loc[-1] == "device":
        return f"expected auto, cpu, cuda or cuda:N; got {value!r}"
    if kind == "string_pattern_mismatch" and loc and loc[-1] == "primary":
        return f"expected hr@K, ndcg@K or mrr@K (lower case); got {value!r}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping (key: value entries); got {value!r}"
    message = problem["msg"].removeprefix("Value error, ")
    message = message.replace("Input should be", "expected").replace("Input", "value")
    if isinstance(value, (str, int, float, bool)) and kind != "value_error":
        message += f"; got {value!r}"
    return message


def _allowed_keys(loc: Sequence[str | int]) -> list[str]:
    """Field names of the model at ``loc`` in the spec (for 'unknown key' messages)."""
    model: type[BaseModel] | None = Spec
    for part in loc:
        if isinstance(part, int):
            continue
        if part in FEATURE_MODELS:
            model = FEATURE_MODELS[part]
            continue
        field = model.model_fields.get(part) if model else None
        model = _model_in(field.annotation) if field else None
    if model is None:
        return []
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The one pydantic model inside an annotation (``FusionSpec``, ``list[X]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    found = {m for arg in typing.get_args(annotation) if (m := _model_in(arg)) is not None}
    return found.pop() if len(found) == 1 else None


def json_schema() -> dict[str, Any]:
    """JSON Schema of the spec file, for editor autocompletion."""
    schema = Spec.model_json_schema()
    schema["title"] = "featrec spec"
    return schema

"""One embedding module per declared feature (configs are data, turned into modules).

Shape letters: B batch, L length, K list width, D the feature's width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from featrec.encoders import Encoder, MultiCategoricalEncoder, StandardEncoder, TimeEncoder
from featrec.ids import PAD
from featrec.spec import Spec

ColumnKind = Literal["ids", "list", "float"]


@dataclass(frozen=True)
class ColumnConfig:
    """One encoded column: ``name`` names it in the batch's ``event`` or ``user`` columns
    (``time.hour``, ``age``) or, for item features, in the model's item tables."""

    name: str
    kind: ColumnKind
    cardinality: int  # 0 for float columns


@dataclass(frozen=True)
class FeatureConfig:
    name: str
    scope: str
    columns: tuple[ColumnConfig, ...]
    dim: int


def feature_configs(spec: Spec, encoders: dict[str, Encoder]) -> list[FeatureConfig]:
    """Embedding configs for the spec's features, in sorted-name order."""
    configs = []
    for feature in sorted(spec.input_features, key=lambda f: f.name):
        encoder = encoders[feature.name]
        if isinstance(encoder, TimeEncoder):
            columns = tuple(
                ColumnConfig(f"{feature.name}.{part}", "ids", size)
                for part, size in encoder.cardinalities.items()
            )
        elif isinstance(encoder, StandardEncoder):
            columns = (ColumnConfig(feature.name, "float", 0),)
        else:
            kind: ColumnKind = "list" if isinstance(encoder, MultiCategoricalEncoder) else "ids"
            columns = (ColumnConfig(feature.name, kind, encoder.cardinality),)
        dim = feature.dim or spec.model.dim
        configs.append(FeatureConfig(feature.name, feature.scope, columns, dim))
    return configs


# what an nn.ModuleDict instance holds itself: methods, and attributes such as "training"
_MODULE_DICT_NAMES = frozenset(dir(nn.ModuleDict()))


class NamedModules(nn.ModuleDict):
    """An ``nn.ModuleDict`` keyed by feature names, any of them: a name ModuleDict itself
    uses ("type", "train", "keys", ...) would raise at construction, so it is stored (and
    saved in state dicts) as ``name@``; no feature name holds an ``@``. Lookups, ``in``,
    iteration and ``items()`` use the feature names."""

    @staticmethod
    def _key(name: str) -> str:
        return f"{name}@" if name in _MODULE_DICT_NAMES else name

    def __getitem__(self, name: str) -> nn.Module:
        return super().__getitem__(self._key(name))

    def __setitem__(self, name: str, module: nn.Module) -> None:
        super().__setitem__(self._key(name), module)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(self._key(name))

    def __iter__(self):
        return (key.removesuffix("@") for key in super().__iter__())

    def keys(self):
        return list(iter(self))

    def items(self):
        return [(key.removesuffix("@"), module) for key, module in super().items()]


class FeatureEmbedding(nn.Module):
    """Embeds one feature's columns and sums them: ids → table, lists → mean of the
    non-PAD entries' embeddings, floats → linear projection. Output (..., D)."""

    def __init__(self, config: FeatureConfig) -> None:
        super().__init__()
        self.config = config
        self.parts = nn.ModuleList(
            nn.Linear(1, config.dim)
            if column.kind == "float"
            else nn.Embedding(column.cardinality, config.dim, padding_idx=PAD)
            for column in config.columns
        )
        # several id columns (a time feature's parts) are looked up in one go: their tables
        # joined, each column's ids shifted by the rows before its table (PAD stays PAD)
        self.summed_ids = len(config.columns) > 1 and all(c.kind == "ids" for c in config.columns)
        if self.summed_ids:
            sizes = [column.cardinality for column in config.columns]
            shifts = torch.tensor([sum(sizes[:i]) for i in range(len(sizes))])
            self.register_buffer("shifts", shifts, persistent=False)

    def forward(self, values: list[torch.Tensor]) -> torch.Tensor:
        if self.summed_ids:
            return self._summed_ids(values)
        out = None
        for column, part, value in zip(self.config.columns, self.parts, values, strict=True):
            if column.kind == "float":
                embedded = part(value.unsqueeze(-1))  # (..., D)
            elif column.kind == "list":
                present = (value != PAD).unsqueeze(-1)  # (..., K, 1)
                summed = (part(value) * present).sum(dim=-2)  # (..., D)
                embedded = summed / present.sum(dim=-2).clamp(min=1)
            else:
                embedded = part(value)  # (..., D)
            out = embedded if out is None else out + embedded
        return out

    def _summed_ids(self, values: list[torch.Tensor]) -> torch.Tensor:
        """The sum of the id columns' embeddings by one ``embedding_bag`` over the joined
        tables, instead of a lookup and an add per column. A PAD id of any column points at
        the first table's PAD row, which ``padding_idx`` leaves out of the sum and the
        gradient, as each table's own padding row would be (zero, never trained)."""
        ids = torch.stack(values, dim=-1)  # (..., C)
        ids = torch.where(ids == PAD, PAD, ids + self.shifts)
        joined = torch.cat([part.weight for part in self.parts])  # (sum of cardinalities, D)
        summed = F.embedding_bag(
            ids.reshape(-1, ids.shape[-1]), joined, mode="sum", padding_idx=PAD
        )
        return summed.view(*ids.shape[:-1], joined.shape[-1])  # (..., D)

"""Fusion: combine the item embedding with the feature embeddings of each token.

Sources arrive as an ordered dict ``{"item": ..., <feature>: ..., ...}`` (item first, then
features in sorted-name order), each one of:

- (B, L, D_s): one row per token (event features; item-level sources when few tokens);
- (B, 1, D_s): one row per sequence (user features), broadcast over the sequence: no module
  ever materializes them per token;
- (I, D_s): one row per item id (item-level sources: the item embedding and item features
  are functions of the item id), looked up at ``items`` (B, L). Whatever the fusion computes
  from a source alone (its projection, its share of a linear map) is then computed once per
  item instead of once per token, and all item-level results are looked up together.

Every module returns the fused tokens (B, L, D) and, where it learns them, per-source
weights (B, L, S) for reporting.

A linear map of a concatenation equals the sum of per-source linear maps,
``W [s_1; ...; s_S] = sum_i W_i s_i``; ``concat`` and ``gate`` are computed that way, so
broadcast sources stay (B, 1, ·), item-level ones (I, ·), and nothing is concatenated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from featrec.ids import PAD
from featrec.model.embeddings import NamedModules


def _projections(dims: dict[str, int], dim: int) -> NamedModules:
    """Project sources whose width differs from the model's; others pass through."""
    return NamedModules({name: nn.Linear(d, dim) for name, d in dims.items() if d != dim})


def _per_item(source: torch.Tensor) -> bool:
    return source.dim() == 2  # (I, D_s); per-token and per-sequence sources are 3-D


def _look_up(items: torch.Tensor | None, tables: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-item tables (I, W_j) → per-token (B, L, W_j) in one lookup, whose backward sums
    every table's gradients per item in one pass; PAD slots pass no gradient."""
    if items is None:
        raise ValueError("per-item (I, D) sources need the item ids of the tokens")
    joined = torch.cat(tables, dim=-1) if len(tables) > 1 else tables[0]
    looked_up = F.embedding(items, joined, padding_idx=PAD)  # (B, L, sum of W_j)
    return list(torch.split(looked_up, [t.shape[-1] for t in tables], dim=-1))


def _blockwise(
    linear: nn.Linear, sources: list[torch.Tensor], items: torch.Tensor | None
) -> torch.Tensor:
    """``linear(cat(sources, -1))`` per token without the concatenation: broadcasts
    (B, 1, ·) sources; maps (I, ·) sources per item, sums those and looks the sum up."""
    blocks = torch.split(linear.weight, [s.shape[-1] for s in sources], dim=1)
    per_item = [F.linear(s, b) for b, s in zip(blocks, sources, strict=True) if _per_item(s)]
    out = _look_up(items, [sum(per_item)])[0] + linear.bias if per_item else linear.bias
    for block, source in zip(blocks, sources, strict=True):
        if not _per_item(source):
            out = out + F.linear(source, block)
    return out


class SumFusion(nn.Module):
    def __init__(self, dims: dict[str, int], dim: int) -> None:
        super().__init__()
        self.project = _projections(dims, dim)

    def forward(
        self, sources: dict[str, torch.Tensor], items: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, None]:
        values = [self.project[n](v) if n in self.project else v for n, v in sources.items()]
        per_item = [v for v in values if _per_item(v)]
        fused = _look_up(items, [sum(per_item)])[0] if per_item else None
        for value in values:
            if not _per_item(value):
                fused = value if fused is None else fused + value
        return fused, None


class ConcatFusion(nn.Module):
    """Concatenate all sources, then one linear layer to the model width."""

    def __init__(self, dims: dict[str, int], dim: int) -> None:
        super().__init__()
        self.dims = dict(dims)
        self.linear = nn.Linear(sum(dims.values()), dim)

    def forward(
        self, sources: dict[str, torch.Tensor], items: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, None]:
        return _blockwise(self.linear, list(sources.values()), items), None

    def source_weights(self) -> dict[str, float]:
        """Each source's share of the projection's weight norm (what the layer leans on)."""
        blocks = torch.split(self.linear.weight.detach(), list(self.dims.values()), dim=1)
        norms = torch.stack([block.norm() for block in blocks])
        return dict(zip(self.dims, (norms / norms.sum()).tolist(), strict=True))


class GateFusion(nn.Module):
    """Learned, input-dependent weights over the sources: softmax(W [s_1; ...; s_S])."""

    def __init__(self, dims: dict[str, int], dim: int) -> None:
        super().__init__()
        self.project = _projections(dims, dim)
        self.gate = nn.Linear(dim * len(dims), len(dims))

    def forward(
        self, sources: dict[str, torch.Tensor], items: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        values = [self.project[n](v) if n in self.project else v for n, v in sources.items()]
        blocks = torch.split(self.gate.weight, [v.shape[-1] for v in values], dim=1)
        logits = self.gate.bias
        per_item = [i for i, v in enumerate(values) if _per_item(v)]
        if per_item:
            # item-level sources and their share of the gate logits, per item, looked up at once
            shares = sum(F.linear(values[i], blocks[i]) for i in per_item)  # (I, S)
            *looked_up, share = _look_up(items, [values[i] for i in per_item] + [shares])
            logits = logits + share  # (B, L, S)
            for i, value in zip(per_item, looked_up, strict=True):
                values[i] = value  # (B, L, D)
        for i, (block, value) in enumerate(zip(blocks, values, strict=True)):
            if i not in per_item:
                logits = logits + F.linear(value, block)
        weights = torch.softmax(logits, dim=-1)  # (B, L, S)
        # scaled by S so that equal weights give the plain sum's magnitude (scaling the
        # weights, not the (B, L, D) sum: one pass less forward and backward)
        scaled = weights * len(values)
        # the item source is (B, L, D), so the sum starts full-sized; accumulated in place
        # (autograd-safe: no product needs the running sum), one (B, L, D) buffer in all
        fused = scaled[..., :1] * values[0]
        for i, value in enumerate(values[1:], start=1):
            fused.addcmul_(scaled[..., i : i + 1], value)  # (B, L, 1) x (B, L or 1, D)
        return fused, weights  # (B, L, D)


FUSIONS = {"sum": SumFusion, "concat": ConcatFusion, "gate": GateFusion}
# attention level: the features shape attention scores in the encoder layers
# (featrec.model.bert4rec.EncoderLayer); the tokens carry the item embedding alone
ATTENTION_FUSIONS = ("nova", "difsr")

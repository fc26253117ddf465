"""Fusion: combine the item embedding with the feature embeddings of each token.

Sources arrive as an ordered dict ``{"item": (B, L, D), <feature>: (B, L, D_f) or
(B, 1, D_f), ...}`` (item first, then features in sorted-name order). User features come as
(B, 1, D_f) and broadcast over the sequence: no module ever materializes them per token.
Every module returns the fused tokens (B, L, D) and, where it learns them, per-source
weights (B, L, S) for reporting.

A linear map of a concatenation equals the sum of per-source linear maps,
``W [s_1; ...; s_S] = sum_i W_i s_i``; ``concat`` and ``gate`` are computed that way, so
broadcast sources stay (B, 1, ·) and nothing is concatenated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _projections(dims: dict[str, int], dim: int) -> nn.ModuleDict:
    """Project sources whose width differs from the model's; others pass through."""
    return nn.ModuleDict({name: nn.Linear(d, dim) for name, d in dims.items() if d != dim})


def _blockwise(linear: nn.Linear, sources: list[torch.Tensor]) -> torch.Tensor:
    """``linear(cat(sources, -1))`` without the concatenation; broadcasts (B, 1, ·) sources."""
    blocks = torch.split(linear.weight, [s.shape[-1] for s in sources], dim=1)
    out = linear.bias
    for block, source in zip(blocks, sources, strict=True):
        out = out + F.linear(source, block)
    return out


class SumFusion(nn.Module):
    def __init__(self, dims: dict[str, int], dim: int) -> None:
        super().__init__()
        self.project = _projections(dims, dim)

    def forward(self, sources: dict[str, torch.Tensor]) -> tuple[torch.Tensor, None]:
        fused = None
        for name, value in sources.items():
            value = self.project[name](value) if name in self.project else value
            fused = value if fused is None else fused + value
        return fused, None


class ConcatFusion(nn.Module):
    """Concatenate all sources, then one linear layer to the model width."""

    def __init__(self, dims: dict[str, int], dim: int) -> None:
        super().__init__()
        self.dims = dict(dims)
        self.linear = nn.Linear(sum(dims.values()), dim)

    def forward(self, sources: dict[str, torch.Tensor]) -> tuple[torch.Tensor, None]:
        return _blockwise(self.linear, list(sources.values())), None

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

    def forward(self, sources: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        values = [self.project[n](v) if n in self.project else v for n, v in sources.items()]
        weights = torch.softmax(_blockwise(self.gate, values), dim=-1)  # (B, L, S)
        # the item source is (B, L, D), so the sum starts full-sized; accumulated in place
        # (autograd-safe: no product needs the running sum), one (B, L, D) buffer in all
        fused = weights[..., :1] * values[0]
        for i, value in enumerate(values[1:], start=1):
            fused.addcmul_(weights[..., i : i + 1], value)  # (B, L, 1) x (B, L or 1, D)
        # scaled by S so that equal weights give the plain sum's magnitude
        return fused.mul_(len(values)), weights  # (B, L, D)


FUSIONS = {"sum": SumFusion, "concat": ConcatFusion, "gate": GateFusion}

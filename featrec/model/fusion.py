"""Fusion: combine the item embedding with the feature embeddings of each token.

Sources arrive as an ordered dict ``{"item": (B, L, D), <feature>: (B, L, D_f), ...}``
(item first, then features in sorted-name order); every module returns the fused tokens
(B, L, D) and, where it learns them, per-source weights (B, L, S) for reporting.
"""

from __future__ import annotations

import torch
from torch import nn


def _projections(dims: dict[str, int], dim: int) -> nn.ModuleDict:
    """Project sources whose width differs from the model's; others pass through."""
    return nn.ModuleDict({name: nn.Linear(d, dim) for name, d in dims.items() if d != dim})


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
        return self.linear(torch.cat(list(sources.values()), dim=-1)), None

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
        stacked = torch.stack(values, dim=-2)  # (B, L, S, D)
        weights = torch.softmax(self.gate(torch.cat(values, dim=-1)), dim=-1)  # (B, L, S)
        # scaled by S so that equal weights give the plain sum's magnitude
        fused = (weights.unsqueeze(-1) * stacked).sum(dim=-2) * len(values)  # (B, L, D)
        return fused, weights


FUSIONS = {"sum": SumFusion, "concat": ConcatFusion, "gate": GateFusion}

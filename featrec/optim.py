"""Optimizers: AdamW, and for large catalogs trained with sampled losses an AdamW that only
touches the item rows a step used (``train.optimizer``, docs/reference.md).

With ``sampled_softmax`` or ``gbce`` a step reads a few thousand rows of the item table: the
history's items, the targets and the negatives. Dense AdamW still reads and writes every row
and both of its moment tables at every step (a million items at 64 dimensions: ~770 MB of
traffic per step). Under ``row_adamw`` the item embedding returns sparse gradients and
:class:`RowAdamW` updates the rows in them, AdamW's arithmetic row by row (decoupled weight
decay and bias correction by the global step, as lazy Adam in TensorFlow Addons): rows
touched at every step get exactly dense AdamW's values; a row left out of a step keeps its
value and moments instead of drifting on its old momentum and decaying.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import torch
from torch import nn

log = logging.getLogger(__name__)

# train.optimizer: auto updates rows only from this many items on, with a sampled loss, and
# off CUDA: on an H200 fused dense AdamW over a 1M-row table stepped 1.6x faster than the
# row updates' gathers and scatters (bench/RESULTS.md); on the CPU rows win 5.9x
ROW_UPDATE_ITEMS = 100_000


def row_updates(spec, num_items: int, device: torch.device | None = None) -> bool:
    """Whether ``train.optimizer`` (``auto`` decided by the catalog and the device the
    model is on) asks for row updates."""
    choice = spec.train.optimizer
    if choice == "auto":
        on_cuda = device is not None and device.type == "cuda"
        return spec.train.loss != "ce" and num_items >= ROW_UPDATE_ITEMS and not on_cuda
    return choice == "row_adamw"


def optimizer_kind(optimizer: torch.optim.Optimizer | dict) -> str:
    """``row_adamw`` or ``adamw``: of an optimizer, or of its saved state dict (fused AdamW
    records ``fused`` in its groups; RowAdamW does not)."""
    if isinstance(optimizer, dict):
        return "adamw" if "fused" in optimizer["param_groups"][0] else "row_adamw"
    return "row_adamw" if isinstance(optimizer, RowAdamW) else "adamw"


def build_optimizer(
    model: nn.Module, spec, num_items: int, rows: bool | None = None
) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices (not on biases and norms), fused; or
    :class:`RowAdamW` with the item embedding's gradients sparse. ``rows`` overrides
    ``train.optimizer`` (a resumed run keeps the kind it started with)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        (no_decay if parameter.ndim < 2 or "norm" in name else decay).append(parameter)
    groups = [
        {"params": decay, "weight_decay": spec.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if rows is None:
        rows = row_updates(spec, num_items, next(model.parameters()).device)
    if hasattr(model, "item_embedding"):
        model.item_embedding.sparse = rows  # F.embedding reads it at every call
    if rows:
        log.info("optimizer: AdamW on the item rows each step uses (%s items)", f"{num_items:,}")
        return RowAdamW(groups, lr=spec.train.lr)
    return torch.optim.AdamW(groups, lr=spec.train.lr, fused=True)  # one kernel, CPU or GPU


class RowAdamW(torch.optim.Optimizer):
    """AdamW; a parameter whose gradient is sparse (an embedding with ``sparse=True``) is
    updated in the rows the gradient holds only."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ) -> None:
        super().__init__(
            params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        )

    @torch.no_grad()
    def step(self, closure=None):  # torch's signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, decay = (
                group["lr"], group["betas"], group["eps"], group["weight_decay"],
            )  # fmt: skip
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                step = float(state["step"])
                size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                if p.grad.is_sparse:
                    grad = p.grad.coalesce()
                    rows, values = grad.indices()[0], grad.values()
                    m_rows = m[rows].mul_(beta1).add_(values, alpha=1 - beta1)
                    v_rows = v[rows].mul_(beta2).addcmul_(values, values, value=1 - beta2)
                    m[rows], v[rows] = m_rows, v_rows
                    denom = v_rows.sqrt().add_(eps * math.sqrt(1 - beta2**step))
                    p[rows] = p[rows].mul_(1 - lr * decay).addcdiv_(m_rows, denom, value=-size)
                    continue
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                denom = v.sqrt().add_(eps * math.sqrt(1 - beta2**step))
                p.mul_(1 - lr * decay).addcdiv_(m, denom, value=-size)
        return loss


def clip_gradients(parameters: Iterable[nn.Parameter], max_norm: float) -> None:
    """Scale every gradient so their joint norm is at most ``max_norm``, sparse ones
    included (``clip_grad_norm_`` refuses those)."""
    parameters = [p for p in parameters if p.grad is not None]
    if not any(p.grad.is_sparse for p in parameters):
        torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        return
    squares = []
    for p in parameters:
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()  # duplicate rows summed, so the norm is the true one
            squares.append(p.grad.values().pow(2).sum())
        else:
            squares.append(p.grad.pow(2).sum())
    total = torch.stack(squares).sum().sqrt()
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p in parameters:
        p.grad.mul_(scale)

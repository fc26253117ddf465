"""Data-parallel training on ``torch.distributed`` (docs/design.md §10).

``torchrun --nproc-per-node N -m featrec train SPEC ...`` (or ``featrec train SPEC --nproc
N``) starts N processes; :func:`setup` joins them into one process group (``gloo`` on the CPU,
``nccl`` on CUDA, each rank on the GPU ``LOCAL_RANK``). Every rank draws the same global batch
from the same generator and trains on its contiguous share of its rows; the loss of a share
is scaled by its part of the batch's labelled positions, so the gradients
``DistributedDataParallel`` averages are exactly those of the whole batch on one process.
Evaluation ranks each rank's share of the users and gathers the ranks, so every rank
computes the same metrics as one process would. Rank 0 alone writes the run directory.
"""

from __future__ import annotations

import atexit
import logging
import os
import warnings

import torch
import torch.distributed as dist
from torch import nn

log = logging.getLogger(__name__)


def launched() -> bool:
    """Whether torchrun (or an equivalent launcher) started this process: as one of several,
    or as the one process of a group of one (``torchrun --nproc-per-node 1``, which then
    trains through DistributedDataParallel and the backend, NCCL included, as N would)."""
    if "WORLD_SIZE" in os.environ and "TORCHELASTIC_RUN_ID" in os.environ:
        return True
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: torch.device) -> torch.device:
    """Join the process group when launched as one of several; returns the device this rank
    trains on (its own GPU under CUDA)."""
    if not launched() or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    # gather() and the metric states are CPU tensors: gloo carries them beside NCCL
    dist.init_process_group(backend="cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
    # destroyed before the interpreter exits: a group torn down with the process can abort it
    # ("terminate called without an active exception"), and torchrun then reports a rank
    # that finished its work as failed
    atexit.register(_leave)
    if rank():
        logging.getLogger("featrec").setLevel(logging.WARNING)  # rank 0 speaks for the run
    return device


def joined() -> bool:
    """Whether this process is in a process group (torchrun started it, a group of one
    included): then the step runs under DistributedDataParallel."""
    return dist.is_initialized()


def _leave() -> None:
    if joined():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def share(count: int) -> torch.Tensor:
    """This rank's rows of a batch of ``count``: a contiguous share; all of them where a
    share would be empty (a batch smaller than the world: every rank then computes the
    same whole-batch gradient, which averaging leaves as it is)."""
    if size() == 1 or count < size():
        return torch.arange(count)
    return torch.tensor_split(torch.arange(count), size())[rank()]


def gather(values: torch.Tensor) -> torch.Tensor:
    """Every rank's 1-d ``values`` (CPU), concatenated in rank order, on every rank."""
    if size() == 1:
        return values
    lengths = [torch.zeros(1, dtype=torch.long) for _ in range(size())]
    dist.all_gather(lengths, torch.tensor([len(values)]))
    longest = int(max(length.item() for length in lengths))
    padded = torch.zeros(longest, dtype=values.dtype)
    padded[: len(values)] = values
    parts = [torch.zeros(longest, dtype=values.dtype) for _ in range(size())]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(n.item())] for part, n in zip(parts, lengths, strict=True)])


class LossModule(nn.Module):
    """The model's training loss as a forward pass, so ``DistributedDataParallel``'s hooks
    see every parameter the loss uses."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch, labels: torch.Tensor) -> torch.Tensor:
        return self.model.loss(batch, labels)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The module a training step calls: the loss, under ``DistributedDataParallel`` when
    this process is in a process group."""
    module = LossModule(model)
    if not joined():
        return module
    ids = [device.index] if device.type == "cuda" else None
    # some parameters sit out a step (a feature absent from a share's rows): tolerated; the
    # buffers (item feature tables) never change, so they are not sent again every step
    with warnings.catch_warnings():
        # torch 2.13 deprecates broadcast_buffers for forward_sync_buffers, whose False still
        # syncs at construction; the old flag keeps the tables rank-local until a successor
        # (init_sync_buffers) exists: not the user's concern, so not in their log
        warnings.filterwarnings("ignore", ".*broadcast_buffers", FutureWarning)
        return nn.parallel.DistributedDataParallel(
            module, device_ids=ids, find_unused_parameters=True, broadcast_buffers=False
        )

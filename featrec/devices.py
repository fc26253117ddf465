"""Where the model runs: ``train.device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) → a
``torch.device`` that exists here, and batches moved to it.

Batches are built on the CPU (index arithmetic over the flat sequence tensors) and moved
whole to the model's device; everything the model returns stays there until a caller needs
plain numbers.
"""

from __future__ import annotations

import re

import torch

from featrec.errors import FeatrecError
from featrec.spec import DEVICE_PATTERN


def resolve_device(name: str | torch.device | None, field: str = "train.device") -> torch.device:
    """``auto`` (or None): the first CUDA device when torch sees one, else the CPU. A CUDA
    device that is not there is an error naming ``field``, not a crash at the first step."""
    if isinstance(name, torch.device):
        name = str(name)
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.match(DEVICE_PATTERN, name):
        raise FeatrecError(f"{field}: expected auto, cpu, cuda or cuda:N; got {name!r}")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"this torch ({torch.__version__}) " + (
                "is built without CUDA" if torch.version.cuda is None else "finds no CUDA device"
            )
            raise FeatrecError(f"{field}: {name} asked for, but {build}; use cpu or auto")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise FeatrecError(
                f"{field}: {name} asked for, but torch sees {count} CUDA device(s) "
                f"(cuda:0 to cuda:{count - 1})"
            )
    return device


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device

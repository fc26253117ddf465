"""Tensors as flat files in the prepared-data cache, mapped back without copies.

``write_tensors`` writes each tensor as its raw bytes (``NAME.bin``) and their dtypes and
shapes in ``tensors.json``; ``read_tensors`` maps each file copy-on-write
(``torch.from_file(shared=False)``): nothing is read until used, the pages come from the
page cache, and processes that map the same files (ranks of one machine, ablation jobs)
share one copy of them until one writes (none does).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

INDEX = "tensors.json"


def write_tensors(directory: Path, tensors: dict[str, torch.Tensor]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    index = {}
    for number, (name, tensor) in enumerate(tensors.items()):
        file = f"{number}.bin"
        tensor.contiguous().numpy().tofile(directory / file)
        index[name] = {"file": file, "dtype": str(tensor.dtype).removeprefix("torch."),
                       "shape": list(tensor.shape)}  # fmt: skip
    (directory / INDEX).write_text(json.dumps(index, indent=1), encoding="utf-8")


def read_tensors(directory: Path) -> dict[str, torch.Tensor]:
    index = json.loads((directory / INDEX).read_text(encoding="utf-8"))
    out = {}
    for name, entry in index.items():
        dtype, shape = getattr(torch, entry["dtype"]), entry["shape"]
        size = 1
        for dim in shape:
            size *= dim
        if size == 0:
            out[name] = torch.empty(shape, dtype=dtype)
            continue
        path = str(directory / entry["file"])
        out[name] = torch.from_file(path, shared=False, size=size, dtype=dtype).view(shape)
    return out

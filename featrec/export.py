"""Export a trained run: a ``torch.export`` program that scores encoded inputs, plus the
encoders and vocabularies as plain files, so serving needs neither featrec's training code
nor the data.

Folder written by :func:`export_run`::

    model.pt2            torch.export program: inputs (in inputs.json order) → (B, I) scores
                         of the last position of each (left-padded) window; with
                         ``--top-k K``: its K best items (values, item indices)
    inputs.json          input names, dtypes and shapes; reserved ids; item id ↔ index
    encoders.json        the fitted encoders (featrec.encoders format, plain JSON)
    spec.yaml, item_popularity.json
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from featrec import ranking
from featrec.batching import Batch, event_column_kinds, request_batch
from featrec.errors import FeatrecError
from featrec.ids import MASK, MISSING, N_RESERVED, OOV, PAD
from featrec.model import feature_configs
from featrec.ranking import best_by_score_then_id, score_then_id_keys
from featrec.recommend import Recommender
from featrec.train import warn_if_unfinished


class TopKLastSlot(nn.Module):
    """Positional tensors in ``keys`` order → the ``k`` best items of the last position,
    (values (B, k), item indices (B, k)): items scored in chunks of ``chunk`` with a running
    top-k, the items of the window itself excluded, so no (B, I) matrix is returned or
    held beyond one chunk."""

    def __init__(self, model: nn.Module, keys: list[str], k: int, chunk: int) -> None:
        super().__init__()
        self.model, self.keys, self.k, self.chunk = model, keys, k, chunk

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = Batch.from_named(dict(zip(self.keys, inputs, strict=True)))
        score = self.model.item_scorer(batch)
        history = batch.item  # (B, L): its real items are not recommended again
        num_items = self.model.num_items
        width = min(self.k, num_items - N_RESERVED)
        best = best_items = None
        for start in range(N_RESERVED, num_items, self.chunk):
            stop = min(start + self.chunk, num_items)
            items = torch.arange(start, stop, device=history.device)
            scores = score(items)  # (B, C)
            at = history - start
            inside = (at >= 0) & (at < stop - start) & (history >= N_RESERVED)
            fill = torch.where(inside, float("-inf"), float("inf")).to(scores.dtype)
            scores = scores.scatter_reduce(1, at.clamp(0, stop - start - 1), fill, "amin")
            # ranked by (score, then id) as featrec.ranking.top_k does: ties come back in
            # one order wherever the program runs (torch.topk's own order is per kernel)
            keys = score_then_id_keys(scores, items.expand_as(scores))
            top = torch.topk(keys, min(width, stop - start), dim=1).indices
            values, found = scores.gather(1, top), items[top]
            if best is None:
                best, best_items = values, found
            else:
                best, best_items = best_by_score_then_id(
                    torch.cat([best, values], dim=1), torch.cat([best_items, found], dim=1), width
                )
        # fewer items left than k (the window's own excluded): those places hold index -1
        return best, torch.where(torch.isneginf(best), -1, best_items)


class ScoreLastSlot(nn.Module):
    """Positional tensors in ``keys`` order (:meth:`Batch.named`) → scores of the last
    position: (B, I)."""

    def __init__(self, model: nn.Module, keys: list[str]) -> None:
        super().__init__()
        self.model = model
        self.keys = keys

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        batch = Batch.from_named(dict(zip(self.keys, inputs, strict=True)))
        return self.model.predict(batch)


def example_batch(recommender: Recommender) -> Batch:
    """A small batch of real requests (three histories, no user attributes) to trace with."""
    items = recommender.item_vocab.ids
    data, _ = recommender.encode_many([items[:3], items[1:6], items[2:4]], [None] * 3, [None] * 3)
    return request_batch(data, torch.arange(3), data.test_idx, recommender.spec.model.max_len)


def _describe(key: str, values: torch.Tensor, hidden: frozenset[str], size: int | None) -> dict:
    """One input of the program, for inputs.json: name, dtype, shape, ``ids`` (an id input
    takes 0 to ids - 1; anything else is an error in the program), the value that pads a
    window on the left and the value at the predicted (last) slot where it is not the real
    one (items: MASK; event features known only after the event: MASK, or 0.0 for numbers)."""
    floating = values.is_floating_point()
    entry: dict = {"name": key, "dtype": str(values.dtype).removeprefix("torch.")}
    if size is not None:
        entry["ids"] = size
    if key == "item" or key.startswith("event:"):
        entry["shape"] = ["batch", "length"]
        entry["padding"] = 0.0 if floating else PAD
        column = key.removeprefix("event:")
        if key == "item" or column in hidden:
            entry["at_predicted_slot"] = 0.0 if floating else MASK
    else:
        entry["shape"] = ["batch", *(["width"] if values.ndim == 2 else [])]
        if values.ndim == 2:
            entry["padding"] = PAD
    return entry


def export_run(run_dir: Path, out_dir: Path, top_k: int | None = None) -> Path:
    """Write the export folder; with ``top_k`` the program returns each request's ``top_k``
    best items (chunked ranking, the window's items excluded) instead of every score."""
    if out_dir.is_dir() and any(out_dir.iterdir()):
        earlier = (out_dir / "model.pt2").is_file() and (out_dir / "inputs.json").is_file()
        if not earlier:  # an earlier export is replaced; nothing else is overwritten
            raise FeatrecError(
                f"--out {out_dir}: holds files that are no featrec export; choose a new or "
                "empty folder (an earlier export there is replaced)"
            )
    if out_dir.exists() and not out_dir.is_dir():
        raise FeatrecError(f"--out {out_dir}: is a file; choose a new or empty folder")
    recommender = Recommender(run_dir, device="cpu")  # traced on the CPU; load it anywhere
    warn_if_unfinished(run_dir, "exporting")
    recommender.model.prepare_export()  # one code path for every batch size
    batch = example_batch(recommender).named()
    keys = sorted(batch)
    batch_dim = torch.export.Dim("batch", min=1, max=1 << 20)
    length_dim = torch.export.Dim("length", min=1, max=recommender.spec.model.max_len)
    shapes = []
    for number, key in enumerate(keys):
        if key == "item" or key.startswith("event:"):
            shapes.append({0: batch_dim, 1: length_dim})
        elif batch[key].ndim == 2:  # a user's list (multi_categorical): any width, PAD-filled
            # traced at width 2, not the example's 1 (which would fix it at 1)
            batch[key] = torch.cat([batch[key], torch.full_like(batch[key], PAD)], dim=1)
            shapes.append({0: batch_dim, 1: torch.export.Dim(f"width{number}", max=1 << 16)})
        else:
            shapes.append({0: batch_dim})
    module = (
        ScoreLastSlot(recommender.model, keys)
        if top_k is None
        else TopKLastSlot(recommender.model, keys, top_k, ranking.ITEM_CHUNK)
    )
    program = torch.export.export(
        module,
        tuple(batch[k] for k in keys),
        dynamic_shapes={"inputs": tuple(shapes)},
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, out_dir / "model.pt2")
    hidden, _ = event_column_kinds(recommender.spec, recommender.encoders)
    sizes = {"item": recommender.model.num_items} | {
        f"{config.scope}:{column.name}": column.cardinality
        for config in feature_configs(recommender.spec, recommender.encoders)
        for column in config.columns
        if column.kind != "float"
    }
    inputs = [_describe(key, batch[key], hidden, sizes.get(key)) for key in keys]
    shown = None if top_k is None else min(top_k, recommender.model.num_items - N_RESERVED)
    description = {
        "inputs": inputs,
        "output": (
            "scores (batch, items): the last position of each window is the predicted slot"
            if top_k is None
            else f"(values, item indices), each (batch, {shown}): the {shown} best items for "
            "the last position of each window, best first, the window's own items excluded "
            "(where fewer items are left, the places beyond them hold index -1, value -inf)"
        ),
        "reserved_ids": {"PAD": PAD, "MASK": MASK, "OOV": OOV, "MISSING": MISSING},
        "first_item_index": N_RESERVED,
        "item_ids": recommender.item_vocab.ids,
        "max_len": recommender.spec.model.max_len,
    }
    (out_dir / "inputs.json").write_text(json.dumps(description, indent=1), encoding="utf-8")
    for name in ("encoders.json", "spec.yaml", "item_popularity.json"):
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, out_dir / name)
    return out_dir / "model.pt2"

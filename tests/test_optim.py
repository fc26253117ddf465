"""train.optimizer: AdamW on the item rows a step uses, for large catalogs (issue 21)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from featrec.errors import SpecError
from featrec.optim import ROW_UPDATE_ITEMS, RowAdamW, clip_gradients, row_updates
from featrec.spec import load_spec
from featrec.train import train
from tests.conftest import interrupted_and_resumed, write_spec


def twin_tables(sparse: bool) -> tuple[nn.Embedding, nn.Linear]:
    torch.manual_seed(0)
    return nn.Embedding(12, 5, sparse=sparse), nn.Linear(5, 1)


def run_steps(optimizer_cls, sparse: bool, batches: list[list[int]], **kwargs):
    table, head = twin_tables(sparse)
    groups = [
        {"params": [table.weight], "weight_decay": 0.1},
        {"params": list(head.parameters()), "weight_decay": 0.0},
    ]
    optimizer = optimizer_cls(groups, lr=0.05, **kwargs)
    for rows in batches:
        optimizer.zero_grad()
        head(table(torch.tensor(rows))).pow(2).sum().backward()
        optimizer.step()
    return table.weight.detach(), head.weight.detach()


def test_rows_touched_every_step_get_dense_adamws_values() -> None:
    batches = [[1, 2, 2, 5], [2, 5, 1], [5, 1, 2, 2, 2]]  # rows 1, 2, 5 at every step
    rows_w, rows_head = run_steps(RowAdamW, True, batches)
    dense_w, dense_head = run_steps(torch.optim.AdamW, False, batches)
    touched = [1, 2, 5]
    torch.testing.assert_close(rows_w[touched], dense_w[touched], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(rows_head, dense_head, rtol=1e-6, atol=1e-7)  # dense params
    start, _ = twin_tables(False)
    untouched = [0, 3, 4, 6]
    assert torch.equal(rows_w[untouched], start.weight.detach()[untouched])  # left as they were
    assert not torch.equal(dense_w[untouched], start.weight.detach()[untouched])  # dense decays


def test_a_row_out_of_a_step_keeps_its_value_and_moments() -> None:
    table, head = twin_tables(True)
    optimizer = RowAdamW([table.weight, *head.parameters()], lr=0.05)
    for rows in ([3], [4]):
        optimizer.zero_grad()
        head(table(torch.tensor(rows))).sum().backward()
        before = table.weight.detach()[3].clone()
        moment = optimizer.state[table.weight]["exp_avg"][3].clone() if rows == [4] else None
        optimizer.step()
    assert torch.equal(table.weight.detach()[3], before)
    assert torch.equal(optimizer.state[table.weight]["exp_avg"][3], moment)


def test_clipping_counts_sparse_gradients_once_per_row() -> None:
    grads = {}
    for sparse in (True, False):
        table, head = twin_tables(sparse)
        head(table(torch.tensor([1, 1, 4]))).sum().backward()
        clip_gradients([table.weight, *head.parameters()], 0.01)
        grads[sparse] = table.weight.grad.to_dense() if sparse else table.weight.grad
        norm = math.sqrt(sum(float(p.grad.to_dense().pow(2).sum()) for p in head.parameters()))
        norm = math.sqrt(norm**2 + float(grads[sparse].pow(2).sum()))
        assert norm == pytest.approx(0.01, rel=1e-4)
    torch.testing.assert_close(grads[True], grads[False])


def test_auto_picks_row_updates_for_a_sampled_loss_on_a_large_catalog(
    tmp_path: Path, tiny_spec_body: dict
) -> None:
    def spec(*overrides: str):
        return load_spec(write_spec(tmp_path, tiny_spec_body), list(overrides))

    sampled = spec("train.loss=sampled_softmax")
    assert row_updates(sampled, ROW_UPDATE_ITEMS) and not row_updates(sampled, 3706)
    assert row_updates(sampled, ROW_UPDATE_ITEMS, torch.device("cpu"))
    assert not row_updates(sampled, ROW_UPDATE_ITEMS, torch.device("cuda"))  # fused dense wins
    assert not row_updates(spec(), ROW_UPDATE_ITEMS)  # ce: every row, every step
    assert row_updates(spec("train.loss=gbce", "train.optimizer=row_adamw"), 10)
    assert not row_updates(spec("train.loss=gbce", "train.optimizer=adamw"), 10**6)
    with pytest.raises(SpecError, match="row_adamw updates the item rows") as error:
        spec("train.optimizer=row_adamw")
    assert "\n" not in str(error.value)


def test_a_run_trains_and_resumes_with_row_updates(tmp_path: Path, tiny_spec_body: dict) -> None:
    tiny_spec_body |= {"train": {"epochs": 4, "batch_size": 3, "min_epochs": 4}}
    overrides = ["train.loss=sampled_softmax", "train.optimizer=row_adamw", "train.negatives=5"]
    spec = load_spec(write_spec(tmp_path, tiny_spec_body), overrides)
    whole = train(spec, tmp_path / "whole")
    rows = (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    losses = [json.loads(row)["loss"] for row in rows]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]

    state = torch.load(tmp_path / "whole" / "checkpoints" / "last.pt", weights_only=False)
    assert state["optimizer"]["state"], "the row optimizer's moments are checkpointed"

    resumed = interrupted_and_resumed(spec, tmp_path / "cut")
    assert resumed["test"] == whole["test"]
    cut = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(row)["loss"] for row in cut] == losses


def test_bf16_steps_train_the_same_model_in_other_numbers(
    tmp_path: Path, tiny_spec_body: dict
) -> None:
    """train.precision bf16 runs the step under autocast: a different loss, same model."""
    tiny_spec_body |= {"train": {"epochs": 2, "batch_size": 3, "min_epochs": 2}}
    losses = {}
    for name, overrides in {"fp32": [], "bf16": ["train.precision=bf16"]}.items():
        spec = load_spec(write_spec(tmp_path, tiny_spec_body), overrides)
        train(spec, tmp_path / name)
        rows = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        losses[name] = [json.loads(row)["loss"] for row in rows]
    assert all(math.isfinite(v) for run in losses.values() for v in run)
    assert losses["bf16"] != losses["fp32"]  # the casts are real
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)


def test_compile_wraps_the_training_loss(
    tmp_path: Path, tiny_spec_body: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train.compile hands the loss module to torch.compile (dynamic shapes) and trains with
    what it returns. (Compiling for real takes minutes on these CPUs; bench/RESULTS.md
    has the measured trial.)"""
    compiled, calls = [], []

    def fake_compile(fn, dynamic=None):
        compiled.append((type(fn).__name__, dynamic))

        def wrapped(*args):
            calls.append(1)
            return fn(*args)

        return wrapped

    monkeypatch.setattr(torch, "compile", fake_compile)
    tiny_spec_body |= {"train": {"epochs": 1, "batch_size": 3}}
    train(load_spec(write_spec(tmp_path, tiny_spec_body), ["train.compile=true"]), tmp_path / "c")
    assert compiled == [("LossModule", True)] and calls  # the model's loss as a module


def test_a_resumed_run_keeps_the_optimizer_it_started_with(
    tmp_path: Path, tiny_spec_body: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train.optimizer auto decides by the device too: a run started where it picks row
    updates and resumed where it picks dense AdamW goes on with row updates, as if whole."""
    import featrec.optim

    tiny_spec_body |= {"train": {"epochs": 4, "batch_size": 3, "min_epochs": 4}}
    overrides = ["train.loss=sampled_softmax", "train.negatives=5"]
    spec = load_spec(write_spec(tmp_path, tiny_spec_body), overrides)
    monkeypatch.setattr(featrec.optim, "ROW_UPDATE_ITEMS", 1)  # auto: row updates here
    whole = train(spec, tmp_path / "whole")

    def interrupt(at: int, row: dict) -> None:
        if at == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(spec, tmp_path / "cut", on_epoch_end=interrupt)
    monkeypatch.setattr(featrec.optim, "ROW_UPDATE_ITEMS", 10**9)  # there: dense AdamW
    assert train(spec, tmp_path / "cut", resume=True)["test"] == whole["test"]
    losses = {
        name: [json.loads(row)["loss"] for row in (tmp_path / name / "metrics.jsonl").open()]
        for name in ("whole", "cut")
    }
    assert losses["cut"] == losses["whole"]

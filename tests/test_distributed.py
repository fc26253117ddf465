"""Data-parallel training on torch.distributed: 2 ranks (gloo, CPU) against 1 (issue 23)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from featrec.cli import main
from featrec.rundir import load_checkpoint
from featrec.spec import load_spec
from featrec.train import train
from tests.conftest import write_spec

ROOT = Path(__file__).resolve().parents[1]


def torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", *args]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, env=env, check=False)


@pytest.fixture
def exact(tiny_spec_body: dict) -> dict:
    """No dropout and a full softmax: the ranks draw nothing the single process does not."""
    tiny_spec_body["model"] |= {"dropout": 0.0}
    tiny_spec_body["train"] = {"epochs": 3, "batch_size": 4, "warmup_steps": 1, "min_epochs": 3}
    return tiny_spec_body


@pytest.mark.parametrize("ranks", [2, 1])
def test_ranks_train_the_parameters_one_process_trains(
    tmp_path: Path, exact: dict, ranks: int
) -> None:
    """2 ranks, and torchrun's group of one (DistributedDataParallel and the backend in the
    step, as on one GPU with NCCL), against one plain process."""
    spec_path = write_spec(tmp_path, exact)
    one = train(load_spec(spec_path), tmp_path / "one")
    done = torchrun(
        "-m", "featrec", "train", str(spec_path), "--out", str(tmp_path / "two"), nproc=ranks
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = (
        "2 ranks: global batch 4 sequences, ~2"
        if ranks == 2
        else "1 rank: global batch 4 sequences, ~4"
    )
    assert f"{text} per rank (gloo)" in done.stderr
    weights = [load_checkpoint(tmp_path / d / "checkpoints" / "last.pt")["model"]
               for d in ("one", "two")]  # fmt: skip
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=1e-5, atol=1e-5, msg=name)
    two = json.loads((tmp_path / "two" / "final_metrics.json").read_text())
    for metric, value in one["test"].items():
        assert two["test"][metric] == pytest.approx(value, abs=1e-6), metric
    # one writer: no rank but 0 wrote anything, and the run reads as any other
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )


def test_two_ranks_evaluate_exactly_as_one(tmp_path: Path, exact: dict) -> None:
    spec_path = write_spec(tmp_path, exact)
    train(load_spec(spec_path), tmp_path / "run")
    outputs = {}
    for world in (1, 2):
        out = tmp_path / f"eval{world}.json"
        if world == 1:
            env = os.environ | {"PYTHONPATH": str(ROOT)}
            command = [sys.executable, str(ROOT / "tests" / "dist_evaluate.py"),
                       str(tmp_path / "run"), str(out)]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        else:
            done = torchrun(
                str(ROOT / "tests" / "dist_evaluate.py"), str(tmp_path / "run"), str(out)
            )
        assert done.returncode == 0, done.stderr[-3000:]
        outputs[world] = json.loads(out.read_text())
    assert outputs[2]["world"] == 2
    assert outputs[2]["ranks"] == outputs[1]["ranks"]
    assert outputs[2]["metrics"] == outputs[1]["metrics"]  # exactly


def test_train_nproc_starts_the_ranks_itself(tmp_path: Path, exact: dict) -> None:
    exact["train"]["device"] = "cpu"  # ranks per core (a CUDA machine: one per GPU)
    spec_path = write_spec(tmp_path, exact)
    env_before = dict(os.environ)
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        code = main(["-q", "train", str(spec_path), "--nproc", "2", "--out", str(tmp_path / "r")])
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    assert code == 0
    assert (tmp_path / "r" / "final_metrics.json").is_file()
    assert main(["train", str(spec_path), "--nproc", "0"]) == 2
    too_many = str((os.cpu_count() or 1) + 1)  # ranks beyond the cores: refused, none started
    assert main(["train", str(spec_path), "--nproc", too_many, "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()


def test_a_two_rank_checkpoint_resumes_in_one_rank_to_the_uninterrupted_run(
    tmp_path: Path, exact: dict
) -> None:
    spec_path = write_spec(tmp_path, exact)
    whole = train(load_spec(spec_path), tmp_path / "whole")
    cut = tmp_path / "cut"
    done = torchrun(
        "-m", "featrec", "train", str(spec_path), "--out", str(cut), "--stop-after", "2"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "paused after epoch 2" in done.stdout
    assert load_checkpoint(cut / "checkpoints" / "last.pt")["epoch"] == 2
    assert not (cut / "final_metrics.json").exists()
    resumed = train(load_spec(spec_path), cut, resume=True)  # one rank now
    for metric, value in whole["test"].items():
        assert resumed["test"][metric] == pytest.approx(value, abs=1e-6), metric


def test_two_nodes_on_one_machine_rendezvous_and_train(tmp_path: Path, exact: dict) -> None:
    """torchrun --nnodes 2 with c10d rendezvous on 127.0.0.1, one process per "node"."""
    import socket

    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec_path = write_spec(tmp_path, exact)
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
        "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=featrec",
        "-m", "featrec", "-q", "train", str(spec_path), "--out", str(tmp_path / "run"),
    ]  # fmt: skip
    nodes = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert all(node.returncode == 0 for node in nodes), [err[-2000:] for _, err in outputs]
    final = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
    single = train(load_spec(spec_path), tmp_path / "single")
    for metric, value in single["test"].items():
        assert final["test"][metric] == pytest.approx(value, abs=1e-6), metric


def test_an_ablation_runs_under_torchrun(tmp_path: Path, exact: dict) -> None:
    spec_path = write_spec(tmp_path, exact)
    out = tmp_path / "abl"
    done = torchrun("-m", "featrec", "-q", "ablate", str(spec_path), "--seeds", "1",
                    "--variants", "full", "most-popular", "--out", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("# Ablation report") == 1  # rank 0 reports
    for name in ("full", "most-popular"):
        assert (out / "runs" / name / "seed0" / "final_metrics.json").is_file()


def test_torchrun_without_out_is_one_line(
    tmp_path: Path, exact: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun starts each rank
    assert main(["train", str(write_spec(tmp_path, exact))]) == 2
    assert "under torchrun, give --out RUN_DIR" in capsys.readouterr().err

"""train.device, featrec.load(device=...), and runs moving between the GPU and the CPU.

The CUDA tests run where torch sees a CUDA device and skip with the reason elsewhere (CI
has none; bench/RESULTS.md says where they last ran).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from featrec.devices import resolve_device
from featrec.errors import FeatrecError, SpecError
from featrec.export import export_run
from featrec.model.protocol import half_precision_attention
from featrec.recommend import load
from featrec.spec import load_spec
from featrec.train import evaluate_run, train
from tests.conftest import write_spec

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


@pytest.mark.parametrize("value", ["tpu", "cuda:x", "gpu", "CUDA", "cuda:"])
def test_a_device_that_is_no_device_is_refused_at_load(
    tmp_path: Path, tiny_spec_body: dict, value: str
) -> None:
    tiny_spec_body["train"] = {"device": value}
    with pytest.raises(SpecError, match=r"train\.device: .*got '" + value):
        load_spec(write_spec(tmp_path, tiny_spec_body))


def test_auto_and_cpu_resolve_here() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected == resolve_device(None).type
    assert resolve_device("cpu") == torch.device("cpu")


@no_cuda
@pytest.mark.parametrize("value", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_one_clear_error_before_anything_is_written(
    tmp_path: Path, tiny_spec_body: dict, value: str
) -> None:
    tiny_spec_body["train"] = {"device": value, "epochs": 1}
    spec = load_spec(write_spec(tmp_path, tiny_spec_body))
    with pytest.raises(FeatrecError, match=f"train.device: {value} asked for, but this torch"):
        train(spec, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@cuda
def test_a_cuda_device_beyond_the_last_is_named() -> None:
    beyond = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(FeatrecError, match=f"{beyond} asked for, but torch sees"):
        resolve_device(beyond)


@cuda
def test_trained_on_cuda_evaluated_and_served_on_the_cpu(
    tmp_path: Path, tiny_spec_body: dict
) -> None:
    tiny_spec_body["train"] = {"epochs": 2, "batch_size": 3, "device": "cuda"}
    tiny_spec_body["fusion"] = {"method": "gate"}  # the fusion report runs the model too
    final = train(load_spec(write_spec(tmp_path, tiny_spec_body)), tmp_path / "run")
    assert set(final["fusion_weights"]) == {"item", "tags", "year", "age", "job", "time",
                                            "device", "rating"}  # fmt: skip
    on_cpu = evaluate_run(tmp_path / "run", "test", device="cpu")["metrics"]
    assert on_cpu == pytest.approx(final["test"], abs=1e-6)
    assert export_run(tmp_path / "run", tmp_path / "export").is_file()  # traced on the CPU
    gpu, cpu = load(tmp_path / "run", device="cuda"), load(tmp_path / "run", device="cpu")
    assert gpu.device.type == "cuda" and cpu.device.type == "cpu"
    for history in ([10, 11, 12], [13], [], [17, 19, 20, 14]):
        context = {"timestamp": 650, "device": "web"}
        a = gpu.recommend(history, {"age": 30, "job": "eng"}, context, k=5)
        b = cpu.recommend(history, {"age": 30, "job": "eng"}, context, k=5)
        assert a.items == b.items and a.scores == pytest.approx(b.scores, abs=1e-4)
    table = gpu.for_known_users(None, at=650, k=3)
    assert table.equals(cpu.for_known_users(None, at=650, k=3).with_columns(table["score"]))


@cuda
def test_a_run_evaluates_the_same_on_cuda_and_on_the_cpu(trained_run: Path) -> None:
    on_cpu = evaluate_run(trained_run, "valid", device="cpu")["metrics"]
    on_cuda = evaluate_run(trained_run, "valid", device="cuda")["metrics"]
    assert on_cuda == pytest.approx(on_cpu, abs=1e-6)


def test_a_bad_device_on_the_command_line_is_one_line_and_exit_2(
    trained_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from featrec.cli import main

    assert main(["-q", "evaluate", str(trained_run), "--device", "gpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "featrec: error: device: expected auto, cpu, cuda or cuda:N; got 'gpu'"
    assert main(["-q", "recommend", str(trained_run), "--user", "u4", "--device", "tpu"]) == 2
    assert "device: expected auto, cpu, cuda or cuda:N; got 'tpu'" in capsys.readouterr().err


def sdp_flags() -> tuple[bool, bool, bool]:
    cuda = torch.backends.cuda
    return cuda.cudnn_sdp_enabled(), cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled()


@pytest.mark.parametrize(
    ("device", "bf16", "kept_out"),
    [("cuda", True, True), ("cuda", False, False), ("cpu", True, False)],
)
def test_a_bf16_step_on_cuda_keeps_cudnn_attention_out(device, bf16, kept_out) -> None:
    before = sdp_flags()
    with half_precision_attention(torch.device(device), bf16):
        inside = sdp_flags()
    assert sdp_flags() == before  # restored after the step
    assert inside == ((False, True, True) if kept_out else before)


def test_the_training_step_runs_in_that_context(
    tmp_path: Path, tiny_spec_body: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    import featrec.train

    calls = []

    def recorded(device, enabled):
        calls.append((device.type, enabled))
        return half_precision_attention(device, enabled)

    monkeypatch.setattr(featrec.train, "half_precision_attention", recorded)
    tiny_spec_body |= {"train": {"epochs": 1, "batch_size": 3, "min_epochs": 1, "device": "cpu"}}
    spec = load_spec(write_spec(tmp_path, tiny_spec_body), ["train.precision=bf16"])
    train(spec, tmp_path / "run")
    assert calls and set(calls) == {("cpu", True)}  # every step, with bf16 on


@cuda
def test_bf16_attention_on_cuda_runs_no_cudnn_kernel() -> None:
    q, k, v = torch.randn(3, 64, 2, 37, 32, device="cuda", dtype=torch.bfloat16).unbind(0)
    mask = torch.ones(64, 1, 37, 37, dtype=torch.bool, device="cuda")

    def kernels(context) -> list[str]:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            with context:
                F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            torch.cuda.synchronize()
        return [event.key.lower() for event in prof.key_averages()]

    if not any("cudnn" in name for name in kernels(contextlib.nullcontext())):
        pytest.skip("torch does not pick cuDNN's attention here: nothing to keep out")
    names = kernels(half_precision_attention(torch.device("cuda"), True))
    assert names and not any("cudnn" in name for name in names)

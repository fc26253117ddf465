"""--log tensorboard / mlflow: what a run reports, read back from the real packages' files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from featrec.cli import main
from featrec.errors import FeatrecError
from featrec.tracking import make_trackers
from tests.conftest import write_spec


@pytest.fixture
def spec_path(tmp_path: Path, tiny_spec_body: dict) -> Path:
    tiny_spec_body["train"] = {"epochs": 3, "batch_size": 3, "eval_every": 2}
    return write_spec(tmp_path, tiny_spec_body)


def test_tensorboard_event_file_holds_epochs_and_test_metrics(
    tmp_path: Path, spec_path: Path
) -> None:
    event_accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator"
    )
    run = tmp_path / "run"
    assert main(["-q", "train", str(spec_path), "--out", str(run), "--log", "tensorboard"]) == 0
    events = event_accumulator.EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"loss", "lr", "tokens_per_s", "valid/ndcg@10", "test/ndcg@10"} <= set(scalars)
    losses = [e.value for e in events.Scalars("loss")]
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses == pytest.approx([row["loss"] for row in history])
    assert [e.step for e in events.Scalars("valid/ndcg@10")] == [2, 3]  # every 2nd, and the last
    final = json.loads((run / "final_metrics.json").read_text())
    assert events.Scalars("test/ndcg@10")[0].value == pytest.approx(final["test"]["ndcg@10"])
    assert "spec/text_summary" in events.Tags()["tensors"]  # the resolved spec as text


def test_mlflow_store_holds_params_epochs_and_test_metrics_and_a_resume_continues(
    tmp_path: Path, spec_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # the default store: ./mlruns
    run = tmp_path / "run"

    def interrupt(epoch: int, row: dict) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    from featrec.spec import load_spec
    from featrec.train import train

    with pytest.raises(KeyboardInterrupt):
        train(load_spec(spec_path), run, on_epoch_end=interrupt, log_to=["mlflow"])
    client = MlflowClient((tmp_path / "mlruns").as_uri())
    run_id = (run / "mlflow_run_id").read_text()
    assert client.get_run(run_id).info.status == "FAILED"
    assert (
        main(["-q", "train", str(spec_path), "--out", str(run), "--resume", "--log", "mlflow"]) == 0
    )
    record = client.get_run(run_id)
    assert record.info.status == "FINISHED" and record.info.run_name == "run"
    assert client.get_experiment(record.info.experiment_id).name == "tiny"
    assert record.data.params["train.epochs"] == "3" and "fusion.method" in record.data.params
    assert json.loads(record.data.params["features"])[0] == "tags"
    losses = [m.value for m in client.get_metric_history(run_id, "loss")]
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses == pytest.approx([row["loss"] for row in history])  # epochs 1-2, then 3
    final = json.loads((run / "final_metrics.json").read_text())
    assert record.data.metrics["test/ndcg_at_10"] == pytest.approx(final["test"]["ndcg@10"])


def test_unknown_tracker_and_missing_package_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    with pytest.raises(
        FeatrecError, match="--log: expected one of tensorboard, mlflow; got 'wandb'"
    ):
        make_trackers(["wandb"])
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    monkeypatch.setitem(sys.modules, "mlflow.entities", None)
    missing = r"--log mlflow: needs the mlflow package \(mlflow.* is missing\): pip install"
    with pytest.raises(FeatrecError, match=missing):
        make_trackers(["mlflow"])


def test_an_mlflow_store_that_cannot_be_used_is_one_line(
    tmp_path: Path, spec_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    store = (tmp_path / "own-store").as_uri()  # the user's own file: address
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    run = tmp_path / "run"
    assert main(["-q", "train", str(spec_path), "--out", str(run), "--log", "mlflow"]) == 0
    assert MlflowClient(store).get_run((run / "mlflow_run_id").read_text()).info.status == (
        "FINISHED"
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    mine = tmp_path / "mine"  # a folder of the user's: the failed start leaves it as it was
    mine.mkdir()
    (mine / "notes.txt").write_text("kept")
    for out in (tmp_path / "r2", mine):
        code = main(["-q", "train", str(spec_path), "--out", str(out), "--log", "mlflow"])
        err = capsys.readouterr().err
        assert code == 2 and "--log mlflow: cannot start a run at http://127.0.0.1:9" in err
        assert err.count("\n") == 1
    assert not (tmp_path / "r2").exists()  # no spec or encoders of a run that never started
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert main(["-q", "train", str(spec_path), "--out", str(mine), "--resume"]) == 2

"""Experiment tracking: what a training run reports to TensorBoard or MLflow.

Per epoch: the training loss, learning rate, tokens/s, peak memory and the validation
metrics; at the end: the best epoch's test metrics and the most-popular baseline's; at the
start: the resolved spec (MLflow parameters, a TensorBoard text). Optional packages
(``pip install 'featrec[tensorboard]'`` / ``'featrec[mlflow]'``), imported only when asked
for; a missing one is an error before training starts.

* ``tensorboard``: event files in ``RUN_DIR/tensorboard`` (``tensorboard --logdir runs``).
* ``mlflow``: the server or store of ``MLFLOW_TRACKING_URI`` when set, else a local file
  store ``./mlruns`` (``mlflow ui`` in that folder); experiment = the spec's name, run = the
  run directory's name. A resumed run continues its MLflow run (its id is kept in
  ``RUN_DIR/mlflow_run_id``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from featrec.errors import FeatrecError, first_line
from featrec.spec import Spec

TRACKERS = ("tensorboard", "mlflow")
_EXTRA = {"tensorboard": "tensorboard", "mlflow": "mlflow"}


class Tracker:
    """Receives a run's start, its epochs and its end; does nothing by itself."""

    def start(self, spec: Spec, run_dir: Path) -> None: ...

    def log_epoch(self, epoch: int, row: dict[str, Any]) -> None: ...

    def finish(self, final: dict[str, Any]) -> None: ...

    def close(self, failed: bool) -> None: ...


def _scalars(row: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in row.items()
        if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _final_scalars(final: dict[str, Any]) -> dict[str, float]:
    out = {f"test/{k}": v for k, v in final["test"].items()}
    out |= {f"most_popular/test/{k}": v for k, v in final["most_popular"]["test"].items()}
    for window, metrics in final.get("recent_popular", {}).get("test", {}).items():
        out |= {f"popular_{window}/test/{k}": v for k, v in metrics.items()}
    return out | {"best_epoch": final["best_epoch"], "train_seconds": final["train_seconds"]}


class TensorBoardTracker(Tracker):
    def __init__(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer_class = SummaryWriter
        self.writer = None

    def start(self, spec: Spec, run_dir: Path) -> None:
        self.writer = self._writer_class(log_dir=str(run_dir / "tensorboard"))
        text = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
        self.writer.add_text("spec", "```\n" + text + "```")

    def log_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        for key, value in _scalars(row).items():
            self.writer.add_scalar(key, value, epoch)
        self.writer.flush()

    def finish(self, final: dict[str, Any]) -> None:
        for key, value in _final_scalars(final).items():
            self.writer.add_scalar(key, value, final["best_epoch"])

    def close(self, failed: bool) -> None:
        if self.writer is not None:
            self.writer.close()


def _mlflow_name(key: str) -> str:
    return key.replace("@", "_at_")  # MLflow names allow letters, digits, _ - . : / and space


class MLflowTracker(Tracker):
    def __init__(self) -> None:
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        self._metric, self._param = Metric, Param
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # MLflow's local file store, which MLflow 3 keeps behind a switch
            uri = (Path.cwd() / "mlruns").as_uri()
        if uri.startswith("file:") or "://" not in uri:  # a folder: the file store too
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.uri = uri
        self.client = MlflowClient(uri)
        self.run_id: str | None = None

    def start(self, spec: Spec, run_dir: Path) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self._start(spec, run_dir)
        except (MlflowException, OSError) as err:  # unreachable server, unwritable store
            raise FeatrecError(
                f"--log mlflow: cannot start a run at {self.uri} ({first_line(err)[:160]}); "
                "check MLFLOW_TRACKING_URI"
            ) from None

    def _start(self, spec: Spec, run_dir: Path) -> None:
        id_file = run_dir / "mlflow_run_id"
        if id_file.is_file():  # a resumed run goes on in the same MLflow run
            self.run_id = id_file.read_text(encoding="utf-8").strip()
            self.client.update_run(self.run_id, status="RUNNING")
            return
        experiment = self.client.get_experiment_by_name(spec.name)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment(spec.name)
        )
        run = self.client.create_run(experiment_id, run_name=run_dir.name)
        self.run_id = run.info.run_id
        id_file.write_text(self.run_id, encoding="utf-8")
        params = [self._param(key, _param_text(value)) for key, value in _flat(spec).items()]
        self.client.log_batch(self.run_id, params=params)

    def _log(self, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [self._metric(_mlflow_name(k), v, now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_epoch(self, epoch: int, row: dict[str, Any]) -> None:
        self._log(_scalars(row), epoch)

    def finish(self, final: dict[str, Any]) -> None:
        self._log(_final_scalars(final), final["best_epoch"])

    def close(self, failed: bool) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


def _flat(spec: Spec) -> dict[str, Any]:
    resolved = spec.model_dump(mode="json")
    features = resolved.pop("features")
    flat = {"features": [f["name"] for f in features]}
    for section, values in resolved.items():
        if isinstance(values, dict):
            for key, value in values.items():
                flat[f"{section}.{key}"] = value
        else:
            flat[section] = values
    for feature in features:
        flat[f"feature.{feature['name']}"] = {k: v for k, v in feature.items() if k != "name"}
    return flat


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:6000]  # MLflow's limit for a parameter's value


def make_trackers(names: list[str] | tuple[str, ...]) -> list[Tracker]:
    """The trackers named (``tensorboard``, ``mlflow``); an unknown name or a missing
    package is one clear error, before any training."""
    trackers: list[Tracker] = []
    for name in dict.fromkeys(names):
        if name not in TRACKERS:
            raise FeatrecError(f"--log: expected one of {', '.join(TRACKERS)}; got {name!r}")
        try:
            trackers.append(TensorBoardTracker() if name == "tensorboard" else MLflowTracker())
        except ImportError as err:
            raise FeatrecError(
                f"--log {name}: needs the {name} package ({err.name} is missing): "
                f"pip install 'featrec[{_EXTRA[name]}]'"
            ) from None
    return trackers

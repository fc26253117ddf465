"""Run by tests/test_distributed.py under torchrun: evaluate a run's best checkpoint on
this rank's share of the users, and (rank 0) write the metrics and ranks as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from featrec import distributed
from featrec.rundir import load_checkpoint
from featrec.spec import load_spec
from featrec.train import Experiment

run, out = Path(sys.argv[1]), Path(sys.argv[2])
distributed.setup(torch.device("cpu"))
experiment = Experiment.from_spec(load_spec(run / "spec.yaml"))
experiment.model.load_state_dict(load_checkpoint(run / "checkpoints" / "best.pt"))
metrics, ranks = experiment.evaluate("test")
if distributed.is_main():
    out.write_text(json.dumps({"metrics": metrics, "ranks": ranks.tolist(),
                               "world": distributed.size()}))  # fmt: skip

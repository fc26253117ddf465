"""ML-1M data to first batch, full-ranking evaluation of every user, and training peak RSS.

* first batch: a fresh process with an empty cache: raw files → prepared sequences →
  tensors → the first training batch, timed apart from the imports before it (torch alone
  takes ~2 s to import here) and together with them (the wall time a user waits before
  step one, interpreter start aside);
* evaluation: full ranking of all items for every ML-1M user (test split, seen items
  excluded), full-feature model, median of ``--repeats``;
* peak RSS: ``featrec train`` on ML-1M (full features) for ``--epochs`` epochs in a child
  process (``ru_maxrss``), a short run; the whole-run peak and its growth epoch by epoch
  are measured by ``bench/memory.py`` and read from the quality runs' ``metrics.csv``.

Usage: FEATREC_DATA_DIR=../shared/datasets python bench/pipeline_eval.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRST_BATCH = """
import sys, time
start = time.perf_counter()
import torch
from featrec.batching import length_aware_batches, training_batch
from featrec.spec import load_spec
from featrec.train import Experiment
imported = time.perf_counter()
spec = load_spec(sys.argv[1])
experiment = Experiment.from_spec(spec)
data, generator = experiment.data, torch.Generator().manual_seed(0)
users = torch.nonzero(data.train_len > 0).squeeze(1)
first = length_aware_batches(users, data.train_len.clamp(max=200), 128, generator)[0]
batch, labels = training_batch(data, first, 200, 0.2, 0.1, generator)
done = time.perf_counter()
print(imported - start, done - imported, done - start)
"""


def child(argv: list[str], env: dict[str, str]) -> tuple[str, float]:
    process = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    out = process.stdout.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(process.pid, 0)
    if status:
        raise SystemExit(f"{argv} failed ({status})")
    return out, usage.ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "feature_specs" / "ml-1m.yaml"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    first_batch = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            out, _ = child(
                [sys.executable, "-c", FIRST_BATCH, args.spec],
                {**os.environ, "FEATREC_CACHE": cache},
            )
            first_batch.append([float(x) for x in out.strip().splitlines()[-1].split()])
    for column, what in enumerate(
        [
            "imports (torch, featrec)",
            "raw files → first training batch (data)",
            "whole wait: imports + data",
        ]
    ):
        values = [row[column] for row in first_batch]
        print(
            f"ML-1M, fresh process, empty cache, {what}: median "
            f"{statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f}) "
            f"over {args.repeats}"
        )

    from featrec.spec import load_spec
    from featrec.train import Experiment

    experiment = Experiment.from_spec(load_spec(args.spec))
    times = []
    for _ in range(args.repeats + 1):
        start = time.perf_counter()
        _, ranks = experiment.evaluate("test")
        times.append(time.perf_counter() - start)
    first, times = times[0], times[1:]  # the first call also imports torchmetrics
    print(
        f"full-ranking evaluation of {len(ranks):,} ML-1M users x "
        f"{experiment.model.num_items - 4:,} items: median {statistics.median(times):.2f} s "
        f"(min {min(times):.2f}, max {max(times):.2f}) over {args.repeats}; the first call "
        f"of the process (imports torchmetrics, first-touch memory): {first:.2f} s"
    )

    with tempfile.TemporaryDirectory() as run_dir:
        featrec = str(Path(sys.executable).parent / "featrec")
        argv = [
            featrec,
            "-q",
            "train",
            args.spec,
            "--out",
            f"{run_dir}/run",
            "--set",
            f"train.epochs={args.epochs}",
        ]
        start = time.perf_counter()
        _, rss = child(argv, dict(os.environ))
        minutes = (time.perf_counter() - start) / 60
    print(
        f"ML-1M training ({args.epochs} epochs, full features, {minutes:.1f} min): "
        f"peak RSS {rss:.2f} GiB"
    )


if __name__ == "__main__":
    main()

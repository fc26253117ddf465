"""Data-parallel training speed on one machine: N ranks x 1 thread against 1 rank x N threads.

Each round trains one epoch of the spec twice, from scratch, in fresh processes:
``featrec train SPEC --stop-after 1`` with ``OMP_NUM_THREADS=N`` (one rank using every
core), then ``featrec train SPEC --nproc N --stop-after 1`` with ``OMP_NUM_THREADS=1`` (N
ranks through torch's launcher, gloo, one thread each). Rounds alternate the two, so a
change in the machine's load hits both. Reports the median useful (non-padding) tokens/s of
each (the epoch's tokens over its seconds, from the run's ``metrics.csv``: every rank's
tokens, timed by rank 0) and their ratio. Needs the cores to itself: on a loaded machine
both sides lose, not in proportion.

Usage: FEATREC_DATA_DIR=../shared/datasets python bench/ddp_throughput.py [--ranks 2]
    [--rounds 3] [--spec feature_specs/ml-1m.yaml] [--out bench/out/ddp-throughput]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def epoch_tokens_per_s(spec: Path, out: Path, ranks: int, threads: int) -> float:
    """Useful tokens/s of one training epoch (no validation) in a fresh run."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "featrec", "-q", "train", str(spec), "--out", str(out),
               "--stop-after", "1", "--set", "train.eval_every=1000"]  # fmt: skip
    if ranks > 1:
        command += ["--nproc", str(ranks)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if done.returncode not in (0, 130):  # --stop-after ends the run as an interruption
        sys.stderr.write(done.stderr.decode())
        raise SystemExit(f"featrec train --nproc {ranks} failed ({done.returncode})")
    with open(out / "metrics.csv") as file:
        return float(next(csv.DictReader(file))["tokens_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "feature_specs" / "ml-1m.yaml")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "ddp-throughput")
    args = parser.parse_args()
    n = args.ranks
    one, many = [], []
    for round_ in range(args.rounds):
        one.append(epoch_tokens_per_s(args.spec, args.out / "one", 1, n))
        many.append(epoch_tokens_per_s(args.spec, args.out / "many", n, 1))
        print(f"round {round_ + 1}: 1 rank x {n} threads {one[-1]:.0f} tokens/s, "
              f"{n} ranks x 1 thread {many[-1]:.0f}", flush=True)  # fmt: skip
    a, b = statistics.median(one), statistics.median(many)
    print(f"median: 1 rank x {n} threads {a:.0f} tokens/s, {n} ranks x 1 thread {b:.0f}; "
          f"ratio {b / a:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()

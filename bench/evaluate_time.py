"""``featrec evaluate RUN`` as a whole process: wall-clock, median of ``--repeats`` fresh
processes, and where one process spends it (imports, loading the run and its prepared data,
the evaluation of every user, the most-popular baseline).

Usage (an ML-1M run directory, e.g. ``featrec train feature_specs/ml-1m.yaml --set
train.epochs=1 --out bench/out/ml1m-run``):
    FEATREC_DATA_DIR=../shared/datasets python bench/evaluate_time.py bench/out/ml1m-run
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

PROFILE = """
import sys, time
t0 = time.perf_counter()
from featrec.recommend import Recommender
import featrec.metrics
t1 = time.perf_counter()
recommender = Recommender(__import__("pathlib").Path(sys.argv[1]), "cpu")
experiment = recommender.experiment
t2 = time.perf_counter()
recommender.evaluate("test")
t3 = time.perf_counter()
experiment.most_popular("test")
t4 = time.perf_counter()
print(f"{t1 - t0:.2f} {t2 - t1:.2f} {t3 - t2:.2f} {t4 - t3:.2f}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    walls = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        command = [sys.executable, "-m", "featrec.cli", "-q", "evaluate", args.run_dir]
        subprocess.run([*command, "--device", "cpu"], check=True, capture_output=True)
        walls.append(time.perf_counter() - started)
    parts = []
    for _ in range(args.repeats):
        out = subprocess.run([sys.executable, "-c", PROFILE, args.run_dir], check=True,
                             capture_output=True, text=True).stdout  # fmt: skip
        parts.append([float(x) for x in out.split()])
    print(f"featrec evaluate, whole process: median {statistics.median(walls):.2f} s "
          f"(min {min(walls):.2f}, max {max(walls):.2f}, {args.repeats} runs)")  # fmt: skip
    names = ["imports", "run + prepared data", "evaluation (test)", "most-popular (test)"]
    for i, name in enumerate(names):
        print(f"  {name}: median {statistics.median(p[i] for p in parts):.2f} s")


if __name__ == "__main__":
    main()

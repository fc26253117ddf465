"""What trend features cost where items are ranked: ML-1M with and without them, side by side
in one process (issue 22's ranking-time targets).

Trains two 1-epoch ML-1M runs (leave-one-out; the shipped spec, and the same plus the trend
features of ``feature_specs/ml-1m-temporal.yaml``: popularity over 1, 7 and 30 days and item
age; costs do not depend on the weights), then, alternating between them so both see the
same machine load:

* full-ranking evaluation of every test user (``Recommender.evaluate("test")``), median of
  ``--repeats``;
* a single ``recommend`` request (200-event history, request time), p50 / p99 over
  ``--requests``.

Usage: FEATREC_DATA_DIR=../shared/datasets python bench/trend_cost.py [--out bench/out/trend-cost]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from latency import sample_requests  # bench/latency.py: the same requests

import featrec
from featrec.spec import load_spec
from featrec.train import train

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "trend-cost")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    plain = load_spec(ROOT / "feature_specs" / "ml-1m.yaml", ["train.epochs=1"])
    temporal = load_spec(ROOT / "feature_specs" / "ml-1m-temporal.yaml")
    trends = plain.model_copy(update={"features": [*plain.features, *temporal.trend_features]})
    runs = {}
    for name, spec in (("without", plain), ("with trends", trends)):
        run = args.out / name.replace(" ", "-")
        if not (run / "checkpoints" / "best.pt").is_file():
            train(spec, run)
        runs[name] = featrec.load(run)

    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, recommender in runs.items():
            start = time.perf_counter()
            recommender.evaluate("test")
            seconds[name].append(time.perf_counter() - start)
    for name, values in seconds.items():
        print(f"evaluate all test users, {name}: median {statistics.median(values):.2f} s "
              f"(min {min(values):.2f}, max {max(values):.2f})")  # fmt: skip
    ratio = statistics.median(seconds["with trends"]) / statistics.median(seconds["without"])
    print(f"evaluation time, with / without trend features: {ratio:.2f}x")

    latencies: dict[str, list[float]] = {name: [] for name in runs}
    for history, person, context in sample_requests(plain, args.requests):
        for name, recommender in runs.items():
            attributes = {c: person[c] for c in recommender.user_columns}
            start = time.perf_counter()
            recommender.recommend(history, user=attributes, context=context, k=10)
            latencies[name].append((time.perf_counter() - start) * 1000)
    for name, values in latencies.items():
        p50, p99 = np.percentile(values[10:], [50, 99])  # after a warm-up
        print(f"single recommend, {name}: p50 {p50:.1f} ms, p99 {p99:.1f} ms")


if __name__ == "__main__":
    main()

"""Serving latency of an ML-1M model: single requests and every user at once.

* single request: ``Recommender.recommend`` for one user with a 200-event history (raw item
  ids with timestamps and ratings, raw user attributes, a request time), end to end
  (encoding + model + top-k), p50 / p99 over ``--requests`` requests;
* batch: ``Recommender.for_known_users(None)``: every ML-1M user from their whole history.

Needs a trained ML-1M run (``--run``); without one it trains a 1-epoch run first (latency
does not depend on the weights).

Usage: FEATREC_DATA_DIR=../shared/datasets python bench/latency.py [--run RUN_DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

import featrec
from featrec.datasets import load_tables
from featrec.spec import load_spec
from featrec.train import train

ROOT = Path(__file__).resolve().parents[1]


def sample_requests(spec, count: int) -> list[tuple[pl.DataFrame, dict, dict]]:
    """``count`` requests drawn (seed 0) from the ML-1M users with 200+ events: (their last
    200 events, their users-table row, a request an hour after the last event)."""
    tables = load_tables(spec.data)
    interactions = tables.interactions.sort("user_id", "timestamp", maintain_order=True)
    long_users = (
        interactions.group_by("user_id").len().filter(pl.col("len") >= 200)["user_id"].to_list()
    )
    by_user = interactions.partition_by("user_id", as_dict=True, maintain_order=True)
    people = {r["user_id"]: r for r in tables.users.iter_rows(named=True)}
    requests = []
    for user in np.random.default_rng(0).choice(long_users, size=count).tolist():
        history = by_user[(user,)].tail(200)
        context = {"timestamp": int(history["timestamp"][-1]) + 3600}
        requests.append((history, people[user], context))
    return requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="trained ML-1M run directory")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the batch scoring")
    args = parser.parse_args()
    spec = load_spec(ROOT / "feature_specs" / "ml-1m.yaml", ["train.epochs=1"])
    with tempfile.TemporaryDirectory() as scratch:
        run = args.run
        if run is None:
            run = Path(scratch) / "run"
            train(spec, run)
        recommender = featrec.load(run)
        latencies, batch_path = [], []  # recommend() and the same request as a batch of one
        for history, person, context in sample_requests(spec, args.requests):
            attributes = {c: person[c] for c in recommender.user_columns}
            start = time.perf_counter()
            recommender.recommend(history, user=attributes, context=context, k=10)
            latencies.append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            recommender.recommend_many([history], [attributes], [context], k=10)
            batch_path.append((time.perf_counter() - start) * 1000)
        for name, values in [
            ("single request (history 200, encode + model + top-10)", latencies),
            ("the same through recommend_many (one polars query)", batch_path),
        ]:
            values = values[10:]  # warm-up
            p50, p99 = np.percentile(values, [50, 99])
            print(f"{name}: p50 {p50:.1f} ms, p99 {p99:.1f} ms over {len(values)} requests")
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            table = recommender.for_known_users(None, at=1046500000, k=10)
            times.append(time.perf_counter() - start)
        users = table["user_id"].n_unique()
        median = statistics.median(times)
        print(
            f"all {users:,} ML-1M users (whole histories, top-10): median {median:.2f} s "
            f"({users / median:,.0f} users/s; min {min(times):.2f}, max {max(times):.2f})"
        )


if __name__ == "__main__":
    main()

"""Cost of featrec's chunked top-k (featrec.ranking.top_k) on random scores, one thread:
medians of 30 calls per shape. Compare two checkouts side by side:

    python bench/topk_cost.py OLD_CHECKOUT NEW_CHECKOUT --rounds 3
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time

import torch

SHAPES = ((1, 3_710), (128, 3_710), (1, 971_192))  # ML-1M: one request, a batch; 1M items


def median_ms(checkout: str, rows: int, items: int, calls: int = 30) -> float:
    sys.path.insert(0, checkout)
    for name in [m for m in sys.modules if m == "featrec" or m.startswith("featrec.")]:
        del sys.modules[name]
    top_k = importlib.import_module("featrec.ranking").top_k
    sys.path.pop(0)
    scores = torch.randn(rows, items, generator=torch.Generator().manual_seed(0))

    def score(chunk: range) -> torch.Tensor:
        return scores[:, chunk.start : chunk.stop].clone()

    for _ in range(3):
        top_k(score, items, rows, 10)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        top_k(score, items, rows, 10)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="+")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for rows, items in SHAPES:
        results = {c: [] for c in args.checkouts}
        for _ in range(args.rounds):  # interleaved: each round times every checkout
            for checkout in args.checkouts:
                results[checkout].append(median_ms(checkout, rows, items))
        line = ", ".join(f"{c}: {statistics.median(v):.3f} ms" for c, v in results.items())
        print(f"{rows} x {items:,} items, top 10 (median of {args.rounds} rounds): {line}")


if __name__ == "__main__":
    main()

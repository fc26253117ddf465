"""Summarise bench/results/*.json (written by bench/quality.sh) as a Markdown table:
test NDCG@10 and HR@10 as mean ± std over seeds per dataset and variant, beside the
most-popular baseline, with epochs and training time.

Usage: python bench/summarize_quality.py
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main() -> None:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for path in sorted(RESULTS.glob("*.json")):
        dataset = path.stem.rsplit("-seed", 1)[0]
        for variant in ("behavior-only", "full"):
            if dataset.endswith(f"-{variant}"):
                groups[(dataset.removesuffix(f"-{variant}"), variant)].append(
                    json.loads(path.read_text())
                )
    print("| dataset | variant | seeds | test NDCG@10 | test HR@10 | epochs (best) | minutes |")
    print("|---|---|---|---|---|---|---|")
    for (dataset, variant), runs in sorted(groups.items()):
        ndcg = [r["test"]["ndcg@10"] for r in runs]
        hr = [r["test"]["hr@10"] for r in runs]
        epochs = ", ".join(f"{r['epochs_run']} ({r['best_epoch']})" for r in runs)
        minutes = ", ".join(f"{r['train_seconds'] / 60:.0f}" for r in runs)
        seeds = ", ".join(str(r["seed"]) for r in runs)
        cells = [dataset, variant, seeds, mean_std(ndcg), mean_std(hr), epochs, minutes]
        print("| " + " | ".join(cells) + " |")
        if variant == "behavior-only":
            pop = runs[0]["most_popular"]["test"]
            cells = [dataset, "most popular", "-", f"{pop['ndcg@10']:.4f}", f"{pop['hr@10']:.4f}"]
            print("| " + " | ".join(cells) + " | - | - |")


if __name__ == "__main__":
    main()

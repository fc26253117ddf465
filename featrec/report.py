"""Ablation statistics and the report (Markdown, CSV, PNG), from stored results only.

Per variant: test NDCG@10 and HR@10 as mean ± std over seeds. Against behavior-only and
against full: the paired per-user difference (each user's metric averaged over seeds),
its 95% bootstrap confidence interval over users, and a paired t-test p-value. A
difference whose interval excludes zero is labelled; otherwise it is "not distinguishable
from zero".
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from featrec.errors import FeatrecError

METRICS = ("ndcg@10", "hr@10")
REFERENCES = ("behavior-only", "full")


def per_user_metric(ranks: np.ndarray, metric: str) -> np.ndarray:
    """HR@K / NDCG@K of each user from 0-based target ranks."""
    name, k = metric.split("@")
    hit = ranks < int(k)
    if name == "hr":
        return hit.astype(float)
    return np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)


def bootstrap_ci(
    differences: np.ndarray, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of paired per-user differences."""
    rng = np.random.default_rng(seed)
    n = len(differences)
    means = np.empty(resamples)
    for start in range(0, resamples, 250):  # chunks keep memory at 250 x n
        count = min(250, resamples - start)
        picks = rng.integers(0, n, size=(count, n))
        means[start : start + count] = differences[picks].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired_p_value(differences: np.ndarray) -> float:
    """Two-sided paired t-test of mean difference zero."""
    from scipy import stats  # scipy comes with scikit-learn

    if np.allclose(differences, differences[0]):
        return 1.0 if differences[0] == 0 else 0.0
    return float(stats.ttest_1samp(differences, 0.0).pvalue)


@dataclass
class VariantResult:
    name: str
    seeds: list[int]
    test: dict[str, list[float]]  # metric → one value per seed
    per_user: dict[str, pl.DataFrame]  # metric → user_id, value (seed-averaged)


def load_results(ablation_dir: Path) -> dict[str, VariantResult]:
    runs = ablation_dir / "runs"
    if not runs.is_dir():
        raise FeatrecError(f"{ablation_dir}: no runs/ folder; run featrec ablate first")
    results = {}
    for variant_dir in sorted(p for p in runs.iterdir() if p.is_dir()):
        finished = sorted(variant_dir.glob("seed*/final_metrics.json"))
        if not finished:
            continue
        seeds, test, frames = [], {m: [] for m in METRICS}, []
        for path in finished:
            final = json.loads(path.read_text(encoding="utf-8"))
            seeds.append(int(final["seed"]))
            for metric in METRICS:
                test[metric].append(final["test"][metric])
            ranks = pl.read_parquet(path.parent / "ranks.parquet").filter(pl.col("split") == "test")
            frames.append(ranks.with_columns(pl.lit(final["seed"]).alias("seed")))
        ranks = pl.concat(frames)
        per_user = {}
        for metric in METRICS:
            values = per_user_metric(ranks["rank"].to_numpy(), metric)
            per_user[metric] = (
                ranks.with_columns(pl.Series("value", values))
                .group_by("user_id")
                .agg(pl.col("value").mean())
                .sort("user_id")
            )
        results[variant_dir.name] = VariantResult(variant_dir.name, seeds, test, per_user)
    if not results:
        raise FeatrecError(f"{ablation_dir}: no finished runs to report yet")
    return results


def compare(result: VariantResult, reference: VariantResult, metric: str) -> dict[str, float]:
    """Paired difference (variant - reference) over the users both evaluated."""
    joined = result.per_user[metric].join(reference.per_user[metric], on="user_id", suffix="_ref")
    differences = (joined["value"] - joined["value_ref"]).to_numpy()
    low, high = bootstrap_ci(differences)
    reference_mean = float(joined["value_ref"].mean())
    return {
        "diff": float(differences.mean()),
        "relative": float(differences.mean()) / reference_mean if reference_mean else math.nan,
        "ci_low": low,
        "ci_high": high,
        "p": paired_p_value(differences),
        "users": len(differences),
    }


def verdict(name: str, against: str, comparison: dict[str, float]) -> str:
    """What the difference says about the features the variant adds or removes."""
    if comparison["ci_low"] <= 0.0 <= comparison["ci_high"]:
        return "not distinguishable from zero"
    better = comparison["ci_low"] > 0
    if name.startswith("-") and against == "full":
        return f"{name[1:]} {'hurts' if better else 'helps'}"
    return "helps" if better else "hurts"


def summarize(ablation_dir: Path) -> list[dict]:
    results = load_results(ablation_dir)
    rows = []
    for name, result in results.items():
        row: dict = {"variant": name, "seeds": len(result.seeds)}
        for metric in METRICS:
            values = result.test[metric]
            row[f"{metric} mean"] = float(np.mean(values))
            row[f"{metric} std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        for reference in REFERENCES:
            if reference not in results or reference == name:
                continue
            for metric in METRICS:
                comparison = compare(result, results[reference], metric)
                for key, value in comparison.items():
                    row[f"{metric} vs {reference} {key}"] = value
            row[f"vs {reference}"] = verdict(
                name, reference, compare(result, results[reference], "ndcg@10")
            )
        rows.append(row)
    order = {"full": 0, "behavior-only": 1}
    rows.sort(
        key=lambda r: (
            order.get(r["variant"], 2),
            r["variant"].startswith("behavior+"),
            r["variant"],
        )
    )
    return rows


def _format_diff(row: dict, metric: str, reference: str) -> str:
    key = f"{metric} vs {reference}"
    if f"{key} diff" not in row:
        return "-"
    return (
        f"{row[f'{key} diff']:+.4f} ({row[f'{key} relative']:+.1%}) "
        f"[{row[f'{key} ci_low']:+.4f}, {row[f'{key} ci_high']:+.4f}] p={row[f'{key} p']:.3g}"
    )


def write_report(ablation_dir: Path) -> list[Path]:
    """report.md, report.csv and report.png in ``ablation_dir``; returns their paths."""
    rows = summarize(ablation_dir)
    markdown = [
        f"# Ablation report: {ablation_dir.name}",
        "",
        "Test split, leave-one-out, full ranking. Mean ± std over seeds; Δ = paired per-user "
        "difference of the seed-averaged metric, [95% bootstrap CI over users], paired t-test p.",
        "",
        "| variant | seeds | NDCG@10 | HR@10 | Δ NDCG@10 vs behavior-only | Δ NDCG@10 vs full | "
        "verdict vs behavior-only | verdict vs full |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [
            row["variant"],
            str(row["seeds"]),
            f"{row['ndcg@10 mean']:.4f} ± {row['ndcg@10 std']:.4f}",
            f"{row['hr@10 mean']:.4f} ± {row['hr@10 std']:.4f}",
            _format_diff(row, "ndcg@10", "behavior-only"),
            _format_diff(row, "ndcg@10", "full"),
            row.get("vs behavior-only", "-"),
            row.get("vs full", "-"),
        ]
        markdown.append("| " + " | ".join(cells) + " |")
    md_path = ablation_dir / "report.md"
    md_path.write_text("\n".join(markdown) + "\n", encoding="utf-8")

    csv_path = ablation_dir / "report.csv"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)

    png_path = ablation_dir / "report.png"
    _chart(ablation_dir, rows, png_path)
    return [md_path, csv_path, png_path]


def _chart(ablation_dir: Path, rows: list[dict], path: Path) -> None:
    """NDCG@10 per variant; bars: 95% bootstrap CI of the mean over users."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = load_results(ablation_dir)
    names = [row["variant"] for row in rows]
    means, errors = [], [[], []]
    for name in names:
        values = results[name].per_user["ndcg@10"]["value"].to_numpy()
        mean = float(values.mean())
        low, high = bootstrap_ci(values - 0.0)
        means.append(mean)
        errors[0].append(mean - low)
        errors[1].append(high - mean)
    figure, axis = plt.subplots(figsize=(max(6, 0.7 * len(names)), 4))
    axis.bar(range(len(names)), means, yerr=errors, capsize=3, color="tab:blue")
    axis.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axis.set_ylabel("test NDCG@10 (95% CI over users)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)

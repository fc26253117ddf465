"""Ablation statistics and the report (Markdown, CSV, PNG), from stored results only.

Per variant: every test metric as mean ± std over seeds (the mean alone for one seed).
Against behavior-only and against full: the paired per-user difference of each full-ranking
metric (each user's metric averaged over seeds), its 95% bootstrap confidence interval over
users, and a paired t-test p-value. A difference whose interval excludes zero is labelled;
otherwise it is "not distinguishable from zero". The headline metric is the spec's
``eval.primary``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import yaml

from featrec.errors import FeatrecError, SpecError, first_line
from featrec.formulas import per_user_metric
from featrec.spec import Spec, load_spec

log = logging.getLogger(__name__)

REFERENCES = ("behavior-only", "full")
MOST_POPULAR = "most-popular"
EMBEDDING_MLP = "embedding-mlp"
DIN = "din"
BASELINES = (MOST_POPULAR, EMBEDDING_MLP, DIN)
OVERRIDES_FILE = "overrides.yaml"  # settings of single variants: {variant: [KEY=VALUE, ...]}


def is_baseline(name: str) -> bool:
    """A baseline row: most-popular (all-time or over the last days), Embedding&MLP, DIN."""
    return name in BASELINES or name.startswith(f"{MOST_POPULAR}-")


RANK_METRICS = ("ndcg", "hr", "mrr")  # computable per user from the stored target ranks
LABELS = {"ndcg": "NDCG", "hr": "HR", "mrr": "MRR"}


def label(metric: str) -> str:
    """``ndcg@10`` → ``NDCG@10``."""
    name, _, k = metric.partition("@")
    return f"{LABELS.get(name, name)}@{k}"


def headline(primary: str) -> tuple[str, str]:
    """The primary metric and its companion at the same K (HR beside NDCG, else NDCG)."""
    name, k = primary.split("@")
    return primary, f"{'hr' if name == 'ndcg' else 'ndcg'}@{k}"


def bootstrap_ci(
    differences: np.ndarray, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of paired per-user differences."""
    low, high = bootstrap_cis(differences[:, None], resamples, seed, level)
    return float(low[0]), float(high[0])


def bootstrap_cis(
    differences: np.ndarray, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`bootstrap_ci` of each column of ``differences`` (users by metrics), all over
    the same resamples of users."""
    rng = np.random.default_rng(seed)
    n, columns = differences.shape
    means = np.empty((resamples, columns))
    for start in range(0, resamples, 250):  # chunks keep memory at 250 x n
        count = min(250, resamples - start)
        picks = rng.integers(0, n, size=(count, n))
        for column in range(columns):
            means[start : start + count, column] = differences[picks, column].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail], axis=0)
    return low, high


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
    test: dict[str, list[float]]  # every stored test metric → one value per seed
    per_user: pl.DataFrame  # user_id and one column per full-ranking metric, seed-averaged
    minutes: list[float]  # each seed's training time (its epochs' seconds summed); [] if none


def ablation_spec(ablation_dir: Path) -> Spec:
    """The spec the ablation's variants were made from (its ``spec.yaml``)."""
    path = ablation_dir / "spec.yaml"
    if not path.is_file():
        raise FeatrecError(f"{ablation_dir}: no spec.yaml; not an ablation directory")
    return load_spec(path)


def variant_overrides(ablation_dir: Path) -> dict[str, list[str]]:
    """The settings of single variants recorded in ``ablation_dir`` ({} when none)."""
    path = ablation_dir / OVERRIDES_FILE
    if not path.is_file():
        return {}
    try:
        recorded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise FeatrecError(f"{path}: cannot read ({err})") from None
    valid = isinstance(recorded, dict) and all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(t, str) for t in v)
        for k, v in recorded.items()
    )
    if not valid:
        raise FeatrecError(
            f"{path}: expected a mapping of variant names to lists of KEY=VALUE settings "
            "(featrec ablate writes it)"
        )
    return recorded


def rank_metrics(spec: Spec) -> list[str]:
    return [f"{name}@{k}" for name in RANK_METRICS for k in spec.eval.ks]


def load_results(
    ablation_dir: Path, metrics: list[str], spec: Spec | None = None
) -> dict[str, VariantResult]:
    """Every finished run's test metrics and per-user ranks, by variant. With ``spec`` (the
    ablation's), a run evaluated on other data or another protocol is refused: its users
    and metrics would not pair with the others'."""
    runs = ablation_dir / "runs"
    if not runs.is_dir():
        raise FeatrecError(f"{ablation_dir}: no runs/ folder; run featrec ablate first")
    results = {}
    for variant_dir in sorted(p for p in runs.iterdir() if p.is_dir()):
        finished = sorted(variant_dir.glob("seed*/final_metrics.json"))
        if not finished:
            continue
        seeds, tests, frames, minutes = [], [], [], []
        for path in finished:
            if spec is not None:
                _check_protocol(path.parent, spec)
            final = _read_result(path, lambda p: json.loads(p.read_text(encoding="utf-8")))
            if not isinstance(final, dict) or "seed" not in final or "test" not in final:
                raise FeatrecError(f"{path}: not a featrec result (no seed or test metrics)")
            seeds.append(int(final["seed"]))
            tests.append(final["test"])
            if (spent := training_minutes(path.parent / "metrics.csv")) is not None:
                minutes.append(spent)
            ranks = _read_result(path.parent / "ranks.parquet", pl.read_parquet)
            frames.append(ranks.filter(pl.col("split") == "test"))
        keys = [key for key in tests[0] if all(key in test for test in tests)]
        ranks = pl.concat(frames)
        values = ranks["rank"].to_numpy()
        per_user = (
            ranks.select("user_id")
            .with_columns(pl.Series(m, per_user_metric(values, m)) for m in metrics)
            .group_by("user_id")
            .agg(pl.col(metrics).mean())
            .sort("user_id")
        )
        test = {key: [t[key] for t in tests] for key in keys}
        results[variant_dir.name] = VariantResult(variant_dir.name, seeds, test, per_user, minutes)
    if not results:
        raise FeatrecError(f"{ablation_dir}: no finished runs to report yet")
    return results


def _read_result(path: Path, read):
    """``read(path)``, or one FeatrecError naming the file (missing or damaged)."""
    try:
        return read(path)
    except (OSError, ValueError, UnicodeDecodeError, pl.exceptions.PolarsError) as err:
        raise FeatrecError(
            f"{path}: missing or damaged ({first_line(err)[:120]}); train that pair again "
            "(remove its folder, then rerun featrec ablate)"
        ) from None


def _check_protocol(run: Path, spec: Spec) -> None:
    """The run's data and evaluation are the ablation's, or one FeatrecError naming them
    (an untrained baseline's folder holds no spec: it is the ablation's)."""
    if not (run / "spec.yaml").is_file():
        return
    try:
        own = load_spec(run / "spec.yaml")
    except (FeatrecError, SpecError) as err:
        raise FeatrecError(first_line(err)[:200]) from None
    for part in ("data", "eval"):
        if _comparable(getattr(own, part)) != _comparable(getattr(spec, part)):
            raise FeatrecError(
                f"{run}: trained with another {part} section than the ablation's spec.yaml; "
                "its users and metrics do not pair with the others': report it apart"
            )


def _comparable(section) -> dict:
    """A spec section as compared across machines: data files by name (a shard or a run
    trained elsewhere read them from another folder)."""
    dumped = section.model_dump(mode="json")
    for table in ("interactions", "users", "items"):
        if dumped.get(table):
            dumped[table] = Path(dumped[table]).name
    return dumped


def unfinished_runs(ablation_dir: Path) -> list[str]:
    """The (variant, seed) folders without results (still training, or stopped)."""
    runs = ablation_dir / "runs"
    return [
        f"{seed.parent.name} {seed.name}"
        for seed in sorted(runs.glob("*/seed*"))
        if seed.is_dir() and not (seed / "final_metrics.json").is_file()
    ]


def training_minutes(path: Path) -> float | None:
    """A run's training time in minutes from its ``metrics.csv`` (the epochs' ``seconds``,
    the last row of each epoch: a run resumed from checkpoints counts whole); None for runs
    that keep no epochs (most-popular) or an unreadable file."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            epochs = {row["epoch"]: float(row["seconds"]) for row in csv.DictReader(handle)}
    except (OSError, KeyError, ValueError, TypeError):
        return None
    return sum(epochs.values()) / 60.0 if epochs else None


def compare(
    result: VariantResult, reference: VariantResult, metrics: list[str]
) -> dict[str, dict[str, float]]:
    """Paired differences (variant - reference) of each metric over the users both
    evaluated: metric → diff, relative, ci_low, ci_high, p, users."""
    joined = result.per_user.join(reference.per_user, on="user_id", suffix="_ref")
    differences = np.stack([(joined[m] - joined[f"{m}_ref"]).to_numpy() for m in metrics], axis=1)
    lows, highs = bootstrap_cis(differences)
    out = {}
    for column, metric in enumerate(metrics):
        mean = float(differences[:, column].mean())
        reference_mean = float(joined[f"{metric}_ref"].mean())
        out[metric] = {
            "diff": mean,
            "relative": mean / reference_mean if reference_mean else math.nan,
            "ci_low": float(lows[column]),
            "ci_high": float(highs[column]),
            "p": paired_p_value(differences[:, column]),
            "users": len(differences),
        }
    return out


def reference_of(name: str, reference: str) -> str:
    """The run a variant is compared with as ``reference``: full is the full variant of the
    variant's own fusion method (``-item@nova`` against ``full@nova``); ``full@nova`` itself,
    and every plain name, against the spec's ``full``."""
    _, _, method = name.partition("@")
    if reference == "full" and method and name != f"full@{method}":
        return f"full@{method}"
    return reference


def verdict(name: str, against: str, comparison: dict[str, float]) -> str:
    """What the difference says about the features the variant adds or removes."""
    if comparison["ci_low"] <= 0.0 <= comparison["ci_high"]:
        return "not distinguishable from zero"
    better = comparison["ci_low"] > 0
    if is_baseline(name):
        return "better" if better else "worse"
    if against == "behavior-only":  # the variant adds its features to the ids
        return "its features help" if better else "its features hurt"
    if name == "behavior-only":
        return "features hurt" if better else "features help"
    if name.startswith("behavior+"):  # full adds the other scopes to this one
        return "the other scopes hurt" if better else "the other scopes help"
    if name.startswith("-"):  # full adds back what this variant removed
        return f"{name[1:]} hurts" if better else f"{name[1:]} helps"
    return "better" if better else "worse"


def summarize(ablation_dir: Path) -> list[dict]:
    """One row per variant: every test metric's mean and std over seeds, the paired
    comparisons against behavior-only and full, and the verdicts on the primary metric."""
    spec = ablation_spec(ablation_dir)
    return _summarize(spec, load_results(ablation_dir, rank_metrics(spec), spec))


def _summarize(spec: Spec, results: dict[str, VariantResult]) -> list[dict]:
    metrics = rank_metrics(spec)
    rows = []
    for name, result in results.items():
        row: dict = {"variant": name, "seeds": len(result.seeds)}
        row["train minutes"] = float(np.median(result.minutes)) if result.minutes else math.nan
        for metric, values in result.test.items():
            row[f"{metric} mean"] = float(np.mean(values))
            row[f"{metric} std"] = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
        for reference in REFERENCES:
            against = reference_of(name, reference)
            if against not in results or against == name:
                continue
            comparisons = compare(result, results[against], metrics)
            for metric, comparison in comparisons.items():
                for key, value in comparison.items():
                    row[f"{metric} vs {reference} {key}"] = value
            # against full@<method>, "-item@<method>" reads as "-item" does against full
            base = name.partition("@")[0] if against != reference else name
            row[f"vs {reference}"] = verdict(base, reference, comparisons[spec.eval.primary])
        rows.append(row)
    order = {"full": 0, "behavior-only": 1}
    rows.sort(
        key=lambda r: (
            order.get(r["variant"], 2),
            is_baseline(r["variant"]),
            r["variant"].startswith("behavior+"),
            r["variant"],
        )
    )
    return rows


def _format_diff(row: dict, metric: str, reference: str) -> str:
    key = f"{metric} vs {reference}"
    if f"{key} diff" not in row:
        return "-"
    relative = row[f"{key} relative"]  # undefined where the reference's mean is 0
    share = f" ({relative:+.1%})" if math.isfinite(relative) else ""
    return (
        f"{row[f'{key} diff']:+.4f}{share} "
        f"[{row[f'{key} ci_low']:+.4f}, {row[f'{key} ci_high']:+.4f}] p={row[f'{key} p']:.3g}"
    )


def _mean_std(row: dict, metric: str) -> str:
    if f"{metric} mean" not in row:
        return "-"
    if math.isnan(row[f"{metric} std"]):  # one seed: no spread to show
        return f"{row[f'{metric} mean']:.4f}"
    return f"{row[f'{metric} mean']:.4f} ± {row[f'{metric} std']:.4f}"


def _protocol(spec: Spec) -> str:
    split = "leave-one-out" if spec.eval.split == "leave_one_out" else "global temporal split"
    seen = ", seen items excluded" if spec.eval.exclude_seen else ""
    return f"Test split, {split}, ranking against all items{seen}"


def _seed_note(rows: list[dict]) -> list[str]:
    counts = {row["seeds"] for row in rows}
    if len(counts) < 2:
        return []
    listed = "; ".join(f"{row['variant']} {row['seeds']}" for row in rows)
    return [
        "",
        f"Seeds per variant differ ({listed}): each Δ pairs users' metrics averaged over the "
        "seeds each side has, so a side with fewer seeds carries more seed-to-seed noise.",
    ]


def write_report(ablation_dir: Path) -> list[Path]:
    """report.md, report.csv and report.png in ``ablation_dir``; returns their paths."""
    spec = ablation_spec(ablation_dir)
    results = load_results(ablation_dir, rank_metrics(spec), spec)
    rows = _summarize(spec, results)
    pending = unfinished_runs(ablation_dir)
    if pending:
        log.warning("not in the report (no results yet): %s", ", ".join(pending))
    first, second = headline(spec.eval.primary)
    markdown = [
        f"# Ablation report: {ablation_dir.name}",
        "",
        f"{_protocol(spec)}. Mean ± std over seeds; Δ = paired per-user difference of the "
        "seed-averaged metric, [95% bootstrap CI over users], paired t-test p; training minutes: "
        "the median over seeds of the epochs' training time. Verdicts on "
        f"{label(first)}. `X@method`: variant X with fusion.method = method (the spec's: "
        f'{spec.fusion.method}); its "full" is full@method.',
        "",
        f"| variant | seeds | {label(first)} | {label(second)} | Δ {label(first)} vs "
        f"behavior-only | Δ {label(first)} vs full | verdict vs behavior-only | verdict vs full "
        "| training min per run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [
            row["variant"],
            str(row["seeds"]),
            _mean_std(row, first),
            _mean_std(row, second),
            _format_diff(row, first, "behavior-only"),
            _format_diff(row, first, "full"),
            row.get("vs behavior-only", "-"),
            row.get("vs full", "-"),
            "-" if math.isnan(row["train minutes"]) else f"{row['train minutes']:.1f}",
        ]
        markdown.append("| " + " | ".join(cells) + " |")
    markdown += _seed_note(rows)
    if pending:
        markdown += ["", f"Not in this report (no results yet): {', '.join(pending)}."]
    absent = [name for name in ("behavior-only", "full") if name not in results]
    if absent:
        markdown += [
            "",
            f"No finished {' or '.join(absent)} run: the Δ columns against "
            f"{'them' if len(absent) > 1 else 'it'} are empty.",
        ]
    overrides = variant_overrides(ablation_dir)
    if overrides:
        settings = "; ".join(f"{name}: {', '.join(texts)}" for name, texts in overrides.items())
        markdown += ["", f"Settings of single variants (`--set VARIANT:KEY=VALUE`): {settings}."]
    metrics = list(
        dict.fromkeys(k.removesuffix(" mean") for row in rows for k in row if k.endswith(" mean"))
    )
    markdown += [
        "",
        "## Every metric",
        "",
        "| variant | metric | mean ± std | Δ vs behavior-only | Δ vs full |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        for metric in metrics:
            cells = [
                row["variant"],
                label(metric),
                _mean_std(row, metric),
                _format_diff(row, metric, "behavior-only"),
                _format_diff(row, metric, "full"),
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
    _chart(results, rows, first, png_path)
    return [md_path, csv_path, png_path]


def _chart(results: dict[str, VariantResult], rows: list[dict], metric: str, path: Path) -> None:
    """The primary metric per variant; bars: 95% bootstrap CI of the mean over users."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["variant"] for row in rows]
    means, errors = [], [[], []]
    for name in names:
        values = results[name].per_user[metric].to_numpy()
        mean = float(values.mean())
        low, high = bootstrap_ci(values)
        means.append(mean)
        errors[0].append(mean - low)
        errors[1].append(high - mean)
    figure, axis = plt.subplots(figsize=(max(6, 0.7 * len(names)), 4))
    axis.bar(range(len(names)), means, yerr=errors, capsize=3, color="tab:blue")
    axis.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axis.set_ylabel(f"test {label(metric)} (95% CI over users)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)

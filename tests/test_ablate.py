"""Ablation variants, resumable runs, bootstrap statistics and the report."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from featrec.ablate import aliases, run_ablation, run_dir, select, split_overrides, variants
from featrec.cli import main
from featrec.errors import FeatrecError
from featrec.report import bootstrap_ci, label, paired_p_value, verdict, write_report
from featrec.spec import load_spec
from featrec.train import Experiment
from tests.conftest import write_spec


@pytest.fixture
def quick(tiny_spec_body: dict) -> dict:
    tiny_spec_body["train"] = {"epochs": 2, "batch_size": 3, "warmup_steps": 1}
    return tiny_spec_body


def test_variants_are_spec_transformations(tmp_path: Path, quick: dict) -> None:
    spec = load_spec(write_spec(tmp_path, quick))
    found = variants(spec)
    assert list(found)[:2] == ["full", "behavior-only"]
    assert {"-item", "-user", "-event", "behavior+item", "behavior+user", "behavior+event"} <= set(
        found
    )
    assert {f"-{f.name}" for f in spec.features} <= set(found)
    assert {"most-popular", "embedding-mlp"} <= set(found)
    names = lambda v: sorted(f.name for f in found[v].spec.features)  # noqa: E731
    assert names("-user") == ["device", "rating", "tags", "time", "year"]
    assert names("behavior+event") == ["device", "rating", "time"]
    assert names("-year") == ["age", "device", "job", "rating", "tags", "time"]
    assert found["behavior-only"].spec.features == []
    assert found["embedding-mlp"].spec.model.kind == "embedding_mlp"
    for variant in found.values():  # everything but the features and model stays the same
        same = variant.spec.model_dump(exclude={"features", "model", "train"})
        assert same == spec.model_dump(exclude={"features", "model", "train"})
        loss = {"loss": "sampled_softmax"} if variant.name == "din" else {}
        assert variant.spec.train == spec.train.model_copy(update=loss)  # DIN: sampled
    model = Experiment.from_spec(found["behavior-only"].spec).model
    assert not [n for n, _ in model.named_parameters() if n.startswith(("features.", "fusion."))]


def test_unknown_variant_lists_the_known_ones(tmp_path: Path, quick: dict) -> None:
    spec = load_spec(write_spec(tmp_path, quick))
    with pytest.raises(FeatrecError, match=r"unknown variant\(s\) -color; this spec has: full"):
        run_ablation(spec, tmp_path / "abl", 1, ["-color"])


def test_interrupted_ablation_resumes_without_recomputing(tmp_path: Path, quick: dict) -> None:
    spec = load_spec(write_spec(tmp_path, quick))
    out = tmp_path / "abl"
    chosen = ["behavior-only", "-rating", "most-popular"]

    def stop_after_first(variant: str, seed: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_ablation(spec, out, 1, chosen, on_run_end=stop_after_first)
    first = run_dir(out, "behavior-only", 0) / "final_metrics.json"
    stamp = first.stat().st_mtime_ns
    trained = run_ablation(spec, out, 1, chosen)
    assert trained == [("-rating", 0), ("most-popular", 0)]
    assert first.stat().st_mtime_ns == stamp  # the finished pair was not rerun
    assert run_ablation(spec, out, 1, chosen) == []  # all done: nothing trains
    final = json.loads((run_dir(out, "-rating", 0) / "final_metrics.json").read_text())
    assert final["variant"] == "-rating" and "rating" not in final["features"]


def test_an_ablation_directory_holds_one_spec(tmp_path: Path, quick: dict) -> None:
    out = tmp_path / "abl"
    run_ablation(load_spec(write_spec(tmp_path, quick)), out, 1, ["most-popular"])
    other = load_spec(write_spec(tmp_path, quick), ["model.dim=24"])
    dim = load_spec(write_spec(tmp_path, quick)).model.dim
    with pytest.raises(FeatrecError, match="holds an ablation of a different spec") as err:
        run_ablation(other, out, 1, ["most-popular"])
    assert f"model.dim: {dim} → 24" in str(err.value)  # says where


def test_a_spec_stored_before_a_new_field_still_matches(tmp_path: Path, quick: dict) -> None:
    out = tmp_path / "abl"
    spec = load_spec(write_spec(tmp_path, quick))
    run_ablation(spec, out, 1, ["most-popular"])
    stored = yaml.safe_load((out / "spec.yaml").read_text(encoding="utf-8"))
    del stored["train"]["crop_prob"]  # as written by a featrec without that field
    (out / "spec.yaml").write_text(yaml.safe_dump(stored), encoding="utf-8")
    assert run_ablation(spec, out, 1, ["most-popular"]) == []  # finished: not rerun
    stored["train"]["crop_prob"] = 0.5  # a real difference still refuses
    (out / "spec.yaml").write_text(yaml.safe_dump(stored), encoding="utf-8")
    with pytest.raises(FeatrecError, match=r"crop_prob: 0.5 → 0.0; choose another --out"):
        run_ablation(spec, out, 1, ["most-popular"])


def test_bootstrap_interval_covers_a_known_difference() -> None:
    rng = np.random.default_rng(11)
    base = rng.random(4000)
    other = base + 0.03 + rng.normal(0, 0.2, 4000)  # true mean difference 0.03
    low, high = bootstrap_ci(other - base, resamples=1000, seed=1)
    assert low < 0.03 < high and low > 0  # covers the truth, excludes zero
    assert paired_p_value(other - base) < 1e-3
    low, high = bootstrap_ci(rng.normal(0, 0.2, 4000), resamples=1000)
    assert low < 0 < high


def test_verdicts() -> None:
    up = {"ci_low": 0.01, "ci_high": 0.02}
    down = {"ci_low": -0.02, "ci_high": -0.01}
    both = {"ci_low": -0.01, "ci_high": 0.02}
    assert verdict("full", "behavior-only", up) == "its features help"
    assert verdict("-user", "behavior-only", down) == "its features hurt"
    assert verdict("behavior-only", "full", down) == "features help"
    assert verdict("-genres", "full", down) == "genres helps"
    assert verdict("-genres", "full", up) == "genres hurts"
    assert verdict("behavior+user", "full", down) == "the other scopes help"
    assert verdict("embedding-mlp", "full", down) == "worse"
    assert verdict("most-popular", "behavior-only", up) == "better"
    assert verdict("-genres", "full", both) == "not distinguishable from zero"


def test_variants_with_the_same_features_are_trained_once(
    tmp_path: Path, quick: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    quick["features"] = [f for f in quick["features"] if f["name"] != "age"]  # user: job only
    path = write_spec(tmp_path, quick)
    spec = load_spec(path)
    found = variants(spec)
    assert found["-job"] is found["-user"]  # the same features: one variant, two names
    assert aliases(found) == {"-job": "-user"}
    assert [v.name for v in select(found, ["-job", "-user", "full"])] == ["-user", "full"]
    assert [v.name for v in select(found, None)].count("-user") == 1
    assert main(["-q", "ablate", str(path), "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert any(line.split() == ["-job", "same", "as", "-user"] for line in listed)
    assert main(["-q", "ablate", str(path), "--list", "--variants", "-job", "full"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == [
        "full", "-user", "-job"
    ]  # fmt: skip
    assert main(["-q", "ablate", str(path), "--list", "--variants", "-nosuch"]) == 2
    assert main(["-q", "ablate", str(path), "--list", "--seeds", "0"]) == 2
    assert "unknown variant(s) -nosuch" in capsys.readouterr().err


def test_a_feature_named_like_a_scope_keeps_its_own_variant(tmp_path: Path, quick: dict) -> None:
    for feature in quick["features"]:
        if feature["name"] == "job":
            feature["name"] = "user"
    found = variants(load_spec(write_spec(tmp_path, quick)))
    assert sorted(f.name for f in found["-user"].spec.features) == sorted(
        ["tags", "year", "time", "device", "rating"]
    )
    assert "user" not in {f.name for f in found["-user.user"].spec.features}
    assert "age" in {f.name for f in found["-user.user"].spec.features}


def test_report_renders_from_stored_results_only(
    tmp_path: Path, quick: dict, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = str(write_spec(tmp_path, quick))
    out = tmp_path / "abl"
    code = main(["-q", "ablate", spec, "--seeds", "2", "--out", str(out),
                 "--variants", "full", "behavior-only", "most-popular"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "| full | 2 |" in printed and "| most-popular | 2 |" in printed
    for path in out.rglob("*.pt"):
        path.unlink()  # no weights left: the report must not need them

    def no_training(*args, **kwargs):
        raise AssertionError("report must not train")

    monkeypatch.setattr("featrec.train.train", no_training)
    monkeypatch.setattr("featrec.ablate.train", no_training)
    assert main(["-q", "report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert "Δ NDCG@10 vs behavior-only" in report
    full_row = next(line for line in report.splitlines() if line.startswith("| full |"))
    assert "[" in full_row and "p=" in full_row
    assert (out / "report.csv").read_text().startswith("variant,seeds,")
    assert (out / "report.png").stat().st_size > 1000
    paths = write_report(out)
    assert [p.name for p in paths] == ["report.md", "report.csv", "report.png"]
    # what the report leaves out is said; damaged or foreign results are refused by name
    import shutil

    shutil.copytree(out, tmp_path / "cut")
    cut = tmp_path / "cut" / "runs"
    (cut / "full" / "seed1" / "final_metrics.json").unlink()  # as if still training
    shutil.rmtree(cut / "behavior-only")
    assert main(["-q", "report", str(tmp_path / "cut")]) == 0
    report = (tmp_path / "cut" / "report.md").read_text()
    assert "Not in this report (no results yet): full seed1." in report
    assert "No finished behavior-only run: the Δ columns against it are empty." in report
    (cut / "full" / "seed0" / "ranks.parquet").write_text("garbage")
    assert main(["-q", "report", str(tmp_path / "cut")]) == 2
    err = capsys.readouterr().err
    assert "cut/runs/full/seed0/ranks.parquet: missing or damaged" in err
    other = (out / "runs" / "full" / "seed0" / "spec.yaml").read_text()
    other = other.replace("exclude_seen: true", "exclude_seen: false")
    (out / "runs" / "full" / "seed0" / "spec.yaml").write_text(other)
    assert main(["-q", "report", str(out)]) == 2
    assert "trained with another eval section than the ablation's" in capsys.readouterr().err


def test_report_follows_the_primary_metric_and_lists_every_metric(
    tmp_path: Path, quick: dict
) -> None:
    quick["eval"] = {"ks": [5, 20], "primary": "hr@5"}
    spec = load_spec(write_spec(tmp_path, quick))
    out = tmp_path / "abl"
    run_ablation(spec, out, 2, ["behavior-only", "full"])
    run_ablation(spec, out, 1, ["most-popular"])
    write_report(out)
    report = (out / "report.md").read_text()
    assert "| variant | seeds | HR@5 | NDCG@5 | Δ HR@5 vs behavior-only |" in report
    assert "Verdicts on HR@5" in report and "NDCG@10" not in report
    assert "Seeds per variant differ (full 2; behavior-only 2; most-popular 1)" in report
    every = [line for line in report.split("## Every metric")[1].splitlines() if "| full |" in line]
    assert [line.split(" | ")[1] for line in every] == [
        label(f"{m}@{k}") for m in ("hr", "ndcg", "mrr") for k in (5, 20)
    ]
    header = (out / "report.csv").read_text().splitlines()[0].split(",")
    assert "mrr@20 vs behavior-only ci_low" in header and "hr@5 vs full p" in header


def test_report_gives_each_variant_its_median_training_minutes(tmp_path: Path, quick: dict) -> None:
    """The last column: the median over seeds of each run's epoch seconds (metrics.csv),
    each epoch once (a resumed run's repeated epoch counts its last row); "-" for a
    baseline that trains nothing."""
    spec = load_spec(write_spec(tmp_path, quick))
    out = tmp_path / "abl"
    run_ablation(spec, out, 3, ["full"])
    run_ablation(spec, out, 1, ["most-popular"])
    minutes = []
    for seed, seconds in enumerate((60.0, 600.0, 120.0)):
        path = run_dir(out, "full", spec.train.seed + seed) / "metrics.csv"
        rows = list(csv.DictReader(path.open()))
        rows.append(dict(rows[-1]))  # the last epoch again, as a resume would write it
        for row in rows:
            row["seconds"] = str(seconds / len(rows))
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        minutes.append(seconds / 60 * (len(rows) - 1) / len(rows))
    write_report(out)
    lines = (out / "report.md").read_text().splitlines()
    assert lines[4].endswith("| training min per run |")
    full = next(line for line in lines if line.startswith("| full |"))
    assert full.endswith(f"| {sorted(minutes)[1]:.1f} |")
    popular = next(line for line in lines if line.startswith("| most-popular |"))
    assert popular.endswith("| - |")
    rows = {r["variant"]: r for r in csv.DictReader((out / "report.csv").open())}
    assert float(rows["full"]["train minutes"]) == pytest.approx(sorted(minutes)[1])


def test_ablate_list_and_errors(
    tmp_path: Path, quick: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = str(write_spec(tmp_path, quick))
    assert main(["-q", "ablate", spec, "--list"]) == 0
    assert "behavior+event" in capsys.readouterr().out
    assert main(["-q", "ablate", spec, "--seeds", "0"]) == 2
    assert "--seeds: expected at least 1" in capsys.readouterr().err
    assert main(["-q", "report", str(tmp_path / "nothing")]) == 2


def test_variant_names_with_a_leading_dash_on_the_command_line(
    tmp_path: Path, quick: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = str(write_spec(tmp_path, quick))
    out = tmp_path / "abl"
    # argparse alone takes "-rating" for an option and fails with a usage error (exit 2)
    code = main(["-q", "ablate", spec, "--seeds", "1", "--variants", "most-popular", "-rating",
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    assert (run_dir(out, "-rating", 0) / "final_metrics.json").is_file()
    assert (run_dir(out, "most-popular", 0) / "final_metrics.json").is_file()
    assert not run_dir(out, "full", 0).exists()
    capsys.readouterr()
    assert main(["-q", "ablate", spec, "--out", str(out), "--variants", "-user", "-color"]) == 2
    assert "unknown variant(s) -color;" in capsys.readouterr().err


def test_fusion_axis_compares_where_features_enter(
    tmp_path: Path, quick: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    """--fusions adds every variant with features under other fusion methods; -item@nova is
    compared with full@nova, full@nova with the spec's full."""
    quick["fusion"] = {"method": "gate"}
    spec = load_spec(write_spec(tmp_path, quick))
    found = variants(spec, ["nova", "gate", "difsr"])
    assert "full@gate" not in found  # the plain names are the spec's own method
    assert found["full@nova"].spec.fusion.method == "nova"
    assert found["-item@difsr"].spec.fusion.method == "difsr"
    assert found["-item@difsr"].spec.features == found["-item"].spec.features
    assert "behavior-only@nova" not in found and "most-popular@nova" not in found
    out = tmp_path / "abl"
    chosen = ["behavior-only", "full", "-item", "full@nova", "-item@nova"]
    assert main(["-q", "ablate", str(write_spec(tmp_path, quick)), "--seeds", "1",
                 "--fusions", "nova", "--out", str(out), "--variants", *chosen]) == 0  # fmt: skip
    rows = {r["variant"]: r for r in csv.DictReader((out / "report.csv").open())}
    assert set(rows) == set(chosen)
    assert rows["-item@nova"]["vs full"].startswith(("item ", "not distinguishable"))
    # the paired difference is against full@nova: its per-user ranks, not full's
    from featrec.report import compare, load_results, rank_metrics

    results = load_results(out, rank_metrics(spec))
    against = compare(results["-item@nova"], results["full@nova"], ["ndcg@10"])["ndcg@10"]
    assert float(rows["-item@nova"]["ndcg@10 vs full diff"]) == pytest.approx(against["diff"])
    capsys.readouterr()
    for value, message in [
        ("tpu", "--fusions tpu: unknown method 'tpu'"),
        ("gate+event", "--fusions gate+event: +SCOPE keeps scopes in the tokens beside"),
        ("nova+color", "--fusions nova+color: scopes are item, user, event, each once"),
        ("nova+event+event", "scopes are item, user, event, each once"),
    ]:
        assert main(["-q", "ablate", str(write_spec(tmp_path, quick)), "--fusions", value]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_a_fusion_axis_value_can_keep_scopes_in_the_tokens(tmp_path: Path, quick: dict) -> None:
    quick["fusion"] = {"method": "gate"}
    found = variants(load_spec(write_spec(tmp_path, quick)), ["nova+event", "nova"])
    mixed = found["full@nova+event"].spec.fusion
    assert (mixed.method, mixed.token_scopes) == ("nova", ["event"])
    assert found["full@nova"].spec.fusion.token_scopes == []
    assert found["-item@nova+event"].spec.features == found["-item"].spec.features
    assert Experiment.from_spec(found["full@nova+event"].spec).model.fused_features


def test_jobs_train_pairs_side_by_side_to_the_same_results(tmp_path: Path, quick: dict) -> None:
    spec = load_spec(write_spec(tmp_path, quick))
    chosen = ["behavior-only", "-rating", "most-popular"]
    one = run_ablation(spec, tmp_path / "one", 2, chosen)
    two = run_ablation(spec, tmp_path / "two", 2, chosen, jobs=3)
    assert sorted(one) == sorted(two) and len(two) == 6
    for name, seed in one:
        finals = [
            json.loads((run_dir(tmp_path / d, name, seed) / "final_metrics.json").read_text())
            for d in ("one", "two")
        ]
        for metric, value in finals[0]["test"].items():
            assert finals[1]["test"][metric] == pytest.approx(value, abs=1e-6), (name, metric)
    assert run_ablation(spec, tmp_path / "two", 2, chosen, jobs=3) == []  # all done already
    with pytest.raises(FeatrecError, match=r"--jobs: expected at least 1; got 0"):
        run_ablation(spec, tmp_path / "two", 2, chosen, jobs=0)


def test_two_shards_on_one_directory_make_the_unsharded_report(
    tmp_path: Path, quick: dict, capsys: pytest.CaptureFixture
) -> None:
    spec = load_spec(write_spec(tmp_path, quick))
    chosen = ["full", "behavior-only", "-rating", "most-popular"]
    whole = run_ablation(spec, tmp_path / "whole", 2, chosen)
    first = run_ablation(spec, tmp_path / "shared", 2, chosen, shard=(1, 2))
    second = run_ablation(spec, tmp_path / "shared", 2, chosen, shard=(2, 2))
    assert not set(first) & set(second) and sorted(first + second) == sorted(whole)
    assert len(first) == len(second) == 4
    reports = []
    for folder in ("whole", "shared"):
        with write_report(tmp_path / folder)[1].open(newline="") as handle:  # the csv
            rows = list(csv.DictReader(handle))
        for row in rows:
            assert row.pop("train minutes")  # wall time: differs from run to run
        reports.append(rows)
    assert reports[0] == reports[1]
    assert run_ablation(spec, tmp_path / "shared", 2, chosen, shard=(1, 2)) == []
    for bad in ((0, 2), (3, 2), (1, 0)):
        with pytest.raises(FeatrecError, match=r"--shard: expected i/n with 1 <= i <= n"):
            run_ablation(spec, tmp_path / "shared", 2, chosen, shard=bad)
    path = str(write_spec(tmp_path, quick))
    with pytest.raises(SystemExit) as exit_:
        main(["ablate", path, "--shard", "half", "--out", str(tmp_path / "x")])
    assert exit_.value.code == 2 and "expected I/N, e.g. 1/2; got 'half'" in capsys.readouterr().err


def test_a_variant_can_have_settings_of_its_own(tmp_path: Path, quick: dict) -> None:
    quick["features"] = [f for f in quick["features"] if f["name"] != "age"]  # user: job only
    spec = load_spec(write_spec(tmp_path, quick))
    found = variants(spec, overrides={"din": ["train.lr=3e-4"], "-user": ["model.dropout=0.5"]})
    assert found["din"].spec.train.lr == 3e-4 and "train.lr=3e-4" in found["din"].description
    assert found["din"].spec.model.kind == "din"  # the variant's own changes stay
    assert found["full"].spec.train.lr == spec.train.lr == variants(spec)["din"].spec.train.lr
    assert found["-user"].spec.model.dropout == 0.5 and found["-job"] is found["-user"]
    assert found["full"].spec.model.dropout == spec.model.dropout
    with pytest.raises(FeatrecError, match=r"--set -job:model.dropout=0.5: -job has the same "
                       r"features as -user .* set -user:KEY=VALUE"):  # fmt: skip
        variants(spec, overrides={"-job": ["model.dropout=0.5"]})
    with pytest.raises(FeatrecError, match=r"unknown variant 'dim'; this spec has: full"):
        variants(spec, overrides={"dim": ["train.lr=1"]})
    with pytest.raises(FeatrecError, match=r"variant din: .*train.lr"):
        variants(spec, overrides={"din": ["train.lr=-1"]})
    for text in ["eval.ks=[5]", "train.seed=3", "data.items=other.parquet", "features=[]"]:
        with pytest.raises(FeatrecError, match=r"a variant's own settings are in train\.\*, "
                           r"model\.\*, fusion\.\* but train.seed"):  # fmt: skip
            variants(spec, overrides={"din": [text]})


def test_variant_settings_on_the_command_line(
    tmp_path: Path, quick: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    assert split_overrides(["train.epochs=3", "din:train.lr=3e-4", "din:model.dim=8"]) == (
        ["train.epochs=3"],
        {"din": ["train.lr=3e-4", "model.dim=8"]},
    )
    spec = str(write_spec(tmp_path, quick))
    assert main(["-q", "ablate", spec, "--list", "--set", "din:train.lr=3e-4"]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("din ")]
    assert listed and listed[0].endswith("; train.lr=3e-4")
    for bad, says in [
        ([":train.lr=1"], "expected VARIANT:KEY=VALUE"),
        (["din:=1"], "expected VARIANT:KEY=VALUE"),
        (["din:train.lr=abc"], "variant din: "),
    ]:
        assert main(["-q", "ablate", spec, "--list", "--set", *bad]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1
    # a dash-named variant, and the settings reach the run
    assert main(["-q", "ablate", spec, "--list", "--set", "-rating:train.lr=3e-4"]) == 0
    assert "without rating; train.lr=3e-4" in capsys.readouterr().out
    abl = tmp_path / "abl"
    code = main(["-q", "ablate", spec, "--seeds", "1", "--variants", "-rating", "--set",
                 "-rating:train.lr=0.004", "--out", str(abl)])  # fmt: skip
    assert code == 0 and load_spec(run_dir(abl, "-rating", 0) / "spec.yaml").train.lr == 0.004
    out = tmp_path / "run"
    assert main(["-q", "train", spec, "--set", "din:train.lr=1", "--out", str(out)]) == 2
    assert "VARIANT:KEY=VALUE sets one variant of featrec ablate" in capsys.readouterr().err
    assert not out.exists()


def test_an_ablation_records_each_variants_settings(tmp_path: Path, quick: dict) -> None:
    spec = load_spec(write_spec(tmp_path, quick))
    out = tmp_path / "abl"
    tuned = {"behavior-only": ["train.lr=0.003"]}
    run_ablation(spec, out, 1, ["behavior-only", "most-popular"], overrides=tuned)
    stored = load_spec(run_dir(out, "behavior-only", 0) / "spec.yaml")
    assert stored.train.lr == 0.003 and spec.train.lr != 0.003
    assert yaml.safe_load((out / "overrides.yaml").read_text()) == tuned
    write_report(out)
    assert "behavior-only: train.lr=0.003" in (out / "report.md").read_text()
    # the same settings resume; other settings, or none, for a variant with runs are refused
    assert run_ablation(spec, out, 1, ["behavior-only"], overrides=tuned) == []
    same = {"behavior-only": ["train.lr=3e-3"]}  # the same value, written otherwise
    assert run_ablation(spec, out, 1, ["behavior-only"], overrides=same) == []
    for other in [{"behavior-only": ["train.lr=0.002"]}, {}]:
        with pytest.raises(FeatrecError, match=r"behavior-only/seed0: trained with another spec "
                           r"than variant behavior-only has now: train.lr: 0.003 → 0.00[12]\. "
                           r"Give the --set behavior-only:KEY=VALUE settings"):  # fmt: skip
            run_ablation(spec, out, 1, ["behavior-only"], overrides=other)
    # a variant without runs takes new settings; variants not trained now keep theirs
    run_ablation(spec, out, 1, ["most-popular"])  # no settings for it, as before
    run_ablation(spec, out, 1, ["-rating"], overrides={"-rating": ["train.lr=0.002"]})
    assert yaml.safe_load((out / "overrides.yaml").read_text()) == {
        **same,
        "-rating": ["train.lr=0.002"],
    }
    assert load_spec(run_dir(out, "-rating", 0) / "spec.yaml").train.lr == 0.002


def test_a_broken_overrides_file_is_named(tmp_path: Path, quick: dict) -> None:
    spec = load_spec(write_spec(tmp_path, quick))
    out = tmp_path / "abl"
    run_ablation(spec, out, 1, ["most-popular"])
    for text in ["din: 3\n", "[unclosed\n"]:
        (out / "overrides.yaml").write_text(text, encoding="utf-8")
        with pytest.raises(FeatrecError, match=r"overrides.yaml: (expected a mapping|cannot read)"):
            write_report(out)
        with pytest.raises(FeatrecError, match=r"overrides.yaml: "):
            run_ablation(spec, out, 1, ["most-popular"])


def test_a_worker_killed_mid_ablation_is_named_with_what_to_do(
    tmp_path: Path, quick: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker process killed (the out-of-memory killer, a signal) breaks the pool: one
    error naming the unfinished pairs, not a bare BrokenProcessPool."""
    import concurrent.futures
    from concurrent.futures.process import BrokenProcessPool

    class KilledPool:  # what ProcessPoolExecutor gives once a worker died
        def __init__(self, *args, **kwargs) -> None:
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            pass

        def submit(self, *args, **kwargs):
            future = concurrent.futures.Future()
            future.set_exception(BrokenProcessPool("A process in the pool was terminated"))
            return future

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", KilledPool)
    spec = load_spec(write_spec(tmp_path, quick))
    with pytest.raises(
        FeatrecError,
        match=r"a training process died abruptly .* unfinished: "
        r"\[1/2\] full seed 0, \[2/2\] behavior-only seed 0\. Finished pairs",
    ):
        run_ablation(spec, tmp_path / "abl", 1, ["full", "behavior-only"], jobs=2)


def test_a_difference_from_a_zero_mean_has_no_relative_share() -> None:
    from featrec.report import _format_diff

    values = {"diff": 0.01, "relative": float("nan"), "ci_low": 0.0, "ci_high": 0.02, "p": 0.04}
    row = {f"mrr@1 vs full {k}": v for k, v in values.items()}
    assert _format_diff(row, "mrr@1", "full") == "+0.0100 [+0.0000, +0.0200] p=0.04"
    row["mrr@1 vs full relative"] = 0.5
    assert _format_diff(row, "mrr@1", "full") == "+0.0100 (+50.0%) [+0.0000, +0.0200] p=0.04"


def test_fusions_with_no_variant_under_them_is_said(
    tmp_path: Path, quick: dict, caplog: pytest.LogCaptureFixture
) -> None:
    spec = load_spec(write_spec(tmp_path, quick))
    run_ablation(spec, tmp_path / "abl", 1, ["most-popular"], fusions=["nova"])
    assert "--fusions nova: none of the variants chosen" in caplog.text


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG)")
def test_killing_an_ablation_ends_its_training_workers(tmp_path: Path, quick: dict) -> None:
    """`kill` of `featrec ablate --jobs 2` once left its two workers training as orphans."""
    quick["train"]["epochs"] = 100_000  # still training when killed
    spec = write_spec(tmp_path, quick)
    out = tmp_path / "abl"
    command = [sys.executable, "-m", "featrec", "-q", "ablate", str(spec), "--seeds", "1",
               "--variants", "full", "behavior-only", "--jobs", "2", "--out", str(out)]  # fmt: skip
    parent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def workers() -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                cmdline = (stat.parent / "cmdline").read_bytes()
                if int(fields[1]) == parent.pid and b"pipe_handle" in cmdline:
                    found.append(int(stat.parent.name))
        return found

    children: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("runs/*/seed0/checkpoints/last.pt"))) < 2:
            assert time.monotonic() < deadline and parent.poll() is None, "never trained"
            time.sleep(0.5)
        children = workers()
        assert len(children) == 2
        parent.send_signal(signal.SIGTERM)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{pid}").exists() for pid in children):
            assert time.monotonic() < deadline, "the workers outlived the ablation"
            time.sleep(0.2)
    finally:  # nothing left training, whatever failed
        for pid in [parent.pid, *children]:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

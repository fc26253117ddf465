"""Recency baselines: most-popular over the days before each request, never from the future
(issue 22)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from featrec.ablate import variants
from featrec.cli import main
from featrec.errors import SpecError
from featrec.evaluate import RecencyScorer
from featrec.ids import N_RESERVED
from featrec.spec import load_spec
from featrec.train import Experiment
from tests.conftest import write_spec


@pytest.mark.parametrize("seconds", [1, 50, 150, 10**6])
def test_window_counts_are_the_events_strictly_before_the_request(
    tmp_path: Path, tiny_spec_body: dict, seconds: int
) -> None:
    exp = Experiment.from_spec(load_spec(write_spec(tmp_path, tiny_spec_body)))
    data, items = exp.data, exp.model.num_items
    scorer = RecencyScorer(data, items, days=1)
    scorer.seconds = seconds  # the tiny data's clock runs in seconds
    users, positions = data.targets("test")
    scores = scorer(users, positions)(torch.arange(items))
    for row, (user, position) in enumerate(zip(users.tolist(), positions.tolist(), strict=True)):
        at = int(data.time[data.offsets[user] + position])
        inside = (data.time >= at - seconds) & (data.time < at)  # any user's, before t
        before = torch.bincount(data.item[data.time < at], minlength=items).float()
        tiebreak = before / (before.sum() + 1)  # nothing from t on, even to break ties
        expected = torch.bincount(data.item[inside], minlength=items).float() + tiebreak
        torch.testing.assert_close(scores[row], expected)
    per_row = scorer(users, positions)(torch.full((len(users), 1), N_RESERVED + 1))
    torch.testing.assert_close(per_row[:, 0], scores[:, N_RESERVED + 1])


def test_runs_report_recency_baselines_beside_most_popular(
    tmp_path: Path, tiny_spec_body: dict, capsys: pytest.CaptureFixture
) -> None:
    tiny_spec_body |= {"train": {"epochs": 1, "batch_size": 3}, "eval": {"recency_days": [1, 7]}}
    path = write_spec(tmp_path, tiny_spec_body)
    assert main(["-q", "train", str(path), "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "popular, last 1d (test)" in out and "popular, last 7d (test)" in out
    final = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
    assert set(final["recent_popular"]["test"]) == {"1d", "7d"}
    assert "ndcg@10" in final["recent_popular"]["test"]["7d"]
    assert main(["-q", "evaluate", str(tmp_path / "run")]) == 0
    assert "popular, last 7d (test)" in capsys.readouterr().out


def test_ablations_have_recency_rows_where_times_are_clock_times(
    tmp_path: Path, tiny_spec_body: dict
) -> None:
    spec = load_spec(write_spec(tmp_path, tiny_spec_body))
    found = variants(spec)
    for days in (1, 7, 30):
        baseline = found[f"most-popular-{days}d"]
        assert not baseline.trained and baseline.days == days
    sports = load_spec(Path(__file__).parents[1] / "feature_specs" / "sports.yaml")
    assert not any(name.startswith("most-popular-") for name in variants(sports))  # positions


def test_an_ablation_row_trains_nothing_and_ranks_like_the_scorer(
    tmp_path: Path, tiny_spec_body: dict
) -> None:
    from featrec.ablate import run_ablation

    spec = load_spec(write_spec(tmp_path, tiny_spec_body))
    run_ablation(spec, tmp_path / "abl", seeds=1, names=["most-popular-7d"])
    final = json.loads((tmp_path / "abl" / "runs" / "most-popular-7d" / "seed0" /
                        "final_metrics.json").read_text())  # fmt: skip
    exp = Experiment.from_spec(spec)
    assert final["test"] == exp.most_popular("test", 7)[0]
    assert not (tmp_path / "abl" / "runs" / "most-popular-7d" / "seed0" / "checkpoints").exists()


def test_recency_days_must_be_positive(tmp_path: Path, tiny_spec_body: dict) -> None:
    with pytest.raises(SpecError, match=r"eval\.recency_days\[0\]: expected greater than 0"):
        load_spec(write_spec(tmp_path, tiny_spec_body), ["eval.recency_days=[0]"])
    assert load_spec(write_spec(tmp_path, tiny_spec_body), ["eval.recency_days=[]"])


def test_prepare_states_how_long_after_the_history_each_target_comes(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import polars as pl

    day = 86_400
    gaps = {"a": [0, 1, 2, 10], "b": [0, 5, 6, 8], "c": [0, 1, 4, 20]}  # days: valid, test last
    rows = [(u, i, t * day) for u, times in gaps.items() for i, t in enumerate(times)]
    pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row").write_parquet(
        tmp_path / "events.parquet"
    )
    spec = write_spec(tmp_path, {"name": "gaps", "data": {"interactions": "events.parquet"}})
    assert main(["prepare", str(spec)]) == 0
    out = capsys.readouterr().out
    # test gaps 8, 2, 16 days: median 8; valid gaps 1, 1, 3: median 1
    assert "test targets: 8 days after the user's previous event (median; quartiles 5-12)" in out
    assert "valid targets: 1 days after" in out

"""featrec synth: the planted structure is there, the ceiling is the oracle's, bad
arguments are one line (issue 21)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from featrec.cli import main
from featrec.spec import load_spec
from featrec.synth import (
    DAY_HOURS,
    MIN_EVENTS,
    STAY,
    SynthConfig,
    _cluster_weights,
    generate,
    oracle_ranks,
    ranking_metrics,
)
from featrec.train import train

CONFIG = SynthConfig(users=4000, items=1200, events=80_000, seed=3, clusters=24)


@pytest.fixture(scope="module")
def synthetic():
    return generate(CONFIG)


def test_sizes_are_exact_and_every_user_is_evaluable(synthetic) -> None:
    s = synthetic
    assert len(s.item) == CONFIG.events and len(s.offsets) == CONFIG.users + 1
    assert np.diff(s.offsets).min() >= MIN_EVENTS
    assert s.item.max() < CONFIG.items
    within = np.diff(s.timestamp)[np.diff(s.user_of_event) == 0]
    assert (within >= 0).all()  # oldest first within each user


def test_the_same_seed_writes_the_same_data() -> None:
    again = generate(CONFIG)
    other = generate(SynthConfig(4000, 1200, 80_000, seed=4, clusters=24))
    assert np.array_equal(again.item, generate(CONFIG).item)
    assert not np.array_equal(again.item, other.item)


def test_clusters_repeat_and_move_along_the_order_of_the_hour(synthetic) -> None:
    s = synthetic
    same_user = s.user_of_event[1:] == s.user_of_event[:-1]
    previous, following = s.cluster_of_event[:-1][same_user], s.cluster_of_event[1:][same_user]
    hour = ((s.timestamp[1:] // 3600) % 24)[same_user]
    day = (hour >= DAY_HOURS[0]) & (hour < DAY_HOURS[1])
    assert abs((previous == following).mean() - STAY) < 0.04  # + the jumps that land there
    moved = following != previous
    by_day = (following == s.day_next[previous])[moved & day].mean()
    by_night = (following == s.night_next[previous])[moved & ~day].mean()
    assert by_day > 0.7 and by_night > 0.7  # 0.4 of 0.5 moves, the rest jumps
    assert (following == s.night_next[previous])[moved & day].mean() < 0.2


def test_attributes_are_tied_to_the_planted_structure(synthetic) -> None:
    s = synthetic
    placed = s.cluster_of_item >= 0
    assert 0.75 < (s.category[placed] == s.cluster_of_item[placed]).mean() < 0.9
    assert 0.85 < (s.segment_attribute == s.segment).mean() < 0.95
    counts = np.bincount(s.item, minlength=CONFIG.items)
    assert counts.max() > 20 * np.median(counts[counts > 0])  # long-tailed popularity


def test_the_ceiling_is_the_oracle_rank_counted_item_by_item(synthetic) -> None:
    s = synthetic
    ranks, blind = oracle_ranks(s, chunk=997), oracle_ranks(s, know_hour=False)
    for user in range(0, CONFIG.users, 37):
        last = s.offsets[user + 1] - 1
        hour = (s.timestamp[last] // 3600) % 24
        day = np.array([DAY_HOURS[0] <= hour < DAY_HOURS[1]])
        weights = _cluster_weights(s, np.array([user]), s.cluster_of_event[last - 1 : last], day)
        placed = s.cluster_of_item >= 0
        p = np.where(placed, weights[0][s.cluster_of_item] * s.zipf[s.rank_of_item], 0.0)
        target = s.item[last]
        candidate = np.ones(CONFIG.items, dtype=bool)
        candidate[s.item[s.offsets[user] : last]] = False  # seen: not candidates
        candidate[target] = False
        assert ranks[user] == (p[candidate] >= p[target] * (1 - 1e-9)).sum()
    knowing, not_knowing = ranking_metrics(ranks), ranking_metrics(blind)
    assert knowing["ndcg@10"] > not_knowing["ndcg@10"] + 0.01  # the hour is worth knowing


def test_synth_writes_tables_spec_and_readme_a_model_learns_from(tmp_path: Path, capsys) -> None:
    out = tmp_path / "synth"
    args = ["synth", str(out), "--users", "3000", "--items", "1000", "--events", "60000"]
    assert main(["-q", *args]) == 0
    assert "ceiling NDCG@10" in capsys.readouterr().out
    structure = json.loads((out / "structure.json").read_text())
    ceiling = structure["ceilings"]["oracle"]["ndcg@10"]
    events = pl.read_parquet(out / "interactions.parquet")
    assert events.columns == ["user_id", "item_id", "timestamp"] and len(events) == 60_000
    assert "## The ceiling" in (out / "README.md").read_text()

    spec = load_spec(out / "spec.yaml", ["train.epochs=6", "train.min_epochs=6"])
    assert {f.scope for f in spec.features} == {"item", "user", "event"}
    final = train(spec, tmp_path / "run")
    model, popular = final["test"]["ndcg@10"], final["most_popular"]["test"]["ndcg@10"]
    assert popular + 0.03 < model < ceiling
    assert main(["-q", *args]) == 2  # the folder is not empty now: refused, kept
    assert len(pl.read_parquet(out / "interactions.parquet")) == 60_000


SIZES = ["--users", "10", "--items", "100"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--users", "0", "--items", "100", "--events", "10"], "--users: expected a positive"),
        ([*SIZES, "--events", "29"], "--events: expected at least 3 per user"),
        (["--users", "10", "--items", "15", "--events", "30"], "--items: expected at least 2 per"),
        ([*SIZES, "--events", "30", "--clusters", "1"], "--clusters: expected at least 2"),
        ([*SIZES, "--events", "30", "--seed", "-1"], "--seed: expected a non-negative"),
        ([*SIZES, "--events", str(10**13)], "GiB of memory to generate; this machine has"),
    ],
)
def test_bad_arguments_are_one_line_and_write_nothing(
    tmp_path: Path, capsys, args: list[str], message: str
) -> None:
    assert main(["synth", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_force_replaces_a_synth_output_only(tmp_path: Path, capsys) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    args = [*SIZES, "--events", "30"]
    assert main(["-q", "synth", str(mine), *args, "--force"]) == 2
    assert "no featrec synth data set (no structure.json)" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep me"
    out = tmp_path / "synth"
    assert main(["-q", "synth", str(out), *args]) == 0
    assert main(["-q", "synth", str(out), *args, "--seed", "3", "--force"]) == 0
    assert json.loads((out / "structure.json").read_text())["config"]["seed"] == 3
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the folder's parent should be
    assert main(["-q", "synth", str(blocked / "x"), *args]) == 2
    err = capsys.readouterr().err
    assert f"{blocked / 'x'}: cannot write there" in err and "staging" not in err

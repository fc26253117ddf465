"""fusion.output_items: item features where items are scored, and cold items (in the items
table, never in the interactions) ranked by their attributes (issue 22)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import polars as pl
import pytest
import torch

import featrec
from featrec.errors import SpecError
from featrec.sequences import prepare
from featrec.spec import load_spec
from tests.conftest import write_spec


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """Users 0-29 only ever take items tagged a (0-9), users 30-59 items tagged b (10-19);
    items 100 (a) and 101 (b) are in the items table and nowhere else."""
    rng = random.Random(0)
    rows = []
    for user in range(60):
        pool = range(10) if user < 30 else range(10, 20)
        rows += [(user, rng.choice(pool), 1000 * user + t) for t in range(10)]
    pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row").write_parquet(
        tmp_path / "events.parquet"
    )
    pl.DataFrame(
        {"item_id": [*range(20), 100, 101], "tag": ["a"] * 10 + ["b"] * 10 + ["a", "b"]}
    ).write_parquet(tmp_path / "items.parquet")
    return write_spec(
        tmp_path,
        {
            "name": "cold",
            "data": {"interactions": "events.parquet", "items": "items.parquet"},
            "features": [{"name": "tag", "scope": "item", "type": "categorical", "column": "tag"}],
            "fusion": {"method": "gate", "output_items": True},
            "model": {"dim": 16, "layers": 1, "heads": 2, "max_len": 10, "dropout": 0.0},
            "train": {"epochs": 25, "batch_size": 16, "lr": 0.005, "min_epochs": 25},
        },
    )


def test_cold_items_join_the_catalog_only_with_output_items(planted: Path) -> None:
    prepared, _ = prepare(load_spec(planted))
    assert prepared.item_vocab.cold == 2 and prepared.item_vocab.ids[-2:] == [100, 101]
    plain, _ = prepare(load_spec(planted, ["fusion.output_items=false"]))
    assert plain.item_vocab.cold == 0 and 100 not in plain.item_vocab.ids


def test_cold_items_rank_where_their_attributes_say(planted: Path, tmp_path: Path) -> None:
    recommender = featrec.fit(load_spec(planted), out=tmp_path / "run", progress=False)
    right = 0
    for user in range(60):
        history = [(user * 7 + t) % 10 + (0 if user < 30 else 10) for t in range(6)]
        recs = recommender.recommend(history, k=22, exclude_seen=False)
        position = {item: rank for rank, item in enumerate(recs.items)}
        liked, other = (100, 101) if user < 30 else (101, 100)
        right += position[liked] < position[other]
    assert right >= 54  # 90% of users: the cold item of their kind first


def test_a_spec_that_cannot_score_item_features_refuses_output_items(
    planted: Path, capsys: pytest.CaptureFixture
) -> None:
    from featrec.api import resolve_spec
    from featrec.cli import main

    for sets, says in [
        (["features=[]"], "fusion.output_items needs item features"),
        (["model.kind=embedding_mlp"], "model.kind embedding_mlp has its own"),
    ]:
        with pytest.raises(SpecError, match=says):
            resolve_spec(planted, sets)
        assert main(["-q", "validate", str(planted), *(f"--set={s}" for s in sets)]) == 2
        assert says in capsys.readouterr().err
    assert main(["-q", "validate", str(planted), "--behavior-only"]) == 0  # derived: fine


def test_every_ablation_variant_of_an_output_items_spec_ranks_the_same_catalog(
    tmp_path: Path, planted: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from featrec.ablate import run_ablation, run_dir
    from featrec.cli import main

    spec = load_spec(planted, ["train.epochs=1", "train.min_epochs=1"])
    out = tmp_path / "abl"
    names = ["full", "behavior-only", "embedding-mlp", "din", "most-popular"]
    run_ablation(spec, out, 1, names)
    assert "din with 1 item features scores no item features" in caplog.text
    for name in names[:-1]:  # most-popular keeps no spec or model
        directory = run_dir(out, name, 0)
        stored = load_spec(directory / "spec.yaml")  # valid again (resume, evaluate read it)
        assert stored.fusion.output_items
        assert stored.scores_item_features == (name == "full")
        vocab = json.loads((directory / "encoders.json").read_text())["item_vocab"]
        assert vocab[-2:] == [100, 101]  # the cold items are in every variant's catalog
        assert main(["-q", "evaluate", str(directory)]) == 0


def test_held_out_items_only_come_back_as_test_targets(planted: Path) -> None:
    spec = load_spec(planted, ["eval.cold_items=0.25"])
    prepared, _ = prepare(spec)
    vocab = prepared.item_vocab
    held = set(vocab.ids[len(vocab.ids) - vocab.cold :]) - {100, 101}
    assert len(held) == 5  # a quarter of the 20 items with events
    from featrec.batching import SequenceData

    data = SequenceData.from_prepared(prepared, spec)
    cold_ids = torch.arange(vocab.trained, len(vocab))
    for user in range(data.num_users):
        start, end = int(data.offsets[user]), int(data.offsets[user + 1])
        items = data.item[start:end]
        test = int(data.test_idx[user])
        before = items[:test] if test >= 0 else items
        assert not torch.isin(before, cold_ids).any()  # never in a history or training
    plain, _ = prepare(load_spec(planted))
    assert plain.item_vocab.cold == 2  # only the items-table-only ones


def test_runs_report_the_cold_targets_against_popularity_and_random(
    planted: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from featrec.cli import main

    sets = ["eval.cold_items=0.25", "train.epochs=3", "train.min_epochs=3"]
    options = [token for value in sets for token in ("--set", value)]
    code = main(["-q", "train", str(planted), *options, "--out", str(tmp_path / "r")])
    assert code == 0
    out = capsys.readouterr().out
    assert "test users with a cold target" in out and "random ranking: hr@10" in out
    final = json.loads((tmp_path / "r" / "final_metrics.json").read_text())
    cold = final["cold_test"]
    assert cold["users"] > 0 and cold["random"]["hr@10"] == pytest.approx(10 / 22)
    assert cold["most_popular"]["hr@10"] == 0.0  # no training events: popularity ranks them last


def test_a_user_left_too_short_keeps_no_held_item_anywhere(tmp_path: Path) -> None:
    """Users of 3 events lose some to the held-out items; whatever stays in a history or the
    training split is never a held item (their only place is a test event)."""
    rng = random.Random(1)
    rows = [(u, rng.randrange(12), 10 * u + t) for u in range(40) for t in range(3)]
    pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row").write_parquet(
        tmp_path / "short.parquet"
    )
    spec = write_spec(tmp_path, {"name": "short", "data": {"interactions": "short.parquet"}})
    prepared, _ = prepare(load_spec(spec, ["eval.cold_items=0.5"]))
    vocab = prepared.item_vocab
    assert vocab.cold == 6
    from featrec.batching import SequenceData

    data = SequenceData.from_prepared(prepared, load_spec(spec))
    cold = torch.arange(vocab.trained, len(vocab))
    for user in range(data.num_users):
        items = data.item[int(data.offsets[user]) : int(data.offsets[user + 1])]
        test = int(data.test_idx[user])
        assert not torch.isin(items[:test] if test >= 0 else items, cold).any()

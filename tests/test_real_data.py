"""Integration tests on the real MovieLens files (FEATREC_DATA_DIR); see conftest.py."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from featrec.datasets import load_tables
from featrec.encoders import N_RESERVED, OOV
from featrec.sequences import build
from featrec.spec import DataSpec, load_spec
from tests.conftest import real_data_dir, write_spec

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.real_data

COUNTS = {"ml-100k": (100_000, 943, 1_682, 1_682), "ml-1m": (1_000_209, 6_040, 3_706, 3_883)}


@pytest.fixture(scope="module", params=["ml-100k", "ml-1m"])
def real(request: pytest.FixtureRequest):
    real_data_dir(request.param)
    spec = load_spec(ROOT / "feature_specs" / f"{request.param}.yaml")
    tables = load_tables(spec.data)
    return request.param, spec, tables, build(spec, tables)


def test_counts(real) -> None:
    name, _, tables, prepared = real
    events, users, items, listed = COUNTS[name]
    assert tables.interactions.height == events and tables.users.height == users
    assert tables.items.height == listed
    assert prepared.stats["events"] == events and prepared.stats["users"] == users
    assert prepared.stats["items"] == items and prepared.items.height == items + N_RESERVED
    assert prepared.stats["split"]["left_out_users"] == 0  # every user has >= 20 ratings
    assert prepared.stats["split"]["train_events"] == events - 2 * users


def test_leave_one_out_targets_are_the_last_two_events_by_time(real) -> None:
    _, _, tables, prepared = real
    raw = tables.interactions
    order = np.lexsort(
        (np.arange(raw.height), raw["timestamp"].to_numpy(), raw["user_id"].to_numpy())
    )
    ordered = raw[order]
    last_two = ordered.group_by("user_id", maintain_order=True).agg(pl.col("item_id").tail(2))
    expected = {row[0]: row[1] for row in last_two.iter_rows()}
    vocab = prepared.item_vocab.ids
    for user in prepared.sequences.iter_rows(named=True):
        targets = [user["item"][user["valid_idx"]], user["item"][user["test_idx"]]]
        assert [vocab[t - N_RESERVED] for t in targets] == expected[user["user_id"]]
        assert user["valid_idx"] == len(user["item"]) - 2 == user["train_len"]


def test_item_features_cover_known_values(real) -> None:
    _, _, _, prepared = real
    genres = prepared.items["genres"][N_RESERVED:].explode()
    assert genres.min() >= N_RESERVED  # every real item has at least one known genre
    assert len(prepared.encoders["genres"].values) in (18, 19)  # ML-100K adds 'unknown'


def test_encoders_fitted_on_train_map_held_back_values_to_oov(tmp_path: Path) -> None:
    """Temporal split on ML-100K with zip codes: users first seen after the cutoff bring zips
    no training user has; those must encode as OOV, and training zips must not."""
    real_data_dir("ml-100k")
    body = {
        "name": "zip",
        "data": {"dataset": "ml-100k"},
        "features": [{"name": "zip", "scope": "user", "type": "categorical", "column": "zip"}],
        "eval": {"split": "temporal", "valid_quantile": 0.8, "test_quantile": 0.9},
    }
    spec = load_spec(write_spec(tmp_path, body))
    tables = load_tables(DataSpec(dataset="ml-100k"))
    prepared = build(spec, tables)
    seq = prepared.sequences
    new_users = seq.filter(pl.col("train_len") == 0)
    assert new_users.height > 0
    train_zips = set(
        tables.users.join(seq.filter(pl.col("train_len") > 0).select("user_id"), on="user_id")[
            "zip"
        ]
    )
    held_back = tables.users.join(new_users.select("user_id"), on="user_id").filter(
        ~pl.col("zip").is_in(list(train_zips))
    )
    assert held_back.height > 0
    encoded = seq.join(held_back.select("user_id"), on="user_id")["zip"]
    assert (encoded == OOV).all()
    known = seq.filter(pl.col("train_len") > 0)["zip"]
    assert (known >= N_RESERVED).all()


@pytest.mark.skipif(
    os.environ.get("FEATREC_NETWORK_TESTS") != "1",
    reason="downloads 2 MB from PyPI; set FEATREC_NETWORK_TESTS=1 to run",
)
def test_ml100k_mirror_gives_the_same_canonical_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The official host is unreachable here; the RecBole wheel on PyPI must serve instead."""
    local = load_tables(DataSpec(dataset="ml-100k")) if os.environ.get("FEATREC_DATA_DIR") else None
    monkeypatch.delenv("FEATREC_DATA_DIR", raising=False)
    monkeypatch.delenv("FEATREC_OFFLINE")
    fetched = load_tables(DataSpec(dataset="ml-100k"))
    assert fetched.interactions.height == 100_000 and fetched.users.height == 943
    if local is not None:
        assert fetched.interactions.equals(local.interactions)
        assert fetched.users.equals(local.users)
        columns = ["item_id", "year", "genres"]
        assert fetched.items.select(columns).equals(local.items.select(columns))

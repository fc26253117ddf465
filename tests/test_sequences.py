from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from featrec.datasets import load_tables
from featrec.encoders import MASK, MISSING, N_RESERVED, OOV, PAD
from featrec.errors import DataError
from featrec.sequences import Prepared, build, cache_key, prepare
from featrec.spec import load_spec
from tests.conftest import write_spec


@pytest.fixture
def tiny(tmp_path: Path, tiny_spec_body: dict) -> Prepared:
    spec = load_spec(write_spec(tmp_path, tiny_spec_body))
    return build(spec, load_tables(spec.data))


def by_user(prepared: Prepared) -> dict[str, dict]:
    return {row["user_id"]: row for row in prepared.sequences.iter_rows(named=True)}


def raw_items(prepared: Prepared, ids: list[int]) -> list[int]:
    return [prepared.item_vocab.ids[i - N_RESERVED] for i in ids]


def test_events_ordered_by_time_then_row_order(tiny: Prepared) -> None:
    users = by_user(tiny)
    assert raw_items(tiny, users["u1"]["item"]) == [10, 11, 12, 13, 14]  # 11, 12 tie at t=200
    assert raw_items(tiny, users["u5"]["item"]) == [15, 14, 16]  # out of order in the file
    assert raw_items(tiny, users["u6"]["item"]) == [12, 18, 20]  # three-way tie
    assert users["u5"]["timestamp"] == [400, 500, 600]


def test_leave_one_out_targets_and_left_out_users(tiny: Prepared) -> None:
    users = by_user(tiny)
    u1, u3 = users["u1"], users["u3"]
    assert (u1["train_len"], u1["valid_idx"], u1["test_idx"]) == (3, 3, 4)
    assert (u3["train_len"], u3["valid_idx"], u3["test_idx"]) == (2, None, None)
    split = tiny.stats["split"]
    assert split["left_out_users"] == 1 and split["test_users"] == split["valid_users"] == 6
    assert split["train_events"] == 26 - 2 * 6


def test_item_vocabulary_covers_every_interacted_item(tiny: Prepared) -> None:
    assert tiny.item_vocab.ids == list(range(10, 21))  # 20 has no items row, 16 only in eval
    assert tiny.items.height == len(tiny.item_vocab)
    assert tiny.items["item"].to_list() == list(range(len(tiny.item_vocab)))


def test_item_table_reserved_rows_and_missing_items(tiny: Prepared) -> None:
    rows = tiny.items.to_dicts()
    for reserved in (PAD, MASK, OOV, MISSING):
        assert rows[reserved]["tags"] == [reserved] and rows[reserved]["year"] == reserved
    item20 = rows[N_RESERVED + 10]
    assert item20["tags"] == [MISSING] and item20["year"] == MISSING
    item13 = rows[N_RESERVED + 3]  # tags "" → no value
    assert item13["tags"] == [MISSING]


def test_encoders_see_only_the_training_split(tiny: Prepared) -> None:
    # 'zz' is the tag of item 16, which only appears as a validation / test target
    assert "zz" not in tiny.encoders["tags"].values
    assert tiny.items.row(N_RESERVED + 6, named=True)["tags"] == [OOV]
    # device 'tv' occurs once: u4's test event
    assert "tv" not in tiny.encoders["device"].values
    u4 = by_user(tiny)["u4"]
    assert u4["device"][u4["test_idx"]] == OOV
    devices = tiny.encoders["device"].values
    assert devices == ["android", "ios", "web"]
    ios, web = (N_RESERVED + devices.index(d) for d in ("ios", "web"))
    assert u4["device"][: u4["train_len"]] == [ios, ios, ios, web]


def test_user_features_and_users_without_a_row(tiny: Prepared) -> None:
    users = by_user(tiny)
    assert users["u7"]["job"] == MISSING and users["u7"]["age"] == 0.0
    assert users["u5"]["job"] == MISSING  # null in the users table
    jobs = tiny.encoders["job"].values
    assert users["u4"]["job"] == N_RESERVED + jobs.index("doc")


def test_time_gap_follows_the_ordered_sequence(tiny: Prepared) -> None:
    u1 = by_user(tiny)["u1"]  # times 100, 200, 200, 300, 400
    gap_bucket = [int(np.floor(np.log2(1 + g))) + N_RESERVED for g in (100, 0, 100, 100)]
    assert u1["time.gap"] == [MISSING, *gap_bucket]
    assert len(u1["time.hour"]) == len(u1["item"]) == len(u1["rating"])


def test_temporal_split_uses_global_cutoffs(tmp_path: Path, tiny_spec_body: dict) -> None:
    tiny_spec_body["eval"] = {"split": "temporal", "valid_quantile": 0.5, "test_quantile": 0.8}
    spec = load_spec(write_spec(tmp_path, tiny_spec_body))
    prepared = build(spec, load_tables(spec.data))
    times = pl.read_parquet(tiny_spec_body["data"]["interactions"])["ts"].to_numpy()
    valid_from, test_from = (int(np.quantile(times, q, method="lower")) for q in (0.5, 0.8))
    for user in prepared.sequences.iter_rows(named=True):
        ts = np.array(user["timestamp"])
        assert user["train_len"] == int((ts < valid_from).sum())
        if len(ts) < 3:
            assert user["valid_idx"] is None and user["test_idx"] is None
            continue
        window = [i for i in range(1, len(ts)) if valid_from <= ts[i] < test_from]
        after = [i for i in range(1, len(ts)) if ts[i] >= test_from]
        assert user["valid_idx"] == (window[0] if window else None)
        assert user["test_idx"] == (after[0] if after else None)
    assert prepared.stats["split"]["method"] == "temporal"
    train_devices = {
        d for u in prepared.sequences.iter_rows(named=True) for d in u["device"][: u["train_len"]]
    }
    assert max(train_devices) < prepared.encoders["device"].cardinality


def test_prepared_round_trips_through_the_cache(tmp_path: Path, tiny_spec_body: dict) -> None:
    spec = load_spec(write_spec(tmp_path, tiny_spec_body))
    built, folder = prepare(spec)
    loaded, again = prepare(spec)
    assert again == folder and folder is not None
    assert loaded.sequences.equals(built.sequences) and loaded.items.equals(built.items)
    assert loaded.encoders == built.encoders and loaded.item_vocab == built.item_vocab
    other = spec.model_copy(update={"features": spec.features[:2]})
    assert cache_key(other) != cache_key(spec)
    assert cache_key(spec.model_copy(update={"model": spec.model})) == cache_key(spec)


def test_behavior_only_has_only_items_and_the_same_split(
    tiny: Prepared, tmp_path: Path, tiny_spec_body: dict
) -> None:
    spec = load_spec(write_spec(tmp_path, tiny_spec_body)).behavior_only()
    plain = build(spec, load_tables(spec.data))
    assert plain.items.columns == ["item"] and plain.encoders == {}
    keep = ["user_id", "item", "timestamp", "train_len", "valid_idx", "test_idx"]
    assert plain.sequences.columns == keep
    assert plain.sequences.equals(tiny.sequences.select(keep))


# --- bad input ----------------------------------------------------------------------------


def build_error(tmp_path: Path, body: dict) -> str:
    spec = load_spec(write_spec(tmp_path, body))
    with pytest.raises(DataError) as caught:
        build(spec, load_tables(spec.data))
    return str(caught.value)


def test_missing_feature_column_lists_the_columns(tmp_path: Path, tiny_spec_body: dict) -> None:
    tiny_spec_body["features"][1]["column"] = "release"
    message = build_error(tmp_path, tiny_spec_body)
    assert "spec.yaml: features[1].column: column 'release' not in the items table" in message
    assert "items.parquet); columns: iid, tags, year, item_id" in message


def test_feature_needs_its_table(tmp_path: Path, tiny_spec_body: dict) -> None:
    del tiny_spec_body["data"]["users"]
    message = build_error(tmp_path, tiny_spec_body)
    assert "features[2] (age): a user feature needs a users table" in message


def test_empty_interactions(tmp_path: Path, tiny_spec_body: dict) -> None:
    path = Path(tiny_spec_body["data"]["interactions"])
    pl.read_parquet(path).clear().write_parquet(path)
    assert "the interactions table is empty" in build_error(tmp_path, tiny_spec_body)


def test_null_ids_are_rejected(tmp_path: Path, tiny_spec_body: dict) -> None:
    path = Path(tiny_spec_body["data"]["interactions"])
    frame = pl.read_parquet(path)
    frame.with_columns(
        pl.when(pl.col("ts") == 60).then(None).otherwise("iid").alias("iid")
    ).write_parquet(path)
    assert "1 interactions have no item_id" in build_error(tmp_path, tiny_spec_body)


def test_numeric_feature_on_text(tmp_path: Path, tiny_spec_body: dict) -> None:
    tiny_spec_body["features"][1]["column"] = "tags"
    assert "a numeric feature needs numbers" in build_error(tmp_path, tiny_spec_body)


def test_multi_categorical_text_needs_a_separator(tmp_path: Path, tiny_spec_body: dict) -> None:
    del tiny_spec_body["features"][0]["separator"]
    assert "not lists; set separator" in build_error(tmp_path, tiny_spec_body)

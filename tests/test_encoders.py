from __future__ import annotations

import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from featrec.encoders import (
    MASK,
    MISSING,
    N_RESERVED,
    OOV,
    PAD,
    CategoricalEncoder,
    ItemVocab,
    MultiCategoricalEncoder,
    QuantileBinEncoder,
    StandardEncoder,
    TimeEncoder,
    load_encoders,
    save_encoders,
)


def encode(encoder, values: list, dtype=None) -> list:
    frame = pl.DataFrame({"v": values}, schema={"v": dtype} if dtype else None)
    return frame.select(encoder.encode(pl.col("v"))).to_series().to_list()


def test_reserved_ids_are_distinct_and_first() -> None:
    assert sorted({PAD, MASK, OOV, MISSING}) == list(range(N_RESERVED))


def test_categorical_maps_unseen_to_oov_and_null_to_missing() -> None:
    encoder = CategoricalEncoder().fit(pl.Series("v", ["b", "a", "b", None, "c"]))
    assert encoder.values == ["a", "b", "c"] and encoder.cardinality == N_RESERVED + 3
    assert encode(encoder, ["a", "c", "zzz", None]) == [4, 6, OOV, MISSING]


def test_categorical_min_count_sends_rare_values_to_oov() -> None:
    encoder = CategoricalEncoder(min_count=2).fit(pl.Series("v", [1, 1, 2, 3, 3, 3]))
    assert encoder.values == ["1", "3"]
    assert encode(encoder, [1, 2, 3]) == [4, OOV, 5]


def test_categorical_numbers_and_text_share_one_vocabulary() -> None:
    encoder = CategoricalEncoder().fit(pl.Series("v", [5, 1]))
    assert encoder.integers
    assert encode(encoder, ["5", "1", "9", "abc"]) == [5, 4, OOV, OOV]


def test_multi_categorical_pools_lists_and_fills_empty_rows() -> None:
    encoder = MultiCategoricalEncoder().fit(pl.Series("v", [["x", "y"], ["y"], [], None]))
    assert encoder.values == ["x", "y"]
    encoded = encode(encoder, [["y", "x"], ["q"], [], None, ["x", None]], pl.List(pl.String))
    assert encoded == [[5, 4], [OOV], [MISSING], [MISSING], [4, MISSING]]


def test_quantile_bins_split_training_values_evenly() -> None:
    values = pl.Series("v", np.arange(1000, dtype=float))
    encoder = QuantileBinEncoder(bins=4).fit(values)
    assert encoder.edges == pytest.approx([249.5, 499.5, 749.5])
    ids = encode(encoder, values.to_list())
    assert np.bincount(ids)[N_RESERVED:].tolist() == [250, 250, 250, 250]
    assert encode(encoder, [-1e9, 1e9, None, float("nan")]) == [4, 7, MISSING, MISSING]


@pytest.mark.parametrize("bins", [2, 3, 7, 10])
@pytest.mark.parametrize("seed", [0, 1])
def test_quantile_bins_match_scikit_learn(bins: int, seed: int) -> None:
    from sklearn.preprocessing import KBinsDiscretizer

    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.integers(1930, 2001, 500), np.full(80, 1995), rng.normal(size=9)])
    encoder = QuantileBinEncoder(bins=bins).fit(pl.Series("v", values))
    reference = KBinsDiscretizer(
        n_bins=bins,
        encode="ordinal",
        strategy="quantile",
        subsample=None,
        quantile_method="averaged_inverted_cdf",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns when tied quantiles merge bins
        reference.fit(values.reshape(-1, 1))
    assert encoder.edges == pytest.approx(reference.bin_edges_[0][1:-1].tolist())
    probe = np.concatenate([values, rng.normal(1960, 40, 200)])
    expected = reference.transform(probe.reshape(-1, 1))[:, 0].astype(int) + N_RESERVED
    assert encode(encoder, probe.tolist()) == expected.tolist()


@pytest.mark.parametrize("values", [[1.0, 2.0, 4.0, 8.0, None], [5.0, 5.0, 5.0]])
def test_standard_scaling_matches_scikit_learn(values: list) -> None:
    from sklearn.preprocessing import StandardScaler

    encoder = StandardEncoder().fit(pl.Series("v", values))
    present = np.array([v for v in values if v is not None]).reshape(-1, 1)
    reference = StandardScaler().fit(present)
    assert (encoder.mean, encoder.scale) == pytest.approx((reference.mean_[0], reference.scale_[0]))


def test_quantile_bins_of_a_constant_column_is_one_bin() -> None:
    encoder = QuantileBinEncoder(bins=5).fit(pl.Series("v", [3.0, 3.0, None]))
    assert encoder.edges == [] and encoder.cardinality == N_RESERVED + 1
    assert encode(encoder, [3.0, 100.0, None]) == [4, 4, MISSING]


def test_standard_scaling_uses_training_moments() -> None:
    encoder = StandardEncoder().fit(pl.Series("v", [1.0, 2.0, 3.0, None]))
    assert encoder.mean == pytest.approx(2.0)
    assert encode(encoder, [1.0, 3.0, None]) == pytest.approx([-1.2247449, 1.2247449, 0.0])


def test_time_parts_hour_weekday_gap() -> None:
    moment = datetime(2021, 3, 4, 5, 6, 7, tzinfo=timezone.utc)  # a Thursday
    seconds = int(moment.timestamp())
    frame = pl.DataFrame({"t": [seconds] * 5, "gap": [None, 0, 1, 3, 10**12]})
    encoder = TimeEncoder().fit(frame["t"])
    parts = frame.select(**encoder.encode_parts(pl.col("t"), pl.col("gap")))
    assert parts["hour"].to_list() == [N_RESERVED + 5] * 5
    assert parts["weekday"].to_list() == [N_RESERVED + 3] * 5  # Monday = 0
    assert parts["gap"].to_list() == [MISSING, N_RESERVED, N_RESERVED + 1, N_RESERVED + 2,
                                      N_RESERVED + 31]  # fmt: skip
    assert encoder.cardinalities == {"hour": 28, "weekday": 11, "gap": 36}


def test_time_zone_shifts_hour_and_weekday() -> None:
    seconds = int(datetime(2021, 3, 4, 2, 0, tzinfo=timezone.utc).timestamp())
    encoder = TimeEncoder(parts=["hour", "weekday"], timezone="America/New_York")
    parts = pl.select(**encoder.encode_parts(pl.lit(seconds), pl.lit(None)))
    assert parts.row(0) == (N_RESERVED + 21, N_RESERVED + 2)  # 21:00 on Wednesday


def test_unknown_time_zone_is_a_clear_error() -> None:
    from featrec.errors import DataError

    with pytest.raises(DataError, match="unknown time zone 'Mars/Olympus'"):
        TimeEncoder(timezone="Mars/Olympus").fit(pl.Series("t", [0]))


def test_item_vocab_ids_start_after_the_reserved_ones() -> None:
    vocab = ItemVocab([10, 20, 30])
    assert len(vocab) == N_RESERVED + 3
    assert encode(vocab, [30, 10, 99]) == [6, 4, OOV]


def test_encoders_round_trip_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    encoders = {
        "c": CategoricalEncoder(min_count=2).fit(pl.Series("c", rng.integers(0, 9, 50))),
        "m": MultiCategoricalEncoder().fit(pl.Series("m", [["a", "b"], ["c"]])),
        "q": QuantileBinEncoder(bins=7).fit(pl.Series("q", rng.normal(size=333))),
        "s": StandardEncoder().fit(pl.Series("s", rng.normal(size=17))),
        "t": TimeEncoder(parts=["gap", "hour"], timezone="Asia/Tokyo"),
    }
    vocab = ItemVocab(["i3", "i1", "i2"])
    save_encoders(tmp_path / "enc.json", vocab, encoders)
    loaded_vocab, loaded = load_encoders(tmp_path / "enc.json")
    assert loaded_vocab == vocab and loaded == encoders
    probe = pl.Series("q", rng.normal(size=100) * 3)
    assert encode(loaded["q"], probe.to_list()) == encode(encoders["q"], probe.to_list())


@given(st.lists(st.one_of(st.none(), st.text(max_size=3)), max_size=30), st.lists(st.text()))
def test_categorical_never_raises_and_stays_in_range(train: list, probe: list) -> None:
    encoder = CategoricalEncoder().fit(pl.Series("v", train, dtype=pl.String))
    ids = encode(encoder, probe, pl.String)
    assert all(OOV <= i < encoder.cardinality for i in ids)
    seen = {v for v in train if v is not None}
    assert [i == OOV for i in ids] == [v not in seen for v in probe]

"""The polars-free encoding of one request gives exactly the polars path's model input."""

from __future__ import annotations

import math
import random
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest
import torch

import featrec
from featrec.batching import SequenceData
from featrec.encoders import (
    N_RESERVED,
    CategoricalEncoder,
    QuantileBinEncoder,
    StandardEncoder,
    TimeEncoder,
)
from featrec.errors import FeatrecError
from featrec.fastpath import request_data
from featrec.recommend import Recommender, to_seconds
from featrec.spec import load_spec
from featrec.train import train
from tests.conftest import write_spec


def _assert_same(fast: SequenceData, slow: SequenceData) -> None:
    for name in ("offsets", "item", "train_len", "valid_idx", "test_idx"):
        a, b = getattr(fast, name), getattr(slow, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    for kind in ("event", "user"):
        a, b = getattr(fast, kind), getattr(slow, kind)
        assert a.keys() == b.keys()
        for column in a:
            assert a[column].dtype == b[column].dtype, column
            assert torch.equal(a[column], b[column]), (column, a[column], b[column])
    assert fast.hidden_event == slow.hidden_event and fast.float_event == slow.float_event


def _random_request(rng: random.Random) -> tuple:
    """A history in one of the accepted forms, raw user attributes and a context; with
    unknown items, missing and tied times, unseen and missing values."""
    n = rng.randint(0, 12)
    items = [rng.choice([10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 999, None]) for _ in range(n)]
    stamps = [rng.choice([None, 5, 5, 100, rng.randint(0, 10**9)]) for _ in range(n)]
    devices = [rng.choice(["ios", "web", "tv", "fax", None]) for _ in range(n)]
    ratings = [rng.choice([1, 3, 5, 7, None]) for _ in range(n)]
    form = rng.choice(["ids", "records", "frame"])
    if form == "ids":
        history = [i for i in items if i is not None]
    elif form == "records":
        history = [
            {"item_id": i, "timestamp": t, "device": d, "rating": r}
            for i, t, d, r in zip(items, stamps, devices, ratings, strict=True)
        ]
    else:
        history = pl.DataFrame(
            {"item_id": items, "timestamp": stamps, "device": devices, "rating": ratings},
            schema_overrides={"item_id": pl.Int64, "timestamp": pl.Int64, "rating": pl.Int64},
        )
    user = rng.choice(
        [None, {}, {"age": 23, "job": "eng"}, {"age": 40.5, "job": "astronaut"}, {"age": None}]
    )
    moment = rng.choice(
        [None, 3600 * 7, "2000-01-02T03:04:05Z", datetime(2001, 5, 6, 23, tzinfo=timezone.utc)]
    )
    context = {"timestamp": moment, "device": rng.choice(["web", "fax", None])}
    return history, user, context


def test_fast_encoding_equals_the_polars_path_on_random_requests(trained_run: Path) -> None:
    recommender = featrec.load(trained_run)
    rng = random.Random(0)
    for _ in range(150):
        history, user, context = _random_request(rng)
        answer = request_data(
            recommender.spec, recommender.encoders, recommender._item_index,
            recommender._item_type, history, user, context, to_seconds,
        )  # fmt: skip
        assert answer is not None  # these are all requests the fast path reads itself
        fast, fast_dropped = answer
        slow, [slow_dropped] = recommender.encode_many([history], [user], [context])
        _assert_same(fast, slow)
        assert fast_dropped == slow_dropped


def test_requests_the_fast_path_cannot_read_exactly_take_the_polars_path(
    trained_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recommender = featrec.load(trained_run)
    odd = [
        ([{"item_id": 10, "timestamp": 5, "rating": 4.0}], None),  # a float rating
        (["10", 11], None),  # text ids for an integer vocabulary
        ([10, 11], {"age": "23"}),  # text for a number
        ([{"item_id": 10, "timestamp": 5, "device": 3}, {"item_id": 11, "device": "ios"}], None),
        # ints and a datetime in one time column: polars' supertype rules
        (
            [{"item_id": 10, "timestamp": 5}, {"item_id": 11, "timestamp": datetime(2000, 1, 1)}],
            None,
        ),
    ]
    calls = []
    original = Recommender.encode_many
    monkeypatch.setattr(
        Recommender,
        "encode_many",
        lambda self, *args: calls.append(1) or original(self, *args),
    )
    for history, user in odd:
        before = len(calls)
        rec = recommender.recommend(history, user=user, context={"timestamp": 50}, k=3)
        assert len(calls) == before + 1  # went through polars
        assert len(rec.items) == 3


def test_single_requests_rank_as_batched_ones(trained_run: Path) -> None:
    recommender = featrec.load(trained_run)
    rng = random.Random(1)
    requests = [_random_request(rng) for _ in range(30)]
    batched = recommender.recommend_many(*map(list, zip(*requests, strict=True)), k=4)
    for (history, user, context), expected in zip(requests, batched, strict=True):
        single = recommender.recommend(history, user=user, context=context, k=4)
        assert single.items == expected.items and single.fallback == expected.fallback
        assert single.scores == pytest.approx(expected.scores, abs=1e-5)


@pytest.mark.parametrize(
    "encoder, values",
    [
        (CategoricalEncoder(values=["1", "2", "10"], integers=True), [1, 10, 3, None, -1]),
        (CategoricalEncoder(values=["a", "b", "7"]), ["a", "c", None, 7, 8, ""]),
        (QuantileBinEncoder(edges=[1.0, 2.5, 2.5000001]), [1, 0.99, 2.5, 2.5000001, 9, None]),
        (StandardEncoder(mean=3.0, scale=1.7), [1, 2.5, None, math.nan, math.inf, -4]),
    ],
)
def test_encode_values_equals_the_polars_expression(encoder, values: list) -> None:
    column = pl.Series("x", values, strict=False)
    if isinstance(encoder, (StandardEncoder, QuantileBinEncoder)):
        column = column.cast(pl.Float64)
    expected = pl.select(encoder.encode(pl.lit(column))).to_series().to_list()
    if isinstance(encoder, CategoricalEncoder) and not encoder.integers:
        values_typed = [str(v) if isinstance(v, int) else v for v in values]
        expected = pl.select(encoder.encode(pl.lit(pl.Series(values_typed)))).to_series()
        expected = expected.to_list()
    assert encoder.encode_values(values) == expected


def test_time_parts_equal_the_polars_expression_at_bucket_edges() -> None:
    encoder = TimeEncoder()
    gaps = [None, 0, 1, 2, 3, 6, 7, 8, 1023, 1024, 2**20 - 1, 2**20, 2**31, 2**40]
    gaps += [2**e - 1 for e in range(1, 45)] + [2**e for e in range(1, 45)]
    seconds = [None, -1, 0, 86399, 86400, 3 * 86400 + 5, 10**9, -(10**9)]
    seconds = (seconds * (len(gaps) // len(seconds) + 1))[: len(gaps)]
    frame = pl.DataFrame({"s": seconds, "g": gaps}, schema={"s": pl.Int64, "g": pl.Int64})
    expected = frame.select(**encoder.encode_parts(pl.col("s"), pl.col("g")))
    assert encoder.encode_parts_values(seconds, gaps) == expected.to_dict(as_series=False)
    assert TimeEncoder(timezone="Europe/Paris").encode_parts_values([0], [None]) is None


def test_a_bad_time_fails_as_in_the_polars_path_even_on_a_dropped_item(trained_run: Path) -> None:
    recommender = featrec.load(trained_run)
    history = [{"item_id": 999, "timestamp": "garbage"}, {"item_id": 10, "timestamp": 5}]
    with pytest.raises(FeatrecError, match="garbage"):
        recommender.recommend(history, k=3)
    with pytest.raises(FeatrecError, match="garbage"):
        recommender.recommend_many([history], [None], [None], k=3)


def test_a_user_attribute_named_request_does_not_hide_the_others(trained_run: Path) -> None:
    recommender = featrec.load(trained_run)
    user = {"request": 5, "age": 23, "job": "eng"}
    fast, _ = recommender.encode_one([10, 11], user, None)
    slow, _ = recommender.encode_many([[10, 11]], [user], [None])
    _assert_same(fast, slow)
    assert int(slow.user["job"][0]) >= N_RESERVED  # found, not MISSING


def test_multi_categorical_user_feature_with_no_value(tmp_path: Path, tiny_spec_body: dict) -> None:
    for feature in tiny_spec_body["features"]:
        if feature["name"] == "job":
            feature |= {"type": "multi_categorical", "separator": "|"}
    tiny_spec_body["train"] = {"epochs": 1, "batch_size": 3}
    train(load_spec(write_spec(tmp_path, tiny_spec_body)), tmp_path / "run")
    recommender = featrec.load(tmp_path / "run")
    for user in (None, {}, {"job": None}, {"job": "eng|art"}, {"job": ""}):
        fast, _ = recommender.encode_one([10, 11], user, None)
        slow, _ = recommender.encode_many([[10, 11]], [user], [None])
        _assert_same(fast, slow)
    assert recommender.recommend_many([[10]], [None], [None], k=2)[0].items


def test_times_in_finer_units_read_as_training_reads_them(trained_run: Path) -> None:
    """Milliseconds, microseconds and nanoseconds by their size (data.columns.time_unit
    auto), on the fast path and through polars alike."""
    recommender = featrec.load(trained_run)
    seconds = [1_600_000_000 + 3_600 * h for h in (0, 5, 30)]

    def history(per_second: int) -> list[dict]:
        return [
            {"item_id": i, "timestamp": t * per_second}
            for i, t in zip((10, 11, 12), seconds, strict=True)
        ]

    context = {"timestamp": 1_600_200_000}
    want = recommender.recommend(history(1), context=context, k=4)
    for per_second in (10**3, 10**6, 10**9):
        finer = {"timestamp": context["timestamp"] * per_second}
        assert recommender.recommend(history(per_second), context=finer, k=4) == want
        [many] = recommender.recommend_many([history(per_second)], None, [finer], k=4)
        assert many.items == want.items
    hours = recommender.recommend(history(1), context={"timestamp": 1_600_200_000 + 7_200}, k=4)
    assert hours.scores != want.scores  # the time matters to this model

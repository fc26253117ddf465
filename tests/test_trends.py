"""Trend features (issue 22): an item's popularity in the days before a request and its age,
scored where items are scored, counted only from days before the request's own day."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import pytest
import torch

import featrec
from featrec.errors import DataError, SpecError
from featrec.ids import N_RESERVED
from featrec.model import build_model
from featrec.spec import load_spec
from featrec.trends import BUCKETS, NEVER, PREFIX, trend_buckets, trend_tables
from tests.conftest import write_spec

DAY = 86_400


def _spec(tmp_path: Path, features: list[dict], **extra) -> Path:
    body = {
        "name": "trends",
        "data": {"interactions": "events.parquet"},
        "features": features,
        "model": {"dim": 8, "layers": 1, "heads": 2, "max_len": 6},
        "train": {"epochs": 2, "batch_size": 8},
    } | extra
    return write_spec(tmp_path, body)


def _tables(spec_path: Path, times: torch.Tensor, items: torch.Tensor, num_items: int) -> dict:
    tables = trend_tables(load_spec(spec_path), times, items, num_items)
    return {key.removeprefix(PREFIX): value for key, value in tables.items()}


def _brute_popularity(times, items, day: int, window: int, item: int) -> int:
    days = [t // DAY for t in times.tolist()]
    pairs = zip(days, items.tolist(), strict=True)
    return sum(1 for d, i in pairs if i == item and day - window <= d < day)


def _bucket(count: int) -> int:
    """0 → 0, 1 → 1, 2-3 → 2, 4-7 → 3, ..."""
    return 0 if count <= 0 else min(1 + math.floor(math.log2(count)), BUCKETS - 1)


def test_buckets_equal_counting_by_hand(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    num_items, events = 9, 400
    times = 1_000 * DAY + torch.randint(0, 40 * DAY, (events,), generator=generator)
    items = torch.randint(3, num_items, (events,), generator=generator)
    items[items == 8] = 7  # item 8: no events at all
    spec = _spec(
        tmp_path,
        [{"name": "pop3", "type": "popularity", "window_days": 3, "measure": "count"},
         {"name": "pop10", "type": "popularity", "window_days": 10, "measure": "count"},
         {"name": "rank3", "type": "popularity", "window_days": 3},
         {"name": "age", "type": "age"}],
    )  # fmt: skip
    tables = _tables(spec, times, items, num_items)
    days = torch.arange(995, 1_060)  # before the data, through it, and well after its end
    ids = torch.arange(num_items)
    for window in (3, 10):
        got = trend_buckets("popularity", window, tables, days, ids, "count")
        want = [
            [_bucket(_brute_popularity(times, items, int(d), window, i)) for i in ids.tolist()]
            for d in days.tolist()
        ]
        assert got.tolist() == want
    ranks = trend_buckets("popularity", 3, tables, days, ids, "rank")
    for row, day in enumerate(days.tolist()):
        counts = [_brute_popularity(times, items, day, 3, i) for i in range(num_items)]
        for item, count in enumerate(counts):
            rank = 1 + sum(1 for other in counts if other > count)  # ties share the best
            assert ranks[row, item] == (0 if count == 0 else 1 + int(math.log2(rank)))
    pairs = list(zip(times.tolist(), items.tolist(), strict=True))
    first = {i: min((t // DAY for t, j in pairs if j == i), default=None) for i in range(num_items)}
    ages = trend_buckets("age", 0, tables, days, ids)
    assert torch.equal(trend_buckets("age", 0, tables, days, range(2, 6)), ages[:, 2:6])
    assert torch.equal(
        trend_buckets("popularity", 3, tables, days, range(2, 6), "rank"), ranks[:, 2:6]
    )
    for row, day in enumerate(days.tolist()):
        for item in range(num_items):
            start = first[item]
            want = 0 if start is None or day <= start else _bucket(day - start)
            assert ages[row, item] == want, (day, item)
    assert tables["first"][8] == NEVER


def test_nothing_on_or_after_the_request_day_counts(tmp_path: Path) -> None:
    """Events added on the request's day or later change no bucket of that request."""
    spec = _spec(
        tmp_path,
        [{"name": "pop", "type": "popularity", "window_days": 5}, {"name": "age", "type": "age"}],
    )
    times = torch.tensor([10, 11, 12, 13, 14]) * DAY
    items = torch.tensor([3, 4, 3, 5, 4])
    later = torch.cat([times, torch.tensor([13, 13, 14, 20]) * DAY + 5])
    more = torch.cat([items, torch.tensor([6, 3, 6, 7])])
    before, after = _tables(spec, times, items, 8), _tables(spec, later, more, 8)
    days, ids = torch.tensor([11, 12, 13]), torch.arange(8)
    for kind in ("popularity", "age"):
        assert torch.equal(
            trend_buckets(kind, 5, before, days, ids), trend_buckets(kind, 5, after, days, ids)
        )
    # and the day itself is excluded: item 4's event of day 11 counts from day 12 on
    assert trend_buckets("popularity", 5, before, torch.tensor([11]), ids)[0, 4] == 0
    assert trend_buckets("popularity", 5, before, torch.tensor([12]), ids)[0, 4] == 1
    # on day 13 item 3 (2 events) ranks first, item 4 (1) second: log2 buckets 1 and 2
    assert trend_buckets("popularity", 5, before, torch.tensor([13]), ids)[0, 3:5].tolist() == [
        1,
        2,
    ]


def _events(tmp_path: Path) -> None:
    """Items 3-9 of 30 users over 60 days; from day 30 on, item 9 is every user's hit."""
    generator = torch.Generator().manual_seed(1)
    rows = []
    for user in range(30):
        for step in range(12):
            day = 5 * step + user % 5
            item = (
                9 if day >= 30 and step % 2 else int(torch.randint(3, 9, (1,), generator=generator))
            )
            rows.append((user, item, 1_700_000_000 + day * DAY + user))
    pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row").write_parquet(
        tmp_path / "events.parquet"
    )


def test_model_scores_add_the_trend_terms_and_chunks_agree(tmp_path: Path) -> None:
    _events(tmp_path)
    spec_path = _spec(
        tmp_path,
        [{"name": "pop", "type": "popularity", "window_days": 7}, {"name": "age", "type": "age"},
         {"name": "count", "type": "popularity", "measure": "count"}],
    )  # fmt: skip
    recommender = featrec.fit(load_spec(spec_path), out=tmp_path / "run", progress=False)
    model = recommender.model
    assert set(model.trend_embedding) == {"pop", "age", "count"}
    query = torch.randn(4, 8)
    days = torch.tensor([19_670, 19_700, 19_720, 30_000])  # through the data and long after
    full = model.score_query(query, None, days)
    plain = super(type(model), model).score_query(query, None)
    tables = {k.removeprefix(f"item_table_{PREFIX}"): v for k, v in model.named_buffers()
              if k.startswith(f"item_table_{PREFIX}")}  # fmt: skip
    ids = torch.arange(model.num_items)
    extra = sum(
        (query @ model.trend_embedding[name].weight.T).gather(
            1, trend_buckets(kind, window, tables, days, ids, measure)
        )
        for name, kind, window, measure in model.trends
    )
    torch.testing.assert_close(full, plain + extra)
    r = N_RESERVED
    torch.testing.assert_close(model.score_query(query, range(r, r + 4), days), full[:, r : r + 4])
    torch.testing.assert_close(
        model.score_query(query, torch.tensor([[5], [4], [9], [6]]), days),
        full.gather(1, torch.tensor([[5], [4], [9], [6]])),
    )
    with pytest.raises(ValueError, match="request days"):
        model.score_query(query)
    # training groups its target slots by day: the same scores and gradients as row by row
    many = torch.randn(40, 8, requires_grad=True)
    shared = days[torch.randint(0, 4, (40,), generator=torch.Generator().manual_seed(1))]
    for items in (None, range(r, r + 5), torch.tensor([9, 4, 4, 7])):
        model.eval()
        row_by_row = model.score_query(many, items, shared)
        (want,) = torch.autograd.grad(row_by_row[row_by_row.isfinite()].square().sum(), many)
        model.train()
        grouped = model.score_query(many, items, shared)
        (got,) = torch.autograd.grad(grouped[grouped.isfinite()].square().sum(), many)
        torch.testing.assert_close(grouped, row_by_row)
        torch.testing.assert_close(got, want)
    model.eval()


def test_request_time_decides_the_trend(tmp_path: Path) -> None:
    """The same history ranked on a day where item 9 is the hit and long before it scores
    item 9 differently: the scores depend on the request's day, not only on the history."""
    _events(tmp_path)
    spec_path = _spec(tmp_path, [{"name": "pop", "type": "popularity", "window_days": 7}])
    recommender = featrec.fit(load_spec(spec_path), out=tmp_path / "run", progress=False)
    late = recommender.recommend([3, 4], context={"timestamp": 1_700_000_000 + 55 * DAY}, k=7)
    early = recommender.recommend([3, 4], context={"timestamp": 1_700_000_000 + 3 * DAY}, k=7)
    late_score = dict(zip(late.items, late.scores, strict=True))[9]
    assert late_score != dict(zip(early.items, early.scores, strict=True))[9]
    # the fast path and the polars path give the same model input, also for a request 30 s
    # before midnight whose history has no times (polars' float times once moved it a day)
    midnight = (1_700_000_000 // DAY + 55) * DAY
    for stamp in (1_700_000_000 + 55 * DAY, midnight - 30):
        fast, _ = recommender.encode_one([3, 4], None, {"timestamp": stamp})
        slow, _ = recommender.encode_many([[3, 4]], [None], [{"timestamp": stamp}])
        assert fast.event["@day"][-1] == stamp // DAY
        assert torch.equal(fast.event["@day"], slow.event["@day"])


def test_export_takes_the_request_day(tmp_path: Path) -> None:
    from featrec.batching import request_batch
    from featrec.export import export_run

    _events(tmp_path)
    spec_path = _spec(
        tmp_path, [{"name": "age", "type": "age"}, {"name": "pop", "type": "popularity"}]
    )
    featrec.fit(load_spec(spec_path), out=tmp_path / "run", progress=False)
    export_run(tmp_path / "run", tmp_path / "export")
    program = torch.export.load(tmp_path / "export" / "model.pt2").module()
    recommender = featrec.Recommender(tmp_path / "run")
    data, _ = recommender.encode_many(
        [[3, 4, 5], [6]], [None] * 2, [{"timestamp": 1_700_000_000 + d * DAY} for d in (2, 59)]
    )
    batch = request_batch(data, torch.arange(2), data.test_idx, 6)
    named = batch.named()
    assert "event:@day" in named
    got = program(*(named[k] for k in sorted(named)))
    torch.testing.assert_close(got, recommender.model.predict(batch))


def test_wrong_trend_declarations(tmp_path: Path) -> None:
    _events(tmp_path)
    with pytest.raises(SpecError, match="measure"):
        load_spec(_spec(tmp_path, [{"name": "p", "type": "popularity", "measure": "share"}]))
    with pytest.raises(SpecError, match="window_days"):
        load_spec(_spec(tmp_path, [{"name": "p", "type": "popularity", "window_days": 0}]))
    with pytest.raises(SpecError, match="scope"):
        load_spec(_spec(tmp_path, [{"name": "p", "type": "popularity", "scope": "user"}]))
    with pytest.raises(SpecError, match="output layer"):
        load_spec(_spec(tmp_path, [{"name": "a", "type": "age"}]), ["model.kind=embedding_mlp"])
    with pytest.raises(SpecError, match=r"model\.dim"):
        load_spec(_spec(tmp_path, [{"name": "a", "type": "age", "dim": 4}]))
    with pytest.raises(SpecError, match="column"):
        load_spec(_spec(tmp_path, [{"name": "a", "type": "age", "column": "x"}]))


def test_trends_need_clock_times() -> None:
    """Refused for data with positions for times, also when the prepared data is cached
    already (trend features are not part of the cache key)."""
    from tests.conftest import real_data_dir

    real_data_dir("s3rec-sports")
    from featrec.sequences import prepare
    from featrec.train import Experiment

    spec = load_spec("feature_specs/sports.yaml", ["features=[{name: p, type: popularity}]"])
    with pytest.raises(DataError, match="no clock"):
        prepare(spec)
    plain = load_spec("feature_specs/sports.yaml", ["features=[]"])
    prepared, _ = prepare(plain)  # cached under the key the trend spec shares
    with pytest.raises(DataError, match="no clock"):
        Experiment.from_spec(spec, prepared)


def test_cold_items_are_not_described_by_their_test_events(tmp_path: Path) -> None:
    """eval.cold_items: a held-out item's only events are test targets; the trend tables
    leave them out, so a cold item has no first day and no popularity."""
    from featrec.sequences import prepare
    from featrec.train import Experiment

    _events(tmp_path)
    spec = load_spec(
        _spec(tmp_path, [{"name": "pop", "type": "popularity"}, {"name": "a", "type": "age"}]),
        ["eval.cold_items=0.3"],
    )
    prepared, _ = prepare(spec)
    trained = prepared.item_vocab.trained
    assert prepared.item_vocab.cold > 0
    model = Experiment.from_spec(spec, prepared).model
    first = model.get_buffer(f"item_table_{PREFIX}first")
    assert (first[trained:] == NEVER).all() and (first[N_RESERVED:trained] < NEVER).all()
    popularity = model.get_buffer(f"item_table_{PREFIX}popularity7rank")
    assert (popularity[:, trained:] == 0).all() and popularity[:, :trained].any()


def test_baselines_of_an_ablation_leave_trends_out(tmp_path: Path) -> None:
    from featrec.ablate import variants

    _events(tmp_path)
    spec = load_spec(_spec(tmp_path, [{"name": "age", "type": "age"}]))
    found = variants(spec)
    assert [f.name for f in found["full"].spec.features] == ["age"]
    assert "-item" not in found or found["-item"].spec.features == []
    assert found["embedding-mlp"].spec.features == []
    assert found["din"].spec.features == []
    assert build_model  # the model registry is what trains each variant
    assert "-trends" not in found  # with nothing but trends, that is behavior-only
    mixed = load_spec(
        _spec(tmp_path, [{"name": "when", "scope": "event", "type": "time", "column": "timestamp"},
                         {"name": "pop7", "type": "popularity", "window_days": 7},
                         {"name": "age", "type": "age"}])
    )  # fmt: skip
    without = variants(mixed)["-trends"]  # what scoring items as of the request adds
    assert [f.name for f in without.spec.features] == ["when"]

"""Recommendations from a trained run: API, CLI, context, odd input, one code path, export."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import torch

import featrec
import featrec.ranking as ranking
from featrec.cli import main
from featrec.errors import FeatrecError
from featrec.export import example_batch, export_run
from featrec.recommend import Recommender, recommend_requests
from featrec.spec import load_spec
from featrec.train import Experiment, train
from tests.conftest import real_data_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def run(trained_run: Path) -> Path:
    return trained_run


def test_cold_user_with_a_history_only(run: Path) -> None:
    rec = featrec.load(run).recommend([10, 11], k=3)
    assert len(rec.items) == 3 and rec.fallback is None
    assert not {10, 11} & set(rec.items)  # seen items excluded
    assert rec.scores == sorted(rec.scores, reverse=True)


def test_recommend_many_of_no_requests_and_of_mismatched_lists(run: Path) -> None:
    recommender = featrec.load(run)
    assert recommender.recommend_many([], [], []) == []
    both = recommender.recommend_many([[10], [11]], k=3)  # no attributes, no context
    assert [r.items for r in both] == [recommender.recommend(h, k=3).items for h in ([10], [11])]
    with pytest.raises(FeatrecError, match="one entry per request; got 2, 1 and 2"):
        recommender.recommend_many([[10], [11]], [None], [None, None])


def test_an_empty_request_table_keeps_the_id_types(run: Path) -> None:
    """No requests: no rows, but the columns keep the types a non-empty table has."""
    recommender = featrec.load(run)
    requests = pl.DataFrame({"user_id": [1], "history": ["10 11"]})
    some = recommend_requests(recommender, requests, k=2)
    none = recommend_requests(recommender, requests.clear(), k=2)
    assert some.height == 2 and none.height == 0
    assert none.schema == some.schema
    assert pl.Null not in some.schema.dtypes()


def test_empty_history_falls_back_to_popularity_and_says_so(run: Path) -> None:
    for history in ([], None, [999]):
        rec = featrec.load(run).recommend(history, k=2)
        assert rec.fallback is not None and "popularity" in rec.fallback
        assert rec.items == [12, 11] or rec.items == [11, 12]  # 3 training events each


def test_unknown_items_are_dropped_and_counted(run: Path) -> None:
    recommender = featrec.load(run)
    rec = recommender.recommend([10, 999, "x", 11], k=3)
    assert rec.dropped_items == 2
    assert rec.items == recommender.recommend([10, 11], k=3).items


def test_unknown_and_missing_attributes_never_raise(run: Path) -> None:
    recommender = featrec.load(run)
    odd = recommender.recommend([10], user={"age": None, "job": "astronaut"}, k=2)
    missing = recommender.recommend([10], user=None, k=2)
    assert len(odd.items) == len(missing.items) == 2


def test_long_histories_keep_the_newest_events(run: Path) -> None:
    recommender = featrec.load(run)
    long = [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 12, 13]
    newest = long[-(recommender.spec.model.max_len - 1) :]  # the predicted slot takes one
    a = recommender.recommend(long, k=4, exclude_seen=False)
    b = recommender.recommend(newest, k=4, exclude_seen=False)
    assert a.items == b.items and a.scores == pytest.approx(b.scores)


def test_candidates_restrict_the_ranking(run: Path) -> None:
    rec = featrec.load(run).recommend([10], k=5, candidates=[13, 14, 999])
    assert sorted(rec.items) == [13, 14]


def test_request_time_is_used_and_after_features_are_not(run: Path) -> None:
    recommender = featrec.load(run)
    history = [{"item_id": 10, "timestamp": 100, "rating": 5, "device": "ios"}]
    base = recommender.recommend(history, context={"timestamp": 3600 * 5, "rating": 1}, k=11)
    other_rating = recommender.recommend(
        history, context={"timestamp": 3600 * 5, "rating": 5}, k=11
    )
    assert base.scores == other_rating.scores  # rating is known only after: hidden
    later = recommender.recommend(history, context={"timestamp": 3600 * 17, "rating": 1}, k=11)
    assert later.scores != base.scores  # the request hour is real signal


def _evaluation_top_k(experiment: Experiment, k: int) -> dict:
    """Top-k of the whole score matrix of the evaluation path's model input (one product,
    seen items masked) per test user."""
    from featrec.batching import request_batch, seen_items

    experiment.model.eval()
    users, positions = experiment.data.targets("test")
    batch = request_batch(experiment.data, users, positions, experiment.spec.model.max_len)
    with torch.no_grad():
        scores = experiment.model.predict(batch)
    seen = seen_items(experiment.data, users, positions, scores.shape[1])
    scores = scores.masked_fill(seen.to(scores.device), float("-inf"))
    top = torch.topk(scores, k).indices
    ids = experiment.prepared.item_vocab.ids
    return {
        experiment.data.user_ids[u]: [ids[i - 4] for i in row]
        for u, row in zip(users.tolist(), top.tolist(), strict=True)
    }


def _recommend_top_k(
    recommender: Recommender, tables, experiment: Experiment, k: int, single: bool = False
) -> dict:
    """The same users through recommend_many() (or one recommend() each): raw history
    before the test event, raw user attributes, and the test event's time as the request's
    context."""
    users, positions = experiment.data.targets("test")
    interactions = tables.interactions.with_row_index("row").sort("user_id", "timestamp", "row")
    by_user = interactions.partition_by("user_id", as_dict=True, maintain_order=True)
    people = {}
    if tables.users is not None:
        people = {r["user_id"]: r for r in tables.users.iter_rows(named=True)}
    histories, attributes, contexts, ids = [], [], [], []
    for user, position in zip(users.tolist(), positions.tolist(), strict=True):
        user_id = experiment.data.user_ids[user]
        events = by_user[(user_id,)]
        target = events.row(position, named=True)
        histories.append(events.head(position))
        row = people.get(user_id, {})
        attributes.append({c: row.get(c) for c in recommender.user_columns})
        contexts.append(
            {
                "timestamp": target["timestamp"],
                **{c: target[c] for c in recommender.event_columns if c in target},
            }
        )
        ids.append(user_id)
    if single:  # the polars-free encoding of one request (featrec.fastpath)
        recs = [
            recommender.recommend(h, user=a, context=c, k=k)
            for h, a, c in zip(histories, attributes, contexts, strict=True)
        ]
    else:
        recs = recommender.recommend_many(histories, attributes, contexts, k)
    return {user: rec.items for user, rec in zip(ids, recs, strict=True)}


@pytest.mark.parametrize("chunk", [None, 3])
def test_recommend_equals_the_evaluation_path_on_tiny_data(
    run: Path, chunk: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if chunk:  # recommend ranks the items 3 at a time; the expectation is one product
        monkeypatch.setattr(ranking, "ITEM_CHUNK", chunk)
    assert_recommend_ranks_as_evaluation(featrec.load(run))


def assert_recommend_ranks_as_evaluation(recommender, k: int = 5) -> None:
    """``recommend`` (in batches and request by request) gives every user's evaluation
    top ``k``, from the same weights."""
    from featrec.datasets import load_tables

    experiment = Experiment.from_spec(recommender.spec)
    experiment.model.load_state_dict(recommender.model.state_dict())
    tables = load_tables(recommender.spec.data)
    expected = _evaluation_top_k(experiment, k)
    assert _recommend_top_k(recommender, tables, experiment, k) == expected
    assert _recommend_top_k(recommender, tables, experiment, k, single=True) == expected


@pytest.mark.real_data
def test_recommend_equals_the_evaluation_path_for_every_ml100k_user(tmp_path: Path) -> None:
    real_data_dir("ml-100k")
    spec = load_spec(ROOT / "feature_specs" / "ml-100k.yaml", ["train.epochs=1"])
    train(spec, tmp_path / "run")
    recommender = featrec.load(tmp_path / "run")
    experiment = Experiment.from_spec(recommender.spec)
    experiment.model.load_state_dict(recommender.model.state_dict())
    from featrec.datasets import load_tables

    expected = _evaluation_top_k(experiment, 10)
    assert len(expected) == 943
    tables = load_tables(spec.data)
    assert _recommend_top_k(recommender, tables, experiment, 10) == expected
    assert _recommend_top_k(recommender, tables, experiment, 10, single=True) == expected


def test_export_scores_equal_the_eager_model(run: Path, tmp_path: Path) -> None:
    path = export_run(run, tmp_path / "export")
    program = torch.export.load(path).module()
    recommender = Recommender(run, device="cpu")  # the exported program runs on the CPU
    experiment = Experiment.from_spec(recommender.spec)
    experiment.model.load_state_dict(recommender.model.state_dict())
    from featrec.batching import request_batch

    serving = Recommender(run, device="cpu").model
    serving.fuse_per_item = False  # the model export traces: item-level sources per token
    users, positions = experiment.data.targets("test")  # other batch sizes and lengths
    batches = (
        example_batch(recommender),
        request_batch(experiment.data, users, positions, 7),  # more tokens than items
        request_batch(experiment.data, users[:1], positions[:1], 7),  # fewer, one request
    )
    assert len(batches[1].item.flatten()) >= recommender.model.num_items
    assert len(batches[2].item.flatten()) < recommender.model.num_items
    for batch in batches:
        keys = sorted(batch.named())
        with torch.no_grad():
            eager = serving.score(serving.last_hidden(batch))
            full = recommender.model.score(recommender.model(batch).hidden[:, -1])
        exported = program(*[batch.named()[k] for k in keys])
        assert torch.equal(exported, eager)
        # the last-slot-only computation (and the per-item fusion the evaluation takes for
        # large batches) agrees with the full forward up to rounding
        torch.testing.assert_close(exported, full, rtol=1e-5, atol=1e-6)
    assert {p.name for p in (tmp_path / "export").iterdir()} >= {
        "model.pt2",
        "inputs.json",
        "encoders.json",
    }


def test_cli_recommend_for_a_user_a_file_and_everyone(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(
            ["-q", "recommend", str(run), "--user", "u1", "--k", "3", "--at", "2021-03-04T05:00:00"]
        )
        == 0
    )
    assert "item_id" in capsys.readouterr().out
    requests = pl.DataFrame(
        {"user_id": ["u1", "new"], "history": [None, [10, 11]], "timestamp": [900, 1000],
         "job": ["eng", "astronaut"], "device": ["ios", None]}
    )  # fmt: skip
    requests.write_parquet(tmp_path / "requests.parquet")
    out = tmp_path / "recs.parquet"
    assert (
        main(
            [
                "-q",
                "recommend",
                str(run),
                "--input",
                str(tmp_path / "requests.parquet"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    recs = pl.read_parquet(out)
    assert recs.columns == ["user_id", "rank", "item_id", "score", "fallback"]
    # 11 items: "new" saw 2 of them, u1 (whole history) 5
    assert recs.group_by("user_id").len().sort("user_id")["len"].to_list() == [9, 6]
    everyone = tmp_path / "all.parquet"
    assert (
        main(["-q", "recommend", str(run), "--all-users", "--k", "2", "--out", str(everyone)]) == 0
    )
    assert pl.read_parquet(everyone)["user_id"].n_unique() == 7
    assert main(["-q", "export", str(run), "--out", str(tmp_path / "exp")]) == 0


def test_malformed_request_file_names_row_and_column(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "requests.csv"
    path.write_text("user_id,history,timestamp\nu1,10 11,100\nu2,12,yesterday\n")
    code = main(
        ["-q", "recommend", str(run), "--input", str(path), "--out", str(tmp_path / "r.parquet")]
    )
    err = capsys.readouterr().err
    assert code == 2 and "requests.csv: row 2, column timestamp: cannot read 'yesterday'" in err
    assert main(["-q", "recommend", str(run), "--user", "nobody"]) == 2
    assert "users not in " in capsys.readouterr().err
    bad = pl.DataFrame(
        {"user_id": ["u1", "u2"], "history": ["10 11", "12"], "job": [1.5, {"a": 1}]},
        strict=False,
    )  # a user attribute that is no value: named by the file's row and column
    with pytest.raises(FeatrecError, match=r"^r\.csv: row 2, column job: feature job expects one"):
        recommend_requests(featrec.load(run), bad, 3, "r.csv")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": -1}, r"^k: expected a whole number of items, 1 or more; got -1"),
        ({"k": 0}, r"^k: .* got 0"),
        ({"k": 2.5}, r"^k: .* got 2\.5"),
        ({"k": True}, r"^k: .* got True"),
        ({"k": "10"}, r"^k: .* got '10'"),
        ({"exclude_seen": "no"}, r"^exclude_seen: expected True or False; got 'no'"),
        ({"candidates": "13"}, r"^candidates: expected a list of item ids; got '13'"),
        ({"candidates": [998, 999]}, r"^candidates: none of the 2 items is in the run's item"),
        ({"history": [10, True]}, r"^history: item 1 is True \(a bool is no item id\)"),
    ],
    ids=["k-negative", "k-zero", "k-float", "k-bool", "k-text", "exclude-seen", "candidates-text",
         "candidates-unknown", "bool-item"],
)  # fmt: skip
def test_wrong_request_arguments_are_errors_not_guesses(
    run: Path, kwargs: dict, message: str
) -> None:
    recommender = featrec.load(run)
    request = {"history": [10, 11]} | kwargs
    with pytest.raises(FeatrecError, match=message):
        recommender.recommend(**request)
    many = {k: v for k, v in request.items() if k != "history"}
    with pytest.raises(FeatrecError, match=message.replace("^history", "^histories\\[0\\]")):
        recommender.recommend_many([request["history"]], **many)
    with pytest.raises(FeatrecError, match=r"^histories: expected a list with one history"):
        recommender.recommend_many("10 11")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"context": {"timestamp": 1e30}},
         r"^context\['timestamp'\]: cannot read 1e\+30 as a time: expected unix"),
        ({"context": {"timestamp": float("inf")}}, r"^context\['timestamp'\]: cannot read inf"),
        ({"context": {"timestamp": True}},
         r"^context\['timestamp'\]: cannot read True as a time \(a bool is no time\)"),
        ({"context": 5}, r"^context: expected a mapping of column to value \(or None\); got int"),
        ({"user": "u1"}, r"^user: expected a mapping .*got str 'u1'"),
        ({"user": {"age": "abc"}}, r"^user\['age'\]: feature age expects a number; got 'abc'"),
        ({"user": {"age": [1]}}, r"^user\['age'\]: feature age expects a number; got \[1\]"),
        ({"user": {"job": ["eng"]}}, r"^user\['job'\]: feature job expects one value"),
        ({"context": {"device": {"a": 1}}}, r"^context\['device'\]: feature device expects one"),
    ],
    ids=["time-huge", "time-inf", "time-bool", "context-int", "user-text", "numeric-text",
         "numeric-list", "categorical-list", "categorical-dict"],
)  # fmt: skip
def test_wrong_user_attributes_and_context_are_named(run: Path, kwargs: dict, message: str) -> None:
    recommender = featrec.load(run)
    with pytest.raises(FeatrecError, match=message):
        recommender.recommend([10, 11], **kwargs)
    assert recommender.recommend([10, 11], user={"age": 30.5, "job": 7, "zip": [1]}).items


def test_recommend_writes_parquet_or_csv_only(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from featrec.cli import main

    assert (
        main(["-q", "recommend", str(run), "--all-users", "--out", str(tmp_path / "r.json")]) == 2
    )
    assert "r.json: expected a .parquet or .csv file name" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda r: featrec.load(123), r"^run_dir: expected a path; got int"),
        (lambda r: featrec.load_spec(5), r"^spec: expected a path to a YAML file; got int"),
        (lambda r: r.for_known_users("u1"), r"^user_ids: expected a list of user ids"),
        (lambda r: r.for_known_users(["u1"], k=0), r"^k: expected a whole number"),
        (lambda r: r.for_known_users(["u1"], at=float("inf")), r"cannot read inf as a time"),
    ],
    ids=["load-int", "load-spec-int", "user-ids-text", "known-k-zero", "known-at-inf"],
)
def test_public_functions_name_a_wrong_argument(run: Path, call, message: str) -> None:
    with pytest.raises(FeatrecError, match=message):
        call(featrec.load(run))


@pytest.mark.parametrize("chunk", [None, 4])
def test_an_exported_top_k_program_ranks_as_recommend(
    run: Path, tmp_path: Path, chunk: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if chunk:  # the program's ranking unrolled over item chunks of 4
        monkeypatch.setattr(ranking, "ITEM_CHUNK", chunk)
    path = export_run(run, tmp_path / "export", top_k=3)
    program = torch.export.load(path).module()
    recommender = Recommender(run, device="cpu")
    ids = recommender.item_vocab.ids
    histories = [ids[:3], ids[1:6], ids[4:5]]
    data, _ = recommender.encode_many(histories, [None] * 3, [None] * 3)
    from featrec.batching import request_batch

    batch = request_batch(data, torch.arange(3), data.test_idx, recommender.spec.model.max_len)
    keys = sorted(batch.named())
    values, items = program(*[batch.named()[k] for k in keys])
    assert values.shape == items.shape == (3, 3)
    for row, history in enumerate(histories):
        expected = recommender.recommend(history, k=3)  # seen items excluded
        assert [ids[i - 4] for i in items[row].tolist()] == expected.items
        torch.testing.assert_close(values[row], torch.tensor(expected.scores), rtol=1e-5, atol=1e-5)
    description = json.loads((tmp_path / "export" / "inputs.json").read_text())
    assert description["output"].startswith("(values, item indices)")

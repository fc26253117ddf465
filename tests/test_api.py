"""The Python API: featrec.fit / prepare / load / load_spec / Spec, from DataFrames of every
kind, and the histories Recommender.recommend accepts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
import torch

import featrec
from featrec.cli import main
from featrec.errors import DataError, FeatrecError, SpecError
from tests.conftest import real_data_dir

ROOT = Path(__file__).resolve().parents[1]

# the tiny fixture's spec without files: the tables come as DataFrames
SPEC_TEXT = """
name: tiny-frames
data:
  columns: {user: uid, item: iid, time: ts}
features:
  - {name: tags, scope: item, type: multi_categorical, column: tags, separator: "|"}
  - {name: year, scope: item, type: numeric, column: year, bins: 3}
  - {name: job, scope: user, type: categorical, column: job}
  - {name: time, scope: event, type: time, column: ts, known_at: request}
  - {name: rating, scope: event, type: categorical, column: rating}
model: {dim: 12, layers: 1, heads: 3, max_len: 7}
train: {epochs: 2, batch_size: 3, warmup_steps: 2}
"""


@pytest.fixture
def frames(tiny_tables: dict[str, Path]) -> dict[str, pl.DataFrame]:
    return {name: pl.read_parquet(path) for name, path in tiny_tables.items()}


def test_fit_on_polars_frames_trains_recommends_and_evaluates(
    tmp_path: Path, frames: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    rec = featrec.fit(SPEC_TEXT, **frames, out=tmp_path / "run", progress=False)
    assert isinstance(rec, featrec.Recommender)
    stored = featrec.load_spec(tmp_path / "run" / "spec.yaml")
    assert stored.data.interactions == (tmp_path / "run" / "data" / "interactions.parquet")
    assert pl.read_parquet(stored.data.interactions).equals(frames["interactions"])
    final = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
    assert rec.evaluate("test") == final["test"] and rec.evaluate("valid") == final["valid"]
    top = rec.recommend([10, 11], context={"ts": 900}, k=3)
    assert len(top.items) == 3 and set(top.items) <= set(frames["items"]["iid"].to_list()) | {20}
    # the run stands alone: the commands find its data without the DataFrames
    assert featrec.load(tmp_path / "run").for_known_users(["u4"], at=900, k=2).height == 2
    assert main(["-q", "evaluate", str(tmp_path / "run")]) == 0
    assert "most popular (test)" in capsys.readouterr().out


def test_fit_gives_the_same_run_from_pandas_arrow_and_polars(tmp_path: Path, frames: dict) -> None:
    results = {}
    for kind, convert in {
        "polars": lambda f: f,
        "pandas": lambda f: f.to_pandas(),
        "arrow": lambda f: f.to_arrow(),
    }.items():
        rec = featrec.fit(
            SPEC_TEXT, **{n: convert(f) for n, f in frames.items()}, out=tmp_path / kind,
            progress=False,
        )  # fmt: skip
        results[kind] = rec.evaluate("test")
    assert results["pandas"] == results["polars"] == results["arrow"]


def test_fit_takes_a_spec_object_a_path_and_overrides(
    tmp_path: Path, frames: dict, tiny_spec_body: dict
) -> None:
    spec = featrec.Spec.model_validate({"name": "obj", "train": {"epochs": 1}})
    rec = featrec.fit(spec, interactions=frames["interactions"], out=tmp_path / "a",
                      overrides=["data.columns.user=uid", "data.columns.item=iid",
                                 "data.columns.time=ts"], progress=False)  # fmt: skip
    assert rec.spec.features == [] and rec.spec.train.epochs == 1
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC_TEXT)
    rec = featrec.fit(path, **frames, out=tmp_path / "b", behavior_only=True,
                      overrides=["train.epochs=1"], progress=False)  # fmt: skip
    assert rec.spec.features == [] and rec.spec.name == "tiny-frames"


def _int_users(frames: dict, plus: float = 0.0) -> dict:
    """The tiny tables with integer user ids, the users table's as floats (+ ``plus``)."""
    as_int = pl.col("uid").str.slice(1).cast(pl.Int64)
    return frames | {
        "interactions": frames["interactions"].with_columns(as_int),
        "users": frames["users"].with_columns(as_int.cast(pl.Float64) + plus),
    }


def test_a_users_table_with_ids_of_another_type_joins_where_they_convert(frames: dict) -> None:
    floats = _int_users(frames)
    ints = floats | {"users": floats["users"].with_columns(pl.col("uid").cast(pl.Int64))}
    text = floats | {
        "users": floats["users"].with_columns(pl.col("uid").cast(pl.Int64).cast(pl.String))
    }
    want = featrec.prepare(SPEC_TEXT, **ints).sequences
    assert want["job"].n_unique() > 2  # the users' jobs, not all missing
    for other in (floats, text):
        assert featrec.prepare(SPEC_TEXT, **other).sequences.equals(want)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda t, f: featrec.fit(SPEC_TEXT, out=t), SpecError, "data: set exactly one of"),
        (lambda t, f: featrec.fit(SPEC_TEXT, users=f["users"], out=t), FeatrecError,
         "interactions: needed"),
        (lambda t, f: featrec.fit(SPEC_TEXT, interactions=[1, 2], out=t), FeatrecError,
         "interactions: expected a pandas or polars DataFrame or a pyarrow Table; got "
         "builtins.list"),
        (lambda t, f: featrec.fit(SPEC_TEXT.replace("uid", "user"), **f, out=t), DataError,
         "data.columns.user: column 'user' not in the interactions table"),
        (lambda t, f: featrec.fit("name: x\ndata: {dataset: ml-100k}", **f, out=t),
         FeatrecError, "data.dataset is 'ml-100k', and tables were given too"),
        (lambda t, f: featrec.fit(3, **f, out=t), FeatrecError, "spec: expected a featrec.Spec"),
        (lambda t, f: featrec.fit(SPEC_TEXT, **f, out=t, overrides="train.epochs=1"),
         FeatrecError, "overrides: expected a list"),
        (lambda t, f: featrec.fit(SPEC_TEXT, **f, out=t, overrides=["train.epochs=0"]),
         SpecError, "train.epochs"),
        (lambda t, f: featrec.fit("name: [", **f, out=t), SpecError,
         "spec text: not valid YAML"),
        (lambda t, f: featrec.fit(SPEC_TEXT, **_int_users(f, 0.5), out=t), DataError,
         "the users table given: column 'uid' holds Float64 ids and the interactions' (the "
         "interactions table given) are Int64: 1.5 is no Int64 id"),
        (lambda t, f: featrec.fit(SPEC_TEXT.replace("type: categorical, column: job",
                                                    "type: categorical, column: jobs"),
                                  **f | {"users": f["users"].with_columns(
                                      jobs=pl.col("job").str.split(" "))}, out=t), DataError,
         "column 'jobs' holds List(String); a categorical feature takes one value per row"),
        (lambda t, f: featrec.fit(SPEC_TEXT.replace("column: tags", "column: year"), **f, out=t),
         DataError, "column 'year' holds Int64; separator splits text"),
        (lambda t, f: featrec.fit(SPEC_TEXT.replace("type: categorical, column: rating",
                                                    "type: time, column: when"),
                                  **f | {"interactions": f["interactions"].with_columns(
                                      when=pl.lit("yesterday"))}, out=t), DataError,
         "column 'when' cannot be read as times"),
        (lambda t, f: featrec.fit(SPEC_TEXT, **f | {"items": f["items"].with_columns(
            year=pl.col("year").cast(pl.Float64).fill_null(float("inf")))}, out=t), DataError,
         "column 'year' holds 1 infinite values"),
    ],
)  # fmt: skip
def test_fit_bad_input_is_one_clear_error_and_leaves_nothing(
    tmp_path: Path, frames: dict, call, error: type, message: str
) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(tmp_path / "run", frames)
    assert not (tmp_path / "run").exists()


def test_prepare_from_frames_equals_prepare_from_files(
    tmp_path: Path, frames: dict, tiny_tables: dict[str, Path]
) -> None:
    from_frames = featrec.prepare(SPEC_TEXT, **{n: f.to_pandas() for n, f in frames.items()})
    with_files = SPEC_TEXT.replace(
        "  columns:", "\n".join(f"  {n}: {p}" for n, p in tiny_tables.items()) + "\n  columns:"
    )
    from_files = featrec.prepare(with_files)
    assert from_frames.stats == from_files.stats
    assert from_frames.sequences.equals(from_files.sequences)


def test_a_run_fit_from_frames_moves_and_copies_with_its_own_tables(
    tmp_path: Path, frames: dict
) -> None:
    import shutil

    featrec.fit(SPEC_TEXT, **frames, out=tmp_path / "run", progress=False)
    assert "interactions: data/interactions.parquet" in (tmp_path / "run" / "spec.yaml").read_text()
    shutil.copytree(tmp_path / "run", tmp_path / "copy")
    shutil.move(tmp_path / "run", tmp_path / "moved")  # the folder it was made in is gone
    want = json.loads((tmp_path / "moved" / "final_metrics.json").read_text())["test"]
    for name in ("moved", "copy"):
        rec = featrec.load(tmp_path / name)
        assert rec.spec.data.interactions == tmp_path / name / "data" / "interactions.parquet"
        assert rec.evaluate("test") == want
    # a copy checks its own tables: changing them is noticed, not hidden by the original's
    cut = frames["interactions"].head(20)
    cut.write_parquet(tmp_path / "copy" / "data" / "interactions.parquet")
    with pytest.raises(FeatrecError, match="interactions file changed since this run"):
        featrec.load(tmp_path / "copy").evaluate("test")
    assert featrec.load(tmp_path / "moved").evaluate("test") == want


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> featrec.Recommender:
    folder = tmp_path_factory.mktemp("fitted")
    import tests.conftest as conftest

    paths = conftest.tiny_tables.__wrapped__(folder)  # the fixture's function, called once
    frames = {n: pl.read_parquet(p) for n, p in paths.items()}
    return featrec.fit(SPEC_TEXT, **frames, out=folder / "run", progress=False)


@pytest.mark.parametrize(
    "history",
    [
        (10, 11, 12),
        np.array([10, 11, 12]),
        pd.Series([10, 11, 12]),
        pl.Series([10, 11, 12]),
        pa.array([10, 11, 12]),
        pd.DataFrame({"item_id": [10, 11, 12]}),
        pa.table({"item_id": [10, 11, 12]}),
    ],
    ids=["tuple", "numpy", "pandas", "polars", "arrow-array", "pandas-frame", "arrow-table"],
)
def test_recommend_takes_arrays_series_and_frames(fitted, history) -> None:
    expected = fitted.recommend([10, 11, 12], k=4)
    assert fitted.recommend(history, k=4) == expected
    batched = fitted.recommend_many([history, [13]], k=4)[0]  # another batch shape: rounding
    assert batched.items == expected.items
    assert batched.scores == pytest.approx(expected.scores, abs=1e-6)


@pytest.mark.parametrize(
    ("history", "message"),
    [
        ("1193", "got the text '1193'"),
        (np.array([[1, 2], [3, 4]]), r"expected a 1-d array of item ids; got \(2, 2\)"),
        ({1, 2}, "got builtins.set"),
        ([[1, 2], [3]], r"item 0 is a list \(several histories: recommend_many\)"),
    ],
)
def test_recommend_refuses_what_is_no_history(fitted, history, message: str) -> None:
    with pytest.raises(FeatrecError, match="^history: .*" + message):
        fitted.recommend(history)


def test_evaluate_names_a_bad_split(fitted) -> None:
    with pytest.raises(FeatrecError, match="split: expected 'valid' or 'test'; got 'train'"):
        fitted.evaluate("train")


@pytest.mark.real_data
def test_fit_on_pandas_frames_of_ml100k(tmp_path: Path) -> None:
    folder = real_data_dir("ml-100k")
    ratings = pd.read_csv(
        folder / "u.data", sep="\t", names=["user_id", "item_id", "rating", "timestamp"]
    )
    users = pd.read_csv(
        folder / "u.user", sep="|", names=["user_id", "age", "gender", "occupation", "zip"]
    )
    spec = """
name: ml-100k-pandas
features:
  - {name: gender, scope: user, type: categorical, column: gender}
  - {name: occupation, scope: user, type: categorical, column: occupation}
  - {name: time, scope: event, type: time, column: timestamp, known_at: request}
model: {max_len: 50}
train: {epochs: 2}
"""
    rec = featrec.fit(spec, interactions=ratings, users=users, out=tmp_path / "run",
                      progress=False)  # fmt: skip
    metrics = rec.evaluate("test")
    assert metrics["ndcg@10"] > 0  # two epochs learn popularity at least
    top = rec.recommend(ratings[ratings.user_id == 1].item_id.to_numpy(), k=10)
    seen = set(ratings[ratings.user_id == 1].item_id)
    assert len(top.items) == 10 and not seen & set(top.items)
    table = rec.for_known_users([1, 2, 3], k=5)
    assert table.height == 15 and table["item_id"].dtype == pl.Int64


def test_fit_resumes_an_interrupted_run_with_the_same_tables_only(
    tmp_path: Path, frames: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    import featrec.train

    real_train = featrec.train.train

    def interrupted(*args, **kwargs):
        def stop(epoch: int, row: dict) -> None:
            if epoch == 1:
                raise KeyboardInterrupt

        return real_train(*args, **kwargs, on_epoch_end=stop)

    monkeypatch.setattr(featrec.train, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        featrec.fit(SPEC_TEXT, **frames, out=tmp_path / "run", progress=False)
    monkeypatch.setattr(featrec.train, "train", real_train)
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()  # kept for a resume
    with pytest.raises(FeatrecError, match="holds a run already"):
        featrec.fit(SPEC_TEXT, **frames, out=tmp_path / "run", progress=False)
    other = frames | {"interactions": frames["interactions"].head(20)}
    with pytest.raises(FeatrecError, match="interactions: differs from the table the run"):
        featrec.fit(SPEC_TEXT, **other, out=tmp_path / "run", progress=False, resume=True)
    rec = featrec.fit(SPEC_TEXT, **frames, out=tmp_path / "run", progress=False, resume=True)
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2] and rec.evaluate("test")


def test_known_users_by_id_of_any_kind_with_their_stored_attributes(
    tmp_path: Path, frames: dict
) -> None:
    from featrec.recommend import recommend_requests

    as_int = pl.col("uid").str.slice(1).cast(pl.Int64)  # "u4" -> 4
    ints = frames | {t: frames[t].with_columns(as_int) for t in ("interactions", "users")}
    rec = featrec.fit(SPEC_TEXT, **ints, out=tmp_path / "run", progress=False)
    want = rec.for_known_users([1, 4], at=900, k=3)
    assert want["fallback"].null_count() == want.height  # from the users' own histories
    # a request file read as text ids ("1"), or as numbers for a text-id run, finds the user
    text = pl.DataFrame({"user_id": ["1", "4"], "timestamp": [900, 900]})
    got = recommend_requests(rec, text, k=3)
    assert got.drop("user_id").equals(want.drop("user_id"))
    # the stored attributes fill what a request leaves out, whether its history is given
    history = rec.known_users()[0].filter(pl.col("uid") == 4)["iid"].to_list()
    given = pl.DataFrame({"user_id": [4], "history": [history], "timestamp": [900]})
    stored = rec.recommend(history, user={"job": "doc"}, context={"ts": 900}, k=3)
    without = rec.recommend(history, user=None, context={"ts": 900}, k=3)
    assert stored.scores != without.scores  # the attribute matters to this model
    assert recommend_requests(rec, given, k=3)["score"].to_list() == stored.scores
    # the request time by the data's time column ("ts") is the request time, as "timestamp"
    for many in (False, True):

        def top(context, many=many):
            if many:
                return rec.recommend_many([history, [10]], None, [context, None], k=3)[0]
            return rec.recommend(history, context=context, k=3)

        assert top({"ts": 900}) == top({"timestamp": 900}) == top({"ts": 900, "timestamp": 900})
        assert top({"ts": 900}).scores != top({"ts": 900 + 6 * 3600}).scores
        with pytest.raises(FeatrecError, match="two different request times"):
            top({"ts": 900, "timestamp": 901})
    # ids that are no user: refused, not cast to one; no ids: no rows
    for bad in ([2.5], [True], ["4x"], [99]):
        with pytest.raises(FeatrecError, match=r"^users not in .*: " + repr(bad[0])):
            rec.for_known_users(bad, at=900)
    assert rec.for_known_users([np.int64(4), 4.0], at=900, k=3)["item_id"].to_list() == (
        want.filter(pl.col("user_id") == 4)["item_id"].to_list() * 2
    )
    empty = rec.for_known_users([], at=900)
    assert empty.height == 0 and empty.schema == want.schema


def test_a_failed_fit_leaves_a_folder_that_was_there_as_it_was(
    tmp_path: Path, frames: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    import featrec.train

    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    bad = frames | {"items": frames["items"].with_columns(year=pl.lit(float("inf")))}
    with pytest.raises(DataError, match=r"^spec text: features.* infinite values"):
        featrec.fit(SPEC_TEXT, **bad, out=out, progress=False)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]

    def broken(*args, **kwargs):  # a failure that is no FeatrecError, before any checkpoint
        raise RuntimeError("boom")

    monkeypatch.setattr(featrec.train, "train", broken)
    with pytest.raises(RuntimeError, match="boom"):
        featrec.fit(SPEC_TEXT, **frames, out=tmp_path / "new", progress=False)
    assert not (tmp_path / "new").exists()
    with pytest.raises(RuntimeError, match="boom"):
        featrec.fit(SPEC_TEXT, **frames, out=out, progress=False)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_a_temporal_split_with_nothing_before_its_cutoff_is_one_clear_error(
    tmp_path: Path, frames: dict
) -> None:
    same = frames | {"interactions": frames["interactions"].with_columns(ts=pl.lit(500))}
    spec = SPEC_TEXT + "eval: {split: temporal}\n"
    with pytest.raises(DataError, match="the temporal split leaves no events to train on"):
        featrec.fit(spec, **same, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_numpy_pandas_and_date_values_are_numbers_and_times(fitted) -> None:
    import datetime as dt

    want = fitted.recommend([10, 11], context={"ts": 86_400 * 365}, k=3)
    assert fitted.recommend([10, 11], context={"ts": 86_400 * 365}, k=np.int64(3)) == want
    for moment in (
        np.int64(86_400 * 365),
        np.datetime64("1971-01-01"),
        dt.date(1971, 1, 1),
        pd.Timestamp("1971-01-01"),
        "1971-01-01T00:00:00Z",
    ):
        assert fitted.recommend([10, 11], context={"ts": moment}, k=3) == want, moment
    # missing times are no time, as None is
    none = fitted.recommend([10, 11], context={"ts": None}, k=3)
    for missing in (pd.NaT, np.datetime64("NaT"), float("nan"), pd.NA):
        assert fitted.recommend([10, 11], context={"ts": missing}, k=3) == none
    frame = pd.DataFrame({"item_id": [10, 11], "ts": [pd.Timestamp("1971-01-01"), pd.NaT]})
    assert fitted.recommend(frame, k=3).items  # a NaT in a history: an event without a time
    at = fitted.for_known_users(["u4"], at=pd.Timestamp("1971-01-01"), k=3)
    assert at.equals(fitted.for_known_users(["u4"], at=86_400 * 365, k=3))
    with pytest.raises(FeatrecError, match=r"^history: row 2, column ts: cannot read 'x'"):
        fitted.recommend([{"item_id": 10, "ts": 5}, {"item_id": 11, "ts": "x"}], k=3)
    with pytest.raises(FeatrecError, match=r"^at: cannot read 'yesterday' as a time"):
        fitted.for_known_users(["u4"], at="yesterday")


def test_more_data_mistakes_and_what_they_get(
    tmp_path: Path, frames: dict, caplog: pytest.LogCaptureFixture
) -> None:
    # times written as text numbers are the numbers (as recommend reads them)
    text = frames | {"interactions": frames["interactions"].with_columns(pl.col("ts").cast(str))}
    assert featrec.prepare(SPEC_TEXT, **text).sequences.equals(
        featrec.prepare(SPEC_TEXT, **frames).sequences
    )
    # a users table of other ids: refused; one naming few of the users: said
    other = frames | {"users": frames["users"].with_columns(pl.col("uid") + "x")}
    with pytest.raises(DataError, match=r"users table given: none of its 6 user_ids occurs in"):
        featrec.prepare(SPEC_TEXT, **other)
    few = frames | {"users": frames["users"].head(2)}
    featrec.prepare(SPEC_TEXT, **few)
    assert "only 2 of the interactions' 7 user_ids have a row" in caplog.text
    # a pandas column of mixed types is named
    mixed = frames["users"].to_pandas().assign(job=["eng", 3, "art", "doc", None, "art"])
    with pytest.raises(
        FeatrecError, match=r"^users: cannot convert the pandas table: column 'job'"
    ):
        featrec.prepare(SPEC_TEXT, **frames | {"users": mixed})


def test_candidates_as_text_and_an_export_of_more_items_than_there_are(
    fitted, tmp_path: Path
) -> None:
    from featrec.export import export_run

    chosen = fitted.recommend([10], candidates=["12", 13], k=2)  # "12" is item 12
    assert sorted(chosen.items) == [12, 13]
    with pytest.raises(FeatrecError, match="candidates: none of the 2 items"):
        fitted.recommend([10], candidates=["12.5", 12.5], k=2)
    export_run(fitted.run_dir, tmp_path / "exp", top_k=1000)
    inputs = json.loads((tmp_path / "exp" / "inputs.json").read_text())
    assert "(batch, 11): the 11 best items" in inputs["output"]
    export_run(fitted.run_dir, tmp_path / "exp")  # an earlier export: replaced
    assert (
        "scores (batch, items)"
        in json.loads((tmp_path / "exp" / "inputs.json").read_text())["output"]
    )
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "spec.yaml").write_text("mine")
    with pytest.raises(FeatrecError, match="holds files that are no featrec export"):
        export_run(fitted.run_dir, tmp_path / "mine")
    assert (tmp_path / "mine" / "spec.yaml").read_text() == "mine"
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(FeatrecError, match=r"^--out .*afile: is a file"):
        export_run(fitted.run_dir, tmp_path / "afile")


def test_request_files_and_record_histories_give_times_as_the_data_does(
    fitted, monkeypatch: pytest.MonkeyPatch
) -> None:
    from featrec.recommend import recommend_requests

    plain = pl.DataFrame({"user_id": ["u1"], "history": ["10 11"], "timestamp": [900]})
    by_ts = plain.rename({"timestamp": "ts"})  # the data's time column names the time
    want = recommend_requests(fitted, plain, 3)
    assert recommend_requests(fitted, by_ts, 3).equals(want)
    assert recommend_requests(fitted, by_ts.with_columns(timestamp=pl.lit(900)), 3).equals(want)
    later = by_ts.with_columns(timestamp=pl.lit(5_000))
    with pytest.raises(FeatrecError, match=r"^r\.csv: row 1: columns timestamp and ts give two"):
        recommend_requests(fitted, later, 3, "r.csv")
    # record histories with pandas' and numpy's missing times, or naive and aware times
    t = pd.Timestamp("1971-01-01")
    year = 31_536_000  # 1971-01-01 in unix seconds
    for first, second, as_seconds in [
        (pd.NaT, year, (None, year)),
        (pd.NA, year, (None, year)),
        (np.datetime64("NaT"), year, (None, year)),
        (pd.NaT, None, (None, None)),
        (t, t.tz_localize("UTC"), (year, year)),
    ]:
        history = [{"item_id": 10, "ts": first}, {"item_id": 11, "ts": second}]
        one = fitted.recommend(history, k=3)
        assert fitted.recommend_many([history], k=3) == [one], (first, second)
        seconds = [{"item_id": i, "ts": s} for i, s in zip((10, 11), as_seconds, strict=True)]
        assert one == fitted.recommend(seconds, k=3), (first, second)


def test_requests_of_a_run_without_user_features_leave_its_data_alone(
    tmp_path: Path, frames: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from featrec.recommend import Recommender, recommend_requests

    spec = SPEC_TEXT.replace("  - {name: job, scope: user, type: categorical, column: job}\n", "")
    rec = featrec.fit(spec, **frames, out=tmp_path / "run", progress=False)
    assert rec.user_columns == []

    def unreadable(self):
        raise FeatrecError("data not at hand")

    monkeypatch.setattr(Recommender, "known_users", unreadable)
    requests = pl.DataFrame({"user_id": ["u1"], "history": ["10 11"], "ts": [900]})
    assert recommend_requests(rec, requests, 3).height == 3


def test_a_failed_fit_removes_its_files_from_the_folders_it_found(
    tmp_path: Path, frames: dict
) -> None:
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    (out / "checkpoints").mkdir()
    (out / "data" / "mine.csv").write_text("a,b\n")
    bad = frames | {"items": frames["items"].with_columns(year=pl.lit(float("inf")))}
    with pytest.raises(DataError, match="infinite"):
        featrec.fit(SPEC_TEXT, **bad, out=out, progress=False)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "checkpoints", "data", "data/mine.csv"
    ]  # fmt: skip


def test_fit_does_not_replace_a_table_file_it_finds_in_the_folder(
    tmp_path: Path, frames: dict
) -> None:
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    (out / "data" / "users.parquet").write_bytes(b"the user's own")
    with pytest.raises(FeatrecError, match=r"users.parquet: exists already.*another out"):
        featrec.fit(SPEC_TEXT, **frames, out=out, progress=False)
    assert (out / "data" / "users.parquet").read_bytes() == b"the user's own"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "data", "data/users.parquet"
    ]  # fmt: skip


EXPORT_SPEC = """
name: tiny-export
data:
  columns: {user: uid, item: iid, time: ts}
features:
  - {name: tags, scope: item, type: multi_categorical, column: tags, separator: "|"}
  - {name: langs, scope: user, type: multi_categorical, column: langs}
  - {name: time, scope: event, type: time, column: ts, known_at: request}
  - {name: rating, scope: event, type: numeric, column: rating, transform: standard}
model: {dim: 12, layers: 1, heads: 3, max_len: 7, kind: KIND}
train: {epochs: 1, batch_size: 3, warmup_steps: 2}
"""


@pytest.mark.parametrize("kind", ["bert4rec", "embedding_mlp"])
def test_an_export_serves_user_lists_of_any_width_as_recommend(
    tmp_path: Path, frames: dict, kind: str
) -> None:
    """A user's list of any length, a number hidden at the predicted slot as inputs.json
    says, every model kind: the exported top-k is recommend's."""
    from featrec.batching import request_batch
    from featrec.export import export_run

    langs = [["en"], ["en", "fr"], ["de", "fr", "en"], [], ["fr"], ["de"]]
    users = frames["users"].with_columns(langs=pl.Series(langs))
    rec = featrec.fit(
        EXPORT_SPEC.replace("KIND", kind), **frames | {"users": users}, out=tmp_path / "run",
        progress=False,
    )  # fmt: skip
    program = torch.export.load(export_run(rec.run_dir, tmp_path / "exp", top_k=3)).module()
    meta = json.loads((tmp_path / "exp" / "inputs.json").read_text())
    described = {entry["name"]: entry for entry in meta["inputs"]}
    assert described["user:langs"]["shape"] == ["batch", "width"]
    assert described["event:rating"]["at_predicted_slot"] == 0.0  # a number: 0, not MASK
    assert described["item"]["at_predicted_slot"] == 1
    assert described["item"]["ids"] == len(meta["item_ids"]) + 4  # and the 4 reserved ids
    assert described["user:langs"]["ids"] == 4 + 3 and "ids" not in described["event:rating"]
    for user in ({"langs": ["en"]}, {"langs": ["en", "fr"]}, {"langs": ["de", "fr", "en"]}):
        history = [10, 11, 12]
        want = rec.recommend(history, user=user, context={"ts": 900}, k=3)
        data, _ = rec.encode_many([history], [user], [{"ts": 900}])
        batch = request_batch(data, torch.arange(1), data.test_idx, 7).named()
        assert batch["user:langs"].shape[1] == len(user["langs"])
        assert batch["event:rating"][0, -1] == described["event:rating"]["at_predicted_slot"]
        with torch.no_grad():
            values, items = program(*[batch[entry["name"]] for entry in meta["inputs"]])
        assert [meta["item_ids"][i - 4] for i in items[0].tolist()] == want.items
    # more places than items left: the window's own items are not among them
    program = torch.export.load(export_run(rec.run_dir, tmp_path / "all", top_k=99)).module()
    with torch.no_grad():
        values, items = program(*[batch[entry["name"]] for entry in meta["inputs"]])
    found = [meta["item_ids"][i - 4] for i in items[0].tolist() if i >= 0]
    assert sorted(found) == sorted(set(meta["item_ids"]) - {10, 11, 12})
    assert (items[0] == -1).sum() == 3 and torch.isneginf(values[0, -3:]).all()


def test_a_fit_into_a_folder_another_process_trains_into_is_refused_untouched(
    tmp_path: Path, frames: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    import featrec.api
    from featrec.rundir import exclusive

    stored = []
    monkeypatch.setattr(featrec.api, "_store_tables", lambda *a, **k: stored.append(a))
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "spec.yaml").write_text("the other run's")  # its first epoch: no last.pt yet
    with exclusive(out), pytest.raises(FeatrecError, match="another featrec process"):
        featrec.fit(SPEC_TEXT, **frames, out=out, progress=False)
    assert stored == []  # refused before writing anything into the other run's folder
    assert (out / "spec.yaml").read_text() == "the other run's"

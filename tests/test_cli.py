from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from featrec.cli import main
from tests.conftest import write_spec

ROOT = Path(__file__).resolve().parents[1]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["-q", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_validate_prints_features_by_scope(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "validate", str(ROOT / "feature_specs" / "ml-1m.yaml"))
    assert code == 0
    assert "features (7):" in out
    assert "event  time" in out and "visible (known_at request)" in out
    assert "event  rating" in out and "hidden (known_at after)" in out
    item_row = next(line for line in out.splitlines() if "genres" in line)
    assert item_row.split()[:3] == ["item", "genres", "multi_categorical"]


def test_validate_behavior_only(capsys: pytest.CaptureFixture[str]) -> None:
    spec = str(ROOT / "feature_specs" / "ml-1m.yaml")
    code, out, _ = run(capsys, "validate", spec, "--behavior-only")
    assert code == 0 and "features: none (behavior-only" in out


def test_schema_is_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "schema")
    assert code == 0 and json.loads(out)["title"] == "featrec spec"


@pytest.mark.parametrize(
    ("body", "overrides", "expected"),
    [
        ({"train": {"epoch": 3}}, [], "train.epoch: unknown key"),
        ({"model": {"dim": "x"}}, [], "model.dim: expected a valid integer"),
        ({}, ["--set", "train.epochs"], "expected KEY=VALUE"),
        ({"data": {"dataset": "ml-10m"}}, [], "no dataset card 'ml-10m'"),
    ],
)
def test_errors_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: dict, overrides: list, expected: str
) -> None:
    spec = write_spec(tmp_path, {"name": "x", "data": {"dataset": "ml-100k"}, **body})
    code, out, err = run(capsys, "validate", str(spec), *overrides)
    assert code == 2 and out == ""
    assert err.startswith("featrec: error: ") and expected in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_data_errors_name_the_spec_file_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for data, expected in (
        ({"dataset": "ml-10m"}, "data.dataset: no dataset card 'ml-10m'"),
        ({"interactions": "nosuch.csv"}, f"data.interactions: {tmp_path / 'nosuch.csv'}: file"),
    ):
        spec = write_spec(tmp_path, {"name": "x", "data": data})
        code, _, err = run(capsys, "prepare", str(spec))
        assert code == 2 and err == f"featrec: error: {spec}: {expected}" + err.split(expected)[1]


def test_prepare_prints_statistics_and_caches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_spec_body: dict
) -> None:
    spec = str(write_spec(tmp_path, tiny_spec_body))
    code, out, _ = run(capsys, "prepare", spec)
    assert code == 0
    assert "tiny: 7 users, 11 items, 26 events" in out
    assert "1 users left out of evaluation" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ")}
    assert rows["time"] == ["event", "time", "hour", "28,", "weekday", "11,", "gap", "36"]
    assert rows["age"] == ["user", "numeric", "continuous"]
    assert rows["job"] == ["user", "categorical", "7"]  # 3 jobs + 4 reserved
    folder = Path(out.strip().splitlines()[-1].split("cached at ")[1])
    assert (folder / "sequences.parquet").is_file()
    stamp = (folder / "stats.json").stat().st_mtime_ns
    assert run(capsys, "prepare", spec)[0] == 0
    assert (folder / "stats.json").stat().st_mtime_ns == stamp  # served from the cache
    assert run(capsys, "prepare", spec, "--force")[0] == 0
    assert (folder / "stats.json").stat().st_mtime_ns != stamp


def test_prepare_missing_column_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_spec_body: dict
) -> None:
    tiny_spec_body["features"][3]["column"] = "occupation"
    code, _, err = run(capsys, "prepare", str(write_spec(tmp_path, tiny_spec_body)))
    assert code == 2 and "column 'occupation' not in the users table" in err
    assert "columns: uid, age, job" in err and err.count("\n") == 1


def _checksum_mismatch(tmp_path: Path, body: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "data" / "ml-100k"
    folder.mkdir(parents=True)
    for name in ("u.data", "u.user", "u.item"):
        (folder / name).write_text("1\t2\t3\t4\n")  # not the GroupLens bytes
    monkeypatch.setenv("FEATREC_DATA_DIR", str(tmp_path / "data"))
    body["data"] = {"dataset": "ml-100k"}
    body["features"] = []


def _empty_interactions(tmp_path: Path, body: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    path = Path(body["data"]["interactions"])
    pl.read_parquet(path).clear().write_parquet(path)


def _truncated_file(tmp_path: Path, body: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    path = Path(body["data"]["items"])
    path.write_bytes(path.read_bytes()[:100])


def _unknown_scope(tmp_path: Path, body: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    body["features"][0]["scope"] = "usr"


def _unknown_type(tmp_path: Path, body: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    body["features"][0]["type"] = "tags"


def _duplicate_names(tmp_path: Path, body: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    body["features"][1]["name"] = "tags"


@pytest.mark.parametrize(
    ("breaks", "expected"),
    [
        (_checksum_mismatch, "u.data: sha256 mismatch"),
        (_empty_interactions, "the interactions table is empty"),
        (_truncated_file, "items.parquet: cannot read as parquet"),
        (_unknown_scope, "features[0].scope: expected one of 'item', 'user' or 'event'"),
        (_unknown_type, "got 'tags'"),
        (_duplicate_names, "duplicate feature name 'tags'"),
    ],
    ids=lambda value: getattr(value, "__name__", "")[1:],
)
def test_prepare_bad_input_exits_2_with_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tiny_spec_body: dict,
    breaks,
    expected: str,
) -> None:
    breaks(tmp_path, tiny_spec_body, monkeypatch)
    code, out, err = run(capsys, "prepare", str(write_spec(tmp_path, tiny_spec_body)))
    assert code == 2 and out == ""
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "chosen"),
    [
        (["--variants", "full", "-item"], ["full", "-item"]),
        (["--variants=full", "-item", "--variants", "-user"], ["full", "-item", "-user"]),
        (["--var", "-event", "--seeds", "2"], ["-event"]),
        (["--variants", "-genres", "--set", "train.epochs=1"], ["-genres"]),
    ],
)
def test_ablate_variant_names_may_start_with_a_dash(argv: list[str], chosen: list[str]) -> None:
    from featrec.cli import _parser, _variant_values

    args = _parser().parse_args(_variant_values(["ablate", "spec.yaml", *argv]))
    assert args.variants == chosen and args.spec == "spec.yaml"
    # the spec may also follow the names
    later = _parser().parse_args(_variant_values(["ablate", *argv, "later.yml"]))
    assert later.spec == "later.yml" and later.variants == chosen


def test_python_dash_m_featrec_runs_the_command_and_keeps_its_exit_status(tmp_path: Path) -> None:
    import subprocess
    import sys

    spec = ROOT / "feature_specs" / "ml-100k.yaml"
    ok = subprocess.run([sys.executable, "-m", "featrec", "validate", str(spec)],
                        capture_output=True, text=True)  # fmt: skip
    assert ok.returncode == 0 and "OK" in ok.stdout and ok.stderr == ""
    bad = subprocess.run([sys.executable, "-m", "featrec", "evaluate", str(tmp_path)],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip().count("\n") == 0 and "not a run directory" in bad.stderr

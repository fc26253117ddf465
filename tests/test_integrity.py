"""Bad input as a user meets it: one featrec error line naming the culprit, exit 2, and
run directories that one process writes and that read back whole or not at all."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import time
from pathlib import Path

import pytest
import torch
import yaml

import featrec.cli as cli
from featrec.errors import FeatrecError, SpecError
from featrec.rundir import exclusive, load_checkpoint
from featrec.spec import _SpecLoader, load_spec
from tests.conftest import write_spec

# --- spec files a user writes --------------------------------------------------------------

GOOD = "name: ok\ndata: {interactions: x.csv}\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"name: ok\n# caf\xe9 in Latin-1\n", r"not UTF-8 text: byte 0xe9 at line 2"),
        (b"\xff\xfename: ok\n", r"not UTF-8 text: byte 0xff at line 1"),
        (b"name: ok\ntrain: {lr: 1}\ntrain: {epochs: 2}\n", r"key 'train' given twice"),
        (b"name: ok\ntrain: {lr: 1, lr: 2}\n", r"key 'lr' given twice"),
        (b"name: ok\ntrain: {lr: !!float notanumber}\n", r"not valid YAML: ValueError"),
        (b"name: ok\ntrain: {epochs: !!int 1.5}\n", r"not valid YAML: ValueError"),
        (b"name: ok\ntrain: {lr: !!python/object:os.system ls}\n", r"not valid YAML at line 2"),
        (b"name: ok\n? [a, b]\n: 1\n", r"not valid YAML|Extra inputs|mapping key"),
        (("name: " + "n" * 65 + "\n").encode(), r"name: expected at most 64 characters"),
        (b"name: ok/../../etc\n", r"name: expected letters, digits, '_' and '-'.*names files"),
        (b"# only a comment\n", r"bad\.yaml: empty \(a spec needs at least name"),
        (b"name: ok\nmodel: {dim: true}\n", r"model\.dim: expected a number; got true"),
        (b"name: ok\ntrain: {lr: .inf}\n", r"train\.lr: expected a finite number; got inf"),
        (b"name: ok\ntrain: {grad_clip: .nan}\n", r"train\.grad_clip: expected a finite"),
        (b"name: ok\nmodel: {dim: 99999999999999999999}\n", r"model\.dim: expected a number bel"),
        (b"name: ok\ntrain: {seed: 18446744073709551616}\n", r"train\.seed: expected a number"),
        (b"name: ok\ntrain: {batch_size: 1099511627776}\n", r"train\.batch_size: expected less"),
        (
            b"name: ok\nfeatures:\n  - {name: g, scope: item, type: multi_categorical,"
            b" column: g, separator: ''}\n",
            r"features\[0\]\.separator: expected at least 1 character; got ''",
        ),
        (
            b"name: ok\nfeatures:\n  - {name: timestamp, scope: event, type: time,"
            b" column: timestamp}\n",
            r"features\[0\]\.name: 'timestamp' names one of featrec's own columns",
        ),
        (
            b"name: ok\nfeatures:\n  - {name: t, scope: event, type: time, column: ts,"
            b" timezone: Mars/Olympus}\n",
            r"features\[0\].*unknown time zone 'Mars/Olympus'",
        ),
        (
            b"name: ok\nfeatures:\n  - {name: tags, scope: event, type: multi_categorical,"
            b" column: tags}\n",
            r"features\[0\].*lists per event .* are not supported yet",
        ),
    ],
    ids=[
        "latin1-comment",
        "utf16-bom",
        "duplicate-section",
        "duplicate-field",
        "float-tag",
        "int-tag",
        "python-tag",
        "complex-key",
        "long-name",
        "path-name",
        "empty",
        "bool-number",
        "inf-number",
        "nan-number",
        "huge-width",
        "huge-seed",
        "huge-batch",
        "empty-separator",
        "own-column-name",
        "time-zone",
        "event-multi-categorical",
    ],
)
def test_a_bad_spec_file_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(SpecError, match=message) as err:
        load_spec(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)
    assert cli.main(["-q", "validate", str(path)]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("featrec: error: ") and stderr.count("\n") == 1


def test_the_time_zones_a_spec_names_are_checked_not_guessed(tmp_path: Path) -> None:
    body = (
        "name: ok\nfeatures:\n  - {name: t, scope: event, type: time, column: ts, timezone: %s}\n"
    )
    for zone in ("UTC", "Europe/Berlin", "America/Sao_Paulo"):
        (tmp_path / "s.yaml").write_text(body % zone)
        assert load_spec(tmp_path / "s.yaml").features[0].timezone == zone


def test_a_bad_set_value_names_the_override(tmp_path: Path, tiny_spec_body: dict) -> None:
    with pytest.raises(SpecError, match=r"^--set 'eval\.ks=\[1, !!int x\]': not valid YAML"):
        load_spec(write_spec(tmp_path, tiny_spec_body), ["eval.ks=[1, !!int x]"])


def test_a_process_refused_the_lock_leaves_the_holders_lock_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B finds no lock file, then A takes the lock before B opens it: B is refused and
    removes nothing (it once unlinked A's lock file, so that a third process got in)."""
    import contextlib
    import os

    import featrec.rundir as rundir

    run, holder = tmp_path / "run", contextlib.ExitStack()
    real_open = os.open

    def a_gets_in_first(path, *args):
        monkeypatch.setattr(rundir.os, "open", real_open)
        holder.enter_context(rundir.exclusive(run))  # A, between B's look and B's open
        return real_open(path, *args)

    monkeypatch.setattr(rundir.os, "open", a_gets_in_first)
    with holder:
        with pytest.raises(FeatrecError, match="another featrec process"), rundir.exclusive(run):
            pass  # B
        assert (run / ".lock").exists()
        with pytest.raises(FeatrecError, match="another featrec process"), rundir.exclusive(run):
            pass  # C: A still holds it


# --- the error boundary -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code", "expected"),
    [
        (
            FeatrecError("x.csv: bad\nvalue " + "v" * 1000),
            2,
            "featrec: error: x.csv: bad\\nvalue v",
        ),
        (IsADirectoryError(21, "Is a directory", "out/recs"), 2, "featrec: error: out/recs: Is a"),
        (ZeroDivisionError("division by zero"), 1, "featrec: error: unexpected ZeroDivisionError"),
    ],
    ids=["featrec-error", "os-error", "bug"],
)
def test_every_failure_is_one_line_and_debug_shows_the_traceback(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: BaseException,
    code: int,
    expected: str,
) -> None:
    def schema():  # the schema command's work, failing
        raise error

    monkeypatch.setattr(cli, "json_schema", schema)
    assert cli.main(["-q", "schema"]) == code
    stderr = capsys.readouterr().err
    assert stderr.startswith(expected) and stderr.count("\n") == 1
    assert len(stderr) <= 400 + len("featrec: error: unexpected ZeroDivisionError: ") + 100
    with pytest.raises(type(error)):
        cli.main(["-q", "--debug", "schema"])


# --- checkpoints and run directories ------------------------------------------------------


class _Payload:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: p.write_bytes(b""), "not a readable checkpoint"),
        (lambda p: p.write_bytes(b"PK\x03\x04garbage" * 10), "not a readable checkpoint"),
        (lambda p: torch.save([1, 2], p), "not a featrec checkpoint"),
        (lambda p: p.write_bytes(pickle.dumps(_Payload())), "not a readable checkpoint|refused"),
        (lambda p: torch.save({"w": _Payload()}, p), "refused: the checkpoint holds objects"),
    ],
    ids=["empty", "garbage", "a-list", "raw-pickle", "crafted"],
)
def test_a_broken_or_crafted_checkpoint_is_one_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], write, message: str
) -> None:
    path = tmp_path / "best.pt"
    write(path)
    with pytest.raises(FeatrecError, match=message) as err:
        load_checkpoint(path)
    assert str(err.value).startswith(str(path)) and "weights_only=False" not in str(err.value)
    assert "pwned" not in capsys.readouterr().out


def test_a_truncated_best_checkpoint_is_named_by_evaluate(
    trained_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    best = trained_run / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:1000])
    assert cli.main(["-q", "evaluate", str(trained_run)]) == 2
    assert f"{best}: changed since the run wrote it" in capsys.readouterr().err  # manifest
    (trained_run / "manifest.json").unlink()  # a run from before manifests: the reader names it
    assert cli.main(["-q", "evaluate", str(trained_run)]) == 2
    assert f"{best}: not a readable checkpoint" in capsys.readouterr().err


def _hold(run_dir: str, ready, release) -> None:
    with exclusive(Path(run_dir)):
        ready.set()
        release.wait(30)


def test_a_second_writer_is_refused_at_once_and_a_dead_one_blocks_nothing(
    tmp_path: Path, tiny_spec_body: dict
) -> None:
    from featrec.train import train

    run_dir = tmp_path / "run"
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(str(run_dir), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        spec = load_spec(write_spec(tmp_path, tiny_spec_body | {"train": {"epochs": 1}}))
        started = time.perf_counter()
        with pytest.raises(FeatrecError, match=rf"pid {holder.pid}\) is training into this"):
            train(spec, run_dir)
        assert time.perf_counter() - started < 5  # refused before any data is read
        assert not (run_dir / "spec.yaml").exists()  # and nothing written
    finally:
        release.set()
        holder.join(30)
    holder_killed = context.Process(target=_hold, args=(str(run_dir), ready, release))
    release.clear()
    ready.clear()
    holder_killed.start()
    assert ready.wait(60)
    holder_killed.kill()  # killed while holding it: the kernel drops the lock
    holder_killed.join(30)
    assert train(spec, run_dir)["test"]  # the run trains


def test_yaml_is_only_read_safely() -> None:
    with pytest.raises(yaml.YAMLError):
        yaml.load("!!python/object/apply:os.system [ls]", Loader=_SpecLoader)


# --- own data files -------------------------------------------------------------------------


def _with_table(tmp_path: Path, body: dict, table: str, change) -> dict:
    """``body`` with its ``table`` file replaced by ``change(frame)``."""
    import polars as pl

    path = Path(body["data"][table])
    changed = tmp_path / f"changed-{table}.parquet"
    change(pl.read_parquet(path)).write_parquet(changed)
    return body | {"data": body["data"] | {table: str(changed)}}


def _prepare_error(tmp_path: Path, body: dict) -> str:
    from featrec.sequences import prepare

    with pytest.raises(FeatrecError) as err:
        prepare(load_spec(write_spec(tmp_path, body)), cache=False)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_nan_ids_are_an_error_not_an_item(tmp_path: Path, tiny_spec_body: dict) -> None:
    import polars as pl

    body = _with_table(
        tmp_path, tiny_spec_body, "interactions",
        lambda f: f.with_columns(
            pl.when(pl.int_range(pl.len()) == 0).then(float("nan"))
            .otherwise(pl.col("iid").cast(pl.Float64)).alias("iid")
        ),
    )  # fmt: skip
    assert "1 interactions have no item_id (null or NaN)" in _prepare_error(tmp_path, body)


def test_a_user_on_two_rows_is_an_error_naming_it(tmp_path: Path, tiny_spec_body: dict) -> None:
    import polars as pl

    body = _with_table(tmp_path, tiny_spec_body, "users", lambda f: pl.concat([f, f.head(2)]))
    message = _prepare_error(tmp_path, body)
    assert "2 user_ids appear on more than one row (e.g. 'u1', 'u2')" in message
    assert "changed-users.parquet" in message


def test_no_user_with_three_events_is_an_error(tmp_path: Path, tiny_spec_body: dict) -> None:
    body = _with_table(
        tmp_path, tiny_spec_body, "interactions",
        lambda f: f.group_by("uid", maintain_order=True).head(2),
    )  # fmt: skip
    assert "no user can be evaluated: leave_one_out needs users with 3 or more events" in (
        _prepare_error(tmp_path, body)
    )


def test_unreadable_time_text_names_the_column(tmp_path: Path, tiny_spec_body: dict) -> None:
    import polars as pl

    body = _with_table(
        tmp_path, tiny_spec_body, "interactions",
        lambda f: f.with_columns(
            pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("yesterday"))
            .otherwise(pl.col("ts").cast(pl.String)).alias("ts")
        ),
    )  # fmt: skip
    assert "time column 'ts' cannot be read as times" in _prepare_error(tmp_path, body)


@pytest.mark.parametrize(("unit", "scale"), [("ms", 10**3), ("us", 10**6), ("ns", 10**9)])
def test_the_unit_of_numeric_times_is_detected_or_declared(
    tmp_path: Path, tiny_spec_body: dict, unit: str, scale: int
) -> None:
    import polars as pl

    from featrec.sequences import prepare

    recent = _with_table(  # times of today's size: 1.7e9 seconds since 1970
        tmp_path, tiny_spec_body, "interactions",
        lambda f: f.with_columns(pl.col("ts").cast(pl.Int64) + 1_700_000_000),
    )  # fmt: skip
    seconds = prepare(load_spec(write_spec(tmp_path, recent)), cache=False)[0]
    body = _with_table(
        tmp_path, recent, "interactions", lambda f: f.with_columns(pl.col("ts") * scale)
    )
    detected = prepare(load_spec(write_spec(tmp_path, body)), cache=False)[0]
    declared = body | {"data": body["data"] | {"columns": body["data"]["columns"] | {
        "time_unit": unit}}}  # fmt: skip
    told = prepare(load_spec(write_spec(tmp_path, declared)), cache=False)[0]
    for prepared in (detected, told):
        assert prepared.sequences.equals(seconds.sequences)
    wrong = declared | {"data": declared["data"] | {"columns": declared["data"]["columns"] | {
        "time_unit": "s"}}}  # fmt: skip
    assert not prepare(load_spec(write_spec(tmp_path, wrong)), cache=False)[0].sequences.equals(
        seconds.sequences
    )


def test_columns_given_with_a_card_are_refused(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text("name: x\ndata: {dataset: ml-100k, columns: {time: when}}\n")
    with pytest.raises(SpecError, match=r"data: .*names the columns of your own files"):
        load_spec(tmp_path / "s.yaml")


# --- what a run wrote, and the data it trained on -------------------------------------------


@pytest.mark.parametrize("name", ["spec.yaml", "encoders.json", "checkpoints/best.pt"])
def test_a_run_file_edited_after_training_is_named_at_load(
    trained_run: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    import featrec

    manifest = json.loads((trained_run / "manifest.json").read_text())["files"]
    assert {"spec.yaml", "encoders.json", "checkpoints/best.pt", "final_metrics.json"} <= set(
        manifest
    ) and ".lock" not in manifest
    featrec.load(trained_run)  # as written: loads
    target = trained_run / name
    target.write_bytes(target.read_bytes() + b"\n")
    with pytest.raises(FeatrecError, match=rf"{name}: changed since the run wrote it"):
        featrec.load(trained_run)
    assert cli.main(["-q", "recommend", str(trained_run), "--user", "u1"]) == 2
    assert f"{target}: changed since the run wrote it" in capsys.readouterr().err


def test_changed_own_data_is_named_when_the_run_needs_it_again(
    tmp_path: Path, tiny_spec_body: dict
) -> None:
    import polars as pl

    import featrec
    from featrec.train import train

    tiny_spec_body |= {"train": {"epochs": 2}}
    spec = load_spec(write_spec(tmp_path, tiny_spec_body))
    train(spec, tmp_path / "run")
    (tmp_path / "run" / "checkpoints" / "last.pt").unlink()  # (resume needs one: see below)
    recommender = featrec.load(tmp_path / "run")
    assert recommender.evaluate("test")  # the data as trained on: fine
    interactions = Path(tiny_spec_body["data"]["interactions"])
    frame = pl.read_parquet(interactions)
    frame.with_columns(pl.col("ts") + 1).write_parquet(interactions)  # reads, but differs
    for use in (lambda r: r.evaluate("test"), lambda r: r.known_users()):
        with pytest.raises(FeatrecError, match=r"interactions file changed since this run"):
            use(featrec.load(tmp_path / "run"))
    run = tmp_path / "resumable"
    train(load_spec(write_spec(tmp_path, tiny_spec_body)), run)  # trained on the new file
    frame.write_parquet(interactions)  # the old one back
    with pytest.raises(FeatrecError, match=r"interactions file changed since this run"):
        train(load_spec(write_spec(tmp_path, tiny_spec_body)), run, resume=True)


def test_json_featrec_writes_is_json(trained_run: Path) -> None:
    def refuse(constant: str) -> None:
        raise AssertionError(f"not JSON: {constant}")

    paths = list(trained_run.rglob("*.json"))
    assert len(paths) >= 5
    for path in paths:
        json.loads(path.read_text(), parse_constant=refuse)


def test_kill_9_at_any_moment_then_resume_gives_the_uninterrupted_result(
    tmp_path: Path, tiny_spec_body: dict
) -> None:
    """Real processes, killed with SIGKILL while training (after 2 and 6 logged epochs, and
    once all epochs are logged: during the final evaluation or after it), each time resumed
    (or started again where no checkpoint exists yet): the final metrics and every epoch's
    loss equal an uninterrupted run's."""
    import os
    import subprocess
    import sys

    tiny_spec_body["train"] = {"epochs": 12, "batch_size": 2, "warmup_steps": 2, "seed": 3}
    spec = str(write_spec(tmp_path, tiny_spec_body))
    env = os.environ | {"OMP_NUM_THREADS": "1"}

    def command(out: Path) -> list[str]:
        resume = ["--resume"] if (out / "checkpoints" / "last.pt").is_file() else []
        return [sys.executable, "-m", "featrec", "-q", "train", spec, "--out", str(out), *resume]

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    subprocess.run(command(whole), env=env, check=True, capture_output=True, timeout=300)
    resumed = 0
    for logged in (2, 6, 12):
        resumed += "--resume" in command(cut)
        process = subprocess.Popen(command(cut), env=env, stderr=subprocess.PIPE)
        metrics = cut / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            lines = metrics.read_text().count("\n") if metrics.is_file() else 0
            if lines >= logged:
                break
            time.sleep(0.005)
        process.kill()
        process.wait(30)
    while not (cut / "final_metrics.json").is_file():
        resumed += "--resume" in command(cut)
        subprocess.run(command(cut), env=env, check=True, capture_output=True, timeout=300)
    assert resumed >= 2  # the kills landed while training
    finals = [json.loads((run / "final_metrics.json").read_text()) for run in (whole, cut)]
    assert finals[0]["test"] == finals[1]["test"] and finals[0]["valid"] == finals[1]["valid"]
    losses = [
        [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        for run in (whole, cut)
    ]
    assert losses[0] == losses[1]


def test_more_sampled_negatives_than_items_is_refused_before_training(
    tmp_path: Path, tiny_spec_body: dict
) -> None:
    from featrec.train import train

    spec = load_spec(write_spec(tmp_path, tiny_spec_body), ["eval.sampled_negatives=50"])
    with pytest.raises(SpecError, match=r"eval\.sampled_negatives: 50 asked for, but the data has"):
        train(spec, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_validate_knows_the_gpus_the_driver_lists(tmp_path: Path) -> None:
    driver = tmp_path / "proc" / "driver" / "nvidia" / "gpus"
    (tmp_path / "proc" / "driver").mkdir(parents=True)
    with pytest.raises(
        FeatrecError, match=r"train\.device: cuda asked for, but this machine has no"
    ):
        cli._check_gpus("cuda", driver)
    (driver / "0000:01:00.0").mkdir(parents=True)
    cli._check_gpus("cuda", driver)
    cli._check_gpus("cuda:0", driver)
    with pytest.raises(FeatrecError, match=r"cuda:1 asked for, but this machine has GPU 0$"):
        cli._check_gpus("cuda:1", driver)
    cli._check_gpus("cpu", driver)
    cli._check_gpus("cuda:3", tmp_path / "elsewhere" / "a" / "b")  # no /proc/driver: unknown


# --- the matrix: every spec field a user sets, wrong, through the CLI -------------------------

SPEC_MATRIX = [  # (override, text the one line must hold)
    ("train.lr=-1", "train.lr: expected greater than 0; got '-1'"),
    ("train.lr=fast", "train.lr: expected a valid number"),
    ("train.epochs=0", "train.epochs: expected greater than 0"),
    ("train.epochs=2.5", "train.epochs: expected a valid integer"),
    ("train.batch_size=0", "train.batch_size: expected greater than 0"),
    ("train.mask_prob=1", "train.mask_prob: expected less than 1"),
    ("train.mask_prob=0", "train.mask_prob: expected greater than 0"),
    ("train.crop_prob=2", "train.crop_prob: expected less than or equal to 1"),
    ("train.weight_decay=-0.1", "train.weight_decay: expected greater than or equal to 0"),
    ("train.warmup_steps=-1", "train.warmup_steps: expected greater than or equal to 0"),
    ("train.grad_clip=0", "train.grad_clip: expected greater than 0"),
    ("train.patience=0", "train.patience: expected greater than 0"),
    ("train.min_epochs=-1", "train.min_epochs: expected greater than or equal to 0"),
    ("train.eval_every=0", "train.eval_every: expected greater than 0"),
    ("train.device=tpu", "train.device: expected auto, cpu, cuda or cuda:N"),
    ("train.device=cuda:x", "train.device: expected auto, cpu, cuda or cuda:N"),
    ("train.loss=bpr", "train.loss: expected one of 'ce', 'sampled_softmax' or 'gbce'; got"),
    ("train.negatives=-3", "train.negatives: expected greater than 0"),
    ("train.gbce_t=1.5", "train.gbce_t: expected less than or equal to 1"),
    ("train.sampler=zipf", "train.sampler: expected one of 'auto', 'uniform', 'popularity' or"),
    ("train.optimizer=sgd", "train.optimizer: expected one of 'auto', 'adamw' or 'row_adamw'"),
    ("train.optimizer=row_adamw", "train.optimizer: row_adamw updates the item rows"),
    ("train.precision=fp16", "train.precision: expected one of 'fp32' or 'bf16'"),
    ("train.compile=maybe", "train.compile: expected a valid boolean"),
    ("eval.max_users=0", "eval.max_users: expected greater than 0"),
    ("eval.cold_items=1", "eval.cold_items: expected less than 1"),
    ("eval.recency_days=[-7]", "eval.recency_days[0]: expected greater than 0"),
    ("fusion.output_items=perhaps", "fusion.output_items: expected a valid boolean"),
    ("train.next_item_share=0", "train.next_item_share: expected greater than 0"),
    ("train.last_item_share=1.5", "train.last_item_share: expected less than or equal to 1"),
    ("train.seed=x", "train.seed: expected a valid integer"),
    ("train.lrr=1", "train.lrr: unknown key"),
    ("model.kind=gru", "model.kind: expected one of 'bert4rec', 'embedding_mlp' or 'din'"),
    ("model.kind=din", "model.kind din scores every candidate"),
    ("model.dim=abc", "model.dim: expected a valid integer"),
    ("model.dim=0", "model.dim: expected greater than 0"),
    ("model.heads=5", "model.dim (64) is not a multiple of model.heads (5)"),
    ("model.layers=0", "model.layers: expected greater than 0"),
    ("model.max_len=1", "model.max_len: expected greater than 1"),
    ("model.dropout=1", "model.dropout: expected less than 1"),
    ("model.attention_dropout=-0.1", "model.attention_dropout: expected greater than or equal"),
    ("model.init=xavier", "model.init: expected one of 'auto', 'bert' or 'torch'"),
    ("fusion.method=late", "fusion.method: expected one of 'sum', 'concat', 'gate', 'nova'"),
    ("fusion.user=both", "fusion.user: expected one of 'add' or 'token'"),
    ("fusion.aux_weight=-1", "fusion.aux_weight: expected greater than or equal to 0"),
    ("fusion.token_scopes=[item]", "fusion.token_scopes places some features in the tokens"),
    ("fusion.token_scopes=[items]", "fusion.token_scopes[0]: expected one of 'item', 'user'"),
    ("fusion.token_method=nova", "fusion.token_method: expected one of 'sum', 'concat' or"),
    ("eval.ks=[0]", "eval.ks[0]: expected greater than 0"),
    ("eval.ks=[]", "eval.ks: "),
    ("eval.ks=5", "eval.ks: expected a valid list"),
    ("eval.split=random", "eval.split: expected one of 'leave_one_out' or 'temporal'"),
    ("eval.exclude_seen=maybe", "eval.exclude_seen: expected a valid boolean"),
    ("eval.sampled_negatives=0", "eval.sampled_negatives: expected greater than 0"),
    ("eval.primary=auc@10", "eval.primary"),
    ("eval.valid_quantile=1.5", "eval.valid_quantile"),
    ("name=a b", "name: expected letters, digits"),
    ("name=" + "x" * 65, "name: expected at most 64 characters; got 65"),
    ("data.dataset=nope", "data.dataset: no dataset card 'nope' (known: ml-100k, ml-1m"),
    ("data.columns.time=when", "names the columns of your own files; a card"),
    ("data.columns.time_unit=hours", "data.columns.time_unit: expected one of 'auto', 's'"),
    ("data.users=u.parquet", "data.users / data.items go with data.interactions"),
    ("features[0].bins=1", "features[0].bins: unknown key (allowed: name, scope, column"),
    ("features[1].bns=3", "did you mean 'bins'?"),
    ("features[1].bins=1", "features[1].bins: expected greater than or equal to 2"),
    ("features[1].transform=log", "features[1].transform: expected one of 'quantile_bins'"),
    ("features[0].scope=session", "features[0].scope: expected one of 'item', 'user' or"),
    ("features[0].type=image", "features[0]: "),
    ("features[5].timezone=Mars/Base", "features[5].timezone: unknown time zone 'Mars/Base'"),
    ("features[5].parts=[hour, hour]", "features[5].parts: parts must not repeat"),
    ("features[5].parts=[minute]", "features[5].parts[0]: expected one of"),
    ("features[5].scope=user", "features[5]: known_at applies to event features only"),
    ("features[6].known_at=later", "features[6].known_at: expected one of"),
    ("features[1].name=genres", "duplicate feature name 'genres' (features[0] and features[1])"),
    ("features[0].name=", "features[0].name: expected letters, digits"),
    ("features[9].dim=3", "features has 7 entries; no index 9"),
    ("train", "expected KEY=VALUE"),
    ("train.epochs.x=1", "train.epochs"),
    ("eval.ks=[1, 2", "not valid YAML"),
]


TREND_MATRIX = [  # feature_specs/ml-1m-temporal.yaml: features 7-9 popularity, 10 age
    ("features[7].window_days=0", "features[7].window_days: expected greater than or equal to 1"),
    ("features[7].measure=share", "features[7].measure: expected one of 'rank' or 'count'"),
    ("features[7].column=x", "features[7].column: unknown key (allowed: name, scope, dim"),
    ("features[10].scope=user", "features[10].scope: expected one of 'item'; got 'user'"),
    ("features[10].window_days=3", "features[10].window_days: unknown key"),
    ("features[10].dim=8", "its dim must be model.dim (64); got 8"),
    ("model.kind=embedding_mlp", "is scored in BERT4Rec's output layer; model.kind"),
]


@pytest.mark.parametrize(
    ("spec_file", "override", "expected"),
    [("ml-1m.yaml", o, e) for o, e in SPEC_MATRIX]
    + [("ml-1m-temporal.yaml", o, e) for o, e in TREND_MATRIX],
    ids=[o for o, _ in SPEC_MATRIX] + [f"trend:{o}" for o, _ in TREND_MATRIX],
)
def test_every_wrong_spec_value_is_exit_2_and_one_line_naming_it(
    capsys: pytest.CaptureFixture[str], spec_file: str, override: str, expected: str
) -> None:
    spec = str(Path(__file__).resolve().parents[1] / "feature_specs" / spec_file)
    assert cli.main(["-q", "validate", spec, "--set", override]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("featrec: error: ") and stderr.count("\n") == 1, stderr
    assert expected in stderr, stderr


@pytest.mark.parametrize(
    "content",
    [b"", b"{", b"[]", b'{"features": {}}', b'{"item_vocab": [1], "features": {"x": {}}}',
     b'{"item_vocab": [1], "features": {"x": {"kind": "nope"}}}', b"\xff\xfe"],
    ids=["empty", "cut", "list", "no-vocab", "no-kind", "unknown-kind", "not-utf8"],
)  # fmt: skip
def test_a_broken_encoders_file_is_named(trained_run: Path, content: bytes) -> None:
    import featrec

    (trained_run / "manifest.json").unlink()  # a run from before manifests
    path = trained_run / "encoders.json"
    path.write_bytes(content)
    with pytest.raises(FeatrecError, match=r"encoders\.json: not a featrec encoders file"):
        featrec.load(trained_run)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "SPEC", "--stop-after", "0"], "--stop-after: expected an epoch of at least 1"),
        (["export", "RUN", "--out", "OUT", "--top-k", "0"], "--top-k: expected at least 1"),
    ],
)
def test_new_command_line_numbers_out_of_range_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    spec = str(Path(__file__).resolve().parents[1] / "feature_specs" / "ml-1m.yaml")
    argv = [spec if a == "SPEC" else str(tmp_path / a) if a in ("RUN", "OUT") else a for a in argv]
    assert cli.main(["-q", *argv]) == 2
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and expected in stderr, stderr
    assert not (tmp_path / "OUT").exists()  # nothing written


def test_evaluating_an_unfinished_run_says_so(
    trained_run: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from featrec.train import evaluate_run

    evaluate_run(trained_run, "test")
    assert "not finished" not in caplog.text
    (trained_run / "final_metrics.json").unlink()  # as while it trains, or once stopped
    evaluate_run(trained_run, "test")
    assert "not finished (no final_metrics.json): evaluating its best checkpoint so far" in (
        caplog.text
    )

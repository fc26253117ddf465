"""Shared fixtures: tiny synthetic data with odd, mismatched sizes, and the real-data switch.

Real MovieLens tests run when ``FEATREC_DATA_DIR`` holds ``ml-100k/`` and ``ml-1m/``; they
skip with the reason otherwise. CI sets ``FEATREC_REQUIRE_DATA=1`` so a missing folder fails
instead of skipping silently.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import polars as pl
import pytest
import yaml


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Every test gets its own empty cache and never touches the network."""
    monkeypatch.setenv("FEATREC_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("FEATREC_OFFLINE", "1")


def real_data_dir(dataset: str) -> Path:
    """The folder holding a real dataset, or skip (fail under FEATREC_REQUIRE_DATA=1)."""
    root = os.environ.get("FEATREC_DATA_DIR")
    folder = Path(root) / dataset if root else None
    if folder is None or not folder.is_dir():
        reason = (
            f"real {dataset} data not found: set FEATREC_DATA_DIR to a folder holding {dataset}/ "
            "(e.g. ../shared/datasets)"
        )
        if os.environ.get("FEATREC_REQUIRE_DATA") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return folder


@pytest.fixture
def tiny_tables(tmp_path: Path) -> dict[str, Path]:
    """7 users, 11 items, 5 user columns, 4 item columns; ties in time; one user with 2 events.

    Written as files so tests go through the same reading code as users' data.
    """
    interactions = pl.DataFrame(
        {
            "uid": ["u1"] * 5 + ["u2"] * 4 + ["u3"] * 2 + ["u4"] * 6 + ["u5"] * 3 + ["u6"] * 3
            + ["u7"] * 3,
            "iid": [10, 11, 12, 13, 14, 11, 15, 16, 10, 17, 18, 10, 11, 12, 13, 19, 20, 14, 15, 16,
                    12, 18, 20, 13, 17, 19],
            "ts": [100, 200, 200, 300, 400, 50, 60, 70, 80, 10, 20, 1, 2, 3, 4, 5, 6, 500, 400,
                   600, 700, 700, 700, 90, 95, 99],
            "rating": [5, 4, 3, 2, 1] * 5 + [5],
            "device": ["ios", "web", "web", None, "ios", "android", "web", "web", "ios", "web",
                       "web", "ios", "ios", "ios", "web", "web", "tv", "web", "ios", "web", "web",
                       "ios", "web", "web", "ios", "web"],
        }
    )  # fmt: skip
    users = pl.DataFrame(
        {
            "uid": ["u1", "u2", "u3", "u4", "u5", "u6"],  # u7 has no row: all MISSING
            "age": [23, 35, None, 51, 19, 44],
            "job": ["eng", "art", "eng", "doc", None, "art"],
        }
    )
    items = pl.DataFrame(
        {
            "iid": [10, 11, 12, 13, 14, 15, 16, 17, 18, 19],  # item 20 has no row
            "tags": ["a|b", "b", "c|a|d", "", "a", "b|c", "zz", "a|b|c", "e", None],
            "year": [1990, 1995, None, 2001, 1980, 1999, 2005, 1970, 2010, 1991],
        }
    )
    paths = {}
    for name, frame in {"interactions": interactions, "users": users, "items": items}.items():
        paths[name] = tmp_path / f"{name}.parquet"
        frame.write_parquet(paths[name])
    return paths


def write_spec(tmp_path: Path, body: dict, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def tiny_spec_body(tiny_tables: dict[str, Path]) -> dict:
    return {
        "name": "tiny",
        "data": {
            "interactions": str(tiny_tables["interactions"]),
            "users": str(tiny_tables["users"]),
            "items": str(tiny_tables["items"]),
            "columns": {"user": "uid", "item": "iid", "time": "ts"},
        },
        "features": [
            {"name": "tags", "scope": "item", "type": "multi_categorical", "column": "tags",
             "separator": "|"},
            {"name": "year", "scope": "item", "type": "numeric", "column": "year", "bins": 3},
            {"name": "age", "scope": "user", "type": "numeric", "column": "age",
             "transform": "standard"},
            {"name": "job", "scope": "user", "type": "categorical", "column": "job"},
            {"name": "time", "scope": "event", "type": "time", "column": "ts",
             "known_at": "request"},
            {"name": "device", "scope": "event", "type": "categorical", "column": "device",
             "known_at": "request"},
            {"name": "rating", "scope": "event", "type": "categorical", "column": "rating"},
        ],
        "model": {"dim": 12, "layers": 1, "heads": 3, "max_len": 7},
    }  # fmt: skip


@pytest.fixture
def trained_run(tmp_path: Path, tiny_spec_body: dict) -> Path:
    """A run directory trained for 2 epochs on the tiny tables (every feature kind)."""
    from featrec.spec import load_spec
    from featrec.train import train

    tiny_spec_body["train"] = {"epochs": 2, "batch_size": 3}
    train(load_spec(write_spec(tmp_path, tiny_spec_body)), tmp_path / "run")
    return tmp_path / "run"


@pytest.fixture(autouse=True)
def _no_handlers_left_behind():
    """``featrec.cli.main`` configures logging onto the stderr of the test that called it;
    a later test's logs must not write to that (closed) captured stream."""
    before = list(logging.root.handlers)
    yield
    for handler in logging.root.handlers[:]:
        if handler not in before:
            logging.root.removeHandler(handler)


def interrupted_and_resumed(spec, run_dir: Path, epoch: int = 2) -> dict:
    """Train ``spec`` into ``run_dir``, interrupted at the end of ``epoch`` (as by Ctrl-C),
    then resume it to the end; the resumed run's final metrics."""
    from featrec.train import train

    def interrupt(at: int, row: dict) -> None:
        if at == epoch:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(spec, run_dir, on_epoch_end=interrupt)
    return train(spec, run_dir, resume=True)

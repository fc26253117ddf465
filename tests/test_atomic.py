"""Folders written whole: swapped in at once, a failure leaves the old one, and a cache entry
another process finished first is not pulled from under it."""

from __future__ import annotations

from pathlib import Path

import pytest

import featrec.atomic as atomic
import featrec.sequences as sequences
from featrec.atomic import write_folder
from featrec.spec import load_spec
from tests.conftest import write_spec


def fill_with(text: str):
    def fill(directory: Path) -> None:
        (directory / "data.txt").write_text(text)

    return fill


def test_write_folder_replaces_and_leaves_nothing_beside(tmp_path: Path) -> None:
    target = tmp_path / "entry"
    write_folder(target, fill_with("one"))
    write_folder(target, fill_with("two"))
    assert (target / "data.txt").read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]  # no staging or old folder left


def test_a_failed_fill_keeps_the_old_folder(tmp_path: Path) -> None:
    target = tmp_path / "entry"
    write_folder(target, fill_with("one"))

    def broken(directory: Path) -> None:
        (directory / "data.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_folder(target, broken)
    assert (target / "data.txt").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def has_data(folder: Path) -> bool:
    return (folder / "data.txt").is_file()


@pytest.mark.parametrize("keep", [has_data, None])
def test_an_entry_finished_meanwhile(tmp_path: Path, keep) -> None:
    target = tmp_path / "entry"

    def slow_fill(directory: Path) -> None:  # another writer finishes while this one fills
        write_folder(target, fill_with("first"))
        (directory / "data.txt").write_text("second")

    write_folder(target, slow_fill, keep=keep)
    assert (target / "data.txt").read_text() == ("first" if keep else "second")
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_an_incomplete_entry_is_replaced_even_when_complete_ones_are_kept(
    tmp_path: Path,
) -> None:
    target = tmp_path / "entry"
    target.mkdir()
    (target / "stray.txt").write_text("a folder without its data: half of an old write")
    write_folder(target, fill_with("whole"), keep=has_data)
    assert sorted(p.name for p in target.iterdir()) == ["data.txt"]


def test_a_failed_swap_puts_the_old_folder_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "entry"
    write_folder(target, fill_with("one"))
    replace = atomic.os.replace

    def failing(source, destination):
        if Path(source).name.startswith(".entry.staging"):
            raise OSError("the disk went away")
        return replace(source, destination)

    with monkeypatch.context() as patch, pytest.raises(OSError, match="went away"):
        patch.setattr(atomic.os, "replace", failing)
        write_folder(target, fill_with("two"))
    assert (target / "data.txt").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_a_writer_that_loses_the_race_keeps_the_winner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between this writer's two renames another one swaps its folder in."""
    target = tmp_path / "entry"
    replace = atomic.os.replace

    def racing(source, destination):
        if Path(destination) == target and not target.exists():
            target.mkdir()
            (target / "data.txt").write_text("winner")
        return replace(source, destination)

    with monkeypatch.context() as patch:
        patch.setattr(atomic.os, "replace", racing)
        write_folder(target, fill_with("loser"), keep=has_data)
    assert (target / "data.txt").read_text() == "winner"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_prepare_keeps_a_cache_entry_another_process_wrote(
    tmp_path: Path, tiny_spec_body: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes preparing one spec at once: the second to finish used to delete the
    first's entry while the first was reading it ("unable to open file .../0.bin")."""
    spec = load_spec(write_spec(tmp_path, tiny_spec_body))
    build = sequences.build
    state = {"first": None}

    def racing_build(spec_, tables):
        if state["first"] is None:  # the other process builds and caches while we build
            state["first"] = "running"
            _, folder = sequences.prepare(spec_)
            state["first"] = (folder / "stats.json").stat().st_ino
        return build(spec_, tables)

    with monkeypatch.context() as patch:  # undo() would also undo the isolated cache
        patch.setattr(sequences, "build", racing_build)
        prepared, folder = sequences.prepare(spec)
    assert (folder / "stats.json").stat().st_ino == state["first"]  # the first entry stayed
    assert len(prepared.sequences) == len(sequences.prepare(spec)[0].sequences)

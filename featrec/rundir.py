"""Run-directory integrity: checkpoints read back as featrec errors, one writer per run.

A run directory (docs/design.md §6) is written by one training process at a time: it holds
an exclusive lock on ``RUN/.lock`` from before it looks at the directory until it returns,
so a second ``featrec train --out RUN`` (or ``fit``, or a resumed run) is refused at once
instead of mixing two runs' files.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from featrec.atomic import sha256, write_text
from featrec.errors import FeatrecError, first_line

try:  # POSIX; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
MANIFEST = "manifest.json"
DATA_SUMS = "data_checksums.json"


def load_checkpoint(path: Path) -> dict[str, Any]:
    """``torch.load`` of a checkpoint featrec wrote (tensors and plain values only), or
    one :class:`FeatrecError` naming the file: truncated, not a checkpoint, or holding
    objects that would run code when loaded."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FeatrecError(f"{path}: checkpoint missing") from None
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Unsupported" in str(err):
            raise FeatrecError(
                f"{path}: refused: the checkpoint holds objects that would run code when "
                "loaded (featrec writes tensors and plain values only); do not load it"
            ) from None
        raise FeatrecError(f"{path}: not a readable checkpoint ({first_line(err)[:200]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as err:
        raise FeatrecError(
            f"{path}: not a readable checkpoint (truncated or not written by featrec: "
            f"{first_line(err)[:200]})"
        ) from None
    if not isinstance(state, dict):
        raise FeatrecError(f"{path}: not a featrec checkpoint (holds {type(state).__name__})")
    return state


def not_a_folder(run_dir: Path) -> str:
    return f"{run_dir}: is a file, not a run directory; choose another --out (in Python, out=)"


@contextlib.contextmanager
def exclusive(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock; another holder makes this one :class:`FeatrecError`.

    The lock is the operating system's (``flock``): a killed process releases it, so a
    stale ``.lock`` file never blocks a ``--resume``."""
    missing = _missing_folders(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise FeatrecError(not_a_folder(run_dir))
    _normal(run_dir).mkdir(parents=True, exist_ok=True)
    had_lock = (run_dir / LOCK_NAME).exists()

    def release() -> None:  # still holding the lock; never run by a process refused it
        # a run that failed before its first checkpoint leaves no lock (nor folders)
        if not had_lock and not (run_dir / "checkpoints" / "last.pt").exists():
            (run_dir / LOCK_NAME).unlink(missing_ok=True)
            _remove_empty(missing)

    with _locked(run_dir, release):
        yield


# what a run writes before its first checkpoint (and the folders it writes into)
RUN_FILES = (
    "spec.yaml", DATA_SUMS, "encoders.json", "item_popularity.json", MANIFEST,
    "metrics.csv", "metrics.jsonl", "mlflow_run_id", "tensorboard", "checkpoints",
)  # fmt: skip
RUN_FOLDERS = ("data", "checkpoints")


def entries(run_dir: Path) -> set[Path] | None:
    """The entries of ``run_dir`` and of the run's own folders in it (None: no folder)."""
    if not run_dir.is_dir():
        return None
    found = set(run_dir.iterdir())
    for name in RUN_FOLDERS:
        if (run_dir / name).is_dir() and not (run_dir / name).is_symlink():
            found |= set((run_dir / name).iterdir())
    return found


@contextlib.contextmanager
def removed_unless_checkpointed(run_dir: Path, names: Iterable[str] = RUN_FILES) -> Iterator[None]:
    """What the block adds to ``run_dir`` under ``names`` (files, or folders and what is in
    them) is removed again if it leaves without a ``checkpoints/last.pt`` there (bad input,
    mostly, or an interruption before the first epoch ended): nothing to resume, so no
    half-made run stays, and a folder that was there keeps what it had (a new folder goes
    whole). Entries of other names are left: they are not the run's."""
    before, missing = entries(run_dir), _missing_folders(run_dir)
    try:
        yield
    finally:
        if not (run_dir / "checkpoints" / "last.pt").exists():
            _remove_new(run_dir, before, [Path(name) for name in names])
            _remove_empty(missing)


def _missing_folders(run_dir: Path) -> list[Path]:
    """``run_dir`` and its parents that do not exist yet, deepest first."""
    missing = []
    path = _normal(run_dir)
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing


def _normal(run_dir: Path) -> Path:
    """``run_dir`` absolute, without ``..``: ``new/../mine/run`` is ``mine/run`` (made and
    removed as such; ``new`` is never made)."""
    return Path(os.path.abspath(run_dir))


def _remove_empty(folders: list[Path]) -> None:
    """Remove these folders (deepest first) while they are empty: the parents a failed
    start made for its folder (``--out runs/new/deep/run``)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (another writer's), or gone already
            if folder.exists():
                return


def _remove_new(run_dir: Path, before: set[Path] | None, names: list[Path]) -> None:
    if before is None:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    new = (entries(run_dir) or set()) - before
    for path in sorted(new, key=lambda p: len(p.parts), reverse=True):
        relative = path.relative_to(run_dir)
        ours = any(relative == n or n in relative.parents for n in names)
        folder = path.is_dir() and not path.is_symlink()
        if folder and ours:
            shutil.rmtree(path, ignore_errors=True)
        elif folder and not any(path.iterdir()):  # a folder made for the files removed (data/)
            path.rmdir()
        elif ours:
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(run_dir: Path, release: Callable[[], None]) -> Iterator[None]:
    """Hold ``RUN/.lock``; once held, ``release`` runs before it is let go (however the
    block ends)."""
    if fcntl is None:  # pragma: no cover - Windows
        try:
            yield
        finally:
            release()
        return
    path = run_dir / LOCK_NAME
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "?"
            raise FeatrecError(
                f"{run_dir}: another featrec process (pid {holder}) is training into this "
                "run directory; wait for it, or choose another --out"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            release()
    finally:
        os.close(descriptor)  # releases the lock


# --- what a run wrote, and the data it was trained on ---------------------------------------

_NOT_LISTED = {LOCK_NAME, MANIFEST}


def write_manifest(run_dir: Path) -> None:
    """``manifest.json``: the sha256 of every file the run wrote (the lock and half-written
    ``.partial`` files aside), written last, when the run is complete."""
    files = {
        path.relative_to(run_dir).as_posix(): sha256(path)
        for path in sorted(run_dir.rglob("*"))
        if path.is_file() and path.name not in _NOT_LISTED and not path.name.endswith(".partial")
    }
    write_text(run_dir / MANIFEST, json.dumps({"files": files}, indent=1, allow_nan=False))


def check_manifest(run_dir: Path, names: list[str]) -> None:
    """The files ``names`` (relative to ``run_dir``) as the run wrote them, or one
    :class:`FeatrecError` naming the first that changed. Runs without a manifest (older
    featrec, or still training) are not checked."""
    path = run_dir / MANIFEST
    if not path.is_file():
        return
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not a mapping")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise FeatrecError(f"{path}: not a featrec manifest ({first_line(err)[:200]})") from None
    for name in names:
        expected = files.get(name)
        if expected is None:
            continue
        target = run_dir / name
        if not target.is_file():
            raise FeatrecError(f"{target}: missing; the run's manifest lists it")
        if sha256(target) != expected:
            raise FeatrecError(
                f"{target}: changed since the run wrote it (sha256 differs from {path}); "
                "restore it or train again"
            )


def own_data_files(data: Any) -> dict[str, Path]:
    """The user's own data files a spec reads (cards are checked by their own sums)."""
    return {
        table: Path(path)
        for table in ("interactions", "users", "items")
        if (path := getattr(data, table, None)) is not None
    }


def run_relative(run_dir: Path, data: dict[str, Any]) -> dict[str, Any]:
    """A dumped ``data`` section with the files inside ``run_dir`` (the tables
    ``featrec.fit`` stored in ``data/``) relative to it: the run's spec.yaml reads them
    relative to itself, so a run that is moved or copied reads its own tables, not those of
    the folder it was made in."""
    inside = run_dir.resolve()
    relative = dict(data)
    for table in ("interactions", "users", "items"):
        path = data.get(table)
        if path is not None and Path(path).is_relative_to(inside):
            relative[table] = Path(path).relative_to(inside).as_posix()
    return relative


def write_data_sums(run_dir: Path, data: Any) -> None:
    """The sha256 of the user's own data files the run trains on, so that a later use of
    the data (resume, evaluate, known users) notices a changed file (a path inside the
    run directory is recorded relative to it)."""
    files = own_data_files(data)
    named = run_relative(run_dir, {table: str(path) for table, path in files.items()})
    sums = {table: {"path": named[table], "sha256": sha256(p)} for table, p in files.items()}
    write_text(run_dir / DATA_SUMS, json.dumps(sums, indent=1, allow_nan=False))


def check_data_sums(run_dir: Path, data: Any) -> None:
    """The own data files as they were when the run trained, or one :class:`FeatrecError`."""
    path = run_dir / DATA_SUMS
    if not path.is_file():
        return
    try:
        sums = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise FeatrecError(f"{path}: not valid JSON ({first_line(err)[:200]})") from None
    for table, file in own_data_files(data).items():
        recorded = sums.get(table)
        if not recorded or not file.is_file():
            continue
        if sha256(file) != recorded["sha256"]:
            raise FeatrecError(
                f"{file}: the {table} file changed since this run trained on it (sha256 "
                f"recorded in {path}); results would not be the run's: restore the file or "
                "train again"
            )

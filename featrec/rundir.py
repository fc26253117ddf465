"""Run-directory integrity: checkpoints read back as featrec errors, one writer per run.

A run directory (docs/design.md §6) is written by one training process at a time: it holds
an exclusive lock on ``RUN/.lock`` from before it looks at the directory until it returns,
so a second ``featrec train --out RUN`` (or ``fit``, or a resumed run) is refused at once
instead of mixing two runs' files.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from featrec.errors import FeatrecError

try:  # POSIX; elsewhere runs are not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


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
        raise FeatrecError(f"{path}: not a readable checkpoint ({_first(err)})") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as err:
        raise FeatrecError(
            f"{path}: not a readable checkpoint (truncated or not written by featrec: "
            f"{_first(err)})"
        ) from None
    if not isinstance(state, dict):
        raise FeatrecError(f"{path}: not a featrec checkpoint (holds {type(state).__name__})")
    return state


def _first(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


@contextlib.contextmanager
def exclusive(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock; another holder makes this one :class:`FeatrecError`.

    The lock is the operating system's (``flock``): a killed process releases it, so a
    stale ``.lock`` file never blocks a ``--resume``."""
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with _locked(run_dir):
            yield
    finally:  # a run that failed before writing anything leaves no folder behind
        if created and {p.name for p in run_dir.iterdir()} <= {LOCK_NAME}:
            (run_dir / LOCK_NAME).unlink(missing_ok=True)
            run_dir.rmdir()


@contextlib.contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    if fcntl is None:  # pragma: no cover - Windows
        yield
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
        yield
    finally:
        os.close(descriptor)  # releases the lock

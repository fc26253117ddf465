"""Writes that never leave half a file or half a folder: write beside, then rename over.

A process killed while writing keeps the previous version whole (a checkpoint ``--resume``
can load, a cache entry, a dataset file), never a truncated one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_file(path: Path, write: Callable[[Path], None]) -> None:
    """``write(temporary path)``, then rename it over ``path`` (same folder: one rename)."""
    partial = path.with_name(path.name + ".partial")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> None:
    write_file(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_folder(
    folder: Path, fill: Callable[[Path], None], keep: Callable[[Path], bool] | None = None
) -> None:
    """``fill(staging folder)`` beside ``folder``, then swap it in for ``folder``.

    The old folder is renamed aside before the new one is renamed in, so a reader never
    finds ``folder`` missing for longer than between two renames, and a failed swap puts the
    old one back. ``keep``: for a content-addressed folder (a cache entry), an existing
    ``folder`` for which ``keep(folder)`` holds (complete: another process finished it
    meanwhile) is kept and this one dropped, so a reader of it is never pulled from under.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.staging-", dir=folder.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would hide a data set from others
    aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
    old = aside / folder.name
    try:
        fill(staging)
        if keep is not None and folder.exists() and keep(folder):
            return
        # none there, or another writer moved it aside first
        with contextlib.suppress(FileNotFoundError):
            os.replace(folder, old)
        try:
            os.replace(staging, folder)
        except OSError:  # another writer swapped its own in between the two renames
            if keep is not None and keep(folder):
                return
            if old.exists() and not folder.exists():
                os.replace(old, folder)  # the old one back: a failure keeps it whole
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(aside, ignore_errors=True)


def sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()

"""Writes that never leave half a file or half a folder: write beside, then rename over.

A process killed while writing keeps the previous version whole (a checkpoint ``--resume``
can load, a cache entry, a dataset file), never a truncated one.
"""

from __future__ import annotations

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


def write_folder(folder: Path, fill: Callable[[Path], None], keep_existing: bool = False) -> None:
    """``fill(staging folder)`` beside ``folder``, then swap it in for ``folder``.

    The old folder is renamed aside before the new one is renamed in, so a reader never
    finds ``folder`` missing for longer than between two renames. ``keep_existing``: for a
    content-addressed folder (a cache entry) that another process finished meanwhile, that
    one is kept and this one dropped, so a reader of the first is never pulled from under.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.staging-", dir=folder.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would hide a data set from others
    old = None
    try:
        fill(staging)
        if folder.exists():
            if keep_existing:
                return
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
            os.replace(folder, old / folder.name)
        try:
            os.replace(staging, folder)
        except OSError:  # another process swapped its own in between: same content
            if not (keep_existing and folder.is_dir()):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()

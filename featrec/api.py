"""The Python API: ``featrec.fit``, ``featrec.prepare`` (and ``featrec.load``, ``load_spec``,
``Spec``), for notebooks and scripts. The command line is a thin layer over the same
functions.

Tables may be pandas or polars DataFrames or pyarrow Tables; they are converted once, at
this edge (pandas through Arrow), and featrec works on polars inside. ``fit`` writes the
tables it was given into the run directory (``data/*.parquet``) and points the run's spec
at them, so a run trained from DataFrames evaluates, recommends for its users and resumes
like one trained from files.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from featrec.atomic import write_file
from featrec.datasets import OWN_TABLES, load_own_tables
from featrec.errors import FeatrecError, first_line
from featrec.rundir import RUN_FILES, exclusive, removed_unless_checkpointed
from featrec.spec import Spec, load_spec, load_spec_text, with_overrides

log = logging.getLogger(__name__)

SpecLike = Spec | str | os.PathLike


def resolve_spec(
    spec: SpecLike, overrides: Sequence[str] | None = None, behavior_only: bool = False
) -> Spec:
    """A ``Spec``, a path to a YAML file, or YAML text → a validated spec with ``overrides``
    (``"train.epochs=5"``, as ``--set``) applied; ``behavior_only`` drops every feature."""
    if isinstance(overrides, str):
        raise FeatrecError(f"overrides: expected a list of 'key=value' texts; got {overrides!r}")
    overrides = list(overrides or [])
    if isinstance(spec, Spec):
        resolved = with_overrides(spec, overrides)
    elif isinstance(spec, os.PathLike) or (isinstance(spec, str) and _names_a_file(spec)):
        resolved = load_spec(spec, overrides)
    elif isinstance(spec, str):
        resolved = load_spec_text(spec, "spec text", overrides=overrides)
    else:
        raise FeatrecError(
            f"spec: expected a featrec.Spec, a path to a YAML file or YAML text; "
            f"got {type(spec).__name__}"
        )
    resolved.check_output_items()
    return resolved.behavior_only() if behavior_only else resolved


def _names_a_file(text: str) -> bool:
    """A one-line text that ends in .yaml / .yml or names an existing file: a path."""
    if "\n" in text:
        return False
    try:
        return text.endswith((".yaml", ".yml")) or Path(text).is_file()
    except OSError:  # too long for a file name, and so on: YAML text
        return False


def as_polars(table: Any, name: str) -> pl.DataFrame:
    """A pandas / polars DataFrame, polars LazyFrame or pyarrow Table → a polars DataFrame."""
    if isinstance(table, pl.DataFrame):
        return table
    if isinstance(table, pl.LazyFrame):
        return table.collect()
    module = type(table).__module__.split(".")[0]
    try:
        if module == "pyarrow":
            frame = pl.from_arrow(table)
            if isinstance(frame, pl.DataFrame):
                return frame
        elif module == "pandas" and type(table).__name__ == "DataFrame":
            return pl.from_pandas(table)  # through Arrow
    except (pl.exceptions.PolarsError, TypeError, ValueError, ImportError) as err:
        first = first_line(err)
        column = _unconvertible_column(table) if module == "pandas" else None
        where = f"column {column!r}: " if column is not None else ""
        raise FeatrecError(
            f"{name}: cannot convert the {module} table: {where}{first}"
            + (" (mixed types in one column? give it one type)" if column is not None else "")
        ) from None
    raise FeatrecError(
        f"{name}: expected a pandas or polars DataFrame or a pyarrow Table; "
        f"got {type(table).__module__}.{type(table).__name__}"
    )


def _unconvertible_column(table: Any) -> str | None:
    """The first column of a pandas table that does not convert alone (None: all do)."""
    for column in table.columns:
        try:
            pl.from_pandas(table[[column]])
        except (pl.exceptions.PolarsError, TypeError, ValueError):
            return str(column)
    return None


def _given_tables(spec: Spec, **tables: Any) -> dict[str, pl.DataFrame]:
    frames = {name: as_polars(t, name) for name, t in tables.items() if t is not None}
    if not frames:
        spec.require_source()
        return frames
    if spec.data.dataset is not None:
        raise FeatrecError(
            f"{spec.source}: data.dataset is {spec.data.dataset!r}, and tables were given too: "
            "drop data.dataset to train on the tables (keep data.columns)"
        )
    if "interactions" not in frames and spec.data.interactions is None:
        raise FeatrecError("interactions: needed (a table, or data.interactions in the spec)")
    return frames


def prepare(
    spec: SpecLike,
    *,
    interactions: Any = None,
    users: Any = None,
    items: Any = None,
    overrides: Sequence[str] | None = None,
    behavior_only: bool = False,
):
    """Load, encode and split the data of ``spec`` (the tables given, else its files) and
    return the prepared data (:class:`featrec.sequences.Prepared`: ``sequences``,
    ``items``, ``item_vocab``, ``encoders`` and ``stats``). Data from files is cached as
    by ``featrec prepare``; tables given are prepared in memory."""
    from featrec.sequences import build
    from featrec.sequences import prepare as prepare_files

    spec = resolve_spec(spec, overrides, behavior_only)
    frames = _given_tables(spec, interactions=interactions, users=users, items=items)
    if not frames:
        return prepare_files(spec)[0]
    return build(spec, load_own_tables(spec.data, frames))


def fit(
    spec: SpecLike,
    *,
    interactions: Any = None,
    users: Any = None,
    items: Any = None,
    out: str | os.PathLike | None = None,
    overrides: Sequence[str] | None = None,
    behavior_only: bool = False,
    progress: bool = True,
    log_to: Sequence[str] = (),
    resume: bool = False,
):
    """Train ``spec`` and return the :class:`~featrec.recommend.Recommender` of its best
    checkpoint.

    ``spec``: a :class:`featrec.Spec`, a path to a YAML file or YAML text. ``interactions``,
    ``users``, ``items``: pandas or polars DataFrames or pyarrow Tables, with the columns
    the spec's ``data.columns`` and features name (then the spec's ``data`` may omit the
    files); a table not given comes from the spec's file, if any. ``out``: the run
    directory (default ``runs/<name>/<timestamp>``). ``overrides``: ``["train.epochs=5"]``
    as ``--set``. ``behavior_only``: item ids only. ``progress``: progress bars.
    ``log_to``: ``["tensorboard"]``, ``["mlflow"]`` (:mod:`featrec.tracking`).
    ``resume``: continue the interrupted run in ``out`` (the same spec and tables: tables
    that differ from the ones the run stored are refused).
    """
    from featrec.recommend import Recommender
    from featrec.train import check_new_run_dir, default_run_dir, train

    spec = resolve_spec(spec, overrides, behavior_only)
    frames = _given_tables(spec, interactions=interactions, users=users, items=items)
    run_dir = Path(out) if out is not None else default_run_dir(spec)
    stored = [f"data/{table}.parquet" for table in frames]  # and what train writes:
    try:  # one writer from before the tables are stored (another fit there is refused)
        with exclusive(run_dir):
            if not resume:
                check_new_run_dir(run_dir)
            with removed_unless_checkpointed(run_dir, [*RUN_FILES, *stored]):
                if frames:
                    spec = _store_tables(run_dir, spec, frames, resume)
                train(spec, run_dir, resume=resume, progress=progress, log_to=log_to, locked=True)
    except FeatrecError as err:
        named = _given_names(str(err), spec, frames)
        if named != str(err):  # the tables by what the caller gave, not our copies of them
            raise type(err)(named) from None
        raise
    return Recommender(run_dir, device=spec.train.device)


def _given_names(message: str, spec: Spec, frames: dict[str, pl.DataFrame]) -> str:
    """``message`` with the paths of the tables ``fit`` stored replaced by "the users table
    given" (and so on): the caller gave DataFrames, and the copies may be gone."""
    for table in frames:
        path = getattr(spec.data, table, None)
        if path is not None:
            message = message.replace(str(path), f"the {table} table given")
    return message


def _store_tables(
    run_dir: Path, spec: Spec, frames: dict[str, pl.DataFrame], resume: bool = False
) -> Spec:
    """Write the given tables into ``run_dir/data`` and point the spec at them; resuming,
    check that they are the tables the run stored instead (and keep those files)."""
    folder = run_dir / "data"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for table in OWN_TABLES:
        if table not in frames:
            continue
        path = (folder / f"{table}.parquet").resolve()
        if resume and path.is_file():
            if not pl.read_parquet(path).equals(frames[table]):
                raise FeatrecError(
                    f"{table}: differs from the table the run in {run_dir} was trained on "
                    f"({path}); resume with that table, or train into another out"
                )
            paths[table] = path
            continue
        if path.exists() and not resume:  # not fit's own: a failed fit could not restore it
            raise FeatrecError(
                f"{path}: exists already, and fit stores the {table} table given there: "
                "move it, or train into another out"
            )
        try:
            write_file(path, frames[table].write_parquet)
        except (pl.exceptions.PolarsError, OSError) as err:
            first = first_line(err)
            raise FeatrecError(f"{table}: cannot be stored as parquet: {first}") from None
        paths[table] = path
    log.info("tables given stored in %s", folder)
    data = spec.data.model_copy(update=paths)
    stored = spec.model_copy(update={"data": data})
    stored._source = spec.source
    return stored

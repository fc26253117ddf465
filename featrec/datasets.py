"""Dataset cards and raw files → canonical tables.

A card (``datasets/<name>.yaml``) says where a public dataset comes from, the sha256 of each
file, how each file is laid out and how it maps onto featrec's canonical tables::

    interactions(user_id, item_id, timestamp, rating)
    users(user_id, gender, age, occupation, zip)
    items(item_id, title, year, genres: list[str])

Files are looked up in ``$FEATREC_DATA_DIR/<name>/`` (a local copy), then in the cache
(``$FEATREC_CACHE/datasets/<name>/``, default ``~/.cache/featrec``); when absent they are
downloaded from the card's source, then its mirrors, verified in a staging folder and only
then moved into the cache. A checksum mismatch is an error, never a partial dataset.

Users' own data (``data.interactions`` / ``users`` / ``items``) needs no card.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import polars as pl
import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from featrec.atomic import sha256
from featrec.errors import DataError, first_line
from featrec.spec import DataSpec, format_validation_error

log = logging.getLogger(__name__)

CANONICAL_KEYS = {"user": "user_id", "item": "item_id", "time": "timestamp"}
CANONICAL_COLUMNS = {
    "interactions": ["user_id", "item_id", "timestamp", "rating"],
    "users": ["user_id", "gender", "age", "occupation", "zip"],
    "items": ["item_id", "title", "year", "genres"],
}
DTYPES = {"int": pl.Int64, "float": pl.Float64, "str": pl.String}
_FIELD_SEPARATOR = "\x1f"  # stands in for multi-character separators such as '::'


def data_dir() -> Path | None:
    value = os.environ.get("FEATREC_DATA_DIR")
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    return Path(os.environ.get("FEATREC_CACHE", "~/.cache/featrec")).expanduser()


def offline() -> bool:
    return os.environ.get("FEATREC_OFFLINE", "") not in ("", "0")


# ---------------------------------------------------------------------------------------
# cards


class _Card(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Extract(_Card):
    """Integer from a regex group of a string column, e.g. the year in 'Title (1995)'."""

    extract: str
    pattern: str


class Flags(_Card):
    """List of the names of the 0/1 flag columns that are set."""

    flags: list[str]


class Split(_Card):
    """List from a string column split on a separator."""

    split: str
    by: str


def _as_list(value: object) -> object:
    return value if isinstance(value, list) else [value]


class TableSource(_Card):
    """How one file reads as a table. ``layout``: ``table`` (one row per line, the fields
    named by ``columns``); ``sequences`` (one line per user: the user id, then their item
    ids oldest first; ``columns`` names the user and item columns; ``timestamp`` is the
    position in the line, as these files carry no time); ``json_lists`` (a JSON object
    ``{"key": [value, ...]}``; ``columns`` names the key and the list column)."""

    file: str
    layout: Literal["table", "sequences", "json_lists"] = "table"
    separator: str = Field(",", min_length=1)
    encoding: Literal["utf-8", "latin-1"] = "utf-8"
    skip_lines: int = Field(0, ge=0)
    columns: dict[str, Literal["int", "float", "str"]]
    derive: dict[str, Extract | Flags | Split] = Field(default_factory=dict)


Alternatives = Annotated[list[TableSource], BeforeValidator(_as_list), Field(min_length=1)]


class CardTables(_Card):
    interactions: Alternatives
    users: Alternatives | None = None
    items: Alternatives | None = None


class Source(_Card):
    url: str
    sha256: str | None = None
    prefix: str = ""


class MirrorMember(_Card):
    member: str
    skip_lines: int = Field(0, ge=0)
    replace: tuple[str, str] | None = None


class Mirror(Source):
    files: dict[str, MirrorMember]


class Card(_Card):
    name: str
    title: str
    homepage: str
    license: str
    source: Source
    mirrors: list[Mirror] = Field(default_factory=list)
    files: dict[str, Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]]
    tables: CardTables


def card_dirs() -> list[Path]:
    """Installed cards (``featrec/cards`` in the wheel), then the source tree's ``datasets/``."""
    here = Path(__file__).resolve().parent
    return [here / "cards", here.parent / "datasets"]


def load_card(name: str) -> Card:
    candidates = [Path(name)] if name.endswith((".yaml", ".yml")) else []
    candidates += [d / f"{name}.yaml" for d in card_dirs()]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        known = sorted({p.stem for d in card_dirs() if d.is_dir() for p in d.glob("*.yaml")})
        raise DataError(
            f"data.dataset: no dataset card '{name}' (known: {', '.join(known) or 'none'}); "
            "or give your own files with data.interactions"
        )
    try:
        return Card.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except ValidationError as err:
        raise DataError(format_validation_error(err, str(path))) from None
    except yaml.YAMLError as err:
        raise DataError(f"{path}: not valid YAML: {err}") from None


# ---------------------------------------------------------------------------------------
# locating, fetching and verifying files


def _search_dirs(card: Card) -> list[Path]:
    local = data_dir()
    dirs = [local / card.name] if local else []
    return [*dirs, cache_dir() / "datasets" / card.name]


def _find(card: Card, file: str) -> Path | None:
    return next((d / file for d in _search_dirs(card) if (d / file).is_file()), None)


def _pick(card: Card, alternatives: list[TableSource]) -> TableSource | None:
    """The first reading of a table whose files are all at hand."""
    return next((alt for alt in alternatives if _find(card, alt.file)), None)


def _all_tables(card: Card) -> dict[str, list[TableSource]]:
    tables = {"interactions": card.tables.interactions}
    tables |= {k: v for k in ("users", "items") if (v := getattr(card.tables, k)) is not None}
    return tables


def resolve_card(card: Card) -> dict[str, tuple[TableSource, Path]]:
    """For each table, the reading to use and its file; fetches what is missing."""
    missing = [name for name, alts in _all_tables(card).items() if _pick(card, alts) is None]
    if missing:
        fetch(card)
    resolved = {}
    for name, alternatives in _all_tables(card).items():
        source = _pick(card, alternatives)
        if source is None:  # fetch() raises first; kept as a guard for odd mirrors
            raise DataError(f"{card.name}: no file for the {name} table after download")
        resolved[name] = (source, _find(card, source.file))
    return resolved


def fetch(card: Card) -> None:
    """Download the card's files into the cache: the source first, then each mirror."""
    looked = ", ".join(str(d) for d in _search_dirs(card))
    wanted = sorted({alt.file for alts in _all_tables(card).values() for alt in alts[:1]})
    if offline():
        raise DataError(
            f"{card.name}: files {', '.join(wanted)} not found (looked in {looked}) and "
            "FEATREC_OFFLINE is set; set FEATREC_DATA_DIR to a folder holding "
            f"{card.name}/ or unset FEATREC_OFFLINE to download from {card.source.url}"
        )
    failures = []
    for origin in [card.source, *card.mirrors]:
        try:
            _fetch_from(card, origin)
        except (OSError, zipfile.BadZipFile, DataError) as err:
            reason = getattr(err, "reason", None) or err
            failures.append(f"{origin.url}: {reason}")
            log.warning("could not fetch %s from %s: %s", card.name, origin.url, reason)
            continue
        if all(_pick(card, alts) for alts in _all_tables(card).values()):
            return
    raise DataError(
        f"{card.name}: files {', '.join(wanted)} not found (looked in {looked}) and could not "
        f"be downloaded: {'; '.join(failures)}. Download {card.source.url} by hand and set "
        f"FEATREC_DATA_DIR to the folder that holds {card.name}/"
    )


def _fetch_from(card: Card, origin: Source | Mirror) -> None:
    target = cache_dir() / "datasets" / card.name
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".staging-", dir=target) as staging_name:
        staging = Path(staging_name)
        archive = staging / "archive"
        _download(origin.url, archive)
        if origin.sha256:
            _verify(archive, origin.sha256, origin.url)
        with zipfile.ZipFile(archive) as zipped:
            if isinstance(origin, Mirror):
                extracted = {
                    name: _transform(zipped.read(m.member), m) for name, m in origin.files.items()
                }
            else:
                members = set(zipped.namelist())
                extracted = {
                    name: zipped.read(origin.prefix + name)
                    for name in card.files
                    if origin.prefix + name in members
                }
        if not extracted:
            raise DataError(f"the archive holds none of {', '.join(card.files)}")
        for name, payload in extracted.items():
            _verify_bytes(payload, card.files[name], f"{origin.url} → {name}")
            (staging / name).write_bytes(payload)
        for name in extracted:  # every file verified: only now does anything reach the cache
            os.replace(staging / name, target / name)
    log.info("fetched %s (%s) into %s", card.name, ", ".join(sorted(extracted)), target)


def _transform(payload: bytes, member: MirrorMember) -> bytes:
    if member.skip_lines:
        payload = payload.split(b"\n", member.skip_lines)[-1]
    if member.replace:
        payload = payload.replace(member.replace[0].encode(), member.replace[1].encode())
    return payload


def _download(url: str, dest: Path) -> None:
    log.info("downloading %s", url)
    with urllib.request.urlopen(url, timeout=60) as response, dest.open("wb") as out:
        total = int(response.headers.get("Content-Length") or 0)
        done, next_report = 0, 0.25
        while chunk := response.read(1 << 20):
            out.write(chunk)
            done += len(chunk)
            if total and done / total >= next_report:
                log.info("  %s: %d%% of %.1f MB", dest.name, 100 * done // total, total / 1e6)
                next_report += 0.25


def _verify_bytes(payload: bytes, expected: str, label: str) -> None:
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected:
        raise DataError(
            f"{label}: sha256 mismatch (expected {expected}, got {actual}, {len(payload):,} "
            "bytes): the file is truncated, corrupt or not this dataset's release; delete or "
            "replace it"
        )


def _verify(path: Path, expected: str, label: str) -> None:
    actual = sha256(path)
    if actual != expected:
        raise DataError(f"{label}: sha256 mismatch (expected {expected}, got {actual})")


# ---------------------------------------------------------------------------------------
# reading tables


@dataclass(frozen=True)
class Tables:
    """Canonical tables; key columns are always named user_id, item_id and timestamp."""

    interactions: pl.DataFrame
    users: pl.DataFrame | None
    items: pl.DataFrame | None
    origin: dict[str, str]  # table name → file it came from (for error messages)


def has_clock_times(data: DataSpec) -> bool:
    """Whether the events' times are clock times: own files and table-layout cards; a
    ``sequences`` card (S3-Rec's Amazon files) has only positions."""
    if data.dataset is None:
        return True
    return all(
        source.layout != "sequences" for source in load_card(data.dataset).tables.interactions
    )


def load_tables(data: DataSpec, source: str | None = None) -> Tables:
    """The tables ``data`` names; an error about its ``data.`` fields names ``source`` (the
    spec file) first, as spec errors do."""
    with spec_named(source):
        if data.dataset is not None:
            return _load_card_tables(load_card(data.dataset))
        if data.interactions is None:
            raise DataError(
                "data: set data.dataset (a card) or data.interactions (your file), or pass "
                "the tables to featrec.fit"
            )
        return load_own_tables(data)


@contextlib.contextmanager
def spec_named(source: str | None) -> Iterator[None]:
    """A :class:`DataError` about the spec's ``data`` section, prefixed with ``source``."""
    try:
        yield
    except DataError as err:
        if source is None or not str(err).startswith("data"):
            raise
        raise DataError(f"{source}: {err}") from None


def _load_card_tables(card: Card) -> Tables:
    frames, origin = {}, {}
    for name, (source, path) in resolve_card(card).items():
        frame = _read_source(source, path, card.files[source.file])
        # the canonical columns a card's table has (MovieLens: all of them), its keys always,
        # and the columns a non-table layout declares (Sports: the items' attributes)
        keys = [k for k in CANONICAL_KEYS.values() if k in CANONICAL_COLUMNS[name]]
        keys += ["timestamp"] if name == "interactions" else []
        missing = [c for c in dict.fromkeys(keys) if c not in frame.columns]
        if source.layout == "table":
            missing += [c for c in CANONICAL_COLUMNS[name] if c not in frame.columns]
        if missing:
            missing_text = ", ".join(dict.fromkeys(missing))
            raise DataError(f"card {card.name}: the {name} table lacks {missing_text}")
        declared = list(source.columns) if source.layout != "table" else []
        kept = [c for c in CANONICAL_COLUMNS[name] if c in frame.columns]
        frames[name] = frame.select(list(dict.fromkeys([*keys, *kept, *declared])))
        origin[name] = str(path)
    return Tables(frames["interactions"], frames.get("users"), frames.get("items"), origin)


def _read_source(source: TableSource, path: Path, sha256: str) -> pl.DataFrame:
    try:
        payload = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None
    _verify_bytes(payload, sha256, str(path))
    if source.layout != "table":
        return _read_layout(source, path, payload)
    if source.encoding != "utf-8":
        payload = payload.decode(source.encoding).encode("utf-8")
    if source.skip_lines:
        payload = payload.split(b"\n", source.skip_lines)[-1]
    separator = source.separator
    if len(separator) > 1:
        payload = payload.replace(separator.encode(), _FIELD_SEPARATOR.encode())
        separator = _FIELD_SEPARATOR
    try:
        frame = pl.read_csv(
            io.BytesIO(payload),
            separator=separator,
            has_header=False,
            new_columns=list(source.columns),
            schema_overrides={c: DTYPES[t] for c, t in source.columns.items()},
            quote_char=None,
        )
    except (pl.exceptions.PolarsError, ValueError) as err:
        raise DataError(
            f"{path}: does not parse as the card describes: {first_line(err)}"
        ) from None
    return frame.with_columns(_derive(name, rule) for name, rule in source.derive.items())


def _read_layout(source: TableSource, path: Path, payload: bytes) -> pl.DataFrame:
    """A ``sequences`` or ``json_lists`` file as a table (see :class:`TableSource`)."""
    keys = [c for c in source.columns if c in ("user_id", "item_id")]
    if source.layout == "sequences":
        key, value = "user_id", "item_id"  # each line: the user, then their items
        expected = {key, value}
    else:  # the object's keys are the table's ids, its values the other column's lists
        key = keys[0] if len(keys) == 1 else ""
        value = next((c for c in source.columns if c != key), "")
        expected = {key, value} if key and value else set()
    if set(source.columns) != expected or not expected:
        wanted = "user_id and item_id" if source.layout == "sequences" else "one id column"
        raise DataError(
            f"{path}: the {source.layout} layout needs columns {wanted} (and, for "
            f"json_lists, one list column); the card gives {', '.join(source.columns)}"
        )
    key_type, value_type = source.columns[key], source.columns[value]
    try:
        text = payload.decode(source.encoding)
        if source.layout == "json_lists":
            mapping = json.loads(text)
            if not isinstance(mapping, dict):
                raise ValueError(f"expected a JSON object; got a {type(mapping).__name__}")
            frame = pl.DataFrame(
                {key: list(mapping), value: list(mapping.values())},
                schema={key: pl.String, value: pl.List(DTYPES[value_type])},
            ).with_columns(pl.col(key).cast(DTYPES[key_type]))
        else:
            lines = [line.split(source.separator) for line in text.splitlines() if line.strip()]
            frame = (
                pl.DataFrame(
                    {key: [line[0] for line in lines], value: [line[1:] for line in lines]},
                    schema={key: pl.String, value: pl.List(pl.String)},
                )
                .with_columns(
                    pl.col(key).cast(DTYPES[key_type]),
                    pl.col(value).list.eval(pl.element().cast(DTYPES[value_type])),
                    pl.int_ranges(pl.col(value).list.len()).alias("timestamp"),
                )
                .explode(value, "timestamp")
            )
    except (pl.exceptions.PolarsError, ValueError) as err:
        raise DataError(
            f"{path}: does not parse as the card's {source.layout} layout: {first_line(err)}"
        ) from None
    return frame


def _derive(name: str, rule: Extract | Flags | Split) -> pl.Expr:
    if isinstance(rule, Extract):
        return pl.col(rule.extract).str.extract(rule.pattern, 1).cast(pl.Int64).alias(name)
    if isinstance(rule, Flags):
        chosen = [pl.when(pl.col(flag) == 1).then(pl.lit(flag)) for flag in rule.flags]
        return pl.concat_list(chosen).list.drop_nulls().alias(name)
    return pl.col(rule.split).str.split(rule.by).alias(name)


_READERS = {
    ".csv": pl.read_csv,
    ".tsv": lambda p: pl.read_csv(p, separator="\t"),
    ".parquet": pl.read_parquet,
    ".arrow": pl.read_ipc,
    ".ipc": pl.read_ipc,
    ".feather": pl.read_ipc,
}


def read_table(path: Path, table: str) -> pl.DataFrame:
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(
            f"data.{table}: {path}: unknown file type '{path.suffix}' "
            f"(expected one of {', '.join(_READERS)})"
        )
    if not path.is_file():
        raise DataError(f"data.{table}: {path}: file not found")
    try:
        return reader(path)
    except (pl.exceptions.PolarsError, OSError, ValueError) as err:
        raise DataError(
            f"data.{table}: {path}: cannot read as {path.suffix.lstrip('.')} "
            f"(truncated or not that format?): {first_line(err)}"
        ) from None


def load_own_tables(data: DataSpec, given: dict[str, pl.DataFrame] | None = None) -> Tables:
    """A user's tables: those ``given`` (DataFrames from ``featrec.prepare``), the rest read
    from the spec's files."""
    frames, origin = {}, {}
    for table in OWN_TABLES:
        path = getattr(data, table)
        if given and table in given:
            frames[table], origin[table] = given[table], f"the {table} table given"
        elif path is not None:
            frames[table], origin[table] = read_table(path, table), str(path)
    return own_tables(frames, data, origin)


OWN_TABLES = {"interactions": ("user", "item", "time"), "users": ("user",), "items": ("item",)}


def own_tables(frames: dict[str, pl.DataFrame], data: DataSpec, origin: dict[str, str]) -> Tables:
    """A user's tables (read from files, or DataFrames given to ``featrec.fit``) → canonical
    tables: the key columns named by ``data.columns`` checked and also present under their
    canonical names (features may name either), times as unix seconds. ``origin`` names
    each table in errors."""
    renames = {getattr(data.columns, k): v for k, v in CANONICAL_KEYS.items()}
    out = {}
    for table, frame in frames.items():
        for key in OWN_TABLES[table]:
            column = getattr(data.columns, key)
            if column not in frame.columns:
                raise DataError(
                    f"data.columns.{key}: column '{column}' not in the {table} table "
                    f"({origin[table]}); columns: {', '.join(frame.columns)}"
                )
        out[table] = frame.with_columns(
            pl.col(c).alias(n) for c, n in renames.items() if c in frame.columns and c != n
        )
    interactions = out["interactions"]
    where = origin.get("interactions", "interactions")
    for table, key in (("users", "user"), ("items", "item")):
        if table in out:
            out[table] = _same_key_type(out[table], interactions, key, data, origin[table], where)
    unit = data.columns.time_unit
    try:
        interactions = interactions.with_columns(
            epoch_seconds(interactions, "timestamp", unit, where)
        )
    except pl.exceptions.PolarsError as err:
        raise DataError(
            f"{where}: time column '{data.columns.time}' cannot be read as times "
            f"({first_line(err)[:200]}); expected unix seconds, a date or ISO date-times"
        ) from None
    return Tables(interactions, out.get("users"), out.get("items"), origin)


def _same_key_type(
    frame: pl.DataFrame,
    interactions: pl.DataFrame,
    key: str,
    data: DataSpec,
    where: str,
    interactions_where: str,
) -> pl.DataFrame:
    """``frame`` (the users or items table) with its ``key`` ids cast to the interactions'
    type where every id converts exactly (user 7.0 is user 7, "7" is 7), so they join; else
    one DataError naming the column, both types and an id without a match."""
    name = CANONICAL_KEYS[key]
    have, want = frame.schema[name], interactions.schema[name]
    if have == want:
        return frame
    ids = frame.get_column(name)
    try:
        cast = ids.cast(want, strict=False)
        back = cast.cast(have, strict=False)
    except pl.exceptions.PolarsError:
        cast = back = pl.Series(name, [None] * len(ids), dtype=want)
    exact = (back == ids) & cast.is_not_null()
    if ids.is_not_null().sum() == exact.sum():
        return frame.with_columns(cast.alias(name))
    bad = ids.filter(ids.is_not_null() & ~exact.fill_null(False))[0]
    column = getattr(data.columns, key)
    raise DataError(
        f"{where}: column '{column}' holds {have} ids and the interactions' ({interactions_where}) "
        f"are {want}: {bad!r} is no {want} id; give both tables the same id type"
    )


# numeric times at or above these magnitudes are read in the next finer unit (auto)
UNIT_LIMITS = (("s", 1e11), ("ms", 1e14), ("us", 1e17), ("ns", float("inf")))
PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


def time_unit(values: pl.Series, unit: str, where: str) -> str:
    """The unit numeric times are in: ``unit``, or (auto) the one their size says."""
    if unit != "auto":
        return unit
    largest = values.abs().max()
    if largest is None:
        return "s"
    found = next(u for u, limit in UNIT_LIMITS if float(largest) < limit)
    if found != "s":
        log.info(
            "%s: times read as %s since 1970 (largest %s); set data.columns.time_unit if not",
            where, found, largest,
        )  # fmt: skip
    return found


def epoch_seconds(
    frame: pl.DataFrame, name: str, unit: str = "auto", where: str = "data"
) -> pl.Expr:
    """A time column as integer unix seconds, whatever it held (number in ``unit``, date,
    datetime, text)."""
    dtype = frame.schema[name]
    column = pl.col(name)
    values = frame.get_column(name)
    if dtype == pl.String:
        text = values.str.strip_chars()
        if not text.drop_nulls().str.contains(r"^-?\d+$").all():
            return column.str.to_datetime().dt.epoch("s").alias(name)
        # numbers written as text ("881250949"): read as the numbers they are
        column, values, dtype = (
            column.str.strip_chars().cast(pl.Int64),
            text.cast(pl.Int64),
            pl.Int64,
        )
    if dtype in (pl.Date, pl.Datetime):
        return column.dt.epoch("s").alias(name)
    if dtype.is_numeric():
        if dtype.is_float() and bool(values.is_nan().any() | values.is_infinite().any()):
            raise DataError(
                f"{where}: time column '{name}' holds NaN or infinite values; drop or fix them"
            )
        per_second = PER_SECOND[time_unit(values, unit, where)]
        seconds = column if per_second == 1 else column // per_second
        return seconds.cast(pl.Int64).alias(name)
    raise DataError(
        f"time column '{name}' has type {dtype}; expected unix seconds, a date or a datetime"
    )


def fingerprint(data: DataSpec) -> list[str]:
    """Cheap identity of the input files (path, size, mtime, card text) for prepared caches."""
    if data.dataset is not None:
        card = load_card(data.dataset)
        parts = [card.model_dump_json()]
        for alternatives in _all_tables(card).values():
            source = _pick(card, alternatives)
            parts.append(_stat(_find(card, source.file)) if source else "absent")
        return parts
    return [_stat(p) for p in (data.interactions, data.users, data.items) if p is not None]


def _stat(path: Path) -> str:
    try:
        info = path.stat()
    except OSError:
        return f"{path}:absent"
    return f"{path.resolve()}:{info.st_size}:{info.st_mtime_ns}"

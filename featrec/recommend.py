"""Recommendations out of a trained run: "what next for this person, now?".

``featrec.load(run_dir)`` returns a :class:`Recommender`. Requests carry raw values: original
item ids (with their events' timestamps and features where known), raw user attributes, and
the request's context (its time, other request-known event features). They are encoded with
the run's encoders and turned into model input by the very function evaluation uses
(:func:`featrec.batching.request_batch`): the predicted slot's item and after-the-fact
features are hidden, its request-known features are filled from the request.

Odd input never raises: unknown items in a history are dropped and counted, unknown
attribute values map to OOV, missing ones to MISSING, histories longer than ``max_len`` keep
their newest events, and an empty history falls back to popularity (said in the result).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import numbers
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
import torch

from featrec.batching import SequenceData, request_batch, seen_items, seen_pairs
from featrec.datasets import load_tables
from featrec.devices import resolve_device
from featrec.encoders import load_encoders
from featrec.errors import FeatrecError, first_line
from featrec.evaluate import SCORE_BATCH
from featrec.fastpath import request_data
from featrec.ids import N_RESERVED
from featrec.model import build_model, feature_configs
from featrec.ranking import Scorer, as_index, top_k
from featrec.rundir import check_data_sums, check_manifest, load_checkpoint
from featrec.sequences import encode_requests
from featrec.spec import Spec, load_spec

log = logging.getLogger(__name__)

History = list[Any] | list[dict[str, Any]] | pl.DataFrame | None


@dataclass
class Recommendation:
    items: list[Any]  # original item ids, best first
    scores: list[float]
    dropped_items: int = 0  # history items unknown to the model
    fallback: str | None = None  # set when the model could not be used


def load(run_dir: str | Path, device: str | torch.device | None = None) -> Recommender:
    """The recommender of a trained run directory (``featrec train --out RUN_DIR``), on
    ``device`` (``auto``/None: a CUDA device where torch sees one, else the CPU; ``cpu``,
    ``cuda``, ``cuda:N``), wherever the run was trained."""
    if not isinstance(run_dir, (str, os.PathLike)):
        raise FeatrecError(
            f"run_dir: expected a path; got {type(run_dir).__name__} {run_dir!r:.60}"
        )
    return Recommender(Path(run_dir), device)


# unix seconds of 0001-01-01 and 9999-12-31 23:59:59: what a datetime can hold
TIME_RANGE = (-62_135_596_800, 253_402_300_799)


# numbers at or above these magnitudes are times in finer units (as data.columns.time_unit
# auto reads the training data): milliseconds, microseconds, nanoseconds since 1970
FINER_UNITS = ((10**17, 10**9), (10**14, 10**6), (10**11, 10**3))


def to_seconds(value: Any, where: str | None = None) -> int | None:
    """Unix seconds from a number (seconds; milliseconds, microseconds or nanoseconds when
    its size says so, as training reads times), a datetime / date (Python, numpy or pandas)
    or ISO text; None, NaN, NaT and NA are no time (None). ``where`` names the value in
    errors (e.g. ``context['timestamp']``)."""
    try:
        return _to_seconds(value)
    except FeatrecError as err:
        if where is None:
            raise
        raise FeatrecError(f"{where}: {err}") from None


def _to_seconds(value: Any) -> int | None:
    if value is None or _is_missing(value):  # NaN, NaT, NA: no time
        return None
    if isinstance(value, bool):
        raise FeatrecError(f"cannot read {value!r} as a time (a bool is no time)")
    if isinstance(value, numbers.Real):
        number: int | float = int(value) if isinstance(value, numbers.Integral) else float(value)
        if not math.isfinite(number):
            raise FeatrecError(f"cannot read {value!r} as a time")
        for limit, per_second in FINER_UNITS:
            if abs(number) >= limit:
                number = number // per_second
                break
        if not TIME_RANGE[0] <= number <= TIME_RANGE[1]:
            raise FeatrecError(
                f"cannot read {value!r} as a time: expected unix seconds of the years 1 to 9999"
            )
        return int(number)
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return int(moment.timestamp())
    if isinstance(value, date):  # a day: its midnight, UTC
        return int(datetime(value.year, value.month, value.day, tzinfo=timezone.utc).timestamp())
    if type(value).__name__ == "datetime64":  # numpy (NaT: above)
        import numpy as np

        return _to_seconds(int(value.astype("datetime64[s]").astype(np.int64)))
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return _to_seconds(int(text))
        try:
            return _to_seconds(datetime.fromisoformat(text.replace("Z", "+00:00")))
        except ValueError:
            raise FeatrecError(
                f"cannot read {value!r} as a time (unix seconds or ISO 8601)"
            ) from None
    raise FeatrecError(f"cannot read {value!r} ({type(value).__name__}) as a time")


# what loading a run reads: checked against its manifest
RUN_INPUTS = ["spec.yaml", "encoders.json", "checkpoints/best.pt"]


class Recommender:
    def __init__(self, run_dir: Path, device: str | torch.device | None = None) -> None:
        spec_path, best = run_dir / "spec.yaml", run_dir / "checkpoints" / "best.pt"
        if not spec_path.is_file() or not best.is_file():
            raise FeatrecError(
                f"{run_dir}: not a run directory (needs spec.yaml and checkpoints/best.pt)"
            )
        self.run_dir = run_dir
        check_manifest(run_dir, [*RUN_INPUTS, "item_popularity.json"])
        self.spec: Spec = load_spec(spec_path)
        self.item_vocab, self.encoders = load_encoders(run_dir / "encoders.json")
        self.device = resolve_device(device, field="device")
        state = load_checkpoint(best)
        tables = {
            key.removeprefix("item_table_"): value
            for key, value in state.items()
            if key.startswith("item_table_")
        }
        self.model = build_model(
            self.spec, len(self.item_vocab), feature_configs(self.spec, self.encoders), tables
        )
        self.model.load_state_dict(state)
        self.model.to(self.device).eval()
        self._popularity: torch.Tensor | None = None
        self.batch_size = SCORE_BATCH  # requests scored per model call
        self._tables = None

    # -- raw requests -----------------------------------------------------------------------

    @property
    def event_columns(self) -> list[str]:
        return [f.column for f in self.spec.features_in("event")]

    @property
    def user_columns(self) -> list[str]:
        return [f.column for f in self.spec.features_in("user")]

    def recommend(
        self,
        history: History,
        user: dict[str, Any] | None = None,
        context: dict[str, Any] | None = None,
        k: int = 10,
        exclude_seen: bool = True,
        candidates: list[Any] | None = None,
    ) -> Recommendation:
        """Top-``k`` items for one request.

        ``history``: item ids, oldest first, or records / a DataFrame with ``item_id`` and
        optionally ``timestamp`` and the spec's event columns. ``user``: raw attributes by the
        spec's column names. ``context``: the request's ``timestamp`` and request-known event
        columns. ``candidates``: only rank these items.
        """
        k = _check_request(k, exclude_seen, candidates)
        user, context = _no_missing(user), _no_missing(context)
        self._check_attributes(user, "user", "user")
        self._check_attributes(context, "event", "context")
        data, dropped = self.encode_one(as_history(history), user, context)
        return self._top_k(data, dropped, k, exclude_seen, candidates)[0]

    def recommend_many(
        self,
        histories: list[History],
        users: list[dict[str, Any] | None] | None = None,
        contexts: list[dict[str, Any] | None] | None = None,
        k: int = 10,
        exclude_seen: bool = True,
        candidates: list[Any] | None = None,
    ) -> list[Recommendation]:
        """Top-``k`` items for many requests at once: one entry per request in each list;
        ``users`` or ``contexts`` None: no attributes or context for any request."""
        k = _check_request(k, exclude_seen, candidates)
        if not _is_list(histories) or not hasattr(histories, "__len__"):
            raise FeatrecError(
                f"histories: expected a list with one history per request; got "
                f"{type(histories).__name__}"
            )
        histories = [as_history(h, f"histories[{i}]") for i, h in enumerate(histories)]
        users = [None] * len(histories) if users is None else list(users)
        contexts = [None] * len(histories) if contexts is None else list(contexts)
        if not len(histories) == len(users) == len(contexts):
            raise FeatrecError(
                "recommend_many: histories, users and contexts take one entry per request; "
                f"got {len(histories)}, {len(users)} and {len(contexts)} (use None for a "
                "request without user attributes or context)"
            )
        if not histories:
            return []
        users, contexts = [_no_missing(u) for u in users], [_no_missing(c) for c in contexts]
        for i, (user, context) in enumerate(zip(users, contexts, strict=True)):
            self._check_attributes(user, "user", f"users[{i}]")
            self._check_attributes(context, "event", f"contexts[{i}]")
        data, dropped = self.encode_many(histories, users, contexts)
        return self._top_k(data, dropped, k, exclude_seen, candidates)

    def _check_attributes(self, given: Any, scope: str, where: str) -> None:
        """A request's user attributes or context: a mapping whose values fit the spec's
        features of ``scope`` (a number for numeric ones, one value for categorical ones, a
        list or text for lists), or one :class:`FeatrecError` naming the key. Unknown keys
        and None values are allowed (missing)."""
        if given is None:
            return
        if not isinstance(given, Mapping):
            raise FeatrecError(
                f"{where}: expected a mapping of column to value (or None); got "
                f"{type(given).__name__} {given!r:.60}"
            )
        features = {f.column: f for f in self.spec.features_in(scope)}
        for column, value in given.items():
            feature = features.get(column)
            if feature is None or value is None or feature.type == "time":
                continue  # times: read by to_seconds, which names a bad one
            expected = None
            if feature.type == "numeric":
                if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
                    expected = "a number"
                elif isinstance(value, str) and not _is_number(value):
                    expected = "a number"  # text that reads as one ("23") is taken as one
            elif feature.type == "categorical":
                if isinstance(value, (list, tuple, dict, set)):
                    expected = "one value"
            elif not isinstance(value, (list, tuple, str)):
                expected = "a list of values (or text the spec's separator splits)"
            if expected:
                raise FeatrecError(
                    f"{where}[{column!r}]: feature {feature.name} expects {expected}; got "
                    f"{value!r:.60}"
                )

    def encode_many(
        self,
        histories: list[History],
        users: list[dict[str, Any] | None],
        contexts: list[dict[str, Any] | None],
    ) -> tuple[SequenceData, list[int]]:
        """Model input of raw requests (one polars query), and each one's dropped items."""
        contexts = [self._context(c) for c in contexts]
        events, dropped = self.request_events(histories, contexts)
        user_rows = [{**(u or {}), "request": i} for i, u in enumerate(users)]
        return self._encode(events, pl.DataFrame(user_rows, infer_schema_length=None)), dropped

    def encode_one(
        self, history: History, user: dict[str, Any] | None, context: dict[str, Any] | None
    ) -> tuple[SequenceData, list[int]]:
        """Model input of one request: without polars where the request allows
        (:mod:`featrec.fastpath`, tested equal), else as :meth:`encode_many`."""
        context = self._context(context)
        fast = request_data(
            self.spec, self.encoders, self._item_index, self._item_type, history, user, context,
            to_seconds,
        )  # fmt: skip
        if fast is None:  # something in the request needs polars' conversion rules
            return self.encode_many([history], [user], [context])
        return fast[0], [fast[1]]

    def _context(self, context: dict[str, Any] | None) -> dict[str, Any] | None:
        """A request's context with its time as ``timestamp``, also where it is given by the
        data's time column (``data.columns.time``, e.g. ``ts``), as histories may give it."""
        time_column = self.spec.data.columns.time
        if not isinstance(context, Mapping) or time_column == "timestamp":
            return context  # not a mapping: refused where it is read
        if time_column not in context:
            return context
        context = dict(context)
        named, stamp = context.pop(time_column), context.get("timestamp")
        named_at = to_seconds(named, f"context['{time_column}']")
        given = to_seconds(stamp, "context['timestamp']")
        if given is not None and named_at is not None and named_at != given:
            raise FeatrecError(
                f"context: timestamp {stamp!r} and {time_column} {named!r} are two different "
                "request times; give one"
            )
        if stamp is None:
            context["timestamp"] = named
        return context

    def _encode(self, events: pl.DataFrame, user_frame: pl.DataFrame) -> SequenceData:
        """The requests' raw events and users → model input (see :func:`encode_requests`)."""
        for column in self.user_columns:
            if column not in user_frame.columns:
                user_frame = user_frame.with_columns(pl.lit(None).alias(column))
        frame = encode_requests(self.spec, self.encoders, self.item_vocab, events, user_frame)
        return SequenceData.from_frame(frame, self.encoders, self.spec)

    @torch.inference_mode()
    def _top_k(
        self,
        data: SequenceData,
        dropped: list[int],
        k: int,
        exclude_seen: bool = True,
        candidates: list[Any] | None = None,
    ) -> list[Recommendation]:
        """Score every request of ``data`` and take its top-k."""
        allowed = None
        if candidates is not None:  # ids as histories' ("5" is item 5 of an integer vocabulary)
            exact = as_ids(list(candidates), self._item_dtype).to_list()
            known = [self._item_index[c] for c in exact if c in self._item_index]
            if not known:
                raise FeatrecError(
                    f"candidates: none of the {len(candidates)} items is in the run's item "
                    f"vocabulary (e.g. {list(candidates)[:3]!r}); nothing to rank"
                )
            allowed = torch.zeros(len(self.item_vocab), dtype=torch.bool)
            allowed[known] = True
            allowed = allowed.to(self.device)
        results: list[Recommendation | None] = [None] * data.num_users
        # batches of similar history length pad less (as in evaluation); results keep the
        # requests' order
        order = torch.argsort(data.test_idx, stable=True)
        for users in torch.split(order, self.batch_size):
            ends = data.test_idx[users]
            batch = request_batch(data, users, ends, self.spec.model.max_len)
            model_score = self.model.item_scorer(batch.to(self.device))
            empty = (ends == 0).to(self.device)  # no known item: rank by popularity
            popular = self.popularity.to(self.device) if bool(empty.any()) else None
            score = _with_fallback(model_score, empty, popular)
            excluded = seen_pairs(data, users, ends) if exclude_seen else None
            values, indices = top_k(
                score, self.model.num_items, len(users), k, excluded, allowed,
                device=self.device,
            )  # fmt: skip
            finite = torch.isfinite(values).sum(1).tolist()
            indices, values = indices.tolist(), values.tolist()
            for row, user in enumerate(users.tolist()):
                count = finite[row]  # fewer than k rankable items: only those
                items = [self.item_vocab.ids[j - N_RESERVED] for j in indices[row][:count]]
                reason = "popularity: the history holds no known item" if ends[row] == 0 else None
                results[user] = Recommendation(items, values[row][:count], dropped[user], reason)
        return results  # type: ignore[return-value]: every request was filled

    @torch.inference_mode()
    def score(
        self, data: SequenceData, users: torch.Tensor, exclude_seen: bool = True
    ) -> torch.Tensor:
        """(len(users), items) scores for the slot at each request's ``test_idx``."""
        targets = data.test_idx[users]
        batch = request_batch(data, users, targets, self.spec.model.max_len)
        scores = self.model.predict(batch.to(self.device))
        if exclude_seen:
            seen = seen_items(data, users, targets, scores.shape[1])
            scores = scores.masked_fill(seen.to(self.device), float("-inf"))
        return scores  # on self.device

    @functools.cached_property
    def _item_dtype(self) -> pl.DataType:
        return pl.Series(self.item_vocab.ids[:1]).dtype

    @functools.cached_property
    def _item_type(self) -> type:
        return type(self.item_vocab.ids[0]) if self.item_vocab.ids else str

    @functools.cached_property
    def _item_index(self) -> dict[Any, int]:
        return {item: i + N_RESERVED for i, item in enumerate(self.item_vocab.ids)}

    @functools.cached_property
    def _known_items(self) -> pl.Series:
        return pl.Series(self.item_vocab.ids, dtype=self._item_dtype)

    def request_events(
        self, histories: list[History], contexts: list[dict | None]
    ) -> tuple[pl.DataFrame, list[int]]:
        """One frame of every request's known history events plus its predicted slot."""
        columns = list(dict.fromkeys(["item_id", "timestamp", *self.event_columns]))
        frames, dropped = [], []
        for request, (history, context) in enumerate(zip(histories, contexts, strict=True)):
            events = _history_frame(history, self.spec.data.columns.time)
            events = events.with_columns(pl.col("item_id").cast(self._item_dtype, strict=False))
            keep = events.filter(pl.col("item_id").is_in(self._known_items.implode()))
            dropped.append(events.height - keep.height)
            context = dict(context or {})
            slot = {"item_id": None, "timestamp": self._request_time(context)}
            slot |= {c: context.get(c) for c in self.event_columns if c != "timestamp"}
            slot_frame = pl.DataFrame([slot], infer_schema_length=None)
            frame = pl.concat([keep, slot_frame], how="diagonal_relaxed")
            for column in columns:
                if column not in frame.columns:
                    frame = frame.with_columns(pl.lit(None).alias(column))
            frames.append(
                frame.select(columns).with_columns(
                    pl.lit(request).alias("request"),
                    pl.Series("slot", [False] * keep.height + [True]),
                )
            )
        events = pl.concat(frames, how="diagonal_relaxed").with_columns(
            pl.col("item_id").cast(self._item_dtype), pl.col("timestamp").cast(pl.Int64)
        )
        return with_time_alias(events, self.spec.data.columns.time), dropped

    def _request_time(self, context: dict) -> int | None:
        """The request's time (popped from ``context``): given, or with trend features (which
        score items as of a day) now; else None."""
        stamp = to_seconds(context.pop("timestamp", None), "context['timestamp']")
        if stamp is None and self.spec.trend_features:
            return int(time.time())
        return stamp

    # -- evaluation ------------------------------------------------------------------------

    @functools.cached_property
    def experiment(self):
        """This run's model with its prepared data (read from the run's data files; cached
        as by ``featrec prepare``), for evaluation."""
        from featrec.sequences import prepare
        from featrec.train import Experiment

        check_data_sums(self.run_dir, self.spec.data)
        prepared = prepare(self.spec)[0]
        return Experiment(
            self.spec, prepared, SequenceData.from_prepared(prepared, self.spec), self.model
        )

    def evaluate(self, split: str = "test") -> dict[str, float]:
        """HR / NDCG / MRR at each of ``eval.ks`` on ``split`` (``valid`` or ``test``), full
        ranking: the metrics ``featrec train`` and ``featrec evaluate`` report."""
        if split not in ("valid", "test"):
            raise FeatrecError(f"split: expected 'valid' or 'test'; got {split!r}")
        return self.experiment.evaluate(split)[0]

    # -- known users -----------------------------------------------------------------------

    @property
    def popularity(self) -> torch.Tensor:
        """Training-event counts per item id (for the empty-history fallback)."""
        if self._popularity is None:
            path = self.run_dir / "item_popularity.json"
            if path.is_file():
                counts = json.loads(path.read_text(encoding="utf-8"))
            else:
                counts = [0.0] * len(self.item_vocab)
                log.warning(
                    "%s has no item_popularity.json: the fallback ranks by item id", self.run_dir
                )
            self._popularity = torch.tensor(counts, dtype=torch.float32)
        return self._popularity

    def known_users(self) -> tuple[pl.DataFrame, pl.DataFrame | None]:
        """The run's raw interactions and users tables (the data must be at hand)."""
        if self._tables is None:
            check_data_sums(self.run_dir, self.spec.data)
            self._tables = load_tables(self.spec.data, self.spec.source)
        return self._tables.interactions, self._tables.users

    def for_known_users(
        self, user_ids: list[Any] | None, at: Any = None, k: int = 10
    ) -> pl.DataFrame:
        """Recommendations for users in the run's data (all of them when ``user_ids`` is None),
        from their whole history, at time ``at`` (default: now)."""
        k = _check_request(k, True, None)
        if user_ids is not None and not _is_list(user_ids):
            raise FeatrecError(
                f"user_ids: expected a list of user ids (or None); got {user_ids!r:.60}"
            )
        interactions, users = self.known_users()
        if user_ids is None:
            user_ids = interactions.get_column("user_id").unique().sort().to_list()
        user_ids = list(user_ids)
        dtype = interactions.schema["user_id"]
        wanted = as_ids(user_ids, dtype)
        if not user_ids:  # no users, no rows (typed as a table with rows)
            return _rows(wanted, [], self._item_dtype)
        present = set(
            interactions.filter(pl.col("user_id").is_in(wanted.drop_nulls().to_list()))["user_id"]
        )
        missing = [u for u, w in zip(user_ids, wanted.to_list(), strict=True) if w not in present]
        if missing:
            source = self.spec.data.dataset or self.spec.data.interactions
            shown = ", ".join(map(repr, missing[:5])) + (", ..." if len(missing) > 5 else "")
            raise FeatrecError(f"users not in {source}: {shown}")
        stamp = to_seconds(at, "at")
        stamp = int(time.time()) if stamp is None else stamp
        requests = pl.DataFrame({"user_id": wanted, "request": range(len(wanted))})
        history = interactions.join(requests, on="user_id").select(
            pl.exclude("user_id"), pl.lit(False).alias("slot")
        )
        slots = requests.select(
            "request",
            pl.lit(None, self._item_dtype).alias("item_id"),
            pl.lit(stamp, pl.Int64).alias("timestamp"),
            pl.lit(True).alias("slot"),
        )
        events = pl.concat([history, slots], how="diagonal_relaxed")
        events = with_time_alias(events, self.spec.data.columns.time)
        for column in self.event_columns:
            if column not in events.columns:
                events = events.with_columns(pl.lit(None).alias(column))
        user_frame = requests.select("request")
        if users is not None and self.user_columns:
            first = users.unique("user_id", keep="first", maintain_order=True)
            user_frame = requests.join(first, on="user_id", how="left").select(
                "request", *self.user_columns
            )
        recs = self._top_k(self._encode(events, user_frame), [0] * len(wanted), k)
        return _rows(wanted, recs, self._item_dtype)


def _no_missing(given: Any) -> Any:
    """A request's attributes or context with pandas' and numpy's missing values (NA, NaT,
    NaN) as None, which is what featrec reads as missing."""
    if not isinstance(given, Mapping):
        return given  # None, or refused where it is checked
    return {key: None if _is_missing(value) else value for key, value in given.items()}


def _is_missing(value: Any) -> bool:
    """pandas' NA / NaT, numpy's NaT, or a NaN (of any float type)."""
    if type(value).__name__ in ("NAType", "NaTType"):
        return True
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return math.isnan(value)
    return type(value).__name__ == "datetime64" and str(value) == "NaT"


def as_ids(values: list[Any], dtype: pl.DataType) -> pl.Series:
    """``values`` as ids of ``dtype`` (a run's id column), null where a value is no such
    id: 2.5, True or "2x" are not user 2 of an integer column (a plain cast makes 2.5 and
    True users 2 and 1); 2.0, numpy integers and the text "2" are. Text ids take integers
    as their text (user "7" for 7)."""
    exact: list[Any] = []
    for value in values:
        if value is None or isinstance(value, bool):
            exact.append(None)
        elif dtype.is_integer():
            whole = isinstance(value, numbers.Integral) or (
                isinstance(value, numbers.Real) and float(value).is_integer()
            )
            digits = isinstance(value, str) and value.strip().removeprefix("-").isdigit()
            exact.append(int(value) if whole or digits else None)
        elif dtype == pl.String:
            exact.append(str(value) if isinstance(value, (str, numbers.Integral)) else None)
        else:
            exact.append(value)
    return pl.Series("id", exact, dtype=dtype, strict=False)


def _with_fallback(score: Scorer, empty: torch.Tensor, popular: torch.Tensor | None) -> Scorer:
    """``score``, with the ``empty`` rows (no known item) scored by ``popular`` instead."""
    if popular is None:
        return score

    def scored(items: torch.Tensor | range) -> torch.Tensor:
        scores = score(items)
        scores[empty] = popular[as_index(items)].expand_as(scores)[empty]
        return scores

    return scored


def _rows(users: pl.Series, recs: list[Recommendation], item_dtype: pl.DataType) -> pl.DataFrame:
    """One table of every request's recommendations, a row per (user, rank); typed as the
    user and item ids even when there are no rows."""
    columns: dict[str, list] = {n: [] for n in ("user_id", "rank", "item_id", "score", "fallback")}
    for user, rec in zip(users.to_list(), recs, strict=True):
        count = len(rec.items)
        columns["user_id"] += [user] * count
        columns["rank"] += range(1, count + 1)
        columns["item_id"] += rec.items
        columns["score"] += rec.scores
        columns["fallback"] += [rec.fallback] * count
    return pl.DataFrame(
        columns,
        schema_overrides={
            "user_id": users.dtype,
            "rank": pl.Int64,
            "item_id": item_dtype,
            "score": pl.Float64,
            "fallback": pl.String,
        },
        strict=False,
    )


def _is_list(value: Any) -> bool:
    """An iterable of values, not text or a mapping (whose iteration is no list of ids)."""
    return not isinstance(value, (str, bytes, dict)) and hasattr(value, "__iter__")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_request(k: Any, exclude_seen: Any, candidates: Any) -> int:
    """The arguments every recommend call shares (``k`` as an int; numpy's integers are
    whole numbers too), or one :class:`FeatrecError`."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise FeatrecError(f"k: expected a whole number of items, 1 or more; got {k!r}")
    if not isinstance(exclude_seen, bool):
        raise FeatrecError(f"exclude_seen: expected True or False; got {exclude_seen!r}")
    if candidates is not None and not _is_list(candidates):
        raise FeatrecError(f"candidates: expected a list of item ids; got {candidates!r:.80}")
    return int(k)


def as_history(history: Any, where: str = "history") -> History:
    """A history as given (item ids in a list, tuple, numpy array, pandas / polars / pyarrow
    Series or array; records; a pandas / polars DataFrame or pyarrow Table with an item_id
    column) → a list or a polars DataFrame."""
    if history is None or isinstance(history, pl.DataFrame):
        return history
    if isinstance(history, (list, tuple)):
        nested = next((i for i, x in enumerate(history) if isinstance(x, (list, tuple))), None)
        if nested is not None:
            raise FeatrecError(
                f"{where}: expected item ids or records; item {nested} is a "
                f"{type(history[nested]).__name__} (several histories: recommend_many)"
            )
        flag = next((i for i, x in enumerate(history) if isinstance(x, bool)), None)
        if flag is not None:
            raise FeatrecError(f"{where}: item {flag} is {history[flag]} (a bool is no item id)")
        return list(history)
    if isinstance(history, pl.Series):
        return history.to_list()
    if isinstance(history, pl.LazyFrame):
        return history.collect()
    if isinstance(history, (str, bytes)):
        raise FeatrecError(
            f"{where}: expected item ids (a list, an array or a Series) or a table with an "
            f"item_id column; got the text {history!r}"
        )
    module, kind = type(history).__module__.split(".")[0], type(history).__name__
    if module == "numpy" and kind == "ndarray":
        if history.ndim != 1:
            raise FeatrecError(f"{where}: expected a 1-d array of item ids; got {history.shape}")
        return history.tolist()
    if module == "pandas" and kind == "Series":
        return history.tolist()
    if (module, kind) in (("pandas", "DataFrame"), ("pyarrow", "Table")):
        from featrec.api import as_polars

        return as_polars(history, where)
    if module == "pyarrow" and (kind in ("Array", "ChunkedArray") or kind.endswith("Array")):
        return history.to_pylist()
    raise FeatrecError(
        f"{where}: expected item ids (a list, an array or a Series) or a table with an item_id "
        f"column; got {type(history).__module__}.{kind}"
    )


def with_time_alias(events: pl.DataFrame, time_column: str) -> pl.DataFrame:
    """Events keep their time as ``timestamp``; features may name the user's time column
    (``data.columns.time``) instead, which then mirrors it (as the training tables do)."""
    if time_column != "timestamp" and time_column in events.columns:
        return events.with_columns(pl.col("timestamp").alias(time_column))
    return events


def _history_frame(history: History, time_column: str) -> pl.DataFrame:
    if history is None:
        return pl.DataFrame({"item_id": []})
    if isinstance(history, pl.DataFrame):
        frame = history
    elif history and isinstance(history[0], dict):
        records = []  # times as seconds and missing values as None first: one column type
        for i, record in enumerate(history):
            record = _no_missing(record)
            if isinstance(record, dict):
                for key in dict.fromkeys(("timestamp", time_column)):
                    if key in record:
                        where = f"history: row {i + 1}, column {key}"
                        record[key] = to_seconds(record[key], where)
            records.append(record)
        frame = pl.DataFrame(records, infer_schema_length=None)
    else:
        frame = pl.DataFrame({"item_id": list(history)}, strict=False)
    if "item_id" not in frame.columns:
        raise FeatrecError(f"history: needs an item_id column; got {', '.join(frame.columns)}")
    if (
        time_column != "timestamp"
        and "timestamp" not in frame.columns
        and time_column in frame.columns
    ):
        frame = frame.rename({time_column: "timestamp"})
    if "timestamp" in frame.columns and _needs_conversion(frame["timestamp"]):
        stamps = [  # as unix seconds (ms and so on by their size)
            to_seconds(v, f"history: row {i + 1}, column timestamp")
            for i, v in enumerate(frame["timestamp"].to_list())
        ]
        frame = frame.with_columns(pl.Series("timestamp", stamps, dtype=pl.Int64))
    return frame


def _needs_conversion(stamps: pl.Series) -> bool:
    """Times that are not whole seconds already (integers below the millisecond range)."""
    if not stamps.dtype.is_integer():
        return stamps.dtype != pl.Null
    largest = stamps.abs().max()
    return largest is not None and largest >= FINER_UNITS[-1][0]


def read_requests(path: Path) -> pl.DataFrame:
    """A request file (csv or parquet) with any of: user_id, history, timestamp, user
    attribute columns, request-known event columns."""
    readers = {".csv": pl.read_csv, ".parquet": pl.read_parquet}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise FeatrecError(f"--input {path}: expected a .csv or .parquet file")
    try:
        return reader(path)
    except (OSError, pl.exceptions.PolarsError) as err:
        first = first_line(err)
        raise FeatrecError(f"--input {path}: cannot read: {first}") from None


def recommend_requests(
    recommender: Recommender, requests: pl.DataFrame, k: int, source: str = "requests"
) -> pl.DataFrame:
    """Recommendations for every row of a request table (rows numbered from 1 in errors)."""
    if "user_id" not in requests.columns and "history" not in requests.columns:
        raise FeatrecError(
            f"{source}: needs a user_id or a history column; got {', '.join(requests.columns)}"
        )
    histories = _parse_histories(recommender, requests, source)
    time_column = recommender.spec.data.columns.time
    stamps = _parse_times(requests, source, time_column)
    known_rows = [i for i, h in enumerate(histories) if h is None]
    if known_rows and "user_id" not in requests.columns:
        raise FeatrecError(
            f"{source}: row {known_rows[0] + 1}, column history: empty, and no user_id"
        )
    attribute_columns = [c for c in recommender.user_columns if c in requests.columns]
    users = [
        {c: row[c] for c in attribute_columns if row[c] is not None} or None
        for row in requests.iter_rows(named=True)
    ]
    # a known user's history and stored attributes fill what the request leaves out
    wanted = len(recommender.user_columns)
    incomplete = [bool(wanted) and (u is None or len(u) < wanted) for u in users]
    if known_rows or ("user_id" in requests.columns and any(incomplete)):
        stored = _stored_users(recommender, requests["user_id"].to_list(), bool(known_rows))
        if stored is not None:
            by_user, attributes = stored
            for i in known_rows:
                histories[i] = by_user[i]
            for i, found in enumerate(attributes):
                if found and incomplete[i]:
                    users[i] = {**found, **(users[i] or {})}
    context_columns = [
        c
        for c in recommender.event_columns
        if c in requests.columns and c not in ("timestamp", time_column)
    ]
    contexts = [
        {"timestamp": stamp, **{c: row[c] for c in context_columns}}
        for stamp, row in zip(stamps, requests.iter_rows(named=True), strict=True)
    ]
    try:
        recs = recommender.recommend_many(histories, users, contexts, k)
    except FeatrecError as err:  # "users[1]['age']: ..." is the file's row 2, column age
        found = re.match(
            r"^(?:users|histories|contexts)\[(\d+)\](?:\['([^']*)'\])?: (.*)", str(err)
        )
        if found is None:
            raise
        row, column, rest = int(found[1]) + 1, found[2], found[3]
        at = f", column {column}" if column else ""
        raise FeatrecError(f"{source}: row {row}{at}: {rest}") from None
    ids = (
        requests["user_id"]
        if "user_id" in requests.columns
        else pl.Series(range(1, len(recs) + 1), dtype=pl.Int64)
    )
    return _rows(ids, recs, recommender._item_dtype)


def _stored_users(
    recommender: Recommender, user_ids: list[Any], need_histories: bool
) -> tuple[list[pl.DataFrame], list[dict[str, Any]]] | None:
    """Each requested user's history in the run's data (time order; empty for a user it
    does not hold) and stored attributes (empty without), or None where only attributes
    were wanted and the run's data is not at hand (they are then left out, logged)."""
    try:
        interactions, users = recommender.known_users()
    except FeatrecError as err:
        if need_histories:
            raise
        log.warning("known users' stored attributes not used: %s", first_line(err))
        return None
    keys = as_ids(user_ids, interactions.schema["user_id"])
    requests = pl.DataFrame({"user_id": keys, "request": range(len(keys))})
    events = interactions.join(requests, on="user_id").sort(
        "request", "timestamp", maintain_order=True
    )
    by_request = events.partition_by("request", as_dict=True, include_key=False)
    empty = pl.DataFrame({"item_id": []}, schema={"item_id": interactions.schema["item_id"]})
    histories = [by_request.get((i,), empty) for i in range(len(keys))]
    attributes: list[dict[str, Any]] = [{}] * len(keys)
    columns = [c for c in recommender.user_columns if users is not None and c in users.columns]
    if columns:
        first = users.unique("user_id", keep="first", maintain_order=True)
        found = requests.join(first, on="user_id", how="left").sort("request")
        attributes = [
            {c: row[c] for c in columns if row[c] is not None}
            for row in found.select(columns).iter_rows(named=True)
        ]
    return histories, attributes


def _parse_histories(recommender: Recommender, requests: pl.DataFrame, source: str) -> list:
    if "history" not in requests.columns:
        return [None] * requests.height
    column = requests["history"]
    if column.dtype == pl.String:  # csv: ids separated by spaces, '|' or ','
        column = column.str.replace_all(r"[|,]", " ").str.strip_chars().str.split(" ")
        column = column.list.eval(pl.element().filter(pl.element() != ""))
    if not isinstance(column.dtype, pl.List):
        raise FeatrecError(
            f"{source}: column history: expected a list of item ids (or text like '3 17 42'); "
            f"got {column.dtype}"
        )
    out = []
    for i, items in enumerate(column.to_list()):
        out.append(None if items is None or len(items) == 0 else list(items))
        if items is not None and any(isinstance(v, (float, bool, dict, list)) for v in items):
            raise FeatrecError(
                f"{source}: row {i + 1}, column history: {items!r} is not a list of item ids"
            )
    return out


def _parse_times(requests: pl.DataFrame, source: str, time_column: str) -> list[int]:
    """Each row's request time: its ``timestamp`` or the data's time column (both given:
    they must agree), else now."""
    columns = [c for c in dict.fromkeys(("timestamp", time_column)) if c in requests.columns]
    now = int(time.time())
    if not columns:
        return [now] * requests.height
    stamps = []
    for i, row in enumerate(requests.select(columns).iter_rows()):
        given = [
            to_seconds(value, f"{source}: row {i + 1}, column {column}")
            for column, value in zip(columns, row, strict=True)
        ]
        known = [g for g in given if g is not None]
        if len(set(known)) > 1:
            raise FeatrecError(
                f"{source}: row {i + 1}: columns {' and '.join(columns)} give two different "
                "request times; give one"
            )
        stamps.append(known[0] if known else now)
    return stamps

"""Prepared sequences → model inputs: windows, padding, Cloze masking, the leakage rules.

Shape letters: B batch, L window length (≤ max_len), K list width (multi_categorical).

All sequences live in flat tensors with per-user offsets, so a batch is a handful of
vectorized gathers: no per-example Python work. Windows are right-aligned (left padding),
so the newest event — the predicted slot at inference — is always the last position.

The leakage rules of docs/design.md §3 are applied here, in :func:`hide`, for training masks and
for the predicted slot alike: the item id becomes ``MASK`` (so item features, looked up by
item id inside the model, become the ``MASK`` row), and every event feature known only
after the interaction becomes ``MASK``; request-known event features and user features stay.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from featrec.encoders import StandardEncoder
from featrec.ids import IGNORE, MASK, PAD
from featrec.ranking import Excluded
from featrec.sequences import Prepared, feature_columns
from featrec.spec import Spec
from featrec.storage import read_tensors, write_tensors
from featrec.trends import DAY, event_days


@dataclass
class Batch:
    """Model input. ``item`` (B, L): item ids, left-padded with PAD, MASK at masked and
    predicted slots; ``event``: encoded event column (``time.hour``, ``rating``) → (B, L)
    ids or floats; ``user``: user feature → (B,) ids or floats, or (B, K) id lists. Item
    features are not here: the model looks them up by item id."""

    item: torch.Tensor
    event: dict[str, torch.Tensor]
    user: dict[str, torch.Tensor]

    def to(self, device: torch.device) -> Batch:
        """Every tensor on ``device`` (no copy where they are already)."""

        pin = torch.device(device).type == "cuda"  # page-locked: the copy overlaps compute

        def one(value: torch.Tensor) -> torch.Tensor:
            if pin and value.device.type == "cpu":
                value = value.pin_memory()
            return value.to(device, non_blocking=True)

        def move(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {k: one(v) for k, v in values.items()}

        return Batch(one(self.item), move(self.event), move(self.user))

    def take(self, rows: torch.Tensor) -> Batch:
        """The batch of these rows only."""
        return Batch(
            self.item[rows],
            {k: v[rows] for k, v in self.event.items()},
            {k: v[rows] for k, v in self.user.items()},
        )

    def column(self, scope: str, name: str) -> torch.Tensor:
        """An event column or a user feature by its feature scope."""
        return (self.event if scope == "event" else self.user)[name]

    def named(self) -> dict[str, torch.Tensor]:
        """Flat, named tensors (``item``, ``event:<column>``, ``user:<feature>``): the inputs
        of an exported program (featrec.export)."""
        return (
            {"item": self.item}
            | {f"event:{k}": v for k, v in self.event.items()}
            | {f"user:{k}": v for k, v in self.user.items()}
        )

    @classmethod
    def from_named(cls, named: dict[str, torch.Tensor]) -> Batch:
        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k.removeprefix(prefix): v for k, v in named.items() if k.startswith(prefix)}

        return cls(named["item"], part("event:"), part("user:"))


def _tensor(values: np.ndarray) -> torch.Tensor:
    """float32 for numbers with a fraction, int64 for ids; always a writable copy."""
    dtype = torch.float32 if values.dtype.kind == "f" else torch.int64
    return torch.tensor(values, dtype=dtype)


def _list_tensor(column: pl.Series) -> torch.Tensor:
    """A list column → flat tensor of its elements."""
    return _tensor(column.explode().to_numpy())


def padded_lists(column: pl.Series) -> torch.Tensor:
    """A list column → (rows, K) tensor, right-padded with PAD."""
    lengths = column.list.len().cast(pl.Int64).to_numpy()
    width = max(int(lengths.max()) if len(lengths) else 1, 1)
    out = torch.full((len(column), width), PAD, dtype=torch.int64)
    rows = torch.repeat_interleave(torch.arange(len(column)), _tensor(lengths))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    cols = torch.arange(int(lengths.sum())) - _tensor(np.repeat(starts, lengths))
    out[rows, cols] = _list_tensor(column)
    return out


def column_tensor(column: pl.Series) -> torch.Tensor:
    """A scalar or list column (one row per user / item) → (rows,) or (rows, K) tensor."""
    if isinstance(column.dtype, pl.List):
        return padded_lists(column)
    return _tensor(column.to_numpy())


def _position(column: pl.Series) -> torch.Tensor:
    return _tensor(column.fill_null(-1).cast(pl.Int64).to_numpy())


TENSORS = "tensors"  # the folder of flat tensor files in a prepared-data cache entry


def sequence_tensors(seq: pl.DataFrame, encoders: dict, spec: Spec) -> dict[str, torch.Tensor]:
    """Per-user sequences → flat tensors (CSR): ``offsets`` (U + 1,), ``item`` and each
    ``event:COLUMN`` (N,), ``user:FEATURE`` (U,) or (U, K), and the split positions (U,)."""
    lengths = seq.get_column("item").list.len().cast(pl.Int64).to_numpy()
    tensors = {
        "offsets": _tensor(np.concatenate([[0], np.cumsum(lengths)])),
        "item": _list_tensor(seq.get_column("item")),
    }
    for feature in spec.features_in("event"):
        for column in feature_columns(feature.name, encoders[feature.name]):
            tensors[f"event:{column}"] = _list_tensor(seq.get_column(column))
    for feature in spec.features_in("user"):
        tensors[f"user:{feature.name}"] = column_tensor(seq.get_column(feature.name))
    for name in ("train_len", "valid_idx", "test_idx"):
        tensors[name] = _position(seq.get_column(name))
    if "timestamp" in seq.columns:  # unix seconds (or positions, for data without times)
        # int64 always: a request's history without times (null) would make float32, which
        # rounds unix seconds to 128 s and moves a time near midnight into the next day
        times = seq.get_column("timestamp").explode().fill_null(0).fill_nan(0)
        tensors["time"] = torch.from_numpy(times.cast(pl.Int64).to_numpy().copy())
    return tensors


def write_sequence_tensors(directory: Path, prepared: Prepared, spec: Spec) -> None:
    """The cache's flat copy of ``prepared``'s sequences, for :meth:`SequenceData.from_prepared`."""
    write_tensors(
        directory / TENSORS, sequence_tensors(prepared.sequences, prepared.encoders, spec)
    )


@dataclass
class SequenceData:
    """Every user's encoded events in flat tensors (CSR layout) and the split positions.

    ``item`` and each ``event[col]`` hold the events of user ``u`` at
    ``offsets[u]:offsets[u + 1]``; ``train_len`` / ``valid_idx`` / ``test_idx`` are
    positions in a user's sequence (-1: not evaluated).
    """

    offsets: torch.Tensor  # (U + 1,)
    item: torch.Tensor  # (N,)
    event: dict[str, torch.Tensor]  # column → (N,)
    user: dict[str, torch.Tensor]  # feature → (U,) or (U, K)
    train_len: torch.Tensor  # (U,)
    valid_idx: torch.Tensor  # (U,)
    test_idx: torch.Tensor  # (U,)
    hidden_event: frozenset[str]  # event columns hidden at a masked / predicted slot
    float_event: frozenset[str]  # event columns holding scaled numbers, not ids
    user_ids: list
    max_eval_users: int | None = None  # eval.max_users: evaluate a fixed sample of users
    time: torch.Tensor | None = None  # (N,) each event's time (unix seconds), if known

    @classmethod
    def from_prepared(cls, prepared: Prepared, spec: Spec) -> SequenceData:
        """The prepared data's tensors: mapped from the cache's flat files where it has
        them (no copy, shared by processes), else converted from its sequences."""
        arrays = prepared.folder / TENSORS if prepared.folder is not None else None
        if arrays is None or not (arrays / "tensors.json").is_file():
            return cls.from_frame(prepared.sequences, prepared.encoders, spec)
        user_ids = pl.read_parquet(prepared.folder / "sequences.parquet", columns=["user_id"])
        return cls.from_tensors(
            read_tensors(arrays), user_ids.get_column("user_id").to_list(), prepared.encoders,
            spec,
        )  # fmt: skip

    @classmethod
    def from_frame(cls, seq: pl.DataFrame, encoders: dict, spec: Spec) -> SequenceData:
        """From per-user sequences (``Prepared.sequences`` or encoded requests)."""
        return cls.from_tensors(
            sequence_tensors(seq, encoders, spec), seq.get_column("user_id").to_list(),
            encoders, spec,
        )  # fmt: skip

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, torch.Tensor], user_ids: list, encoders: dict, spec: Spec
    ) -> SequenceData:
        """From :func:`sequence_tensors`' tensors (or those mapped from the cache)."""
        hidden, floats = event_column_kinds(spec, encoders)
        events = [
            column
            for feature in spec.features_in("event")
            for column in feature_columns(feature.name, encoders[feature.name])
        ]  # the spec's own: a behavior-only variant reads the full spec's cache entry
        event = {column: tensors[f"event:{column}"] for column in events}
        time = tensors.get("time")
        if spec.trend_features and time is not None:  # the request day of each slot
            event[DAY] = event_days(time)
        return cls(
            offsets=tensors["offsets"],
            item=tensors["item"],
            event=event,
            user={f.name: tensors[f"user:{f.name}"] for f in spec.features_in("user")},
            train_len=tensors["train_len"],
            valid_idx=tensors["valid_idx"],
            test_idx=tensors["test_idx"],
            hidden_event=hidden,
            float_event=floats,
            user_ids=user_ids,
            max_eval_users=spec.eval.max_users,
            time=time,
        )

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    def targets(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(users, target positions) of the users evaluated on ``split`` (valid / test): all
        of them, or with ``max_eval_users`` a sample of that many drawn with seed 0 (the same
        users for every seed and variant of an experiment, so differences stay paired)."""
        position = self.valid_idx if split == "valid" else self.test_idx
        users = torch.nonzero(position >= 0).squeeze(1)
        limit = self.max_eval_users
        if limit is not None and len(users) > limit:
            drawn = torch.randperm(len(users), generator=torch.Generator().manual_seed(0))
            users = users[drawn[:limit].sort().values]
        return users, position[users]


def event_column_kinds(spec: Spec, encoders: dict) -> tuple[frozenset[str], frozenset[str]]:
    """(event columns hidden at a masked / predicted slot, event columns holding floats)."""
    hidden, floats = set(), set()
    for feature in spec.features_in("event"):
        encoder = encoders[feature.name]
        for column in feature_columns(feature.name, encoder):
            if feature.hidden_at_target:
                hidden.add(column)
            if isinstance(encoder, StandardEncoder):
                floats.add(column)
    return frozenset(hidden), frozenset(floats)


def gather_window(
    data: SequenceData, users: torch.Tensor, ends: torch.Tensor, max_len: int
) -> Batch:
    """Events ``[end - max_len, end)`` of each user, right-aligned and left-padded.

    The batch's event columns are (B, L), its user features (B,) / (B, K).
    """
    starts = (ends - max_len).clamp(min=0)
    length = int((ends - starts).max())
    pos = ends[:, None] - length + torch.arange(length)  # (B, L) positions in each sequence
    valid = pos >= starts[:, None]  # (B, L)
    flat = data.offsets[users][:, None] + pos.clamp(min=0)  # (B, L) indices into the flat data
    event = {
        column: torch.where(valid, values[flat], 0.0 if values.is_floating_point() else PAD)
        for column, values in data.event.items()
    }
    user = {name: values[users] for name, values in data.user.items()}
    return Batch(torch.where(valid, data.item[flat], PAD), event, user)


def hide(batch: Batch, mask: torch.Tensor, data: SequenceData) -> None:
    """Apply the leakage rules in place at the positions of ``mask`` (B, L)."""
    batch.item = batch.item.masked_fill(mask, MASK)
    for column in data.hidden_event:
        hidden = 0.0 if column in data.float_event else MASK
        batch.event[column] = batch.event[column].masked_fill(mask, hidden)


def draw_targets(
    eligible: torch.Tensor, prob: float, generator: torch.Generator | None
) -> torch.Tensor:
    """(B, L) bool: each eligible position with ``prob``, and in a row where none was drawn
    the eligible position with the highest draw (a row with no eligible position stays
    empty)."""
    draw = torch.rand(eligible.shape, generator=generator)  # (B, L)
    chosen = (draw < prob) & eligible
    empty = ~chosen.any(dim=1)
    pick = torch.where(eligible, draw, -1.0).argmax(dim=1)
    chosen[empty, pick[empty]] = eligible[empty, pick[empty]]
    return chosen


def training_batch(
    data: SequenceData,
    users: torch.Tensor,
    max_len: int,
    mask_prob: float,
    last_item_share: float,
    generator: torch.Generator,
    crop_prob: float = 0.0,
) -> tuple[Batch, torch.Tensor]:
    """A Cloze batch over the users' training events: (inputs, labels (B, L)).

    A window holds a user's newest ``max_len`` training events; with ``crop_prob``, a user
    with more than that gets a window drawn uniformly from all full windows of the history
    (the newest included), so the older events are trained on too (BERT4Rec's sliding
    windows, one per visit).
    """
    batch = gather_window(
        data, users, training_window_ends(data, users, max_len, crop_prob, generator), max_len
    )
    mask = draw_targets(batch.item != PAD, mask_prob, generator)
    # a share of sequences is masked as at inference: only the newest item
    last_only = torch.rand(len(users), generator=generator) < last_item_share
    mask[last_only] = False
    mask[last_only, -1] = True
    labels = torch.where(mask, batch.item, IGNORE)
    hide(batch, mask, data)
    return batch, labels


def training_window_ends(
    data: SequenceData,
    users: torch.Tensor,
    max_len: int,
    crop_prob: float,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """(B,) end positions of the training windows: the newest, or with ``crop_prob`` one
    drawn uniformly from every window that fills ``max_len`` events (the newest included)."""
    ends = data.train_len[users]
    if crop_prob <= 0.0:  # no draw: the random stream of uncropped runs stays as it was
        return ends
    spare = (ends - max_len).clamp(min=0)  # how far back a full window can end
    crop = (torch.rand(len(users), generator=generator) < crop_prob) & (spare > 0)
    back = (torch.rand(len(users), generator=generator) * (spare + 1)).long().clamp(max=spare)
    return torch.where(crop, ends - back, ends)


def next_item_batch(
    data: SequenceData,
    users: torch.Tensor,
    max_len: int,
    target_prob: float,
    generator: torch.Generator | None = None,
    crop_prob: float = 0.0,
) -> tuple[Batch, torch.Tensor]:
    """Targets predicted from the events before them, for models that only look back (the
    Embedding&MLP baseline). Labels (B, L). Windows as in :func:`training_batch`,
    ``crop_prob`` included.

    Each position with history is a target with ``target_prob`` (at least one per
    sequence), drawn as the Cloze task draws its masks: the full softmax over all items at
    every position of a window costs ~5 Cloze steps at ``mask_prob`` 0.2. ``target_prob=1``
    trains on every position.
    """
    ends = training_window_ends(data, users, max_len, crop_prob, generator)
    batch = gather_window(data, users, ends, max_len)
    valid = batch.item != PAD  # (B, L)
    has_history = valid & (valid.cumsum(dim=1) > 1)
    if target_prob < 1.0:
        has_history = draw_targets(has_history, target_prob, generator)
    return batch, torch.where(has_history, batch.item, IGNORE)


def causal_view(batch: Batch, after: frozenset[str]) -> Batch:
    """A window of L slots seen for causal next-item prediction, still L wide: position t
    holds the item and after-the-fact event columns (``after``) of slot t - 1 (position 0
    is padding) and the request-known event columns of slot t. Position t predicts the item
    of slot t from the slots before it and from when (and where) slot t is requested, which
    is known at its request; what it is, is not. A request window ends with the predicted
    slot, so its newest position holds the newest event and the request's features
    (train.objective next_item). Shifted by a roll, not a slice: the width (and with it an
    exported program's dynamic length) stays the window's."""
    first = torch.arange(batch.item.shape[1], device=batch.item.device) == 0

    def shifted(values: torch.Tensor) -> torch.Tensor:
        fill = 0.0 if values.is_floating_point() else PAD
        return values.roll(1, dims=1).masked_fill(first, fill)

    event = {k: (shifted(v) if k in after else v) for k, v in batch.event.items()}
    return Batch(shifted(batch.item), event, batch.user)


def causal_batch(
    data: SequenceData,
    users: torch.Tensor,
    max_len: int,
    target_prob: float,
    after: frozenset[str],
    generator: torch.Generator | None = None,
    crop_prob: float = 0.0,
) -> tuple[Batch, torch.Tensor]:
    """Windows as in :func:`training_batch` seen through :func:`causal_view`: (inputs,
    labels), both (B, L), the label of position t the item of slot t. Each position with
    an event before it is a target with ``target_prob`` (at least one per window)."""
    ends = training_window_ends(data, users, max_len, crop_prob, generator)
    window = gather_window(data, users, ends, max_len)
    batch = causal_view(window, after)
    eligible = (batch.item != PAD) & (window.item != PAD)
    if target_prob < 1.0:
        eligible = draw_targets(eligible, target_prob, generator)
    return batch, torch.where(eligible, window.item, IGNORE)


def length_aware_batches(
    users: torch.Tensor,
    lengths: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
    pool_batches: int = 32,
) -> list[torch.Tensor]:
    """Shuffled batches of users with similar sequence lengths, to cut padding.

    Users are shuffled, cut into pools of ``pool_batches`` batches, sorted by length within a
    pool and batched; then the batch order is shuffled. Every user appears exactly once, as
    with plain shuffled batching; only who shares a batch changes.
    """
    order = users[torch.randperm(len(users), generator=generator)]
    batches = []
    for pool in torch.split(order, batch_size * pool_batches):
        by_length = pool[torch.argsort(lengths[pool], stable=True)]
        batches += list(torch.split(by_length, batch_size))
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    batches = [batches[i] for i in shuffle]
    # the longest batch first: the heap grows to its size once, and the shorter batches'
    # temporaries fit in the blocks it freed (ascending sizes would grow it batch by batch)
    if len(users):  # a batch is sorted by length: its last user is its longest
        longest = max(  # ties (windows capped at max_len): the fuller batch
            range(len(batches)),
            key=lambda i: (int(lengths[batches[i][-1]]), len(batches[i])),
        )
        batches[0], batches[longest] = batches[longest], batches[0]
    return batches


def request_batch(
    data: SequenceData, users: torch.Tensor, targets: torch.Tensor, max_len: int
) -> Batch:
    """Inputs to predict position ``targets`` of each user (evaluation and inference alike).

    The window ends with the predicted slot: its item and after-the-fact features are
    hidden; its request-known features (time of the request, ...) stay visible.
    """
    batch = gather_window(data, users, targets + 1, max_len)
    mask = torch.zeros_like(batch.item, dtype=torch.bool)
    mask[:, -1] = True
    hide(batch, mask, data)
    return batch


def seen_pairs(data: SequenceData, users: torch.Tensor, ends: torch.Tensor) -> Excluded:
    """(row, item) pairs: the items in each user's events before position ``ends``."""
    lengths = ends.clamp(min=0)
    rows = torch.repeat_interleave(torch.arange(len(users)), lengths)
    starts = torch.repeat_interleave(data.offsets[users], lengths)
    within = torch.arange(int(lengths.sum())) - torch.repeat_interleave(
        lengths.cumsum(0) - lengths, lengths
    )
    return Excluded(rows, data.item[starts + within])


def seen_items(
    data: SequenceData, users: torch.Tensor, ends: torch.Tensor, num_items: int
) -> torch.Tensor:
    """(B, num_items) bool: the items in each user's events before position ``ends``."""
    return seen_pairs(data, users, ends).mask(len(users), 0, num_items)


def item_tables(prepared: Prepared, spec: Spec) -> dict[str, torch.Tensor]:
    """Item features by item id: (num_items,) or (num_items, K), for the model's buffers."""
    return {
        f.name: column_tensor(prepared.items.get_column(f.name)) for f in spec.features_in("item")
    }

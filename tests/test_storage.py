"""Prepared data as flat tensor files in the cache, mapped back without copies (issue 21)."""

from __future__ import annotations

from pathlib import Path

import torch

from featrec.batching import TENSORS, SequenceData
from featrec.sequences import Prepared, prepare
from featrec.spec import load_spec
from featrec.storage import read_tensors, write_tensors
from tests.conftest import write_spec


def test_tensors_round_trip_with_their_dtypes_and_shapes(tmp_path: Path) -> None:
    tensors = {
        "ids": torch.arange(10, dtype=torch.int64),
        "table": torch.randn(3, 4),
        "empty": torch.empty(0, dtype=torch.int64),
        "lists": torch.tensor([[1, 2], [3, 0]], dtype=torch.int32),
    }
    write_tensors(tmp_path / "t", tensors)
    back = read_tensors(tmp_path / "t")
    assert back.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor)


def test_a_write_to_a_mapped_tensor_stays_in_the_process(tmp_path: Path) -> None:
    write_tensors(tmp_path / "t", {"ids": torch.arange(5)})
    mapped = read_tensors(tmp_path / "t")["ids"]
    mapped[0] = 99  # copy-on-write: the file and other processes keep the original
    assert read_tensors(tmp_path / "t")["ids"].tolist() == [0, 1, 2, 3, 4]


def _fields(data: SequenceData) -> dict:
    return {
        "offsets": data.offsets, "item": data.item, "train_len": data.train_len,
        "valid_idx": data.valid_idx, "test_idx": data.test_idx,
        **{f"event:{k}": v for k, v in data.event.items()},
        **{f"user:{k}": v for k, v in data.user.items()},
    }  # fmt: skip


def test_mapped_sequences_equal_the_converted_ones(tmp_path: Path, tiny_spec_body: dict) -> None:
    spec = load_spec(write_spec(tmp_path, tiny_spec_body))
    prepared, folder = prepare(spec, refresh=True)
    assert (folder / TENSORS / "tensors.json").is_file()
    cached = Prepared.load(folder)  # as a later process finds it
    for variant in (spec, spec.behavior_only()):  # behavior-only reads the same entry
        mapped = SequenceData.from_prepared(cached, variant)
        converted = SequenceData.from_frame(prepared.sequences, prepared.encoders, variant)
        got, expected = _fields(mapped), _fields(converted)
        assert got.keys() == expected.keys()
        for name in expected:
            assert torch.equal(got[name], expected[name]), name
        assert mapped.user_ids == converted.user_ids
        assert (mapped.hidden_event, mapped.float_event) == (
            converted.hidden_event,
            converted.float_event,
        )
    assert cached._sequences is None  # the sequences frame was never read

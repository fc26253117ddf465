"""Fuzzed specs: whatever the bytes, loading a spec either works or raises SpecError.

The strategies live here and ``bench/fuzz_spec.py`` runs them for 10,000+ examples.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featrec.errors import SpecError
from featrec.spec import load_spec, load_spec_text

ROOT = Path(__file__).resolve().parents[1]
SEEDS = [ROOT / "feature_specs" / n for n in ("ml-100k.yaml", "ml-1m.yaml", "sports.yaml")]
FIELDS = ["name", "data", "dataset", "interactions", "users", "items", "columns", "features",
          "scope", "type", "column", "fusion", "method", "model", "train", "eval", "dim", "bins",
          "lr", "epochs", "ks", "split", "timezone", "parts", "known_at", "separator", "kind",
          "loss", "negatives", "time_unit", "device", "seed", "aux_weight", "user"]  # fmt: skip
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.text(max_size=12), st.sampled_from(["item", "user", "event", "gate", "nova", "din",
                                           "ml-100k", "time", "categorical", "auto", "cuda:9"]),
)  # fmt: skip
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), inner, max_size=5),
    ),
    max_leaves=20,
)
SPECS = st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=8)


def mutated(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """``data`` with each (kind, position, byte) edit applied: replace, insert or delete."""
    out = bytearray(data)
    for kind, position, value in edits:
        at = position % (len(out) + 1)
        if kind == 0 and at < len(out):
            out[at] = value
        elif kind == 1:
            out.insert(at, value)
        elif at < len(out):
            del out[at]
    return bytes(out)


EDITS = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 10**6), st.integers(0, 255)), min_size=1,
    max_size=6,
)  # fmt: skip


def only_spec_errors(load) -> None:
    try:
        load()
    except SpecError as err:
        assert "\n" not in str(err)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SPECS)
def test_structured_specs_load_or_raise_spec_error(body: dict) -> None:
    only_spec_errors(lambda: load_spec_text(yaml.safe_dump(body), "fuzz"))


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(SEEDS), EDITS)
def test_mutated_spec_bytes_load_or_raise_spec_error(seed: Path, edits: list) -> None:
    with tempfile.TemporaryDirectory() as folder:  # beside nothing: relative paths dangle
        path = Path(folder) / seed.name
        path.write_bytes(mutated(seed.read_bytes(), edits))
        only_spec_errors(lambda: load_spec(path))


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=200))
def test_any_text_loads_or_raises_spec_error(text: str) -> None:
    only_spec_errors(lambda: load_spec_text(text, "fuzz"))

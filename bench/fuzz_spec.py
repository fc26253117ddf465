"""Fuzz the spec loader with many more examples than the test suite runs.

Counts, per strategy of ``tests/test_fuzz.py``, the examples that loaded, that raised
featrec's SpecError, and any other exception (the target: none), naming the first few.

Usage: python bench/fuzz_spec.py [--examples 10000]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from featrec.errors import SpecError
from featrec.spec import load_spec, load_spec_text
from tests.test_fuzz import EDITS, SEEDS, SPECS, mutated

counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
others: list[str] = []


def record(strategy: str, load) -> None:
    try:
        load()
        counts[strategy]["loaded"] += 1
    except SpecError as err:
        counts[strategy]["SpecError"] += 1
        if "\n" in str(err):
            counts[strategy]["SpecError with a line break"] += 1
    except Exception as err:  # what the fuzzing is for
        counts[strategy][type(err).__name__] += 1
        if len(others) < 5:
            others.append(f"{strategy}: {type(err).__name__}: {str(err)[:200]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=10_000, help="per strategy")
    args = parser.parse_args()
    fuzz = settings(
        max_examples=args.examples, deadline=None, database=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    folder = Path(tempfile.mkdtemp())

    @fuzz
    @given(SPECS)
    def structured(body: dict) -> None:
        record("structured", lambda: load_spec_text(yaml.safe_dump(body), "fuzz"))

    @fuzz
    @given(st.sampled_from(SEEDS), EDITS)
    def mutated_bytes(seed: Path, edits: list) -> None:
        path = folder / seed.name
        path.write_bytes(mutated(seed.read_bytes(), edits))
        record("mutated bytes", lambda: load_spec(path))

    @fuzz
    @given(st.text(max_size=200))
    def any_text(text: str) -> None:
        record("any text", lambda: load_spec_text(text, "fuzz"))

    for run in (structured, mutated_bytes, any_text):
        started = time.perf_counter()
        run()
        print(f"{run.__name__}: {time.perf_counter() - started:.1f} s", file=sys.stderr)
    total = 0
    for strategy, counter in counts.items():
        total += sum(counter.values())
        print(f"{strategy:14s} " + ", ".join(f"{k} {v:,}" for k, v in counter.most_common()))
    bad = sum(v for c in counts.values() for k, v in c.items() if k not in ("loaded", "SpecError"))
    print(f"examples {total:,}; exceptions other than SpecError (or with a line break): {bad}")
    for line in others:
        print("  " + line)


if __name__ == "__main__":
    main()

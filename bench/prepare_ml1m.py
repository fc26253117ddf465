"""ML-1M from the raw GroupLens files to encoded, split sequences: wall time and peak RSS.

Each repeat is a fresh process with an empty cache, so nothing is reused between runs:

* ``pipeline``: ``featrec.sequences.prepare(spec, cache=False)`` timed inside the process:
  reading and verifying the raw files, the scikit-learn import the numeric features need,
  joins, ordering, split, encoder fitting and encoding, per-user list columns;
* ``command``: the whole ``featrec prepare SPEC --force`` process as a user runs it
  (interpreter start, imports, writing the prepared cache, printing);
* peak RSS of each process (``ru_maxrss`` of the child).

Usage: FEATREC_DATA_DIR=../shared/datasets python bench/prepare_ml1m.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = """
import json, sys, time
from featrec.spec import load_spec
from featrec.sequences import prepare
spec = load_spec(sys.argv[1])
start = time.perf_counter()
prepared, _ = prepare(spec, cache=False)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "users": prepared.stats["users"],
                  "events": prepared.stats["events"]}))
"""


def run_child(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (GiB) and stdout of one child process."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    out = process.stdout.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{' '.join(argv)} failed with status {status}")
    return wall, usage.ru_maxrss / 2**20, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "feature_specs" / "ml-1m.yaml"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not os.environ.get("FEATREC_DATA_DIR"):
        raise SystemExit("set FEATREC_DATA_DIR to the folder holding ml-1m/")
    featrec = str(Path(sys.executable).parent / "featrec")
    pipeline, pipeline_rss, command, command_rss = [], [], [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "FEATREC_CACHE": cache}
            _, rss, out = run_child([sys.executable, "-c", PIPELINE, args.spec], env)
            pipeline.append(json.loads(out)["seconds"])
            pipeline_rss.append(rss)
            wall, rss, _ = run_child([featrec, "-q", "prepare", args.spec, "--force"], env)
            command.append(wall)
            command_rss.append(rss)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"repeats: {args.repeats} (fresh process and empty cache each)")
    for label, times, rss in (
        ("pipeline (prepare(), in process)", pipeline, pipeline_rss),
        ("command (featrec prepare --force)", command, command_rss),
    ):
        print(
            f"{label}: median {statistics.median(times):.2f} s "
            f"(min {min(times):.2f}, max {max(times):.2f}); "
            f"peak RSS median {statistics.median(rss):.2f} GiB (max {max(rss):.2f})"
        )


if __name__ == "__main__":
    main()

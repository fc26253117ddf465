"""Memory of data-parallel training on one machine: 1 rank against N ranks (issue 23).

Runs ``featrec train SPEC --nproc N --stop-after 1`` (one epoch and its validation) for each
N, sampling every process of the run twice a second from ``/proc``: the largest summed PSS
(proportional set size: pages shared between processes, as the memory-mapped prepared data
is, count once in total) and the largest RSS of one rank. Reports what N ranks add to one
rank's memory; the target is less than 30%, since the ranks share the prepared data's
pages instead of each holding a copy. Memory does not depend on the machine's load, so
this runs beside other work. Linux only (``/proc/PID/smaps_rollup``).

Usage: FEATREC_DATA_DIR=../shared/datasets python bench/ddp_memory.py [--ranks 2]
    [--spec feature_specs/ml-1m.yaml] [--out bench/out/ddp-memory]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def descendants(root: int) -> list[int]:
    """``root`` and every process below it."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += parents.get(pid, [])
    return found


def memory_kib(pid: int) -> tuple[int, int, str]:
    """(PSS, RSS) in KiB and the command line of ``pid`` (zeros once it is gone)."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return 0, 0, ""
    values = {}
    for line in rollup.splitlines()[1:]:
        name, _, rest = line.partition(":")
        values[name] = int(rest.split()[0])
    return values.get("Pss", 0), values.get("Rss", 0), command


def measure(spec: Path, ranks: int, out: Path) -> dict[str, float]:
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "featrec", "-q", "train", str(spec), "--out", str(out),
               "--stop-after", "1", "--nproc", str(ranks)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    total = workers = largest = 0
    while process.poll() is None:
        sample = [memory_kib(pid) for pid in descendants(process.pid)]
        # the ranks: with --nproc 1 the process itself; else the processes torch's launcher
        # started (neither the launcher nor the command that started it)
        ranked = [
            (p, r)
            for p, r, c in sample
            if ranks == 1 or ("featrec" in c and "--nproc" not in c and "distributed.run" not in c)
        ]
        total = max(total, sum(p for p, _, _ in sample))
        workers = max(workers, sum(p for p, _ in ranked))
        largest = max(largest, max((r for _, r in ranked), default=0))
        time.sleep(0.5)
    if process.returncode not in (0, 130):  # --stop-after ends the run as an interruption
        raise SystemExit(f"featrec train --nproc {ranks} failed ({process.returncode})")
    return {"pss_all": total / 2**20, "pss_workers": workers / 2**20, "rss_rank": largest / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "feature_specs" / "ml-1m.yaml")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "ddp-memory")
    args = parser.parse_args()
    one = measure(args.spec, 1, args.out / "ranks-1")
    many = measure(args.spec, args.ranks, args.out / f"ranks-{args.ranks}")
    for name, result in (("1 rank", one), (f"{args.ranks} ranks", many)):
        print(f"{name}: summed PSS {result['pss_all']:.2f} GiB (training processes "
              f"{result['pss_workers']:.2f} GiB), largest rank RSS "
              f"{result['rss_rank']:.2f} GiB")  # fmt: skip
    added = many["pss_workers"] / one["pss_workers"] - 1
    print(f"{args.ranks} ranks add {added:+.0%} to one rank's memory (training processes' PSS; "
          f"with torch's launcher {many['pss_all'] / one['pss_all'] - 1:+.0%})")  # fmt: skip


if __name__ == "__main__":
    main()

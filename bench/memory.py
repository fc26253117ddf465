"""ML-1M training under allocator policies: peak RSS per epoch, s per epoch, kernel time.

Each setting trains the same spec (full features by default) for ``--epochs`` epochs in a
fresh child process (``featrec train``, validation every 5 epochs as in the quality runs),
reads the per-epoch ``peak_rss_gib`` and ``seconds`` from the run's ``metrics.csv``, and the
child's user and system CPU time and minor page faults from ``wait4``:

* ``arena``, ``pin``, ``glibc``: featrec's allocator policies (``FEATREC_MALLOC``, see
  ``featrec/memory.py``) with featrec's oneDNN primitive cache of 64 entries;
* ``untuned``: glibc's defaults and oneDNN's 1,024 cached primitives.

The settings run one after another (``--threads`` each, default 1), so keep the machine
otherwise idle, or at least equally busy for all of them.

Usage: FEATREC_DATA_DIR=../shared/datasets python bench/memory.py --epochs 10 \\
           --settings pin arena
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(setting: str, args: argparse.Namespace, out: Path) -> dict:
    env = dict(os.environ)
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                 "GLIBC_TUNABLES", "ONEDNN_PRIMITIVE_CACHE_CAPACITY"):  # fmt: skip
        env.pop(name, None)  # each would switch a part of featrec's tuning off
    env["FEATREC_MALLOC"] = "glibc" if setting == "untuned" else setting
    if setting == "untuned":
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = "1024"  # oneDNN's default
    env["OMP_NUM_THREADS"] = str(args.threads)
    argv = [sys.executable, "-m", "featrec.cli", "-q", "train", args.spec, "--out", str(out)]
    argv += ["--set", f"train.epochs={args.epochs}", "--set", "train.eval_every=5"]
    if args.behavior_only:
        argv.append("--behavior-only")
    started = time.perf_counter()
    child = subprocess.Popen(argv, env=env, cwd=ROOT)
    _, status, usage = os.wait4(child.pid, 0)
    if status:
        raise SystemExit(f"{setting}: featrec train failed (status {status})")
    with open(out / "metrics.csv", newline="") as f:
        rows = [
            {"epoch": int(r["epoch"]), "rss": float(r["peak_rss_gib"]), "s": float(r["seconds"])}
            for r in csv.DictReader(f)
        ]
    cpu = usage.ru_utime + usage.ru_stime
    return {
        "rows": rows,
        "wall": time.perf_counter() - started,
        "user": usage.ru_utime,
        "sys": usage.ru_stime,
        "sys_share": usage.ru_stime / cpu,
        "faults_per_s": usage.ru_minflt / cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "feature_specs" / "ml-1m.yaml"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--settings", nargs="+", default=["pin", "arena"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--behavior-only", action="store_true")
    args = parser.parse_args()
    marks = sorted({1, 2, 5, 10, 20, 40, args.epochs} & set(range(1, args.epochs + 1)))
    print(
        "setting | "
        + " | ".join(f"peak GiB ep {e}" for e in marks)
        + " | median s/epoch | wall s | user s | sys s | sys share | minor faults per CPU s"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for setting in args.settings:
            result = run(setting, args, Path(tmp) / setting)
            rows = result["rows"]
            rss = {r["epoch"]: r["rss"] for r in rows}
            seconds = statistics.median(r["s"] for r in rows[1:] or rows)
            cells = " | ".join(f"{rss[e]:.2f}" for e in marks)
            print(
                f"{setting} | {cells} | {seconds:.2f} | {result['wall']:.0f} | "
                f"{result['user']:.0f} | {result['sys']:.0f} | {result['sys_share']:.1%} | "
                f"{result['faults_per_s']:,.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()

"""ML-1M training memory under allocator settings: peak RSS per epoch, s per epoch.

Each setting trains the same spec (full features by default) for ``--epochs`` epochs in a
fresh child process (``featrec train``, validation every 5 epochs as in the quality runs)
and reads the per-epoch ``peak_rss_gib`` and ``seconds`` from the run's ``metrics.csv``:

* ``featrec``: what ``featrec train`` does: glibc's mmap threshold pinned at 1 MiB
  (``train.pin_mmap_threshold``) and oneDNN's primitive cache held to 64 entries
  (``featrec.ONEDNN_CACHE_CAPACITY``);
* ``untuned``: neither (glibc's dynamic threshold, oneDNN's 1,024 cached primitives);
* ``pin-only``: the pinned threshold with oneDNN's default cache;
* a number: that fixed threshold in bytes (``MALLOC_MMAP_THRESHOLD_``), oneDNN's default.

The settings run one after another, so keep the machine otherwise idle.

Usage: FEATREC_DATA_DIR=../shared/datasets python bench/memory.py --epochs 12 \\
           --settings untuned pin-only featrec
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# featrec's command line, with the threshold pin optionally switched off
TRAIN = """
import sys
import featrec.train
if sys.argv.pop(1) == "off":
    featrec.train.pin_mmap_threshold = lambda *args: False
from featrec.cli import main
sys.argv[0] = "featrec"
raise SystemExit(main())
"""


def run(setting: str, args: argparse.Namespace, out: Path) -> list[dict[str, float]]:
    env = dict(os.environ)
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    env.pop("GLIBC_TUNABLES", None)  # would switch featrec's pin off
    env.pop("ONEDNN_PRIMITIVE_CACHE_CAPACITY", None)
    if setting != "featrec":
        env["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = "1024"  # oneDNN's default
    if setting.isdigit():
        env["MALLOC_MMAP_THRESHOLD_"] = setting
    pin = "off" if setting == "untuned" else "on"
    argv = [sys.executable, "-c", TRAIN, pin, "-q", "train", args.spec, "--out", str(out)]
    argv += ["--set", f"train.epochs={args.epochs}", "--set", "train.eval_every=5"]
    if args.behavior_only:
        argv.append("--behavior-only")
    subprocess.run(argv, env=env, cwd=ROOT, check=True)
    with open(out / "metrics.csv", newline="") as f:
        return [
            {"epoch": int(r["epoch"]), "rss": float(r["peak_rss_gib"]), "s": float(r["seconds"])}
            for r in csv.DictReader(f)
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "feature_specs" / "ml-1m.yaml"))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--settings", nargs="+", default=["untuned", "pin-only", "featrec"])
    parser.add_argument("--behavior-only", action="store_true")
    args = parser.parse_args()
    marks = sorted({1, 2, 5, 6, 10, 11, args.epochs} & set(range(1, args.epochs + 1)))
    print("setting | " + " | ".join(f"peak GiB ep {e}" for e in marks) + " | median s/epoch")
    with tempfile.TemporaryDirectory() as tmp:
        for setting in args.settings:
            rows = run(setting, args, Path(tmp) / setting)
            rss = {r["epoch"]: r["rss"] for r in rows}
            seconds = statistics.median(r["s"] for r in rows[1:] or rows)
            cells = " | ".join(f"{rss[e]:.2f}" for e in marks)
            print(f"{setting} | {cells} | {seconds:.1f}", flush=True)


if __name__ == "__main__":
    main()

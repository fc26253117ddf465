"""Where a training process's memory goes, epoch by epoch: resident set and glibc heap.

Each setting trains the spec behavior-only (ML-100K by default, no validation until the
last epoch) in a fresh child process, one thread, and after every epoch (after featrec's
``malloc_trim``) records the resident set, the heap bytes in use and the heap's size
(glibc ``mallinfo2``: ``uordblks``, ``arena``). Growth of "in use" is memory something holds
on to; growth of the arena with flat "in use" is fragmentation.

* ``featrec``: as ``featrec train`` runs (oneDNN primitive cache held to 64 entries);
* ``onednn1024``: oneDNN's default cache (1,024 primitives, one per input shape);
* ``onednn0``: no oneDNN primitive cache;
* ``no-mkldnn``: ``torch.backends.mkldnn.enabled = False`` (GELU then runs in ATen).

Usage: FEATREC_DATA_DIR=../shared/datasets python bench/heap_probe.py --epochs 41 \\
           --settings featrec onednn1024 onednn0 no-mkldnn
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    "featrec": {},
    "onednn1024": {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"},
    "onednn0": {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0"},
    "no-mkldnn": {},
}
CHILD = """
import sys, tempfile
from pathlib import Path
import torch
import featrec.memory
import featrec.train
from featrec.spec import load_spec

spec_path, epochs, setting = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if setting == "no-mkldnn":
    torch.backends.mkldnn.enabled = False
page = 4096

def record(epoch, row):
    heap = featrec.memory.heap_stats()
    resident = int(open("/proc/self/statm").read().split()[1]) * page
    print(epoch, resident >> 20, heap["uordblks"] >> 20, heap["arena"] >> 20, row["seconds"],
          flush=True)

overrides = [f"train.epochs={epochs}", "train.eval_every=100000", "train.min_epochs=100000"]
spec = load_spec(spec_path, overrides).behavior_only()
with tempfile.TemporaryDirectory() as tmp:
    featrec.train.train(spec, Path(tmp) / "run", on_epoch_end=record)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "feature_specs" / "ml-100k.yaml"))
    parser.add_argument("--epochs", type=int, default=41)
    parser.add_argument("--settings", nargs="+", default=list(ENV), choices=list(ENV))
    args = parser.parse_args()
    if args.epochs < 3:
        parser.error("--epochs: at least 3 (the last epoch also evaluates and is not shown)")
    last = args.epochs - 1  # the last epoch also evaluates on the test split
    marks = sorted({1, 2, 5, 10, 20, 30, 40, last} & set(range(1, last + 1)))
    print(f"MB after each epoch's trim: resident / heap in use / heap size, epochs {marks}")
    for setting in args.settings:
        env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
        env.update(OMP_NUM_THREADS="1", **ENV[setting])
        out = subprocess.run(
            [sys.executable, "-c", CHILD, args.spec, str(args.epochs), setting],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rows = {int(r[0]): r[1:] for r in (line.split() for line in out.splitlines()) if r}
        cells = " | ".join("{} / {} / {}".format(*rows[e][:3]) for e in marks)
        seconds = sorted(float(rows[e][3]) for e in range(2, last + 1))
        print(f"{setting} | {cells} | median {seconds[len(seconds) // 2]:.2f} s/epoch", flush=True)


if __name__ == "__main__":
    main()

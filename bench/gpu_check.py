"""The same ML-1M training on CUDA and on the CPU: do they learn the same, and how fast?

Trains the spec for ``--epochs`` epochs on each device from the same seed (same initial
weights, same batches, same masks: all drawn on the CPU) and compares, epoch by epoch, the
training loss (relative tolerance ``--loss-rtol``) and the validation metrics (absolute
tolerance ``--metric-atol``), then reports the seconds per epoch and tokens/s of each.

Dropout is switched off (``model.dropout=0``) for the comparison: its masks are drawn by
each device's own generator, so with dropout the two runs would differ by design. What is
left is floating-point order (cuBLAS vs oneDNN sums, fused attention kernels), which
compounds over the steps: the tolerances are for a few epochs, not for a whole run.

Exit status 1 when a comparison is outside its tolerance. Writes ``gpu_check.json``.

Usage (on a machine with CUDA):
    FEATREC_DATA_DIR=../shared/datasets python bench/gpu_check.py --epochs 3 --out bench/out/gpu
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import statistics
import sys
from pathlib import Path

import torch

from featrec.spec import load_spec
from featrec.train import train

ROOT = Path(__file__).resolve().parents[1]


def run(spec_path: Path, device: str, args: argparse.Namespace, out: Path) -> list[dict]:
    overrides = [
        f"train.device={device}",
        f"train.epochs={args.epochs}",
        f"train.min_epochs={args.epochs}",
        "train.eval_every=1",
        "model.dropout=0",
        *args.set,
    ]
    spec = load_spec(spec_path, overrides)
    shutil.rmtree(out, ignore_errors=True)
    final = train(spec, out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows[-1]["final_test"] = final["test"]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=ROOT / "feature_specs" / "ml-1m.yaml")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--loss-rtol", type=float, default=2e-3)
    parser.add_argument("--metric-atol", type=float, default=0.005)
    parser.add_argument("--set", action="append", default=[], help="more spec overrides")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "gpu_check")
    parser.add_argument(
        "--devices", nargs=2, default=["cuda", "cpu"], help="the two devices (a dry run: cpu cpu)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if "cuda" in args.devices and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device; nothing to compare", file=sys.stderr)
        return 2
    first, second = args.devices
    gpu_runs = run(args.spec, first, args, args.out / f"{first}-a")
    cpu_runs = run(args.spec, second, args, args.out / f"{second}-b")
    report: dict = {
        "spec": str(args.spec),
        "overrides": args.set,
        "devices": args.devices,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "epochs": [],
    }
    ok = True
    print("epoch  loss cuda  loss cpu   rel diff  valid ndcg@10 cuda/cpu  s/epoch cuda/cpu")
    for gpu, cpu in zip(gpu_runs, cpu_runs, strict=True):
        rel = abs(gpu["loss"] - cpu["loss"]) / abs(cpu["loss"])
        metrics = [k for k in cpu if k.startswith("valid/")]
        worst = max(abs(gpu[k] - cpu[k]) for k in metrics)
        ok &= rel <= args.loss_rtol and worst <= args.metric_atol
        report["epochs"].append(
            {
                "epoch": cpu["epoch"],
                "loss": {"cuda": gpu["loss"], "cpu": cpu["loss"], "rel_diff": rel},
                "valid_max_abs_diff": worst,
                "valid_ndcg@10": {"cuda": gpu["valid/ndcg@10"], "cpu": cpu["valid/ndcg@10"]},
                "seconds": {"cuda": gpu["seconds"], "cpu": cpu["seconds"]},
                "tokens_per_s": {"cuda": gpu["tokens_per_s"], "cpu": cpu["tokens_per_s"]},
            }
        )
        print(
            f"{cpu['epoch']:5d}  {gpu['loss']:9.5f}  {cpu['loss']:8.5f}  {rel:8.2e}  "
            f"{gpu['valid/ndcg@10']:.4f}/{cpu['valid/ndcg@10']:.4f} (max diff {worst:.4f})  "
            f"{gpu['seconds']:.1f}/{cpu['seconds']:.1f}"
        )
    # the first epoch pays CUDA's start-up (context, kernel selection): the median of the rest
    later = report["epochs"][1:] or report["epochs"]
    for device in ("cuda", "cpu"):
        report[f"median_s_per_epoch_{device}"] = statistics.median(
            e["seconds"][device] for e in later
        )
    report["speedup"] = report["median_s_per_epoch_cpu"] / report["median_s_per_epoch_cuda"]
    report["within_tolerance"] = ok
    report["tolerance"] = {"loss_rtol": args.loss_rtol, "metric_atol": args.metric_atol}
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(
        f"median s/epoch (epochs 2+): cuda {report['median_s_per_epoch_cuda']:.2f}, "
        f"cpu ({report['cpu_threads']} threads) {report['median_s_per_epoch_cpu']:.2f}, "
        f"{report['speedup']:.1f}x; within tolerance: {ok}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""The bf16 training step with and without cuDNN's attention backend, against fp32.

On an H200, bf16 autocast made featrec's step 4-8x slower than fp32 (bench/throughput.py);
this probe found the cause: torch's preference for cuDNN's attention on Hopper. It times the
ML-1M behavior-only step (8 batches of 64 a pass, medians of 3 passes after one warm-up) in
four modes, each on new batch shapes (a reshuffle per pass) and on the same shapes again.
"bf16" is torch's default choice of backends; "bf16 no-cudnn-sdp" is what featrec's training
step does since (featrec.model.protocol.half_precision_attention).

Usage (on a machine with CUDA): FEATREC_DATA_DIR=../shared/datasets python
bench/sdpa_backends.py [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import featrec_pass, training_loss

from featrec.batching import length_aware_batches
from featrec.optim import build_optimizer
from featrec.sequences import prepare
from featrec.spec import load_spec
from featrec.train import Experiment

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    spec = load_spec(ROOT / "feature_specs" / "ml-1m.yaml", [f"train.device={device.type}"])
    spec = spec.behavior_only()
    prepared, _ = prepare(spec)
    experiment = Experiment.from_spec(spec, prepared)
    optimizer = build_optimizer(experiment.model, spec, experiment.model.num_items)
    data = experiment.data
    trainable = torch.nonzero(data.train_len > 0).squeeze(1)
    order = torch.randperm(len(trainable), generator=torch.Generator().manual_seed(0))
    pool = trainable[order][:512]
    window = data.train_len.clamp(max=spec.model.max_len)

    def bf16_loss(model, batch, labels):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return training_loss(model, batch, labels)

    modes = [
        ("fp32", training_loss, True),
        ("bf16", bf16_loss, True),
        ("bf16 no-cudnn-sdp", bf16_loss, False),
        ("fp32 no-cudnn-sdp", training_loss, False),
    ]
    new = {name: [] for name, _, _ in modes}
    same = {name: [] for name, _, _ in modes}
    for repeat in range(4):  # the first pass warms up and is dropped
        generator = torch.Generator().manual_seed(repeat)
        shuffled = length_aware_batches(pool, window, 64, generator)
        fixed = length_aware_batches(pool, window, 64, torch.Generator().manual_seed(0))
        for name, loss_fn, cudnn in modes:
            if device.type == "cuda":
                torch.backends.cuda.enable_cudnn_sdp(cudnn)
            a = featrec_pass(experiment, optimizer, shuffled, generator, device, loss_fn)
            b = featrec_pass(experiment, optimizer, fixed, generator, device, loss_fn)
            if repeat:
                new[name].append(a["seconds"])
                same[name].append(b["seconds"])
    for name in new:
        print(
            f"{name:20s} new shapes {statistics.median(new[name]):.3f} s/pass; "
            f"repeated shapes {statistics.median(same[name]):.3f} s/pass"
        )


if __name__ == "__main__":
    main()

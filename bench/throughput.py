"""Training throughput on the ML-1M configuration, measured side by side in one process.

For the same pool of users (one pass over the pool = one "epoch slice"), interleaved over
``--repeats`` rounds:

* featrec behavior-only and full-feature training steps (length-aware batches, masking
  and collation vectorized, output projection at masked positions only);
* the plain reference of ``bench/reference_bert4rec.py`` (padding to max_len, per-example
  masking, projection at every position), on random batches of the same users;
* this machine's fp32 matmul peak (a large ``torch.matmul``), for model-FLOP utilization.

Reports useful (non-padding) tokens/s, step-time ratios, and MFU: the FLOPs of the base
model (transformer layers + output head at masked positions, forward + backward = 3x
forward) for the useful tokens, over wall time, over the matmul peak.

Usage: FEATREC_DATA_DIR=../shared/datasets python bench/throughput.py [--repeats 5]
       [--batches 8] [--device cpu|cuda] [--compile] [--bf16] [--per-token-fusion]
       [--spec SPEC] (a spec with trend features also times the step without them)
       [--losses sampled_softmax gbce] [--negatives 256]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_bert4rec import PlainBERT4Rec, plain_batch, plain_step

from featrec.batching import length_aware_batches, training_batch
from featrec.encoders import PAD
from featrec.model.protocol import half_precision_attention
from featrec.optim import build_optimizer
from featrec.sequences import prepare
from featrec.spec import load_spec
from featrec.train import Experiment

ROOT = Path(__file__).resolve().parents[1]


def training_loss(model, batch, labels):
    """featrec's training step loss (the model protocol's)."""
    return model.loss(batch, labels)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(
    device: torch.device, size: int = 2048, repeats: int = 10, dtype=torch.float32
) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)


def model_flops(
    tokens: int, masked: int, mean_len: float, dim: int, layers: int, items: int
) -> float:
    """Training FLOPs (3x forward) of the base BERT4Rec for the given useful tokens."""
    per_token = layers * (2 * 12 * dim * dim + 4 * mean_len * dim)
    head = masked * (2 * dim * dim + 2 * dim * items)
    return 3.0 * (tokens * per_token + head)


def featrec_pass(
    experiment: Experiment, optimizer, batches, generator, device, loss_fn=training_loss
) -> dict:
    spec, model, data = experiment.spec, experiment.model, experiment.data
    model.train()
    tokens = masked = 0
    lengths = []
    sync(device)
    start = time.perf_counter()
    for users in batches:
        batch, labels = training_batch(
            data,
            users,
            spec.model.max_len,
            spec.train.mask_prob,
            spec.train.last_item_share,
            generator,
            spec.train.crop_prob,
        )
        batch = batch.to(device)
        labels = labels.to(device)
        loss = loss_fn(model, batch, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        useful = batch.item != PAD
        tokens += int(useful.sum())
        masked += int((labels != -100).sum())
        lengths += useful.sum(1).tolist()
    sync(device)
    return {
        "seconds": time.perf_counter() - start,
        "tokens": tokens,
        "masked": masked,
        "mean_len": statistics.mean(lengths),
        "steps": len(batches),
    }


def plain_pass(model, optimizer, sequences, batch_size, max_len, mask_prob, rng, device) -> dict:
    model.train()
    order = list(range(len(sequences)))
    rng.shuffle(order)
    tokens = 0
    sync(device)
    start = time.perf_counter()
    for i in range(0, len(order), batch_size):
        chunk = [sequences[j] for j in order[i : i + batch_size]]
        inputs, labels = plain_batch(chunk, max_len, mask_prob, rng)
        plain_step(model, optimizer, inputs.to(device), labels.to(device))
        tokens += int((inputs != PAD).sum())
    sync(device)
    steps = (len(order) + batch_size - 1) // batch_size
    return {"seconds": time.perf_counter() - start, "tokens": tokens, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "feature_specs" / "ml-1m.yaml"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=8, help="batches per pass")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--batch-size",
        type=int,
        help="sequences per batch (default: the spec's; the recorded results used 128)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time featrec's step under torch.compile (dynamic shapes; warm-up round "
        "includes compilation and is dropped)",
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="also time featrec's step under bf16 autocast (fp32 weights and optimizer)",
    )
    parser.add_argument(
        "--per-token-fusion",
        action="store_true",
        help="also time the full model with its item-level sources embedded and fused per "
        "token (the serving path), beside the per-item path that training uses",
    )
    parser.add_argument(
        "--fusions",
        nargs="+",
        default=[],
        metavar="METHOD",
        help="also time the full model under these fusion.method values (e.g. nova difsr)",
    )
    parser.add_argument(
        "--losses",
        nargs="+",
        default=[],
        metavar="LOSS",
        help="also time the full model under these train.loss values (sampled_softmax, gbce; "
        "negatives drawn by the spec's train.sampler)",
    )
    parser.add_argument("--negatives", type=int, default=256, help="for --losses")
    args = parser.parse_args()
    device = torch.device(args.device)
    overrides = [f"train.device={args.device}"]
    if args.batch_size is not None:
        overrides.append(f"train.batch_size={args.batch_size}")
    spec = load_spec(args.spec, overrides)
    prepared, _ = prepare(spec)
    variants = {"featrec full": spec, "featrec behavior-only": spec.behavior_only()}
    if spec.trend_features:  # what the trend features cost a step: the same without them
        variants["featrec full without trends"] = spec.model_copy(
            update={"features": spec.input_features}
        )
    for method in args.fusions:  # the same data and features, entering elsewhere
        fusion = spec.fusion.model_copy(update={"method": method})
        variants[f"featrec full {method}"] = spec.model_copy(update={"fusion": fusion})
    for loss in args.losses:  # the same model trained with another train.loss
        train = spec.train.model_copy(update={"loss": loss, "negatives": args.negatives})
        variants[f"featrec full {loss}"] = spec.model_copy(update={"train": train})

    def bf16_loss(model, batch, labels):  # as featrec's training step runs it
        with (
            torch.autocast(device.type, dtype=torch.bfloat16),
            half_precision_attention(device, True),
        ):
            return training_loss(model, batch, labels)

    # each way of running the step: a suffix of the trainer's name and its loss function
    modes = {"": training_loss}
    if args.compile:
        modes[" compiled"] = torch.compile(training_loss, dynamic=True)
    if args.bf16:
        modes[" bf16"] = bf16_loss
    experiments, losses = {}, {}
    for suffix, loss_fn in modes.items():
        for name, variant in variants.items():
            experiments[name + suffix] = Experiment.from_spec(variant, prepared)
            experiments[name + suffix].model.to(device)
            losses[name + suffix] = loss_fn
    if args.per_token_fusion:
        name = "featrec full per-token fusion"
        experiments[name] = Experiment.from_spec(spec, prepared)
        experiments[name].model.to(device).fuse_per_item = False
        losses[name] = training_loss
    optimizers = {
        name: build_optimizer(e.model, e.spec, e.model.num_items) for name, e in experiments.items()
    }
    cfg, model_cfg = spec.train, spec.model
    data = experiments["featrec full"].data
    trainable = torch.nonzero(data.train_len > 0).squeeze(1)
    pool = trainable[torch.randperm(len(trainable), generator=torch.Generator().manual_seed(0))]
    pool = pool[: cfg.batch_size * args.batches]
    window = data.train_len.clamp(max=model_cfg.max_len)
    sequences = []
    for user in pool.tolist():
        end = int(data.offsets[user] + data.train_len[user])
        sequences.append(data.item[int(data.offsets[user]) : end].tolist())
    num_items = experiments["featrec full"].model.num_items
    plain = PlainBERT4Rec(
        num_items,
        model_cfg.dim,
        model_cfg.layers,
        model_cfg.heads,
        model_cfg.max_len,
        model_cfg.dropout,
    ).to(device)
    plain_optimizer = torch.optim.AdamW(plain.parameters(), lr=cfg.lr)
    rng = random.Random(0)
    peak = matmul_peak(device)
    results: dict[str, list[dict]] = {name: [] for name in [*experiments, "plain reference"]}
    for repeat in range(args.repeats + 1):  # the first round warms up and is dropped
        generator = torch.Generator().manual_seed(repeat)
        batches = length_aware_batches(pool, window, cfg.batch_size, generator)
        for name, experiment in experiments.items():
            run = featrec_pass(
                experiment, optimizers[name], batches, generator, device, losses[name]
            )
            if repeat:
                results[name].append(run)
        run = plain_pass(
            plain,
            plain_optimizer,
            sequences,
            cfg.batch_size,
            model_cfg.max_len,
            cfg.mask_prob,
            rng,
            device,
        )
        if repeat:
            results["plain reference"].append(run)
    print(f"device: {device}; torch {torch.__version__}; threads {torch.get_num_threads()}")
    print(f"fp32 matmul peak (2048², median of 10): {peak / 1e9:.1f} GFLOP/s")
    bf16_peak = peak
    if args.bf16:
        bf16_peak = matmul_peak(device, dtype=torch.bfloat16)
        print(f"bf16 matmul peak (2048², median of 10): {bf16_peak / 1e9:.1f} GFLOP/s")
    print(
        f"pool: {len(pool)} ML-1M users, {args.batches} batches of {cfg.batch_size}, "
        f"max_len {model_cfg.max_len}; {args.repeats} interleaved repeats (+1 warm-up)"
    )
    medians = {}
    for name, runs in results.items():
        seconds = statistics.median(r["seconds"] for r in runs)
        tokens = runs[0]["tokens"]
        medians[name] = seconds
        line = f"{name:31s} {seconds:7.2f} s/pass  {tokens / seconds:9.0f} useful tokens/s"
        if "masked" in runs[0]:
            flops = model_flops(
                tokens,
                runs[0]["masked"],
                runs[0]["mean_len"],
                model_cfg.dim,
                model_cfg.layers,
                num_items,
            )
            ceiling = bf16_peak if name.endswith(" bf16") else peak  # against its own peak
            line += f"  MFU {flops / seconds / ceiling:6.1%}"
        print(line)
    reference = medians["plain reference"]
    full, behavior = medians["featrec full"], medians["featrec behavior-only"]
    print(f"featrec behavior-only vs plain reference: {reference / behavior:.2f}x tokens/s")
    print(f"featrec full-feature vs plain reference:  {reference / full:.2f}x tokens/s")
    print(f"full-feature step / behavior-only step:   {full / behavior:.2f}")
    if "featrec full per-token fusion" in medians:
        per_token = medians["featrec full per-token fusion"]
        print(f"  the same, item-level sources per token:  {per_token / behavior:.2f}")
    for name in ("featrec full", "featrec behavior-only"):
        if f"{name} compiled" in medians:
            gain = medians[name] / medians[f"{name} compiled"]
            print(f"{name}: torch.compile speed-up {gain:.2f}x")
        if f"{name} bf16" in medians:
            print(f"{name}: bf16 autocast speed-up {medians[name] / medians[f'{name} bf16']:.2f}x")


if __name__ == "__main__":
    main()

"""Large catalogs: a synthetic data set of a million items against ML-1M, side by side.

Each part runs in its own process (so its peak RSS is its own), in this order:

* ``prepare``: `featrec prepare` of the synthetic spec from scratch: seconds, peak RSS.
* ``train``: useful (non-padding) tokens/s of training steps, interleaved rounds of
  ``--steps`` steps each: the synthetic spec (sampled softmax) with row-wise AdamW, the same
  with dense AdamW, and ML-1M with the synthetic spec's model and training sections (its own
  features), in one process; medians and ratios, and which of the two ``auto`` picks on
  ``--device`` (row-wise on the CPU, dense on CUDA).
* ``evaluate``: full ranking of ``--eval-users`` users against every item (chunked), with an
  untrained model of the synthetic spec: seconds, peak RSS.

* ``recommend``: single ``recommend`` requests (50-event histories, a request time) against
  a run trained on a synthetic spec (``--run``): p50 / p99.

With ``--device cuda`` the train and evaluate parts run there, and train also reports
model-FLOP utilization (MFU) against the device's fp32 matmul peak.

Usage: FEATREC_DATA_DIR=../shared/datasets python bench/scale.py --synth bench/out/synth-1m
       [--steps 20] [--rounds 3] [--eval-users 10000] [--parts prepare train evaluate]
       [--device cpu|cuda]
       [--parts recommend --run RUN_DIR --requests 200]

Make the data first: featrec synth bench/out/synth-1m --users 1000000 --items 1000000
--events 20000000.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # throughput's timing helpers


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def part_prepare(args: argparse.Namespace) -> dict:
    from featrec.sequences import prepare
    from featrec.spec import load_spec

    spec = load_spec(args.synth / "spec.yaml")
    start = time.perf_counter()
    prepared, _ = prepare(spec, refresh=True)
    return {
        "seconds": time.perf_counter() - start,
        "users": len(prepared.sequences),
        "peak_rss_gib": peak_rss_gib(),
    }


def _steps(experiment, optimizer, users, generator) -> tuple[int, int, float, float]:
    """Useful tokens, masked positions, mean length and seconds of training steps on the
    batches ``users``."""
    from throughput import sync

    from featrec.batching import training_batch
    from featrec.ids import PAD
    from featrec.optim import clip_gradients

    spec, model, data, device = (
        experiment.spec, experiment.model, experiment.data, experiment.device,
    )  # fmt: skip
    model.train()
    tokens = masked = 0
    lengths = []
    sync(device)
    start = time.perf_counter()
    for batch_users in users:
        batch, labels = training_batch(
            data, batch_users, spec.model.max_len, spec.train.mask_prob,
            spec.train.last_item_share, generator, spec.train.crop_prob,
        )  # fmt: skip
        loss = model.loss(batch.to(device), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(model.parameters(), spec.train.grad_clip)
        optimizer.step()
        tokens += int((batch.item != PAD).sum())
        masked += int((labels != PAD).sum())
        lengths.append(batch.item.shape[1])
    sync(device)
    return tokens, masked, statistics.mean(lengths), time.perf_counter() - start


def part_train(args: argparse.Namespace) -> dict:
    import torch
    from throughput import matmul_peak, model_flops

    from featrec.batching import length_aware_batches
    from featrec.optim import build_optimizer, row_updates
    from featrec.spec import load_spec
    from featrec.train import Experiment

    synth = load_spec(args.synth / "spec.yaml")
    ml1m = load_spec(ROOT / "feature_specs" / "ml-1m.yaml")
    ml1m = ml1m.model_copy(update={"model": synth.model, "train": synth.train})
    dense_train = synth.train.model_copy(update={"optimizer": "adamw"})
    row_train = synth.train.model_copy(update={"optimizer": "row_adamw"})
    specs = {
        "synthetic, train.optimizer row_adamw": synth.model_copy(update={"train": row_train}),
        "synthetic, train.optimizer adamw": synth.model_copy(update={"train": dense_train}),
        "ML-1M, same model and loss": ml1m,
    }
    device = torch.device(args.device)
    runs = {}
    for name, spec in specs.items():
        experiment = Experiment.from_spec(spec, device=device)
        optimizer = build_optimizer(experiment.model, spec, experiment.model.num_items)
        data = experiment.data
        trainable = torch.nonzero(data.train_len > 0).squeeze(1)
        generator = torch.Generator().manual_seed(0)
        batches = length_aware_batches(
            trainable, data.train_len.clamp(max=spec.model.max_len), spec.train.batch_size,
            generator,
        )  # fmt: skip
        runs[name] = (experiment, optimizer, batches, generator)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    mfu: dict[str, list[float]] = {name: [] for name in runs}
    peak = matmul_peak(device)
    for round_ in range(args.rounds + 1):  # round 0 warms up and is dropped
        for name, (experiment, optimizer, batches, generator) in runs.items():
            steps = range(round_ * args.steps, (round_ + 1) * args.steps)
            chosen = [batches[i % len(batches)] for i in steps]  # ML-1M: 24 steps an epoch
            tokens, masked, mean_len, seconds = _steps(experiment, optimizer, chosen, generator)
            if round_:
                rates[name].append(tokens / seconds)
                model_cfg, train_cfg = experiment.spec.model, experiment.spec.train
                # the output head scores the shared negatives (and the target), not the catalog
                scored = experiment.model.num_items
                if train_cfg.loss != "ce":
                    scored = train_cfg.negatives + 1
                flops = model_flops(
                    tokens, masked, mean_len, model_cfg.dim, model_cfg.layers, scored
                )
                mfu[name].append(flops / seconds / peak)
    medians = {name: statistics.median(r) for name, r in rates.items()}
    base = medians["ML-1M, same model and loss"]
    auto = runs["synthetic, train.optimizer row_adamw"][0]  # auto decides by the catalog
    return {
        "auto_chose": "row_adamw" if row_updates(synth, auto.model.num_items, device) else "adamw",
        "tokens_per_s": medians,
        "ratio_to_ml1m": {name: m / base for name, m in medians.items()},
        "mfu": {name: statistics.median(m) for name, m in mfu.items()},
        "fp32_matmul_peak_gflops": peak / 1e9,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "peak_rss_gib": peak_rss_gib(),
    }


def part_evaluate(args: argparse.Namespace) -> dict:
    import torch

    from featrec.spec import load_spec
    from featrec.train import Experiment

    spec = load_spec(args.synth / "spec.yaml", [f"eval.max_users={args.eval_users}"])
    experiment = Experiment.from_spec(spec, device=torch.device(args.device))
    start = time.perf_counter()
    metrics, ranks = experiment.evaluate("test")
    return {
        "users": len(ranks),
        "items": experiment.model.num_items,
        "seconds": time.perf_counter() - start,
        "ndcg@10_untrained": metrics["ndcg@10"],
        "device": args.device,
        "threads": torch.get_num_threads(),
        "peak_rss_gib": peak_rss_gib(),
    }


def part_recommend(args: argparse.Namespace) -> dict:
    """Single ``recommend`` requests against a run trained on synthetic data (``--run``;
    latency does not depend on the weights): p50 / p99 over ``--requests`` requests."""
    import numpy as np
    import polars as pl
    import torch

    import featrec

    if args.run is None:
        raise SystemExit("the recommend part needs --run RUN_DIR (a run on the synthetic spec)")
    recommender = featrec.load(args.run, device="cpu")
    events = pl.read_parquet(args.synth / "interactions.parquet")
    users = events.group_by("user_id").len().filter(pl.col("len") >= 20)["user_id"].to_list()
    rng = np.random.default_rng(0)
    by_user = events.filter(pl.col("user_id").is_in(rng.choice(users, size=args.requests)))
    histories = by_user.sort("user_id", "timestamp").partition_by("user_id")
    latencies = []
    for history in histories:
        history = history.tail(50)
        context = {"timestamp": int(history["timestamp"][-1]) + 3600}
        start = time.perf_counter()
        recommender.recommend(history.drop("user_id"), context=context, k=10)
        latencies.append((time.perf_counter() - start) * 1000)
    latencies = latencies[10:]  # warm-up
    p50, p99 = np.percentile(latencies, [50, 99])
    return {
        "catalog": recommender.model.num_items,
        "requests": len(latencies),
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "threads": torch.get_num_threads(),
    }


PARTS = {
    "prepare": part_prepare,
    "train": part_train,
    "evaluate": part_evaluate,
    "recommend": part_recommend,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synth", type=Path, required=True, help="folder of featrec synth")
    parser.add_argument("--steps", type=int, default=20, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--eval-users", type=int, default=10_000)
    parser.add_argument("--run", type=Path, help="recommend part: a run on the synthetic spec")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument(
        "--parts", nargs="+", choices=list(PARTS), default=["prepare", "train", "evaluate"]
    )
    parser.add_argument("--device", default="cpu", help="train and evaluate parts: cpu|cuda")
    parser.add_argument("--one", choices=list(PARTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # a child: one part, its result as JSON on the last line
        print(json.dumps(PARTS[args.one](args)))
        return
    for part in args.parts:
        command = [sys.executable, __file__, "--synth", str(args.synth), "--one", part,
                   "--steps", str(args.steps), "--rounds", str(args.rounds),
                   "--eval-users", str(args.eval_users), "--requests", str(args.requests),
                   "--device", args.device,
                   *(["--run", str(args.run)] if args.run else [])]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"part {part} failed")
        print(f"## {part}\n{json.dumps(json.loads(done.stdout.splitlines()[-1]), indent=2)}")


if __name__ == "__main__":
    main()

"""What trend features cost a training step, and what grouping the target slots by day saves:
ML-1M with ``feature_specs/ml-1m-temporal.yaml``'s four trend features, side by side in one
process (issue 22).

For each task (``--objectives``: BERT4Rec's Cloze, SASRec's next item) and the same batches,
interleaved over ``--repeats`` rounds (the first dropped as warm-up), three steps:

* ``grouped``: featrec's step (the target slots grouped by request day, one shared bucket
  index per day: :func:`featrec.trends.grouped_terms`);
* ``row by row``: the same model with the trend terms gathered per row, as before grouping
  (each feature's (N, C) bucket ids expanded and gathered: the reference for the saving);
* ``without trends``: the same spec without its trend features.

Usage: FEATREC_DATA_DIR=../shared/datasets python bench/trend_step.py [--batches 4]
       [--repeats 3] [--objectives cloze next_item]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import featrec.model.bert4rec as bert4rec
from featrec.batching import length_aware_batches
from featrec.optim import build_optimizer
from featrec.sequences import prepare
from featrec.spec import load_spec
from featrec.train import Experiment

ROOT = Path(__file__).resolve().parents[1]
GROUPED = bert4rec.grouped_terms


def row_by_row(per_bucket, buckets, inverse):
    """The trend terms as the step computed them before grouping: per feature, the (N, C)
    bucket ids of every row, then a gather (and its scatter backward)."""
    return sum(
        products.gather(1, days.index_select(0, inverse).to(torch.int64))
        for products, days in zip(per_bucket, buckets, strict=True)
    )


def timed_pass(experiment: Experiment, optimizer, batches, seed: int) -> float:
    spec, model, data = experiment.spec, experiment.model, experiment.data
    generator = torch.Generator().manual_seed(seed)  # the same masks for every step kind
    model.train()
    start = time.perf_counter()
    for users in batches:
        batch, labels = model.training_batch(data, users, spec, generator)
        loss = model.loss(batch, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "feature_specs" / "ml-1m-temporal.yaml"))
    parser.add_argument("--batches", type=int, default=4, help="batches per pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--objectives", nargs="+", default=["cloze", "next_item"])
    args = parser.parse_args()
    print(f"torch {torch.__version__}; threads {torch.get_num_threads()}; spec {args.spec}")
    for objective in args.objectives:
        spec = load_spec(args.spec, ["train.device=cpu", f"train.objective={objective}"])
        if not spec.trend_features:
            raise SystemExit(f"{args.spec}: no trend features to time")
        prepared, _ = prepare(spec)
        plain = spec.model_copy(update={"features": spec.input_features})
        kinds = {"grouped": spec, "row by row": spec, "without trends": plain}
        experiments = {k: Experiment.from_spec(s, prepared) for k, s in kinds.items()}
        optimizers = {
            k: build_optimizer(e.model, e.spec, e.model.num_items) for k, e in experiments.items()
        }
        data = experiments["grouped"].data
        trainable = torch.nonzero(data.train_len > 0).squeeze(1)
        order = torch.randperm(len(trainable), generator=torch.Generator().manual_seed(0))
        pool = trainable[order][: spec.train.batch_size * args.batches]
        window = data.train_len.clamp(max=spec.model.max_len)
        batches = length_aware_batches(
            pool, window, spec.train.batch_size, torch.Generator().manual_seed(0)
        )
        seconds: dict[str, list[float]] = {k: [] for k in kinds}
        for repeat in range(args.repeats + 1):
            for kind, experiment in experiments.items():
                bert4rec.grouped_terms = row_by_row if kind == "row by row" else GROUPED
                try:
                    took = timed_pass(experiment, optimizers[kind], batches, repeat)
                finally:
                    bert4rec.grouped_terms = GROUPED
                if repeat:  # the first round warms up
                    seconds[kind].append(took)
        medians = {k: statistics.median(v) for k, v in seconds.items()}
        base = medians["without trends"]
        print(f"{objective}: {args.batches} batches of {spec.train.batch_size} users")
        for kind, value in medians.items():
            print(f"  {kind:15s} {value:7.2f} s/pass  {value / base:5.2f}x without trends")
        print(f"  grouping saves {medians['row by row'] / medians['grouped']:.2f}x")


if __name__ == "__main__":
    main()

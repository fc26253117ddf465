"""Training: Cloze (masked-item) objective, early stopping on the validation metric
``eval.primary``, checkpoints, resume, per-epoch metrics, a learning curve and final test
metrics in the run directory.

Run directory (docs/design.md §6)::

    spec.yaml            the resolved spec (behavior-only already applied)
    encoders.json        fitted encoders and item vocabulary
    item_popularity.json training-event count per item (the empty-history fallback)
    checkpoints/best.pt  weights of the best validation epoch (load with weights_only=True)
    checkpoints/last.pt  weights, optimizer, scheduler and RNG states of the last epoch
    metrics.csv, metrics.jsonl   one row per epoch
    learning_curve.png
    final_metrics.json   test (and validation) metrics of the best epoch, most-popular baseline
    ranks.parquet        each evaluated user's validation and test rank
    data/*.parquet       the tables featrec.fit was given as DataFrames (spec.yaml points
                         here, relative to the run: a moved or copied run reads its own)
    tensorboard/, mlflow_run_id  with --log tensorboard / mlflow (featrec.tracking)
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import torch
import yaml

from featrec import distributed
from featrec.atomic import write_file, write_text
from featrec.batching import (
    SequenceData,
    item_tables,
    length_aware_batches,
    request_batch,
)
from featrec.datasets import has_clock_times
from featrec.devices import resolve_device
from featrec.encoders import save_encoders
from featrec.errors import FeatrecError, SpecError
from featrec.evaluate import (
    SCORE_BATCH,
    ModelScorer,
    PopularityScorer,
    RecencyScorer,
    evaluate_ranking,
    popularity,
)
from featrec.ids import IGNORE, N_RESERVED, PAD
from featrec.memory import peak_rss_gib, release_free_memory, tune_allocator
from featrec.model import RecModel, build_model, feature_configs
from featrec.model.protocol import half_precision_attention
from featrec.optim import build_optimizer, clip_gradients, optimizer_kind
from featrec.rundir import (
    DATA_SUMS,
    RUN_FILES,
    check_data_sums,
    exclusive,
    load_checkpoint,
    not_a_folder,
    removed_unless_checkpointed,
    run_relative,
    write_data_sums,
    write_manifest,
)
from featrec.sequences import Prepared, prepare
from featrec.spec import Spec, TrainSpec, load_spec, spec_differences
from featrec.tracking import make_trackers
from featrec.trends import trend_tables

log = logging.getLogger(__name__)
PROGRESS_EVERY = 20  # steps between progress-bar updates (each waits for the device)


@dataclass
class Experiment:
    """What training and evaluation need: the spec, its data as tensors, the model."""

    spec: Spec
    prepared: Prepared
    data: SequenceData
    model: RecModel  # BERT4Rec, or the Embedding&MLP baseline

    @classmethod
    def from_spec(
        cls, spec: Spec, prepared: Prepared | None = None, device: torch.device | None = None
    ) -> Experiment:
        """The spec's model on ``device`` (default: ``train.device``)."""
        device = device if device is not None else resolve_device(spec.train.device)
        prepared = prepared if prepared is not None else prepare(spec)[0]
        negatives, items = spec.eval.sampled_negatives, len(prepared.item_vocab) - N_RESERVED
        if negatives is not None and negatives >= items:
            raise SpecError(
                f"{spec.source}: eval.sampled_negatives: {negatives} asked for, but the data "
                f"has {items:,} items (at most {items - 1:,} negatives besides the target)"
            )
        data = SequenceData.from_prepared(prepared, spec)
        num_items = len(prepared.item_vocab)
        trained = prepared.item_vocab.trained if prepared.item_vocab.cold else None
        # trend features count the events of trained items: a cold item's only events are
        # test targets (eval.cold_items), which must not describe it
        counted = slice(None) if trained is None else data.item < trained
        torch.manual_seed(spec.train.seed)  # the initial weights depend on the seed only
        model = build_model(
            spec,
            num_items,
            feature_configs(spec, prepared.encoders),
            item_tables(prepared, spec)
            | trend_tables(
                spec,
                None if data.time is None else data.time[counted],
                data.item[counted],
                num_items,
            ),
            popularity(data, num_items),
            trained,
        )  # built on the CPU, so the initial weights are the same on every device
        return cls(spec, prepared, data, model.to(device))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def evaluate(
        self, split: str, batch_size: int = SCORE_BATCH
    ) -> tuple[dict[str, float], torch.Tensor]:
        self.model.eval()
        scorer = ModelScorer(
            self.model, self.data, self.spec.model.max_len
        )  # on the model's device
        return evaluate_ranking(
            scorer,
            self.data,
            split,
            self.model.num_items,
            self.spec.eval.ks,
            self.spec.eval.exclude_seen,
            batch_size,
            self.spec.eval.sampled_negatives,
            self.spec.train.seed,
        )

    def most_popular(
        self, split: str, days: int | None = None
    ) -> tuple[dict[str, float], torch.Tensor]:
        """The most-popular baseline on ``split``, measured as the model is: metrics and
        each user's rank. ``days``: popularity over the days before each request instead
        of the whole training split (:class:`~featrec.evaluate.RecencyScorer`)."""
        num_items = self.model.num_items
        if days is None:
            scorer = PopularityScorer(self.data, num_items)
        else:
            scorer = RecencyScorer(self.data, num_items, days)
        e = self.spec.eval
        return evaluate_ranking(
            scorer, self.data, split, num_items, e.ks, e.exclude_seen,
            sampled_negatives=e.sampled_negatives, seed=self.spec.train.seed,
        )  # fmt: skip

    def cold_metrics(self, test_ranks: torch.Tensor, popular: torch.Tensor) -> dict[str, Any]:
        """``eval.cold_items``: test metrics of the users whose target is a cold item (model
        ranks ``test_ranks``), most-popular's (ranks ``popular``) on them, and a random
        ranking's expected HR@K."""
        users, positions = self.data.targets("test")
        targets = self.data.item[self.data.offsets[users] + positions]
        cold = targets >= self.prepared.item_vocab.trained
        candidates = self.model.num_items - N_RESERVED
        return {
            "users": int(cold.sum()),
            "model": _metrics_of(test_ranks[cold], self.spec.eval.ks),
            "most_popular": _metrics_of(popular[cold], self.spec.eval.ks),
            "random": {f"hr@{k}": k / candidates for k in self.spec.eval.ks},
        }

    def recency_baselines(self, split: str) -> dict[str, dict[str, float]]:
        """``eval.recency_days`` baselines on ``split`` (``"7d"`` → metrics); none for data
        without clock times."""
        if self.data.time is None or not has_clock_times(self.spec.data):
            return {}
        return {f"{d}d": self.most_popular(split, d)[0] for d in self.spec.eval.recency_days}

    @torch.no_grad()
    def fusion_weights(
        self, split: str = "valid", batch_size: int = SCORE_BATCH
    ) -> dict[str, float]:
        """Mean learned weight per fusion source: input-independent ones as they are
        (concat), per-token ones averaged over the tokens of ``split`` (gate); none: {}."""
        static = self.model.static_fusion_weights()
        if static is not None:
            return static
        names = self.model.fusion_sources()
        if not names:
            return {}
        users, positions = self.data.targets(split)
        totals, count = torch.zeros(len(names), dtype=torch.float64), 0
        self.model.eval()
        for start in range(0, len(users), batch_size):
            batch = request_batch(
                self.data, users[start : start + batch_size],
                positions[start : start + batch_size], self.spec.model.max_len,
            )  # fmt: skip
            batch = self.model.request_inputs(batch)  # as the model reads it
            weights = self.model(batch.to(self.device)).fusion_weights  # (B, L, S)
            valid = (batch.item != PAD).to(weights.device)
            totals += weights[valid].sum(dim=0).double().cpu()
            count += int(valid.sum())
        return dict(zip(names, (totals / max(count, 1)).tolist(), strict=True))


def _schedule(
    optimizer: torch.optim.Optimizer, warmup: int, total: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to the full rate, then linear decay to zero at the last step."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def save_checkpoint(obj: Any, path: Path) -> None:
    write_file(path, functools.partial(torch.save, obj))


def check_new_run_dir(run_dir: Path) -> None:
    """A new run may not go where another run is (nor where a file is, nor over files of
    the names a run writes: a folder's own ``spec.yaml`` would be replaced)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise FeatrecError(not_a_folder(run_dir))
    if run_dir.is_dir() and not (run_dir / "checkpoints" / "last.pt").is_file():
        found = [
            name
            for name in RUN_FILES
            if (run_dir / name).exists()
            and not ((run_dir / name).is_dir() and not any((run_dir / name).iterdir()))
        ]
        if found:
            raise FeatrecError(
                f"{run_dir}: holds {', '.join(found)}, which a new run would replace, and no "
                "run to resume (no checkpoints/last.pt); train into a new or empty folder"
            )
    if (run_dir / "checkpoints" / "last.pt").is_file():
        raise FeatrecError(
            f"{run_dir}: holds a run already; resume it (--resume; in Python, resume=True) or "
            "train into another directory"
        )


def default_run_dir(spec: Spec) -> Path:
    return Path("runs") / spec.name / datetime.now().strftime("%Y%m%d-%H%M%S")


@dataclass
class TrainingState:
    """Where a run stands; saved in ``last.pt`` beside the weights and RNG states."""

    epoch: int = 0  # last finished epoch
    best_score: float = -1.0  # best validation eval.primary so far
    best_epoch: int = 0
    bad_evals: int = 0  # evaluations since the best one
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch
    # wall seconds the run had spent at this checkpoint, over all the processes it took
    # (a resumed run's train_seconds counts the time before the interruption too)
    elapsed: float = 0.0

    def stops_early(self, cfg: TrainSpec) -> bool:
        return self.bad_evals >= cfg.patience and self.epoch >= cfg.min_epochs


@dataclass
class Training:
    """One run's moving parts: the experiment, optimizer, schedule, random stream, state."""

    experiment: Experiment
    run_dir: Path
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    generator: torch.Generator
    trainable: torch.Tensor  # users with a training target
    state: TrainingState
    # the loss as a module (under DistributedDataParallel with several ranks), or its
    # compiled form (train.compile)
    loss_fn: Callable[..., torch.Tensor]
    started: float  # time.perf_counter() when this process began the run
    earlier: float = 0.0  # wall seconds of the processes before this one (a resumed run)

    @property
    def elapsed(self) -> float:
        """Wall seconds the run has taken so far, over all its processes."""
        return self.earlier + time.perf_counter() - self.started

    @classmethod
    def start(cls, experiment: Experiment, run_dir: Path, started: float) -> Training:
        model, data, cfg = experiment.model, experiment.data, experiment.spec.train
        # a batch of users without a training target would make the loss NaN
        trainable = torch.nonzero(data.train_len >= model.min_train_events).squeeze(1)
        steps_per_epoch = math.ceil(len(trainable) / cfg.batch_size)
        optimizer = build_optimizer(model, experiment.spec, model.num_items)
        scheduler = _schedule(optimizer, cfg.warmup_steps, cfg.epochs * steps_per_epoch)
        generator = torch.Generator().manual_seed(cfg.seed)
        loss_fn = distributed.wrap(model, experiment.device)
        if cfg.compile:
            loss_fn = torch.compile(loss_fn, dynamic=True)
        return cls(
            experiment, run_dir, optimizer, scheduler, generator, trainable, TrainingState(),
            loss_fn, started,
        )  # fmt: skip

    @property
    def last_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    def resume(self) -> None:
        # on the CPU: the RNG states must stay there; load_state_dict moves the weights and
        # the optimizer's moments to the model's device
        saved = load_checkpoint(self.last_path)
        self.experiment.model.load_state_dict(saved["model"])
        kind = optimizer_kind(saved["optimizer"])
        if kind != optimizer_kind(self.optimizer):
            # train.optimizer auto decides by the device too: a run started on a CPU and
            # resumed on a GPU (or back) goes on with the optimizer it started with
            log.warning(
                "resuming with %s, the optimizer %s started with (train.optimizer: %s would "
                "pick %s here)",
                kind, self.run_dir, self.experiment.spec.train.optimizer,
                optimizer_kind(self.optimizer),
            )  # fmt: skip
            model, cfg = self.experiment.model, self.experiment.spec.train
            self.optimizer = build_optimizer(
                model, self.experiment.spec, model.num_items, rows=kind == "row_adamw"
            )
            steps_per_epoch = math.ceil(len(self.trainable) / cfg.batch_size)
            self.scheduler = _schedule(
                self.optimizer, cfg.warmup_steps, cfg.epochs * steps_per_epoch
            )
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        device = self.experiment.device
        if device.type == "cuda" and "cuda_rng" in saved:  # dropout masks drawn on the GPU
            torch.cuda.set_rng_state(saved["cuda_rng"], device)
        # a checkpoint written before `elapsed` was added has spent 0 seconds; every
        # other field must be there
        state = {f.name: saved[f.name] for f in fields(TrainingState) if f.name != "elapsed"}
        self.state = TrainingState(**state, elapsed=saved.get("elapsed", 0.0))
        self.earlier = self.state.elapsed
        log.info("resuming %s after epoch %d", self.run_dir, self.state.epoch)

    def validate(self, epoch: int, row: dict[str, Any]) -> None:
        """Validation metrics into ``row``; a new best score saves ``best.pt``."""
        valid, _ = self.experiment.evaluate("valid")
        row |= {f"valid/{k}": v for k, v in valid.items()}
        score, state = valid[self.experiment.spec.eval.primary], self.state
        if score > state.best_score:
            state.best_score, state.best_epoch, state.bad_evals = score, epoch, 0
            best = self.run_dir / "checkpoints" / "best.pt"
            if distributed.is_main():
                save_checkpoint(self.experiment.model.state_dict(), best)
        else:
            state.bad_evals += 1

    def checkpoint(self) -> None:
        if not distributed.is_main():
            return
        device = self.experiment.device
        self.state.elapsed = self.elapsed
        save_checkpoint(
            {
                **asdict(self.state),
                "model": self.experiment.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "generator": self.generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
            },
            self.last_path,
        )


class Paused(Exception):
    """Raised from an epoch's end to stop a run there, resumable (``--stop-after``)."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"paused after epoch {epoch}")
        self.epoch = epoch


def open_run(spec: Spec, run_dir: Path, resume: bool) -> Spec:
    """The spec the run in ``run_dir`` trains with: ``spec`` for a new run; for ``resume``
    the one it was started with, which ``spec`` must equal (a run resumed under a changed
    spec would be neither the old run nor a new one), placed where ``spec`` says
    (``train.device``: a run started on a GPU goes on on the CPU)."""
    if not resume:
        check_new_run_dir(run_dir)
        return spec
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        raise FeatrecError(f"{run_dir}: nothing to resume (no checkpoints/last.pt)")
    stored = load_spec(run_dir / "spec.yaml")
    check_data_sums(run_dir, stored.data)
    changed = spec_differences(stored, spec)
    if changed:
        raise FeatrecError(
            f"{run_dir}: --resume continues the run with the spec it was started with "
            f"({run_dir / 'spec.yaml'}); the spec given differs at {'; '.join(changed)}. "
            "Resume with that spec, or train into another --out"
        )
    return placed(stored, spec.train.device)


def placed(spec: Spec, device: str) -> Spec:
    """``spec`` with ``train.device`` set to ``device`` (where a resumed run goes on)."""
    if spec.train.device == device:
        return spec
    return spec.model_copy(update={"train": spec.train.model_copy(update={"device": device})})


def train(
    spec: Spec,
    run_dir: Path,
    resume: bool = False,
    progress: bool = False,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    variant: str | None = None,
    log_to: Sequence[str] = (),
    locked: bool = False,
) -> dict[str, Any]:
    """Train ``spec`` into ``run_dir`` (or continue the run there); return final metrics.

    ``variant`` names the run in ``final_metrics.json`` (an ablation's variant); by default
    "full" or "behavior-only" after the spec's features. ``log_to``: experiment trackers
    (``tensorboard``, ``mlflow``; :mod:`featrec.tracking`). ``locked``: the caller holds
    the run directory's lock already (:func:`featrec.rundir.exclusive`; ``featrec.fit``).
    """
    started = time.perf_counter()
    tune_allocator()
    device = resolve_device(spec.train.device)  # a device this machine lacks: before any file
    device = distributed.setup(device)  # one of several ranks (torchrun): join them
    main = distributed.is_main()
    # one writer per run directory: rank 0, which also removes a start that failed
    lock = exclusive(run_dir) if main and not locked else contextlib.nullcontext()
    cleanup = removed_unless_checkpointed(run_dir) if main else contextlib.nullcontext()
    with lock, cleanup:
        return _train(
            spec, run_dir, resume, progress, on_epoch_end, variant, log_to, started, device
        )


def _train(
    spec: Spec,
    run_dir: Path,
    resume: bool,
    progress: bool,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None,
    variant: str | None,
    log_to: Sequence[str],
    started: float,
    device: torch.device,
) -> dict[str, Any]:
    main = distributed.is_main()
    if main:  # the other ranks wait for its checks and its prepared data, then read them
        spec = open_run(spec, run_dir, resume)
        prepared, _ = prepare(spec)
    distributed.barrier()
    if not main:
        spec = placed(load_spec(run_dir / "spec.yaml"), spec.train.device) if resume else spec
        prepared, _ = prepare(spec)
    trackers = make_trackers(list(log_to)) if main else []
    experiment = Experiment.from_spec(spec, prepared, device=device)
    log.info("training on %s%s", device, _ranks_text(spec))
    if spec.fusion.output_items and not spec.scores_item_features:
        log.warning(
            "fusion.output_items: model.kind %s with %d item features scores no item "
            "features; the items without events are ranked by untrained id embeddings",
            spec.model.kind, len(spec.features_in("item")),
        )  # fmt: skip
    if main:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        _write_run_files(run_dir, spec, experiment)
    training = Training.start(experiment, run_dir, started)
    if resume:
        training.resume()
    for tracker in trackers:
        tracker.start(spec, run_dir)
    finished = False
    try:
        _epochs(training, progress, on_epoch_end, trackers)
        distributed.barrier()  # rank 0 has written best.pt
        best = run_dir / "checkpoints" / "best.pt"
        experiment.model.load_state_dict(load_checkpoint(best))
        final = _final_metrics(experiment, run_dir, training.state, training.elapsed, variant)
        if main:
            _plot(run_dir, training.state.history, spec.eval.primary)
        for tracker in trackers:
            tracker.finish(final)
        finished = True
    finally:  # an interrupted or failed run is marked so in the trackers, then goes on up
        for tracker in trackers:
            tracker.close(failed=not finished)
    return final


def _epochs(
    training: Training,
    progress: bool,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None,
    trackers: list,
) -> None:
    """Train, validate and checkpoint epoch after epoch until the last or an early stop."""
    from tqdm import tqdm

    experiment, state = training.experiment, training.state
    cfg, metric = experiment.spec.train, experiment.spec.eval.primary
    # a run stopped early and interrupted before its final evaluation trains no further
    last_epoch = state.epoch if state.stops_early(cfg) else cfg.epochs
    epochs_bar = tqdm(
        total=cfg.epochs, initial=state.epoch, desc=experiment.spec.name, unit="epoch",
        disable=not progress,
    )  # fmt: skip
    for epoch in range(state.epoch + 1, last_epoch + 1):
        row = _train_epoch(training, epoch, progress)
        broken = _not_finite(row["loss"], experiment.model)
        if broken:  # every later score would be nan too
            kept = f"; its checkpoints keep epoch {state.epoch}" if state.epoch else ""
            raise FeatrecError(
                f"epoch {epoch}: {broken}: the run diverged. Train again with a lower "
                f"train.lr (now {cfg.lr:g}) or a longer train.warmup_steps (now "
                f"{cfg.warmup_steps}){kept}"
            )
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            training.validate(epoch, row)
        state.epoch = epoch
        state.history.append(row)
        training.checkpoint()
        if distributed.is_main():
            _write_history(training.run_dir, state.history)
        release_free_memory()
        valid_score = row.get(f"valid/{metric}")
        valid_text = "not evaluated" if valid_score is None else f"{valid_score:.4f}"
        best_text = (
            f"best {state.best_score:.4f} at {state.best_epoch}"
            if state.best_epoch
            else "no evaluation yet"
        )
        log.info(
            "epoch %d: loss %.4f, valid %s %s (%s), %.0f tokens/s",
            epoch, row["loss"], metric, valid_text, best_text, row["tokens_per_s"],
        )  # fmt: skip
        epochs_bar.set_postfix(loss=f"{row['loss']:.4f}", **{metric: valid_text})
        epochs_bar.update()
        for tracker in trackers:
            tracker.log_epoch(epoch, row)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
        if state.stops_early(cfg):
            log.info("early stop: no better validation %s for %d evaluations", metric,
                     cfg.patience)  # fmt: skip
            break
    epochs_bar.close()


def _not_finite(loss: float, model: torch.nn.Module) -> str | None:
    """What is not finite after an epoch: its mean loss, or a weight (a last step that
    diverged leaves the loss finite and the weights nan)."""
    if not math.isfinite(loss):
        return f"the training loss is {loss}"
    with torch.no_grad():
        bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    return f"weights became nan or inf ({', '.join(bad[:3])})" if bad else None


def _train_epoch(training: Training, epoch: int, progress: bool) -> dict[str, Any]:
    from tqdm import tqdm

    experiment, generator = training.experiment, training.generator
    optimizer, scheduler, device = training.optimizer, training.scheduler, experiment.device
    model, data, cfg = experiment.model, experiment.data, experiment.spec.train
    max_len, bf16 = experiment.spec.model.max_len, cfg.precision == "bf16"
    model.train()
    window = data.train_len.clamp(max=max_len)
    batches = length_aware_batches(training.trainable, window, cfg.batch_size, generator)
    total_loss: torch.Tensor | float = 0.0
    tokens, started = 0, time.perf_counter()
    bar = tqdm(batches, desc=f"epoch {epoch}", disable=not progress, leave=False, unit="batch")
    for batch_users in bar:
        batch, labels = model.training_batch(data, batch_users, experiment.spec, generator)
        tokens += int((batch.item != PAD).sum())  # counted on the CPU: no device sync
        if distributed.size() > 1:  # this rank's rows; its part of the labelled positions
            rows = distributed.share(len(batch_users))
            labelled = labels != IGNORE
            weight = labelled[rows].sum() * distributed.size() / labelled.sum()
            batch, labels = batch.take(rows), labels[rows]
        with (
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
            half_precision_attention(device, bf16),
        ):
            loss = training.loss_fn(batch.to(device), labels.to(device))
        if distributed.size() > 1 and len(rows) < len(batch_users):
            loss = loss * weight.item()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_gradients(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        total_loss += loss.detach()  # summed where it is: reading it would wait for the GPU
        if progress and bar.n % PROGRESS_EVERY == 0:
            bar.set_postfix(
                loss=f"{float(loss.detach()):.3f}",
                tok_s=f"{tokens / (time.perf_counter() - started):.0f}",
            )
    if distributed.size() > 1 and isinstance(total_loss, torch.Tensor):  # the whole batch's
        torch.distributed.all_reduce(total_loss)
        total_loss = total_loss / distributed.size()
    total = float(total_loss)
    seconds = time.perf_counter() - started
    return {
        "epoch": epoch,
        "loss": total / max(len(batches), 1),
        "lr": scheduler.get_last_lr()[0],
        "seconds": seconds,
        "tokens_per_s": tokens / max(seconds, 1e-9),
        "peak_rss_gib": peak_rss_gib(),
    }


def _write_run_files(run_dir: Path, spec: Spec, experiment: Experiment) -> None:
    """What recommending needs without the data: spec, encoders, item popularity."""
    resolved = spec.model_dump(mode="json")
    resolved["data"] = run_relative(run_dir, resolved["data"])
    # whole or not at all: on a resume the other ranks read it while rank 0 writes it
    write_text(run_dir / "spec.yaml", yaml.safe_dump(resolved, sort_keys=False))
    if not (run_dir / DATA_SUMS).is_file():  # a resumed run keeps the sums it started with
        write_data_sums(run_dir, spec.data)
    prepared = experiment.prepared
    save_encoders(run_dir / "encoders.json", prepared.item_vocab, prepared.encoders)
    counts = popularity(experiment.data, len(prepared.item_vocab)).tolist()
    (run_dir / "item_popularity.json").write_text(
        json.dumps(counts, allow_nan=False), encoding="utf-8"
    )


def _metrics_of(ranks: torch.Tensor, ks: list[int]) -> dict[str, float]:
    """HR / NDCG / MRR at each K over these 0-based ranks."""
    from featrec.metrics import RankingMetrics

    metrics = RankingMetrics(ks, sync_on_compute=False)
    metrics.update(ranks)
    return metrics.compute()


def _ranks_text(spec: Spec) -> str:
    """How the batches are split across ranks, under torchrun."""
    if not distributed.joined():
        return ""
    world = distributed.size()
    per_rank, ranks = spec.train.batch_size // world, "ranks" if world > 1 else "rank"
    return (
        f", {world} {ranks}: global batch {spec.train.batch_size} sequences, "
        f"~{per_rank} per rank ({torch.distributed.get_backend()})"
    )


def _write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(key for row in history for key in row))
    with (run_dir / "metrics.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(history)
    lines = "".join(json.dumps(row) + "\n" for row in history)
    (run_dir / "metrics.jsonl").write_text(lines, encoding="utf-8")


def _final_metrics(
    experiment: Experiment,
    run_dir: Path,
    state: TrainingState,
    seconds: float,
    variant: str | None,
) -> dict[str, Any]:
    valid, valid_ranks = experiment.evaluate("valid")
    test, test_ranks = experiment.evaluate("test")
    popular, popular_ranks = experiment.most_popular("test")
    spec = experiment.spec
    final = {
        "name": spec.name,
        "variant": variant or ("full" if spec.features else "behavior-only"),
        "features": [f.name for f in spec.features],
        "fusion": spec.fusion.method,
        "seed": spec.train.seed,
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "train_seconds": seconds,
        "test": test,
        "valid": valid,
        "most_popular": {"test": popular},
        "recent_popular": {"test": experiment.recency_baselines("test")},
        **(
            {"cold_test": experiment.cold_metrics(test_ranks, popular_ranks)}
            if spec.eval.cold_items
            else {}
        ),
        "fusion_weights": experiment.fusion_weights("valid"),
        "peak_rss_gib": peak_rss_gib(),  # of this process (a resumed run: since the resume)
    }
    if distributed.is_main():
        write_ranks(experiment.data, run_dir, valid_ranks, test_ranks)
        # written last and whole: its presence marks a finished run (featrec ablate skips it)
        text = json.dumps(final, indent=1, allow_nan=False)
        write_text(run_dir / "final_metrics.json", text)
        write_manifest(run_dir)  # last: the run is complete
    return final


def write_ranks(
    data: SequenceData, run_dir: Path, valid_ranks: torch.Tensor, test_ranks: torch.Tensor
) -> None:
    frames = []
    for split, ranks in (("valid", valid_ranks), ("test", test_ranks)):
        users, _ = data.targets(split)
        frames.append(
            pl.DataFrame(
                {
                    "user_id": [data.user_ids[u] for u in users.tolist()],
                    "split": split,
                    "rank": ranks.tolist(),
                }
            )
        )
    pl.concat(frames).write_parquet(run_dir / "ranks.parquet")


def _plot(run_dir: Path, history: list[dict[str, Any]], metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, loss_axis = plt.subplots(figsize=(7, 4))
    epochs = [row["epoch"] for row in history]
    loss_axis.plot(
        epochs, [row["loss"] for row in history], color="tab:blue", label="training loss"
    )
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("training loss", color="tab:blue")
    key = f"valid/{metric}"
    evaluated = [row for row in history if key in row]
    metric_axis = loss_axis.twinx()
    metric_axis.plot(
        [r["epoch"] for r in evaluated], [r[key] for r in evaluated], color="tab:orange"
    )
    metric_axis.set_ylabel(f"validation {metric}", color="tab:orange")
    figure.tight_layout()
    figure.savefig(run_dir / "learning_curve.png", dpi=100)
    plt.close(figure)


def warn_if_unfinished(run_dir: Path, doing: str) -> None:
    """Log that the run in ``run_dir`` is still training or was stopped, if it is."""
    if (run_dir / "final_metrics.json").is_file():
        return
    best = None
    with contextlib.suppress(FeatrecError):
        best = load_checkpoint(run_dir / "checkpoints" / "last.pt").get("best_epoch")
    log.warning(
        "%s: not finished (no final_metrics.json): %s its best checkpoint so far%s",
        run_dir, doing, "" if best is None else f" (epoch {best})",
    )  # fmt: skip


def evaluate_run(run_dir: Path, split: str, device: str | None = None) -> dict[str, Any]:
    """Evaluate the best checkpoint of a finished run on ``split`` (on ``device``; default:
    a CUDA device where there is one, whatever the run trained on), beside most-popular."""
    from featrec.recommend import Recommender

    recommender = Recommender(run_dir, device)
    warn_if_unfinished(run_dir, "evaluating")
    metrics = recommender.evaluate(split)
    return {
        "split": split,
        "metrics": metrics,
        "most_popular": recommender.experiment.most_popular(split)[0],
        "recent_popular": recommender.experiment.recency_baselines(split),
    }

"""Metrics, training loop, checkpoints, resume and the train / evaluate commands."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from featrec.batching import length_aware_batches
from featrec.cli import main
from featrec.errors import FeatrecError, SpecError
from featrec.evaluate import popularity
from featrec.ids import N_RESERVED
from featrec.metrics import RankingMetrics
from featrec.ranking import (
    Excluded,
    best_by_score_then_id,
    sampled_ranks,
    score_then_id_keys,
    target_ranks,
    top_k,
)
from featrec.spec import load_spec, spec_differences, with_overrides
from featrec.train import Experiment, evaluate_run, open_run, train
from tests.conftest import interrupted_and_resumed, write_spec


def test_metrics_match_a_hand_computed_example() -> None:
    metrics = RankingMetrics([1, 5, 10])
    metrics.update(torch.tensor([0, 3, 12]))  # ranks are 0-based
    result = metrics.compute()
    assert result["hr@1"] == pytest.approx(1 / 3)
    assert result["hr@5"] == pytest.approx(2 / 3) and result["hr@10"] == pytest.approx(2 / 3)
    assert result["ndcg@5"] == pytest.approx((1 + 1 / math.log2(5)) / 3)
    assert result["mrr@10"] == pytest.approx((1 + 1 / 4) / 3)


def dense(scores: torch.Tensor):
    """A scorer reading a (B, I) score matrix."""

    def score(items: torch.Tensor | range) -> torch.Tensor:
        if isinstance(items, range) or items.dim() == 1:
            return scores[:, items]  # a copy: ranking writes into it
        return scores.gather(1, items)

    return score


@pytest.mark.parametrize("chunk", [1, 2, 4, 100])
def test_target_ranks_exclude_seen_and_reserved_ids_and_count_ties_against(chunk: int) -> None:
    # items 4..9; reserved 0..3 score high but are never candidates
    scores = torch.tensor([[9.0, 9.0, 9.0, 9.0, 0.5, 0.9, 0.7, 0.7, 0.1, 0.7]])
    target = torch.tensor([6])  # score 0.7; 0.9 is above, two others tie at 0.7
    assert target_ranks(dense(scores), 10, target, None, chunk).tolist() == [3]
    seen = Excluded(torch.tensor([0, 0, 0]), torch.tensor([5, 6, 7]))
    # the target itself is never excluded
    assert target_ranks(dense(scores), 10, target, seen, chunk).tolist() == [1]


@pytest.mark.parametrize("chunk", [1, 4, 100])
def test_a_nan_score_earns_nothing(chunk: int) -> None:
    """A diverged model scores nan: its target ranks last, not first (nan >= x is false)."""
    nan = float("nan")
    scores = torch.tensor([[0.0] * 4 + [nan] * 6, [0.0] * 4 + [0.5, nan, 0.9, 0.1, 0.7, 0.2]])
    targets = torch.tensor([6, 6])  # row 1: only the nan item (5) and nothing else is above
    assert target_ranks(dense(scores), 10, targets, None, chunk).tolist() == [5, 1]
    sampled = sampled_ranks(
        dense(scores), targets, Excluded.none(), torch.ones(10), 5, torch.Generator(),
        torch.device("cpu"),
    )  # fmt: skip
    assert sampled.tolist() == [5, 1]


@pytest.mark.parametrize("chunk", [3, 7, 1000])
def test_chunked_ranks_and_top_k_equal_one_dense_product(chunk: int) -> None:
    torch.manual_seed(0)
    scores = torch.randn(6, 40).round(decimals=1)  # ties included
    targets = torch.randint(N_RESERVED, 40, (6,))
    seen = Excluded(torch.randint(0, 6, (30,)), torch.randint(N_RESERVED, 40, (30,)))
    mask = seen.mask(6, 0, 40)
    expected = scores.masked_fill(mask, -math.inf)
    expected[:, :N_RESERVED] = -math.inf
    own = scores.gather(1, targets[:, None])
    counted = expected >= own
    counted[torch.arange(6), targets] = False
    got = target_ranks(dense(scores), 40, targets, seen, chunk)
    assert got.tolist() == counted.sum(1).tolist()
    values, items = top_k(dense(scores), 40, 6, 5, seen, chunk=chunk)
    assert torch.equal(values, torch.topk(expected, 5).values)
    assert torch.equal(expected.gather(1, items), values)  # the items carry those scores
    allowed = torch.zeros(40, dtype=torch.bool)
    allowed[[5, 9, 11]] = True
    values, items = top_k(dense(scores), 40, 6, 5, seen, allowed, chunk=chunk)
    assert set(items[torch.isfinite(values)].tolist()) <= {5, 9, 11}


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_top_k_ranks_ties_by_item_id_whatever_the_chunks(chunk: int) -> None:
    """Equal scores (popularity counts, rounded scores) rank by id, lower first, also where
    a tie straddles the k-th place: one answer on every device, not torch.topk's order."""
    torch.manual_seed(1)
    scores = torch.randint(0, 4, (8, 40)).float()  # many ties in every row
    scores[:, 30:] = -math.inf  # items 30.. not rankable
    scores[:2, 10:20] = math.inf  # ties at +inf too
    seen = Excluded(torch.randint(0, 8, (20,)), torch.randint(N_RESERVED, 40, (20,)))
    excluded = scores.masked_fill(seen.mask(8, 0, 40), -math.inf)
    for k in (1, 5, 12):
        values, items = top_k(dense(scores), 40, 8, k, seen, chunk=chunk)
        for row in range(8):
            finite = [i for i in range(N_RESERVED, 40) if excluded[row, i] > -math.inf]
            expected = sorted(finite, key=lambda i: (-excluded[row, i].item(), i))[:k]
            assert items[row, : len(expected)].tolist() == expected
            assert values[row, : len(expected)].tolist() == excluded[row, expected].tolist()


def test_score_then_id_keys_order_as_value_then_id() -> None:
    values = torch.tensor([0.5, -0.0, 0.0, -1.5, math.inf, -math.inf, 0.5, -2.0, 1e-30, -1e-30])
    values = values.repeat(3)
    items = torch.randperm(len(values), generator=torch.Generator().manual_seed(0))
    order = torch.argsort(score_then_id_keys(values, items), descending=True)
    expected = sorted(range(len(values)), key=lambda i: (-values[i].item(), items[i].item()))
    assert items[order].tolist() == items[expected].tolist()
    values, got = best_by_score_then_id(values[None], items[None], 5)
    assert got[0].tolist() == items[expected[:5]].tolist()


@pytest.mark.parametrize("chunk", [3, 1000])
def test_an_exported_top_k_ranks_ties_as_top_k(chunk: int) -> None:
    """The exported program's top-k (featrec.export.TopKLastSlot) orders equal scores as
    featrec.ranking.top_k does, history items excluded."""
    from featrec.export import TopKLastSlot

    torch.manual_seed(2)
    table = torch.randint(0, 3, (4, 30)).float()  # 4 requests, ids 0..29, many ties

    class Tied(torch.nn.Module):
        num_items = 30

        def item_scorer(self, batch):
            return lambda items: table[:, items]

    history = torch.tensor([[0, 5, 6], [0, 0, 7], [9, 10, 11], [0, 0, 0]])
    values, items = TopKLastSlot(Tied(), ["item"], 6, chunk)(history)
    seen = Excluded(*torch.nonzero(history >= N_RESERVED, as_tuple=True))
    seen = Excluded(seen.rows, history[seen.rows, seen.items])
    want_values, want_items = top_k(dense(table), 30, 4, 6, seen, chunk=chunk)
    assert torch.equal(items, want_items) and torch.equal(values, want_values)


def test_sampled_ranks_are_within_the_sample() -> None:
    scores = torch.randn(5, 300)
    targets = torch.randint(4, 300, (5,))
    ranks = sampled_ranks(
        dense(scores), targets, Excluded.none(), torch.rand(300), 100, torch.Generator(),
        torch.device("cpu"),
    )  # fmt: skip
    assert ((ranks >= 0) & (ranks <= 100)).all()


def test_length_aware_batching_keeps_every_example_once() -> None:
    users = torch.arange(3, 1000)
    generator = torch.Generator().manual_seed(1)
    lengths = torch.randint(1, 200, (1000,), generator=generator)
    plain = torch.split(users[torch.randperm(len(users), generator=generator)], 64)
    aware = length_aware_batches(users, lengths, 64, torch.Generator().manual_seed(0), 4)
    assert sorted(torch.cat(aware).tolist()) == sorted(torch.cat(plain).tolist())
    assert max(len(b) for b in aware) == 64
    spread = [int(lengths[b].max() - lengths[b].min()) for b in aware if len(b) == 64]
    assert sum(spread) / len(spread) < 0.5 * 199  # similar lengths share a batch
    # the longest batch comes first (the heap grows to it once)
    assert int(lengths[aware[0]].max()) == int(lengths[users].max())
    empty = length_aware_batches(users[:0], lengths, 64, torch.Generator())
    assert sum(len(batch) for batch in empty) == 0


MALLINFO = """
import sys
import torch
from featrec.memory import heap_stats
"""
glibc_only = pytest.mark.skipif(
    not sys.platform.startswith("linux") or "glibc" not in " ".join(platform.libc_ver()),
    reason="reads glibc's heap statistics (mallinfo2)",
)

ALLOCATOR_PROBE = (
    MALLINFO
    + """
from featrec.memory import tune_allocator
tuned = tune_allocator(sys.argv[1])
big = torch.empty(8 << 18)  # 8 MiB, then freed: glibc's default raises its threshold past it
del big
before = heap_stats()["hblkhd"]
kept = torch.empty(2 << 18)  # 2 MiB
mapped = heap_stats()["hblkhd"] - before
del kept
heap = heap_stats()["arena"]
for _ in range(50):  # activation-sized blocks allocated and freed again and again
    torch.empty(4 << 18)
print(tuned, mapped, heap, heap_stats()["arena"])
"""
)


@glibc_only
def test_allocator_policies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_",
                 "GLIBC_TUNABLES", "FEATREC_MALLOC"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)

    def probe(policy: str) -> tuple[str, int, int, int]:
        out = subprocess.run(
            [sys.executable, "-c", ALLOCATOR_PROBE, policy],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        return out[0], int(out[1]), int(out[2]), int(out[3])

    tuned, mapped, heap_before, heap_after = probe("arena")
    assert tuned == "True" and mapped == 0  # from the heap, reused: no fresh pages per step
    assert heap_after == heap_before  # and the heap did not grow for blocks it had room for
    tuned, mapped, _, _ = probe("pin")
    assert tuned == "True" and mapped >= 2 << 20  # its own mapping, unmapped when freed
    assert probe("glibc")[:2] == ("False", 0)  # glibc's dynamic threshold: from the heap
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "4194304")  # the user's own setting wins
    assert probe("arena")[:2] == ("False", 0)


def test_an_unknown_allocator_policy_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from featrec.memory import allocator_policy

    monkeypatch.setenv("FEATREC_MALLOC", "jemalloc")
    with pytest.raises(FeatrecError, match="FEATREC_MALLOC: expected one of arena, pin, glibc"):
        allocator_policy()


def test_popularity_counts_training_events_only(tmp_path: Path, tiny_spec_body: dict) -> None:
    exp = Experiment.from_spec(load_spec(write_spec(tmp_path, tiny_spec_body)))
    counts = popularity(exp.data, exp.model.num_items)
    assert int(counts.sum()) == int(exp.data.train_len.sum()) == 14
    item10 = 4  # raw item 10 → id 4: in the training events of u1, u2 (not: its target), u4
    assert exp.prepared.item_vocab.ids[0] == 10 and int(counts[item10]) == 2


@pytest.fixture
def small_body(tiny_spec_body: dict) -> dict:
    tiny_spec_body["train"] = {"epochs": 4, "batch_size": 2, "warmup_steps": 2, "seed": 3}
    return tiny_spec_body


def test_max_users_evaluates_the_same_sample_for_every_seed(
    tmp_path: Path, tiny_spec_body: dict
) -> None:
    everyone = Experiment.from_spec(load_spec(write_spec(tmp_path, tiny_spec_body)))
    all_users, all_positions = everyone.data.targets("test")
    assert len(all_users) > 4
    runs = {}
    for seed in (0, 1):
        spec = load_spec(
            write_spec(tmp_path, tiny_spec_body), ["eval.max_users=4", f"train.seed={seed}"]
        )
        exp = Experiment.from_spec(spec)
        users, positions = exp.data.targets("test")
        assert len(users) == 4 and set(users.tolist()) < set(all_users.tolist())
        assert torch.equal(positions, all_positions[torch.isin(all_users, users)])
        _, ranks = exp.evaluate("test")
        runs[seed] = users
        assert len(ranks) == 4
    assert torch.equal(runs[0], runs[1])  # paired across seeds
    with pytest.raises(SpecError, match=r"eval\.max_users"):
        load_spec(write_spec(tmp_path, tiny_spec_body), ["eval.max_users=0"])


def test_run_directory_and_checkpoint_round_trip(tmp_path: Path, small_body: dict) -> None:
    run = tmp_path / "run"
    final = train(load_spec(write_spec(tmp_path, small_body)), run)
    for name in ("spec.yaml", "encoders.json", "checkpoints/best.pt", "checkpoints/last.pt",
                 "metrics.csv", "metrics.jsonl", "learning_curve.png", "final_metrics.json",
                 "ranks.parquet"):  # fmt: skip
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and "valid/ndcg@10" in rows[0]
    assert json.loads((run / "final_metrics.json").read_text())["test"] == final["test"]
    if sys.platform.startswith("linux"):  # peak memory is recorded per epoch and for the run
        assert 0 < rows[0]["peak_rss_gib"] <= rows[-1]["peak_rss_gib"] <= final["peak_rss_gib"]
    again = evaluate_run(run, "test")  # a fresh model from the run directory alone
    assert again["metrics"] == final["test"]
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert "item_embedding.weight" in state


def test_resume_after_an_interruption_matches_an_uninterrupted_run(
    tmp_path: Path, small_body: dict
) -> None:
    spec = load_spec(write_spec(tmp_path, small_body))
    whole = train(spec, tmp_path / "whole")

    resumed = interrupted_and_resumed(spec, tmp_path / "cut")
    assert resumed["test"] == whole["test"] and resumed["valid"] == whole["valid"]
    cut = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    uncut = (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    losses = [[json.loads(line)["loss"] for line in lines] for lines in (cut, uncut)]
    assert losses[0] == losses[1]


def test_resume_with_a_changed_spec_is_refused_and_says_where(
    tmp_path: Path, small_body: dict
) -> None:
    """--resume continues the run as it was started; a spec changed since (a longer
    schedule, another seed) would silently be ignored otherwise."""
    path = write_spec(tmp_path, small_body)
    spec = load_spec(path)

    def interrupt(epoch: int, row: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(spec, tmp_path / "run", on_epoch_end=interrupt)
    longer = load_spec(path, [f"train.epochs={spec.train.epochs + 5}", "train.seed=7"])
    with pytest.raises(FeatrecError, match="differs at") as err:
        train(longer, tmp_path / "run", resume=True)
    message = str(err.value)
    assert f"train.epochs: {spec.train.epochs} → {spec.train.epochs + 5}" in message
    assert f"train.seed: {spec.train.seed} → 7" in message
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["epoch"] == 1  # refused before anything was touched
    final = train(spec, tmp_path / "run", resume=True)  # the same spec resumes
    assert final["epochs_run"] >= 2


def test_a_run_resumes_on_another_device_as_the_same_run(tmp_path: Path, small_body: dict) -> None:
    """train.device says where a run executes, not what it computes: a run started with
    one device setting (on a GPU, say) resumes under another as the run it was."""
    path = write_spec(tmp_path, small_body)
    whole = train(load_spec(path, ["train.device=auto"]), tmp_path / "whole")

    def interrupt(epoch: int, row: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(load_spec(path, ["train.device=cpu"]), tmp_path / "run", on_epoch_end=interrupt)
    elsewhere = load_spec(path, ["train.device=auto"])
    assert spec_differences(load_spec(tmp_path / "run" / "spec.yaml"), elsewhere) == []
    assert open_run(elsewhere, tmp_path / "run", resume=True).train.device == "auto"
    assert train(elsewhere, tmp_path / "run", resume=True)["test"] == whole["test"]
    changed = load_spec(path, ["train.device=auto", "train.lr=0.5"])
    assert spec_differences(load_spec(tmp_path / "run" / "spec.yaml"), changed) == [
        f"train.lr: {load_spec(path).train.lr} → 0.5"
    ]  # the rest is still compared


def test_a_resumed_run_counts_the_time_before_its_interruption(
    tmp_path: Path, small_body: dict
) -> None:
    """train_seconds is the run's, not the last process's: a run interrupted after two
    epochs (one of them made 2 s slower) and resumed reports those seconds too."""
    spec = load_spec(write_spec(tmp_path, small_body))

    def slow_then_interrupted(epoch: int, row: dict) -> None:
        if epoch == 1:
            time.sleep(2.0)
        else:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(spec, tmp_path / "run", on_epoch_end=slow_then_interrupted)
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert saved["epoch"] == 2 and saved["elapsed"] >= 2.0
    started = time.perf_counter()
    final = train(spec, tmp_path / "run", resume=True)
    this_process = time.perf_counter() - started
    assert saved["elapsed"] < final["train_seconds"] <= saved["elapsed"] + this_process
    assert final["train_seconds"] > this_process + 1.0  # the earlier process's time counted


def test_a_run_killed_while_writing_a_checkpoint_still_resumes(
    tmp_path: Path, small_body: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = load_spec(write_spec(tmp_path, small_body))
    whole = train(spec, tmp_path / "whole")
    real_save = torch.save

    def killed_after_epoch_2(obj: object, path: Path) -> None:
        if isinstance(obj, dict) and obj.get("epoch") == 3:  # half a file, then the kill
            Path(path).write_bytes(b"PK\x03\x04 truncated")
            raise KeyboardInterrupt
        real_save(obj, path)

    monkeypatch.setattr(torch, "save", killed_after_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(spec, tmp_path / "cut")
    monkeypatch.setattr(torch, "save", real_save)
    last = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 2  # the previous checkpoint, whole
    resumed = train(spec, tmp_path / "cut", resume=True)
    assert resumed["test"] == whole["test"]


@pytest.mark.parametrize(("min_epochs", "expected"), [(0, 3), (6, 6)])
def test_early_stopping_waits_for_min_epochs(
    tmp_path: Path, small_body: dict, monkeypatch: pytest.MonkeyPatch, min_epochs: int,
    expected: int,
) -> None:  # fmt: skip
    """A validation score that never improves stops the run after ``patience`` evaluations,
    but not before ``min_epochs`` (BERT4Rec's early plateau must not end a run)."""
    evaluate = Experiment.evaluate

    def flat(self: Experiment, split: str, batch_size: int = 512):
        results, ranks = evaluate(self, split, batch_size)
        return dict.fromkeys(results, 0.25), ranks

    monkeypatch.setattr(Experiment, "evaluate", flat)
    small_body["train"] |= {"epochs": 10, "patience": 2, "min_epochs": min_epochs}
    final = train(load_spec(write_spec(tmp_path, small_body)), tmp_path / "run")
    assert final["epochs_run"] == expected and final["best_epoch"] == 1


def test_a_run_stopped_early_and_killed_before_its_final_evaluation_trains_no_further(
    tmp_path: Path, small_body: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resuming a run that had already stopped early only evaluates: an extra epoch could
    find a new best and make the result differ from the uninterrupted run's."""
    import featrec.train

    evaluate = Experiment.evaluate

    def flat(self: Experiment, split: str, batch_size: int = 512):
        results, ranks = evaluate(self, split, batch_size)
        return dict.fromkeys(results, 0.25), ranks

    monkeypatch.setattr(Experiment, "evaluate", flat)
    small_body["train"] |= {"epochs": 10, "patience": 2, "min_epochs": 0}
    spec = load_spec(write_spec(tmp_path, small_body))
    real_write_ranks = featrec.train.write_ranks

    def killed(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(featrec.train, "write_ranks", killed)
    with pytest.raises(KeyboardInterrupt):
        train(spec, tmp_path / "run")
    monkeypatch.setattr(featrec.train, "write_ranks", real_write_ranks)
    final = train(spec, tmp_path / "run", resume=True)
    assert final["epochs_run"] == 3 and final["best_epoch"] == 1
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(row)["epoch"] for row in rows] == [1, 2, 3]


def test_the_primary_metric_drives_early_stopping(
    tmp_path: Path, small_body: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``eval.primary`` picks the validation metric: with ks [5] (no NDCG@10) training runs,
    and a score that improves only on HR@5 keeps the run going."""
    evaluate = Experiment.evaluate
    calls = iter(range(100))

    def rising_hr(self: Experiment, split: str, batch_size: int = 512):
        results, ranks = evaluate(self, split, batch_size)
        step = next(calls) if split == "valid" else 0
        return dict.fromkeys(results, 0.25) | {"hr@5": 0.1 + 0.01 * step}, ranks

    monkeypatch.setattr(Experiment, "evaluate", rising_hr)
    small_body["train"] |= {"epochs": 6, "patience": 1, "min_epochs": 0}
    small_body["eval"] = {"ks": [5], "primary": "hr@5"}
    final = train(load_spec(write_spec(tmp_path, small_body)), tmp_path / "run")
    assert final["epochs_run"] == 6 and final["best_epoch"] == 6
    assert set(final["test"]) == {"hr@5", "ndcg@5", "mrr@5"}


def test_training_is_deterministic_for_a_seed(tmp_path: Path, small_body: dict) -> None:
    spec = load_spec(write_spec(tmp_path, small_body))
    assert train(spec, tmp_path / "a")["test"] == train(spec, tmp_path / "b")["test"]


@pytest.mark.parametrize("kind", ["bert4rec", "embedding_mlp"])
def test_crop_prob_reaches_training(tmp_path: Path, small_body: dict, kind: str) -> None:
    def first_loss(crop: float) -> float:
        overrides = [f"model.kind={kind}", "model.max_len=3", f"train.crop_prob={crop}"]
        spec = load_spec(write_spec(tmp_path, small_body), [*overrides, "train.epochs=1"])
        run = tmp_path / f"crop{crop}"
        train(spec, run)
        return json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["loss"]

    newest, cropped = first_loss(0.0), first_loss(1.0)
    assert math.isfinite(newest) and math.isfinite(cropped)  # no batch without a target
    assert newest != cropped  # other windows were trained on


def test_next_item_share_reaches_the_baselines_training_only(
    tmp_path: Path, small_body: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Embedding&MLP trains on every position unless train.next_item_share says less; the
    share is not BERT4Rec's mask_prob."""
    import featrec.model.embedding_mlp as embedding_mlp

    shares = []
    real = embedding_mlp.next_item_batch

    def recording(data, users, max_len, target_prob, *args):
        shares.append(target_prob)
        return real(data, users, max_len, target_prob, *args)

    monkeypatch.setattr(embedding_mlp, "next_item_batch", recording)
    for share in (None, 0.5):
        overrides = ["model.kind=embedding_mlp", "train.epochs=1", "train.mask_prob=0.3"]
        overrides += [f"train.next_item_share={share}"] if share else []
        train(load_spec(write_spec(tmp_path, small_body), overrides), tmp_path / f"s{share}")
        assert shares and set(shares) == {share or 1.0}
        shares.clear()


def test_a_used_run_directory_is_not_overwritten(tmp_path: Path, small_body: dict) -> None:
    small_body["train"]["epochs"] = 1
    spec = load_spec(write_spec(tmp_path, small_body))
    train(spec, tmp_path / "run")
    with pytest.raises(FeatrecError, match=r"holds a run already; resume it \(--resume"):
        train(spec, tmp_path / "run")


def test_train_and_evaluate_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], small_body: dict
) -> None:
    spec = str(write_spec(tmp_path, small_body))
    run = tmp_path / "run"
    assert main(["-q", "train", spec, "--out", str(run), "--set", "fusion.method=gate"]) == 0
    out = capsys.readouterr().out
    assert "tiny (full): best epoch" in out and "most popular (test)" in out
    assert "fusion weights (gate): item" in out
    assert main(["-q", "evaluate", str(run), "--split", "valid"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith("valid ")
    assert main(["-q", "evaluate", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


ONEDNN_PROBE = (
    MALLINFO
    + """
gelu = torch.nn.GELU()
gelu(torch.randn(2, 64))
before = heap_stats()["uordblks"]
for rows in range(1, 801):  # a new shape every call, as featrec's batches have
    gelu(torch.randn(rows, 64))
print((heap_stats()["uordblks"] - before) / 2**20)
"""
)


def _held_after_new_shapes(env: dict[str, str]) -> float:
    """MiB still allocated after GELU on 800 different shapes, in a fresh process that
    imported featrec before torch's first oneDNN primitive."""
    out = subprocess.run(
        [sys.executable, "-c", ONEDNN_PROBE], env=env, capture_output=True, text=True, check=True
    )
    return float(out.stdout.split()[-1])


@glibc_only
def test_onednn_primitive_cache_stays_small_with_a_new_shape_every_step() -> None:
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN")
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
    env["OMP_NUM_THREADS"] = "1"
    bounded = _held_after_new_shapes(env)
    # oneDNN's own default, which a user may still choose: one entry per shape is kept
    default = _held_after_new_shapes({**env, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"})
    if default < 5:
        pytest.skip(f"GELU does not go through oneDNN here ({default:.1f} MiB at capacity 1024)")
    assert bounded < default / 4  # 64 of 800 shapes kept at most, not one per shape


def test_final_metrics_mark_a_finished_run_only(
    tmp_path: Path, small_body: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """final_metrics.json (which tells featrec ablate a run is done) comes after the
    per-user ranks: a run killed while writing those is not taken for finished."""
    import featrec.train

    def killed(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(featrec.train, "write_ranks", killed)
    with pytest.raises(KeyboardInterrupt):
        train(load_spec(write_spec(tmp_path, small_body)), tmp_path / "run")
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()
    assert not (tmp_path / "run" / "final_metrics.json").exists()


def test_own_files_with_relative_paths_work_from_another_directory(
    tmp_path: Path,
    tiny_tables: dict[str, Path],
    small_body: dict,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Paths in a spec are relative to the spec file; the run's copy of the spec must find
    the same files when evaluate, recommend and --resume run from elsewhere."""
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    for path in tiny_tables.values():
        path.rename(project / "data" / path.name)
    small_body["data"] |= {
        name: f"data/{path.name}" for name, path in tiny_tables.items()
    }  # relative to the spec in project/
    small_body["train"]["epochs"] = 1
    write_spec(project, small_body)
    monkeypatch.chdir(project)
    assert main(["-q", "train", "spec.yaml", "--out", "run"]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run = "../project/run"
    capsys.readouterr()
    assert main(["-q", "evaluate", run]) == 0, capsys.readouterr().err
    assert main(["-q", "recommend", run, "--user", "u4", "--k", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) >= 3
    more = ["--set", "train.epochs=2"]
    spec = "../project/spec.yaml"
    assert main(["-q", "train", spec, "--out", run, "--resume", *more]) == 2  # changed spec
    assert "train.epochs" in capsys.readouterr().err
    stored = load_spec(Path(run) / "spec.yaml")
    assert stored.data.interactions == (project / "data" / "interactions.parquet").resolve()
    assert main(["-q", "train", spec, "--out", run, "--resume"]) == 0, capsys.readouterr().err


def test_a_diverged_run_stops_with_one_error_instead_of_perfect_scores(
    tmp_path: Path, small_body: dict
) -> None:
    """A nan loss stops the run (nan scores ranked every target first: NDCG 1.0)."""
    spec = load_spec(write_spec(tmp_path, small_body), ["train.lr=1e30", "train.warmup_steps=0"])
    with pytest.raises(FeatrecError, match=r"^epoch 1: the training loss is nan: the run diverged"):
        train(spec, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing to resume: nothing left
    # one step per epoch: its loss was finite, the weights it left are not
    one_step = with_overrides(spec, ["train.batch_size=64", "train.lr=1e300"])
    with pytest.raises(FeatrecError, match=r"^epoch 1: weights became nan or inf \("):
        train(one_step, tmp_path / "run")


def test_a_failed_start_removes_the_parent_folders_it_made_and_a_file_is_no_out(
    tmp_path: Path, small_body: dict
) -> None:
    small_body["features"][0]["column"] = "nosuch"
    bad = load_spec(write_spec(tmp_path, small_body))
    (tmp_path / "mine").mkdir()
    for out in (tmp_path / "new" / "deep" / "run", tmp_path / "mine" / "deep" / "run"):
        with pytest.raises(FeatrecError, match="column 'nosuch' not in the items table"):
            train(bad, out)
    assert not (tmp_path / "new").exists() and list((tmp_path / "mine").iterdir()) == []
    with pytest.raises(FeatrecError, match=r"nothing to resume"):
        train(bad, tmp_path / "new" / "run", resume=True)
    assert not (tmp_path / "new").exists()
    (tmp_path / "afile").write_text("mine")
    assert main(["-q", "train", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / "afile")]) == 2
    assert (tmp_path / "afile").read_text() == "mine"
    # a folder holding files of the names a run writes, and no run: their spec is theirs
    small_body["features"][0]["column"] = "tags"
    write_spec(tmp_path / "mine", small_body)
    with pytest.raises(FeatrecError, match=r"mine: holds spec\.yaml, which a new run would"):
        train(load_spec(tmp_path / "mine" / "spec.yaml"), tmp_path / "mine")
    assert load_spec(tmp_path / "mine" / "spec.yaml").name == small_body["name"]

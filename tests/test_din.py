"""DIN (target attention) and the sampled softmax loss it trains with."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import featrec.model.din as din_module
import featrec.model.protocol as protocol
from featrec.ablate import variants
from featrec.batching import Batch, next_item_batch, request_batch
from featrec.errors import SpecError
from featrec.ids import IGNORE, MASK, N_RESERVED
from featrec.spec import load_spec
from featrec.train import Experiment, train
from tests.conftest import write_spec

DIN = ["model.kind=din", "train.loss=sampled_softmax"]


def din_experiment(tmp_path: Path, body: dict, *overrides: str) -> Experiment:
    return Experiment.from_spec(load_spec(write_spec(tmp_path, body), [*DIN, *overrides]))


def test_din_needs_the_sampled_softmax_one_line_naming_the_fields(
    tmp_path: Path, tiny_spec_body: dict
) -> None:
    with pytest.raises(SpecError) as err:
        load_spec(write_spec(tmp_path, tiny_spec_body), ["model.kind=din"])
    message = str(err.value)
    assert "model.kind din" in message and "train.loss: sampled_softmax" in message
    assert "\n" not in message
    with pytest.raises(SpecError, match=r"train\.negatives"):
        load_spec(write_spec(tmp_path, tiny_spec_body), [*DIN, "train.negatives=0"])


def test_din_trains_evaluates_and_recommends(tmp_path: Path, tiny_spec_body: dict) -> None:
    from featrec.recommend import Recommender

    tiny_spec_body |= {"train": {"epochs": 2, "batch_size": 3, "negatives": 5}}
    final = train(load_spec(write_spec(tmp_path, tiny_spec_body), DIN), tmp_path / "run")
    assert 0.0 <= final["test"]["ndcg@10"] <= 1.0 and final["fusion_weights"] == {}
    recommender = Recommender(tmp_path / "run")
    items = recommender.item_vocab.ids
    got = recommender.recommend(items[:3], k=4)
    assert len(got.items) == 4 and not set(got.items) & set(items[:3])


def test_ranking_in_chunks_equals_scoring_the_items_given(
    tmp_path: Path, tiny_spec_body: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = din_experiment(tmp_path, tiny_spec_body)
    exp.model.eval()
    users, targets = exp.data.targets("test")
    batch = request_batch(exp.data, users, targets, 7)
    monkeypatch.setattr(din_module, "ITEM_CHUNK", 3)
    every = exp.model.predict(batch)
    assert every.shape == (len(users), exp.model.num_items)
    assert torch.isinf(every[:, :N_RESERVED]).all()
    real = torch.arange(N_RESERVED, exp.model.num_items)
    assert torch.allclose(every[:, N_RESERVED:], exp.model.predict(batch, real), atol=1e-5)


def test_the_candidate_is_the_query_and_only_the_history_is_read(
    tmp_path: Path, tiny_spec_body: dict
) -> None:
    exp = din_experiment(tmp_path, tiny_spec_body)
    model = exp.model.eval()
    tags = model.item_table_tags  # two items whose tags differ
    first, second = next(
        (a, b)
        for a in range(N_RESERVED, model.num_items)
        for b in range(a + 1, model.num_items)
        if not torch.equal(tags[a], tags[b])
    )
    with torch.no_grad():  # weights far from BERT's tiny initial ones: differences show
        for parameter in model.parameters():
            parameter.normal_()
    with torch.no_grad():  # the same output embedding and bias: only the query differs
        model.item_embedding.weight[second] = model.item_embedding.weight[first]
        model.output_bias[second] = model.output_bias[first]
    users, targets = exp.data.targets("test")
    batch = request_batch(exp.data, users, targets, 7)
    pair = torch.tensor([first, second])
    with torch.no_grad():
        scores = model.predict(batch, pair)
        assert not torch.allclose(scores[:, 0], scores[:, 1])  # attention differs per candidate
        later = Batch.from_named({k: v.clone() for k, v in batch.named().items()})
        later.item[:, -1] = first  # the predicted slot's item and rating are never read
        later.event["rating"][:, -1] = 4
        assert torch.equal(model.predict(later, pair), scores)
        later.item[:, -2] = second  # the history is
        assert not torch.equal(model.predict(later, pair), scores)
        model.query.weight.zero_()  # no query: every candidate sees the same pooled history
        flat = model.predict(batch, pair)
    assert torch.allclose(flat[:, 0], flat[:, 1])


@pytest.mark.parametrize("block", [1, 2, 3, 16])
def test_training_scores_each_target_from_the_events_before_it(
    tmp_path: Path, tiny_spec_body: dict, monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    """The block-sum scores of training equal inference on the window ending at each
    target (its item hidden), for the target and every negative. The windows here hold 4
    slots: blocks of 1 slot give targets up to 3 whole blocks before their own (the
    prefix over blocks), 2 and 3 a part of a block, 16 one block (``BLOCK`` is read at
    call time)."""
    monkeypatch.setattr(din_module, "BLOCK", block)
    exp = din_experiment(tmp_path, tiny_spec_body)
    model = exp.model.eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_()  # large weights: peaked attention, no near-ties
    users = torch.arange(exp.data.num_users)
    batch, labels = next_item_batch(exp.data, users, 7, 1.0, torch.Generator().manual_seed(0))
    labelled = labels != IGNORE
    negatives = torch.arange(N_RESERVED, model.num_items)
    with torch.no_grad():
        trained = model.training_scores(batch, labelled, negatives)
    length = batch.item.shape[1]
    pairs = labelled.nonzero().tolist()
    assert len(pairs) > 5 and len({end for _, end in pairs}) >= 3  # several positions
    for n, (row, end) in enumerate(pairs):
        window = Batch.from_named(
            {k: (v[row : row + 1, : end + 1] if v.dim() > 1 and v.shape[1] == length
                 else v[row : row + 1]).clone()
             for k, v in batch.named().items()}
        )  # fmt: skip
        window.item[:, -1] = MASK
        with torch.no_grad():
            expected = model.predict(window, torch.cat([labels[row, end : end + 1], negatives]))
        torch.testing.assert_close(trained[n], expected[0], rtol=1e-4, atol=1e-4)


def test_the_loss_is_the_sampled_softmax_of_those_scores(
    tmp_path: Path, tiny_spec_body: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = din_experiment(tmp_path, tiny_spec_body, "train.sampler=uniform")  # no log-q
    model = exp.model.eval()
    users = torch.arange(exp.data.num_users)
    batch, labels = next_item_batch(exp.data, users, 7, 1.0, torch.Generator().manual_seed(0))
    negatives = torch.arange(N_RESERVED, model.num_items)
    monkeypatch.setattr(din_module, "draw_negatives", lambda *_: negatives)
    with torch.no_grad():
        scores = model.training_scores(batch, labels != IGNORE, negatives)
        targets = labels[labels != IGNORE]
        hits = negatives.unsqueeze(0) == targets.unsqueeze(1)
        logits = torch.cat([scores[:, :1], scores[:, 1:].masked_fill(hits, -torch.inf)], 1)
        expected = F.cross_entropy(logits, torch.zeros_like(targets))
        assert torch.allclose(model.loss(batch, labels), expected)


def test_sampled_softmax_over_every_other_item_is_the_full_softmax(
    tmp_path: Path, tiny_spec_body: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = Experiment.from_spec(
        load_spec(
            write_spec(tmp_path, tiny_spec_body),
            ["train.loss=sampled_softmax", "train.sampler=uniform"],  # no log-q correction
        )
    )
    model = exp.model.eval()
    assert model.objective.negatives == 100 and model.objective.kind == "sampled_softmax"
    hidden = torch.randn(5, 12)
    targets = torch.randint(N_RESERVED, model.num_items, (5,))
    every_item = torch.arange(N_RESERVED, model.num_items)
    monkeypatch.setattr(protocol, "draw_negatives", lambda *_: every_item)
    with torch.no_grad():
        sampled = protocol.target_loss(model, hidden, targets)
        full = F.cross_entropy(model.score(hidden), targets)
    assert torch.allclose(sampled, full, atol=1e-6)  # the target's own hit is removed
    monkeypatch.setattr(protocol, "draw_negatives", lambda *_: every_item[:2])
    with torch.no_grad():
        assert protocol.target_loss(model, hidden, targets) < full  # fewer competitors


def test_gbce_is_the_calibrated_binary_cross_entropy(tmp_path: Path, tiny_spec_body: dict) -> None:
    exp = Experiment.from_spec(
        load_spec(write_spec(tmp_path, tiny_spec_body), ["train.loss=gbce", "train.negatives=4"])
    )
    objective = exp.model.objective
    assert (objective.kind, objective.negatives, objective.t) == ("gbce", 4, 0.75)
    positive, negative = torch.tensor([2.0, -1.0]), torch.tensor([[0.5, -0.5], [1.0, 3.0]])
    targets, negatives = torch.tensor([5, 6]), torch.tensor([6, 7])  # row 1's first: a hit
    items = 11
    alpha = 2 / (items - 1)
    for t, beta in [(0.0, 1.0), (1.0, alpha), (0.75, alpha * (0.75 * (1 - 1 / alpha) + 1 / alpha))]:
        expected = -(
            beta * F.logsigmoid(positive)
            + torch.stack([F.logsigmoid(-negative[0]).sum(), F.logsigmoid(-negative[1, 1])])
        ).mean()
        got = protocol.gbce(positive, negative, targets, negatives, items, t)
        assert torch.allclose(got, expected)


def test_sampled_softmax_trains_bert4rec_to_a_different_loss(
    tmp_path: Path, tiny_spec_body: dict
) -> None:
    tiny_spec_body |= {"train": {"epochs": 1, "batch_size": 3}}
    losses = {}
    for loss in ("ce", "sampled_softmax", "gbce"):
        spec = load_spec(write_spec(tmp_path, tiny_spec_body), [f"train.loss={loss}"])
        train(spec, tmp_path / loss)
        losses[loss] = json.loads((tmp_path / loss / "metrics.jsonl").read_text().splitlines()[0])
    assert all(math.isfinite(row["loss"]) for row in losses.values())
    assert len({row["loss"] for row in losses.values()}) == 3


def test_the_ablation_has_a_din_row_with_the_same_features(
    tmp_path: Path, tiny_spec_body: dict
) -> None:
    spec = load_spec(write_spec(tmp_path, tiny_spec_body))
    found = variants(spec)["din"]
    assert found.spec.model.kind == "din" and found.spec.train.loss == "sampled_softmax"
    assert found.spec.features == spec.features


def test_a_din_run_exports_and_the_program_scores_as_the_model(
    tmp_path: Path, tiny_spec_body: dict
) -> None:
    from featrec.export import example_batch, export_run
    from featrec.recommend import Recommender

    tiny_spec_body |= {"train": {"epochs": 1, "batch_size": 3, "negatives": 5}}
    train(load_spec(write_spec(tmp_path, tiny_spec_body), DIN), tmp_path / "run")
    program = torch.export.load(export_run(tmp_path / "run", tmp_path / "export")).module()
    recommender = Recommender(tmp_path / "run", device="cpu")
    data = Experiment.from_spec(recommender.spec).data
    users, positions = data.targets("test")
    for batch in (example_batch(recommender), request_batch(data, users, positions, 7)):
        with torch.no_grad():
            eager = recommender.model.predict(batch)
        exported = program(*[batch.named()[k] for k in sorted(batch.named())])
        torch.testing.assert_close(exported, eager, rtol=1e-5, atol=1e-6)


def test_din_never_draws_cold_items_as_negatives(
    tmp_path: Path, tiny_spec_body: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = din_experiment(tmp_path, tiny_spec_body)
    model = exp.model.train()
    model.trained_items = model.num_items - 2  # the last two ids: cold
    asked = []

    def spy(objective, num_items, targets):
        asked.append(num_items)
        return protocol.draw_negatives(objective, num_items, targets)

    monkeypatch.setattr(din_module, "draw_negatives", spy)
    users = torch.arange(exp.data.num_users)
    batch, labels = next_item_batch(exp.data, users, 7, 1.0, torch.Generator().manual_seed(0))
    model.loss(batch, labels)
    assert asked == [model.num_items - 2]

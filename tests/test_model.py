"""BERT4Rec with fused features: shapes, fusions, behavior-only, leakage, planted signal."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from featrec.batching import (
    IGNORE,
    Batch,
    next_item_batch,
    request_batch,
    training_batch,
    training_window_ends,
)
from featrec.encoders import MASK, PAD
from featrec.errors import SpecError
from featrec.model import MODEL_KINDS
from featrec.model.bert4rec import EncoderLayer
from featrec.model.protocol import labelled_loss
from featrec.spec import load_spec
from featrec.train import Experiment, train
from tests.conftest import write_spec

FUSIONS = ["sum", "concat", "gate", "nova", "difsr"]


def experiment(tmp_path: Path, body: dict, behavior_only: bool = False, **overrides) -> Experiment:
    spec = load_spec(write_spec(tmp_path, body), [f"{k}={v}" for k, v in overrides.items()])
    return Experiment.from_spec(spec.behavior_only() if behavior_only else spec)


@pytest.fixture
def odd_dims(tiny_spec_body: dict) -> dict:
    """Every feature gets its own, odd width; the model is 12 wide with 3 heads."""
    for feature, dim in zip(tiny_spec_body["features"], [5, 7, 3, 11, 9, 13, 2], strict=True):
        feature["dim"] = dim
    return tiny_spec_body


@pytest.mark.parametrize("user_mode", ["add", "token"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_shapes_with_odd_feature_widths(
    tmp_path: Path, odd_dims: dict, fusion: str, user_mode: str
) -> None:
    exp = experiment(tmp_path, odd_dims, **{"fusion.method": fusion, "fusion.user": user_mode})
    users = torch.arange(exp.data.num_users)
    batch, labels = training_batch(exp.data, users, 7, 0.3, 0.0, torch.Generator().manual_seed(1))
    out = exp.model(batch)
    assert out.hidden.shape == (*batch.item.shape, 12)
    assert labels.shape == batch.item.shape
    masked = labels != IGNORE
    assert exp.model.score(out.hidden[masked]).shape == (int(masked.sum()), 15)  # 11 items + 4
    if fusion == "gate":
        sources = 8 if user_mode == "add" else 6  # item + 7 features, or without the 2 user ones
        assert out.fusion_weights.shape == (*batch.item.shape, sources)
        assert torch.allclose(out.fusion_weights.sum(-1), torch.ones(1))


@pytest.mark.parametrize(
    "overrides",
    [
        {"fusion.user": "add"},
        {"fusion.user": "token"},
        {"model.kind": "embedding_mlp"},
    ],
    ids=["user-add", "user-token", "embedding-mlp"],
)
def test_last_hidden_equals_the_full_forward_at_the_last_slot(
    tmp_path: Path, odd_dims: dict, overrides: dict
) -> None:
    """Inference computes the last layer for the predicted slot only: same numbers."""
    exp = experiment(tmp_path, odd_dims, **{"model.layers": 3, **overrides})
    exp.model.eval()
    users = torch.arange(exp.data.num_users)
    batch = request_batch(exp.data, users, exp.data.test_idx[users], 6)
    with torch.no_grad():
        full = exp.model(batch).hidden[:, -1]
        last = exp.model.last_hidden(batch)
    assert last.shape == full.shape == (exp.data.num_users, 12)
    torch.testing.assert_close(last, full, rtol=1e-5, atol=1e-6)
    assert not torch.equal(full[0], full[1])  # not a degenerate constant output


@pytest.mark.parametrize("objective", ["cloze", "next_item"])
@pytest.mark.parametrize("user_mode", ["add", "token"])
def test_a_request_scores_the_same_whatever_else_is_in_its_batch(
    tmp_path: Path, odd_dims: dict, user_mode: str, objective: str
) -> None:
    """A short history is left-padded to the batch's widest window; padding is masked and
    positions count back from the predicted slot, so a user's scores do not depend on who
    shares the batch (the user token too: it has a position of its own)."""
    overrides = {"fusion.user": user_mode, "train.objective": objective}
    exp = experiment(tmp_path, odd_dims, **{"model.layers": 2, **overrides})
    exp.model.eval()
    users = torch.arange(exp.data.num_users)
    targets = exp.data.test_idx[users]
    together = request_batch(exp.data, users, targets, 50)
    widths = (together.item != PAD).sum(1)
    assert widths.unique().numel() > 1  # some windows are padded in the joint batch
    with torch.no_grad():
        joint = exp.model.last_hidden(together)
        for user in users[(targets >= 0) & (widths < together.item.shape[1])]:
            alone = request_batch(exp.data, user[None], targets[user][None], 50)
            assert alone.item.shape[1] < together.item.shape[1]
            own = exp.model.last_hidden(alone)[0]
            torch.testing.assert_close(own, joint[user], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("user_mode", ["add", "token"])
def test_training_scores_masked_slots_as_the_full_forward_does(
    tmp_path: Path, odd_dims: dict, user_mode: str
) -> None:
    """Training runs the last layer for the masked slots only: same hidden states there,
    hence the same loss, as the full forward (dropout off to compare)."""
    exp = experiment(tmp_path, odd_dims, **{"model.layers": 3, "fusion.user": user_mode})
    exp.model.eval()
    users = torch.arange(exp.data.num_users)
    batch, labels = training_batch(exp.data, users, 7, 0.7, 0.0, torch.Generator().manual_seed(2))
    masked = labels != IGNORE
    assert masked.sum(1).unique().numel() > 1  # rows with different numbers of masked slots
    with torch.no_grad():
        full = exp.model(batch).hidden
        out = exp.model(batch, query=masked)
        assert out.hidden.shape == (len(users), int(masked.sum(1).max()), 12)
        torch.testing.assert_close(out.hidden[out.query_valid], full[masked], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            exp.model.loss(batch, labels),
            labelled_loss(exp.model, full, labels),
            rtol=1e-5,
            atol=1e-6,
        )


@pytest.mark.parametrize("user_mode", ["add", "token"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_per_item_fusion_trains_as_per_token_fusion(
    tmp_path: Path, odd_dims: dict, fusion: str, user_mode: str
) -> None:
    """The model fuses item-level sources once per item for large batches: the same loss
    and the same gradients for every parameter as fusing them per token (dropout on, the
    same random draws), padding slots included."""
    exp = experiment(tmp_path, odd_dims, **{"fusion.method": fusion, "fusion.user": user_mode})
    users = torch.arange(exp.data.num_users)
    batch, labels = training_batch(exp.data, users, 7, 0.3, 0.1, torch.Generator().manual_seed(3))
    assert (batch.item == 0).any() and batch.item.numel() >= exp.model.num_items
    results = []
    for per_item in (True, False):
        exp.model.fuse_per_item = per_item
        exp.model.zero_grad()
        torch.manual_seed(0)
        loss = exp.model.loss(batch, labels)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in exp.model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    (loss, grads), (expected, expected_grads) = results
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert grads.keys() == expected_grads.keys()
    assert any(name.startswith("features.") for name in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("behavior_only", [False, True], ids=["full", "behavior-only"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_fusion_builds_trains_and_evaluates(
    tmp_path: Path, tiny_spec_body: dict, fusion: str, behavior_only: bool
) -> None:
    tiny_spec_body |= {"fusion": {"method": fusion}, "train": {"epochs": 2, "batch_size": 3}}
    spec = load_spec(write_spec(tmp_path, tiny_spec_body))
    final = train(spec.behavior_only() if behavior_only else spec, tmp_path / "run")
    assert final["variant"] == ("behavior-only" if behavior_only else "full")
    assert set(final["test"]) >= {"hr@10", "ndcg@10", "mrr@10"}
    assert 0.0 <= final["test"]["ndcg@10"] <= 1.0


def test_behavior_only_has_no_side_parameters(tmp_path: Path, tiny_spec_body: dict) -> None:
    full = experiment(tmp_path, tiny_spec_body, **{"fusion.method": "gate"}).model
    plain = experiment(
        tmp_path, tiny_spec_body, behavior_only=True, **{"fusion.method": "gate"}
    ).model
    names = [name for name, _ in plain.named_parameters()] + [n for n, _ in plain.named_buffers()]
    side = ("features.", "fusion.", "user_projection.", "item_table_")
    assert not [name for name in names if name.startswith(side)]
    assert any(name.startswith("features.") for name, _ in full.named_parameters())
    extra = sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra > 0


def test_training_step_lowers_the_loss(tmp_path: Path, tiny_spec_body: dict) -> None:
    exp = experiment(tmp_path, tiny_spec_body)
    exp.model.eval()  # no dropout: the loss change comes from the step alone
    users = torch.arange(exp.data.num_users)
    batch, labels = training_batch(exp.data, users, 7, 0.5, 0.0, torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(exp.model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        loss = labelled_loss(exp.model, exp.model(batch).hidden, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.1


# --- leakage (docs/design.md §3) -----------------------------------------------------------------


def _perturbed(exp: Experiment, flat_positions: torch.Tensor, columns: list[str]):
    """A copy of the data with new values at ``flat_positions`` in the item ids and columns."""
    data = exp.data
    item = data.item.clone()
    item[flat_positions] = (item[flat_positions] - 4 + 1) % (exp.model.num_items - 4) + 4
    event = dict(data.event)
    for column in columns:
        values = event[column].clone()
        values[flat_positions] = values[flat_positions] + 1
        event[column] = values
    return replace(data, item=item, event=event)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_hidden_features_at_masked_slots_cannot_change_outputs(
    tmp_path: Path, tiny_spec_body: dict, fusion: str
) -> None:
    exp = experiment(tmp_path, tiny_spec_body, **{"fusion.method": fusion})
    exp.model.eval()
    users = torch.arange(exp.data.num_users)
    batch, labels = training_batch(exp.data, users, 7, 0.4, 0.0, torch.Generator().manual_seed(5))
    ends = exp.data.train_len[users]
    length = batch.item.shape[1]
    positions = ends[:, None] - length + torch.arange(length)  # sequence position of each slot
    flat = (exp.data.offsets[users][:, None] + positions)[labels != IGNORE]
    hidden_columns = sorted(exp.data.hidden_event)
    assert hidden_columns == ["rating"]
    changed = _perturbed(exp, flat, hidden_columns)
    again, _ = training_batch(changed, users, 7, 0.4, 0.0, torch.Generator().manual_seed(5))
    assert torch.equal(exp.model(batch).hidden, exp.model(again).hidden)


@pytest.mark.parametrize("user_mode", ["add", "token"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_the_predicted_slot_hides_item_and_after_features_only(
    tmp_path: Path, tiny_spec_body: dict, fusion: str, user_mode: str
) -> None:
    exp = experiment(
        tmp_path, tiny_spec_body, **{"fusion.method": fusion, "fusion.user": user_mode}
    )
    exp.model.eval()
    users, targets = exp.data.targets("test")
    flat = exp.data.offsets[users] + targets
    batch = request_batch(exp.data, users, targets, 7)
    assert (batch.item[:, -1] == MASK).all() and (batch.event["rating"][:, -1] == MASK).all()
    scores = exp.model.score(exp.model(batch).hidden[:, -1])
    hidden = request_batch(_perturbed(exp, flat, ["rating"]), users, targets, 7)
    assert torch.equal(scores, exp.model.score(exp.model(hidden).hidden[:, -1]))
    # the request time is real signal: changing it must change the scores
    visible = request_batch(_perturbed(exp, flat, ["time.hour"]), users, targets, 7)
    assert not torch.equal(scores, exp.model.score(exp.model(visible).hidden[:, -1]))


# --- planted signal -----------------------------------------------------------------------


def planted_hour_data(tmp_path: Path) -> dict:
    """The item of each event is decided by its hour (80%) or random: only the request time
    at the predicted slot tells the next item; the history does not."""
    rng = np.random.default_rng(7)
    rows = []
    for user in range(240):
        times = np.sort(rng.integers(0, 60 * 86400, 14))
        for t in times:
            hour = (t // 3600) % 24
            item = 100 + hour if rng.random() < 0.8 else 100 + int(rng.integers(0, 24))
            rows.append((user, item, int(t)))
    frame = pl.DataFrame(rows, schema=["user_id", "item_id", "timestamp"], orient="row")
    frame.write_parquet(tmp_path / "events.parquet")
    return {
        "name": "planted",
        "data": {"interactions": str(tmp_path / "events.parquet")},
        "features": [{"name": "time", "scope": "event", "type": "time", "column": "timestamp",
                      "parts": ["hour"], "known_at": "request"}],
        "model": {"dim": 24, "layers": 1, "heads": 2, "max_len": 14, "dropout": 0.1},
        "train": {"epochs": 40, "batch_size": 32, "lr": 0.005, "warmup_steps": 5, "patience": 40},
    }  # fmt: skip


def test_planted_request_hour_signal_is_found_by_the_full_model_only(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, planted_hour_data(tmp_path)))
    full = train(spec, tmp_path / "full")["test"]["ndcg@10"]
    plain = train(spec.behavior_only(), tmp_path / "plain")["test"]["ndcg@10"]
    assert full > plain + 0.25, (full, plain)
    assert full > 0.5


@pytest.mark.parametrize("method", ["concat", "gate"])
def test_fusion_equals_the_concatenated_form_with_broadcast_sources(method: str) -> None:
    from featrec.model.fusion import FUSIONS

    torch.manual_seed(0)
    dims = {"item": 6, "user_a": 6, "event_b": 3}
    fusion = FUSIONS[method](dims, 6)
    sources = {"item": torch.randn(2, 5, 6), "user_a": torch.randn(2, 1, 6),
               "event_b": torch.randn(2, 5, 3)}  # fmt: skip
    fused, _ = fusion(sources)
    expanded = {k: v.expand(2, 5, -1) for k, v in sources.items()}
    if method == "concat":
        expected = fusion.linear(torch.cat(list(expanded.values()), dim=-1))
    else:
        values = [fusion.project[k](v) if k in fusion.project else v for k, v in expanded.items()]
        weights = torch.softmax(fusion.gate(torch.cat(values, dim=-1)), dim=-1)
        expected = (weights.unsqueeze(-1) * torch.stack(values, dim=-2)).sum(-2) * len(values)
    assert fused.shape == (2, 5, 6)
    assert torch.allclose(fused, expected, atol=1e-6)


@pytest.mark.parametrize("method", ["sum", "concat", "gate"])
def test_fusion_of_per_item_tables_equals_fusion_per_token(method: str) -> None:
    """Item-level sources given once per item (I, D) and looked up inside the fusion give
    the outputs and gradients of the same sources gathered per token first; PAD slots pass
    no gradient to the tables."""
    from featrec.model.fusion import FUSIONS

    torch.manual_seed(0)
    dims = {"item": 6, "genre": 4, "user_a": 6, "event_b": 3}  # genre and event_b projected
    fusion = FUSIONS[method](dims, 6)
    tables = {"item": torch.randn(7, 6, requires_grad=True),
              "genre": torch.randn(7, 4, requires_grad=True)}  # fmt: skip
    others = {"user_a": torch.randn(2, 1, 6), "event_b": torch.randn(2, 5, 3)}
    items = torch.tensor([[PAD, PAD, 3, 4, 3], [2, 5, 6, 2, 3]])
    upstream = torch.randn(2, 5, 6)

    def run(per_item: bool, upstream: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        fusion.zero_grad()
        for table in tables.values():
            table.grad = None
        if per_item:
            fused, _ = fusion(tables | others, items)
        else:
            fused, _ = fusion({k: t[items] for k, t in tables.items()} | others)
        (fused * upstream).sum().backward()
        grads = [t.grad.clone() for t in tables.values()]
        return fused.detach(), grads + [p.grad.clone() for p in fusion.parameters()]

    _, grads = run(per_item=True, upstream=upstream)
    assert all(table[PAD].abs().sum() == 0 for table in grads[:2])
    # in the model, padding slots feed nothing downstream: no gradient reaches them
    upstream[items == PAD] = 0
    fused, grads = run(per_item=True, upstream=upstream)
    expected, expected_grads = run(per_item=False, upstream=upstream)
    assert torch.allclose(fused, expected, atol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        assert torch.allclose(got, want, atol=1e-5)


def test_several_id_columns_embed_as_the_sum_of_their_tables() -> None:
    """A time feature's parts, looked up together, give each part's embedding summed, and
    the gradients of separate lookups; PAD ids add nothing and train no row."""
    from featrec.encoders import MASK, PAD
    from featrec.model.embeddings import ColumnConfig, FeatureConfig, FeatureEmbedding

    torch.manual_seed(0)
    columns = (ColumnConfig("t.hour", "ids", 28), ColumnConfig("t.weekday", "ids", 11),
               ColumnConfig("t.gap", "ids", 9))  # fmt: skip
    module = FeatureEmbedding(FeatureConfig("t", "event", columns, 5))
    for part in module.parts:  # every row non-zero but PAD's, so a wrong row would show
        nn.init.normal_(part.weight[1:])
    values = [torch.randint(N, (3, 7)) for N in (28, 11, 9)]
    values[0][0, :2] = PAD
    values[1][0, 1:3] = PAD
    values[2][1, 4] = MASK
    upstream = torch.randn(3, 7, 5)
    (module(values) * upstream).sum().backward()
    got = [part.weight.grad.clone() for part in module.parts]
    module.zero_grad()
    expected = sum(part(value) for part, value in zip(module.parts, values, strict=True))
    (expected * upstream).sum().backward()
    assert torch.allclose(module(values), expected, atol=1e-6)
    for part, grad in zip(module.parts, got, strict=True):
        assert grad[PAD].abs().sum() == 0
        assert torch.allclose(grad, part.weight.grad, atol=1e-6)
    assert module([value[:, :0] for value in values]).shape == (3, 0, 5)  # empty windows


def test_embedding_mlp_baseline_trains_and_only_looks_back(
    tmp_path: Path, tiny_spec_body: dict
) -> None:
    tiny_spec_body |= {"train": {"epochs": 2, "batch_size": 3}}
    final = train(load_spec(write_spec(tmp_path, tiny_spec_body), ["model.kind=embedding_mlp"]),
                  tmp_path / "run")  # fmt: skip
    assert 0.0 <= final["test"]["ndcg@10"] <= 1.0 and final["fusion_weights"] == {}
    exp = experiment(tmp_path, tiny_spec_body, **{"model.kind": "embedding_mlp"})
    exp.model.eval()
    users, targets = exp.data.targets("test")
    batch = request_batch(exp.data, users, targets, 7)
    hidden = exp.model(batch).hidden
    later = Batch.from_named({k: v.clone() for k, v in batch.named().items()})
    later.item[:, -1] = 5  # the predicted slot's item (and anything after) is never read
    later.event["rating"][:, -1] = 4
    assert torch.equal(exp.model(later).hidden[:, -1], hidden[:, -1])
    later.item[:, -2] = 6  # the history is
    assert not torch.equal(exp.model(later).hidden[:, -1], hidden[:, -1])


def test_next_item_targets_are_a_share_of_the_positions_with_history(
    tmp_path: Path, tiny_spec_body: dict
) -> None:
    data = experiment(tmp_path, tiny_spec_body).data
    users, max_len = torch.arange(data.num_users), 7
    batch, every = next_item_batch(data, users, max_len, 1.0, torch.Generator().manual_seed(0))
    items = batch.item
    assert torch.equal(every != IGNORE, (items != PAD) & ((items != PAD).cumsum(dim=1) > 1))
    assert torch.equal(every[every != IGNORE], items[every != IGNORE])  # labels: the items
    chosen = 0
    generator = torch.Generator().manual_seed(1)
    for _ in range(200):
        _, labels = next_item_batch(data, users, max_len, 0.2, generator)
        picked = labels != IGNORE
        assert not (picked & (every == IGNORE)).any()  # only positions with history
        assert torch.equal(labels[picked], items[picked])
        assert picked.any(dim=1)[(every != IGNORE).any(dim=1)].all()  # ≥ 1 per sequence
        chosen += int(picked.sum())
    # each one with probability 0.2, and one more where none was drawn
    per_row = (every != IGNORE).sum(dim=1).double()
    expected = float((0.2 * per_row + 0.8**per_row * (per_row > 0)).sum())
    assert abs(chosen / 200 - expected) < 0.05 * expected


def test_crop_draws_every_full_earlier_window_of_long_histories_only(
    tmp_path: Path, tiny_spec_body: dict
) -> None:
    data = experiment(tmp_path, tiny_spec_body).data
    users, max_len = torch.arange(data.num_users), 3
    train_len = data.train_len
    generator = torch.Generator().manual_seed(0)
    untouched = generator.get_state()
    assert torch.equal(training_window_ends(data, users, max_len, 0.0, generator), train_len)
    assert torch.equal(generator.get_state(), untouched)  # uncropped runs draw nothing extra
    long = train_len > max_len
    assert long.any() and (~long).any()
    drawn, newest = set(), 0
    for _ in range(300):
        ends = training_window_ends(data, users, max_len, 0.5, generator)
        assert torch.equal(ends[~long], train_len[~long])
        drawn |= {(u, e) for u, e in zip(users[long].tolist(), ends[long].tolist(), strict=True)}
        newest += int((ends[long] == train_len[long]).sum())
    possible = {(u, e) for u in users[long].tolist() for e in range(max_len, int(train_len[u]) + 1)}
    assert drawn == possible  # only full windows, and every one of them
    assert newest / (300 * int(long.sum())) > 0.5  # the newest window stays the most common


def test_torch_initialisation_enlarges_the_layers_only(
    tmp_path: Path, tiny_spec_body: dict
) -> None:
    bert = experiment(tmp_path, tiny_spec_body).model
    torch_init = experiment(tmp_path, tiny_spec_body, **{"model.init": "torch"}).model
    dim = 12
    for layer in torch_init.layers:  # as nn.TransformerEncoderLayer initialises its weights
        # Xavier-uniform over (3 dim, dim): bound sqrt(6 / 4 dim), above nn.Linear's 1/sqrt(dim)
        assert dim**-0.5 < layer.qkv.weight.abs().max() <= (6 / (4 * dim)) ** 0.5
        assert not layer.qkv.bias.any() and not layer.out.bias.any()
        linears = [(layer.out, dim), (layer.feed_forward[0], dim), (layer.feed_forward[2], 4 * dim)]
        for linear, fan_in in linears:
            bound = fan_in**-0.5  # nn.Linear's default: uniform within 1/sqrt(fan_in)
            assert 0.8 * bound < linear.weight.abs().max() <= bound
        assert 0 < layer.feed_forward[2].bias.abs().max() <= (4 * dim) ** -0.5
    for layer in bert.layers:  # BERT: truncated normal within two std of 0.02
        assert layer.qkv.weight.abs().max() <= 0.04 and not layer.feed_forward[2].bias.any()
    # embeddings, fusion and output head keep BERT's initialisation, draw for draw
    kept = [n for n, _ in bert.named_parameters() if not n.startswith("layers.")]
    assert "item_embedding.weight" in kept and "head.0.weight" in kept
    for (name, a), (_, b) in zip(
        bert.named_parameters(), torch_init.named_parameters(), strict=True
    ):
        if name in kept:
            assert torch.equal(a, b), name


def test_encoder_layer_computes_what_torchs_layer_computes() -> None:
    """Same weights, same outputs as a post-LN nn.TransformerEncoderLayer (GELU, no
    dropout), with padded keys masked out."""
    torch.manual_seed(0)
    dim, heads = 12, 3
    ours = EncoderLayer(dim, heads, 0.0, 0.0).eval()
    reference = nn.TransformerEncoderLayer(
        dim, heads, 4 * dim, 0.0, "gelu", batch_first=True
    ).eval()
    with torch.no_grad():
        reference.self_attn.in_proj_weight.copy_(ours.qkv.weight)
        reference.self_attn.in_proj_bias.copy_(ours.qkv.bias.normal_())
        reference.self_attn.out_proj.weight.copy_(ours.out.weight)
        reference.self_attn.out_proj.bias.copy_(ours.out.bias.normal_())
        reference.linear1.load_state_dict(ours.feed_forward[0].state_dict())
        reference.linear2.load_state_dict(ours.feed_forward[2].state_dict())
        for norm in (ours.norm_attention, ours.norm_feed_forward):
            norm.weight.normal_(1.0, 0.1), norm.bias.normal_()
        reference.norm1.load_state_dict(ours.norm_attention.state_dict())
        reference.norm2.load_state_dict(ours.norm_feed_forward.state_dict())
        x = torch.randn(4, 7, dim)
        padding = torch.zeros(4, 7, dtype=torch.bool)
        padding[1, :3] = padding[3, :5] = True
        expected = reference(x, src_key_padding_mask=padding)
        got = ours(x, ~padding[:, None, None, :])
    torch.testing.assert_close(got[~padding], expected[~padding], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(MODEL_KINDS))
def test_every_kind_scores_given_items_as_it_scores_all(
    tmp_path: Path, odd_dims: dict, kind: str
) -> None:
    loss = {"train.loss": "sampled_softmax"} if kind == "din" else {}
    exp = experiment(tmp_path, odd_dims, **{"model.kind": kind, **loss})
    assert isinstance(exp.model, MODEL_KINDS[kind])
    model = exp.model.eval()
    users, targets = exp.data.targets("test")
    batch = request_batch(exp.data, users, targets, 7)
    shared = torch.tensor([4, 7, 9])
    with torch.no_grad():
        every = model.predict(batch)  # (B, I)
        torch.testing.assert_close(model.predict(batch, shared), every[:, shared])
    assert torch.isinf(every[:, :4]).all()  # reserved ids are never candidates
    if kind == "din":
        return  # no candidate-free hidden state to score
    hidden = torch.randn(5, 12)
    with torch.no_grad():
        every = model.score(hidden)  # (5, I)
        torch.testing.assert_close(model.score(hidden, shared), every[:, shared])
        per_row = torch.randint(4, model.num_items, (5, 3))
        torch.testing.assert_close(model.score(hidden, per_row), every.gather(1, per_row))


# --- attention-level fusion ---------------------------------------------------------------


def _score_map(layer: EncoderLayer, query_in: torch.Tensor, key_in: torch.Tensor,
               q_rows: slice, k_rows: slice) -> torch.Tensor:  # fmt: skip
    """(B, H, L, L) q k^T / sqrt(width per head) of one projection pair of ``layer``."""
    heads = layer.heads
    w, b = layer.qkv.weight, layer.qkv.bias
    if isinstance(q_rows, int):  # decoupled source number q_rows: its own projection, W wide
        w, b = layer.side_weight[q_rows].T, layer.side_bias[q_rows, 0]
        width = w.shape[0] // 2
        q_rows, k_rows = slice(0, width), slice(width, 2 * width)
    q = F.linear(query_in, w[q_rows], b[q_rows]).unflatten(-1, (heads, -1)).transpose(1, 2)
    k = F.linear(key_in, w[k_rows], b[k_rows]).unflatten(-1, (heads, -1)).transpose(1, 2)
    return q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # each map by its own width


@pytest.mark.parametrize("method", ["nova", "difsr"])
def test_attention_level_fusion_equals_its_explicit_score_maps(method: str) -> None:
    """The item's score map from queries and keys of item + steer (nova: every feature;
    difsr: the user features) plus, under difsr, each decoupled source's own map, summed
    (DIF-SR's decoupled attention) through queries and keys concatenated along the head
    dimension. Values carry the item stream alone; the selected-slots path (last layer)
    gives the same rows."""
    torch.manual_seed(0)
    dim, heads, length = 12, 3, 6
    decoupled = 5 if method == "difsr" else 0  # difsr: 12 / 3 / 5 → 1 column per head each
    layer = EncoderLayer(dim, heads, 0.0, 0.0, decoupled=decoupled).eval()
    x = torch.randn(2, length, dim)
    steer = torch.randn(2, 1, dim)  # e.g. user features: the same at every slot
    sources = [torch.randn(2, length, dim) for _ in range(decoupled)]
    side = [steer, torch.stack(sources)] if decoupled else [steer]
    attend = torch.ones(2, 1, 1, length, dtype=torch.bool)
    attend[0, ..., :2] = False  # padding of the first sequence
    q_rows, k_rows, v_rows = slice(0, dim), slice(dim, 2 * dim), slice(2 * dim, 3 * dim)
    scores = _score_map(layer, x + steer, x + steer, q_rows, k_rows)
    for number, source in enumerate(sources):
        scores = scores + _score_map(layer, source, source, number, None)
    probabilities = torch.softmax(scores.masked_fill(~attend, float("-inf")), dim=-1)
    values = F.linear(x, layer.qkv.weight[v_rows], layer.qkv.bias[v_rows])
    attended = probabilities @ values.unflatten(-1, (heads, -1)).transpose(1, 2)
    mixed = attended.transpose(1, 2).reshape(2, length, dim)
    expected = layer.norm_attention(x + layer.out(mixed))
    expected = layer.norm_feed_forward(expected + layer.feed_forward(expected))
    with torch.no_grad():
        got = layer(x, attend, None, side)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        select = torch.tensor([[5, 3], [0, 4]])
        picked = layer(x, attend, select, side)
        torch.testing.assert_close(picked, got.gather(1, select[..., None].expand(-1, -1, dim)))


@pytest.mark.parametrize("method", ["nova", "difsr"])
def test_attention_level_fusion_keeps_the_values_free_of_features(
    tmp_path: Path, tiny_spec_body: dict, method: str
) -> None:
    """The tokens are the item embedding alone (no fusion parameters over features), the
    features reach the output through the attention scores only, and a behavior-only spec
    builds the plain model."""
    exp = experiment(tmp_path, tiny_spec_body, **{"fusion.method": method})
    model = exp.model
    assert model.side_method == method and not model.fuse_per_item
    assert not any(name.startswith("fusion.") for name, _ in model.named_parameters())
    # difsr: a map of its own for tags, year, time, device, rating; the user features (age,
    # job: the same at every slot, where a map of their own would change nothing) steer
    decoupled = ["device", "rating", "tags", "time", "year"] if method == "difsr" else []
    assert model.decoupled == decoupled
    assert len(model.side_norm) == 1 + len(decoupled)
    for layer in model.layers:
        shape = None if layer.side_weight is None else layer.side_weight.shape[0]
        assert shape == (len(decoupled) or None)
    plain = experiment(tmp_path, tiny_spec_body, behavior_only=True, **{"fusion.method": method})
    assert plain.model.side_method is None
    assert not any("side" in name for name, _ in plain.model.named_parameters())


def test_auxiliary_attribute_loss_predicts_the_masked_items_features(
    tmp_path: Path, tiny_spec_body: dict
) -> None:
    """fusion.aux_weight adds, per categorical item feature, the loss of predicting the
    masked item's values from its hidden state: cross-entropy for one id, multi-hot binary
    cross-entropy for a list (PAD is no value)."""
    plain = experiment(tmp_path, tiny_spec_body, **{"fusion.method": "difsr"}).model
    exp = experiment(
        tmp_path, tiny_spec_body, **{"fusion.method": "difsr", "fusion.aux_weight": 0.5}
    )
    model = exp.model.eval()
    assert not plain.attribute_heads and set(model.attribute_heads) == {"tags", "year"}
    users = torch.arange(exp.data.num_users)
    batch, labels = training_batch(exp.data, users, 7, 0.4, 0.0, torch.Generator().manual_seed(4))
    total = model.loss(batch, labels)
    labelled = labels != IGNORE
    out = model(batch, query=labelled)
    hidden, targets = out.hidden[out.query_valid], labels[labelled]
    base = F.cross_entropy(model.score(hidden), targets)
    year = F.cross_entropy(model.attribute_heads["year"](hidden), model.item_table_year[targets])
    tag_logits = model.attribute_heads["tags"](hidden)
    wanted = torch.zeros_like(tag_logits)
    for row, ids in enumerate(model.item_table_tags[targets].tolist()):
        for tag in ids:
            if tag != PAD:
                wanted[row, tag] = 1.0
    tags = F.binary_cross_entropy_with_logits(tag_logits, wanted)
    torch.testing.assert_close(total, base + 0.5 * (year + tags))
    total.backward()
    assert model.attribute_heads["tags"].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("method", "init", "bert"),
    [("gate", "auto", True), ("nova", "auto", False), ("difsr", "auto", False),
     ("nova", "bert", True), ("gate", "torch", False)],
)  # fmt: skip
def test_auto_init_is_torch_under_attention_level_fusion_only(
    tmp_path: Path, tiny_spec_body: dict, method: str, init: str, bert: bool
) -> None:
    model = experiment(
        tmp_path, tiny_spec_body, **{"fusion.method": method, "model.init": init}
    ).model
    weight = model.layers[0].qkv.weight  # BERT's truncated normal stays within ±0.04
    assert (weight.abs().max() <= 0.04) == bert
    ids_only = experiment(tmp_path, tiny_spec_body, True, **{"fusion.method": method}).model
    assert ids_only.layers[0].qkv.weight.abs().max() <= 0.04  # nothing to fuse: bert


@pytest.mark.parametrize("method", ["nova", "difsr"])
def test_token_scopes_put_those_features_in_the_tokens_and_the_rest_in_attention(
    tmp_path: Path, tiny_spec_body: dict, method: str
) -> None:
    exp = experiment(
        tmp_path, tiny_spec_body,
        **{"fusion.method": method, "fusion.token_scopes": "[event]"},
    )  # fmt: skip
    model = exp.model
    fused = [f.name for f in model.fused_features]
    assert sorted(fused) == ["device", "rating", "time"]
    assert sorted(f.name for f in model.side_features) == ["age", "job", "tags", "year"]
    assert model.fusion_sources() == ["item", *fused]  # gated
    assert model.side_method == method and model.layers[0].qkv.weight.abs().max() > 0.04
    if method == "difsr":
        assert sorted(model.decoupled) == ["tags", "year"]  # user features steer
    users = torch.arange(exp.data.num_users)
    batch, _ = training_batch(exp.data, users, 7, 0.3, 0.0, torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        out = model(batch)
        assert out.fusion_weights.shape == (*batch.item.shape, 4)
        changed = Batch.from_named({k: v.clone() for k, v in batch.named().items()})
        changed.event["device"] = torch.where(changed.item > MASK, 3, changed.event["device"])
        assert not torch.allclose(model(changed).hidden, out.hidden)  # events reach the model
    every = experiment(tmp_path, tiny_spec_body, **{"fusion.method": method}).model
    assert every.fused_features == [] and len(every.side_features) == 7


def test_token_scopes_need_an_attention_level_method(tmp_path: Path, tiny_spec_body: dict) -> None:
    with pytest.raises(SpecError, match=r"fusion: .*token_scopes places some features"):
        load_spec(write_spec(tmp_path, tiny_spec_body), ["fusion.token_scopes=[event]"])


def test_feature_names_that_module_dicts_use_themselves(tmp_path, tiny_spec_body) -> None:
    """Features named like nn.ModuleDict's own attributes ("type", "keys", "train") train,
    save and load: they were a KeyError at model construction."""
    import featrec
    from featrec.spec import load_spec
    from tests.conftest import write_spec

    renames = {"job": "type", "tags": "keys", "time": "train", "year": "training"}
    for feature in tiny_spec_body["features"]:
        feature["name"] = renames.get(feature["name"], feature["name"])
    tiny_spec_body["fusion"] = {"method": "gate", "aux_weight": 0.1}
    tiny_spec_body["train"] = {"epochs": 1, "batch_size": 4}
    recommender = featrec.fit(
        load_spec(write_spec(tmp_path, tiny_spec_body)), out=tmp_path / "run", progress=False
    )
    assert {"type", "keys", "train", "training"} <= set(recommender.model.features)
    assert "keys" in recommender.model.attribute_heads
    loaded = featrec.Recommender(tmp_path / "run")
    for name, value in recommender.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value)
    assert loaded.recommend([10, 11], k=3).items

"""train.sampler: how sampled_softmax draws its negatives, and the log-q correction that keeps
the loss's gradient the full softmax's in expectation (issue 21)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import featrec.model.din as din_module
import featrec.model.protocol as protocol
from featrec.errors import SpecError
from featrec.evaluate import popularity
from featrec.ids import N_RESERVED
from featrec.model.protocol import Objective
from featrec.spec import load_spec, spec_differences
from featrec.train import Experiment, train
from tests.conftest import write_spec

ITEMS = N_RESERVED + 12
COUNTS = torch.tensor([0] * N_RESERVED + [400, 200, 100, 50, 25, 12, 6, 3, 1, 0, 0, 0])


def gradient(loss_fn, hidden: torch.Tensor) -> torch.Tensor:
    hidden = hidden.clone().requires_grad_(True)
    loss_fn(hidden).backward()
    return hidden.grad


def test_popularity_draws_follow_training_events_plus_one() -> None:
    objective = Objective("sampled_softmax", 200_000, sampler="popularity", counts=COUNTS)
    torch.manual_seed(0)
    drawn = objective.draw(ITEMS, torch.tensor([N_RESERVED]))
    assert drawn.min() >= N_RESERVED and drawn.max() < ITEMS  # never a reserved id
    share = torch.bincount(drawn, minlength=ITEMS)[N_RESERVED:] / len(drawn)
    expected = (COUNTS[N_RESERVED:] + 1) / (COUNTS[N_RESERVED:] + 1).sum()
    torch.testing.assert_close(share, expected.float(), atol=3e-3, rtol=0)
    assert share[-1] > 0  # an item without training events is still drawn (+1)


def test_in_batch_negatives_are_the_steps_own_targets() -> None:
    objective = Objective("sampled_softmax", 100, sampler="in_batch", counts=COUNTS)
    targets = torch.tensor([N_RESERVED, N_RESERVED + 3, N_RESERVED])
    assert torch.equal(objective.draw(ITEMS, targets), targets)


@pytest.mark.parametrize("sampler", ["popularity", "in_batch"])
def test_log_q_correction_subtracts_the_log_draw_probability_from_every_score(
    sampler: str,
) -> None:
    objective = Objective("sampled_softmax", 3, sampler=sampler, counts=COUNTS)
    positive, negative = torch.tensor([1.0, 0.5]), torch.tensor([[0.2, -0.3, 2.0], [0.0, 1.0, 1.0]])
    targets = torch.tensor([N_RESERVED, N_RESERVED + 4])
    negatives = torch.tensor([4, 5, 4]) + N_RESERVED
    share = (COUNTS + 1.0) / (COUNTS[N_RESERVED:] + 1.0).sum()
    log_q = share.log()
    corrected_pos, corrected_neg = positive - log_q[targets], negative - log_q[negatives]
    hits = negatives.unsqueeze(0) == targets.unsqueeze(1)  # row 1's target is drawn twice
    assert hits.sum() == 2
    logits = torch.cat([corrected_pos[:, None], corrected_neg.masked_fill(hits, -math.inf)], 1)
    expected = F.cross_entropy(logits, torch.zeros(2, dtype=torch.long))
    got = objective.loss(positive, negative, targets, negatives, ITEMS)
    torch.testing.assert_close(got, expected)


def test_log_q_makes_popularity_draws_train_like_uniform_ones() -> None:
    """As the draws grow, uniform sampled softmax tends to the softmax of the target against
    every other item. Popularity draws tend there too once log q is subtracted; without the
    correction they tend elsewhere (popular items over-weighted): the bias log q removes."""
    torch.manual_seed(0)
    weights = torch.randn(ITEMS, 6)
    hidden = torch.randn(8, 6)
    targets = torch.randint(N_RESERVED, ITEMS, (8,))

    def scores(h: torch.Tensor) -> torch.Tensor:
        logits = h @ weights.T
        logits[:, :N_RESERVED] = -math.inf
        return logits

    def against_the_others(h: torch.Tensor) -> torch.Tensor:
        s = scores(h)
        others = s.scatter(1, targets[:, None], -math.inf)
        return (others.logsumexp(1) - s.gather(1, targets[:, None]).squeeze(1)).mean()

    def sampled(objective: Objective, negatives: torch.Tensor):
        def loss(h: torch.Tensor) -> torch.Tensor:
            s = scores(h)
            positive, negative = s.gather(1, targets[:, None]).squeeze(1), s[:, negatives]
            return objective.loss(positive, negative, targets, negatives, ITEMS)

        return loss

    reference = gradient(against_the_others, hidden)
    draws = 400_000
    uniform = Objective("sampled_softmax", draws)
    corrected = Objective("sampled_softmax", draws, sampler="popularity", counts=COUNTS)
    popular = corrected.draw(ITEMS, targets)
    with_q = gradient(sampled(corrected, popular), hidden)
    without_q = gradient(sampled(uniform, popular), hidden)  # the same draws, not corrected
    torch.testing.assert_close(with_q, reference, atol=2e-2, rtol=0)
    torch.testing.assert_close(
        gradient(sampled(uniform, uniform.draw(ITEMS, targets)), hidden),
        reference, atol=2e-2, rtol=0,
    )  # fmt: skip
    assert (without_q - reference).abs().max() > 0.1


def test_a_non_uniform_sampler_without_counts_says_what_it_needs() -> None:
    objective = Objective("sampled_softmax", 5, sampler="popularity")
    with pytest.raises(RuntimeError, match="training events per item"):
        objective.draw(ITEMS, torch.tensor([N_RESERVED]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.sampler=popularity"], "train.sampler: popularity draws negatives for "
         "train.loss: sampled_softmax, but train.loss is ce"),
        (["train.loss=gbce", "train.sampler=in_batch"], "gBCE's calibration assumes uniform"),
        (["train.loss=sampled_softmax", "train.sampler=bayes"],
         "train.sampler: expected one of 'auto', 'uniform', 'popularity' or 'in_batch'"),
    ],
)  # fmt: skip
def test_a_sampler_that_does_not_fit_the_loss_is_one_line(
    tmp_path: Path, tiny_spec_body: dict, overrides: list[str], message: str
) -> None:
    with pytest.raises(SpecError) as error:
        load_spec(write_spec(tmp_path, tiny_spec_body), overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_training_hands_the_sampler_the_training_popularity(
    tmp_path: Path, tiny_spec_body: dict
) -> None:
    spec = load_spec(
        write_spec(tmp_path, tiny_spec_body),
        ["train.loss=sampled_softmax", "train.sampler=popularity"],
    )
    exp = Experiment.from_spec(spec)
    counts = popularity(exp.data, exp.model.num_items)
    share = (counts[N_RESERVED:] + 1) / (counts[N_RESERVED:] + 1).sum()
    torch.testing.assert_close(exp.model.objective.log_q[N_RESERVED:], share.log())


@pytest.mark.parametrize(
    ("loss", "drawn_by"), [("sampled_softmax", "popularity"), ("gbce", "uniform")]
)
def test_auto_draws_by_popularity_for_sampled_softmax_and_uniformly_for_gbce(
    tmp_path: Path, tiny_spec_body: dict, loss: str, drawn_by: str
) -> None:
    spec = load_spec(write_spec(tmp_path, tiny_spec_body), [f"train.loss={loss}"])
    assert spec.train.sampler == "auto"
    assert Experiment.from_spec(spec).model.objective.sampler == drawn_by


def test_a_spec_stored_with_the_old_uniform_default_resumes_where_it_draws_the_same(
    tmp_path: Path, tiny_spec_body: dict
) -> None:
    """Specs stored before `auto` wrote `sampler: uniform`: still the same run for ce and
    gbce (auto resolves to uniform), another one for sampled_softmax (now popularity)."""
    path = write_spec(tmp_path, tiny_spec_body)
    for loss, same in (("ce", True), ("gbce", True), ("sampled_softmax", False)):
        given = load_spec(path, [f"train.loss={loss}"])
        stored = given.model_dump(mode="json")
        stored["train"]["sampler"] = "uniform"
        differences = spec_differences(stored, given)
        assert (differences == []) is same, (loss, differences)
    assert spec_differences(stored, given) == ["train.sampler: 'uniform' → 'popularity'"]


def test_every_sampler_trains(tmp_path: Path, tiny_spec_body: dict) -> None:
    tiny_spec_body |= {"train": {"epochs": 1, "batch_size": 3}}
    losses = {}
    for sampler in ("uniform", "popularity", "in_batch"):
        spec = load_spec(
            write_spec(tmp_path, tiny_spec_body),
            ["train.loss=sampled_softmax", f"train.sampler={sampler}", "train.negatives=5"],
        )
        train(spec, tmp_path / sampler)
        rows = (tmp_path / sampler / "metrics.jsonl").read_text().splitlines()
        losses[sampler] = json.loads(rows[0])["loss"]
    assert all(math.isfinite(v) for v in losses.values()) and len(set(losses.values())) == 3


def test_din_draws_from_the_same_sampler(
    tmp_path: Path, tiny_spec_body: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny_spec_body |= {"train": {"epochs": 1, "batch_size": 3}}
    spec = load_spec(
        write_spec(tmp_path, tiny_spec_body),
        ["model.kind=din", "train.loss=sampled_softmax", "train.sampler=in_batch"],
    )
    seen = []

    def spy(objective: Objective, num_items: int, targets: torch.Tensor) -> torch.Tensor:
        seen.append(objective.sampler)
        return protocol.draw_negatives(objective, num_items, targets)

    monkeypatch.setattr(din_module, "draw_negatives", spy)
    train(spec, tmp_path / "din")
    assert seen and set(seen) == {"in_batch"}

"""train.objective next_item: SASRec's causal training in BERT4Rec's model.

What must hold: a position sees nothing after it; it carries the request-known features of
the event it predicts and its own after-the-fact ones; evaluation predicts from the same
kind of position training did; the selected-slot last layer gives the full forward's
numbers; a run trains, evaluates, resumes and serves; the other model kinds refuse it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from featrec.ablate import variants
from featrec.batching import (
    IGNORE,
    Batch,
    causal_batch,
    causal_view,
    gather_window,
    request_batch,
)
from featrec.encoders import PAD
from featrec.errors import SpecError
from featrec.export import export_run
from featrec.model.protocol import labelled_loss
from featrec.recommend import load
from featrec.spec import Spec, load_spec
from featrec.train import Experiment, train
from tests.conftest import interrupted_and_resumed, write_spec
from tests.test_recommend import assert_recommend_ranks_as_evaluation

FUSIONS = ["gate", "nova", "difsr"]


def causal_experiment(tmp_path: Path, body: dict, *overrides: str) -> Experiment:
    spec = load_spec(write_spec(tmp_path, body), ["train.objective=next_item", *overrides])
    return Experiment.from_spec(spec)


def test_the_view_shifts_items_and_after_features_and_keeps_request_features() -> None:
    window = Batch(
        item=torch.tensor([[PAD, 11, 12, 13]]),
        event={"hour": torch.tensor([[0, 1, 2, 3]]), "rating": torch.tensor([[0, 5, 6, 7]])},
        user={"job": torch.tensor([4])},
    )
    view = causal_view(window, frozenset({"rating"}))
    assert view.item.tolist() == [[PAD, PAD, 11, 12]]  # position t: the item before slot t
    assert view.event["rating"].tolist() == [[0, 0, 5, 6]]  # known after that item
    assert view.event["hour"].tolist() == [[0, 1, 2, 3]]  # when slot t is requested
    assert view.user["job"].tolist() == [4]


def test_training_positions_hold_the_past_and_predict_the_next_item(
    tmp_path: Path, tiny_spec_body: dict
) -> None:
    exp = causal_experiment(tmp_path, tiny_spec_body)
    assert exp.model.after == exp.data.hidden_event == {"rating"}
    users = torch.arange(exp.data.num_users)
    ends = exp.data.train_len[users]
    window = gather_window(exp.data, users, ends, 7)
    batch, labels = causal_batch(exp.data, users, 7, 1.0, exp.model.after)
    assert batch.item.shape == labels.shape == window.item.shape
    for row, user in enumerate(users.tolist()):
        start = int(exp.data.offsets[user])
        events = exp.data.item[start : start + int(ends[row])].tolist()[-7:]
        inputs = [i for i in batch.item[row].tolist() if i != PAD]
        assert inputs == events[:-1]
        targets = [i for i in labels[row].tolist() if i != IGNORE]
        assert targets == events[1:]  # every position with a next event, at share 1
    labelled = labels != IGNORE
    rating = window.event["rating"]  # the target's own rating is nowhere in its position
    assert torch.equal(batch.event["rating"][:, 1:], rating[:, :-1])
    hours = [k for k in window.event if k.startswith("time.")] + ["device"]
    for column in hours:  # the target's request: its time and device, at its position
        assert torch.equal(batch.event[column][labelled], window.event[column][labelled])


@pytest.mark.parametrize("user_mode", ["add", "token"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_a_position_sees_nothing_after_it(
    tmp_path: Path, tiny_spec_body: dict, fusion: str, user_mode: str
) -> None:
    exp = causal_experiment(
        tmp_path, tiny_spec_body, f"fusion.method={fusion}", f"fusion.user={user_mode}",
        "model.layers=2",
    )  # fmt: skip
    exp.model.eval()
    users = torch.arange(exp.data.num_users)
    batch, _ = causal_batch(exp.data, users, 7, 1.0, exp.model.after)
    changed = Batch(batch.item.clone(), dict(batch.event), dict(batch.user))
    changed.item[:, -1] = torch.where(batch.item[:, -1] == 3, 4, 3)  # the newest item only
    with torch.no_grad():
        before, after = exp.model(batch).hidden, exp.model(changed).hidden
    assert torch.isfinite(before).all()  # padding before the first event: no NaN
    torch.testing.assert_close(before[:, :-1], after[:, :-1])  # earlier positions: same
    assert not torch.allclose(before[:, -1], after[:, -1])  # the newest: it sees its item


@pytest.mark.parametrize("user_mode", ["add", "token"])
@pytest.mark.parametrize("fusion", FUSIONS)
def test_the_selected_slots_give_the_full_forward_numbers(
    tmp_path: Path, tiny_spec_body: dict, fusion: str, user_mode: str
) -> None:
    exp = causal_experiment(
        tmp_path, tiny_spec_body, "model.layers=3", f"fusion.method={fusion}",
        f"fusion.user={user_mode}",
    )  # fmt: skip
    exp.model.eval()
    users = torch.arange(exp.data.num_users)
    generator = torch.Generator().manual_seed(3)
    batch, labels = causal_batch(exp.data, users, 7, 0.5, exp.model.after, generator)
    masked = labels != IGNORE
    with torch.no_grad():
        full = exp.model(batch).hidden
        out = exp.model(batch, query=masked)
        torch.testing.assert_close(out.hidden[out.query_valid], full[masked])
        torch.testing.assert_close(
            exp.model.loss(batch, labels), labelled_loss(exp.model, full, labels)
        )


def test_evaluation_predicts_from_the_newest_event_with_the_requests_features(
    tmp_path: Path, tiny_spec_body: dict
) -> None:
    """The request window (history + predicted slot) seen causally is the training view of
    the same events: the newest position, with the request's time, predicts."""
    exp = causal_experiment(tmp_path, tiny_spec_body, "model.layers=2")
    exp.model.eval()
    users = torch.arange(exp.data.num_users)
    targets = exp.data.test_idx[users]
    request = request_batch(exp.data, users, targets, 7)
    window_view = causal_view(request, exp.model.after)
    with torch.no_grad():
        newest = exp.model(window_view).hidden[:, -1]
        torch.testing.assert_close(exp.model.last_hidden(request), newest)
        hour = next(k for k in request.event if k.startswith("time."))
        later = Batch(request.item, dict(request.event), request.user)
        later.event[hour] = request.event[hour].clone()
        later.event[hour][:, -1] = (request.event[hour][:, -1] + 5) % 24 + 1
        moved = exp.model.last_hidden(later)
    assert not torch.allclose(moved, newest)  # the request's time reaches the prediction


def test_a_causal_run_trains_resumes_and_serves(tmp_path: Path, tiny_spec_body: dict) -> None:
    tiny_spec_body |= {"train": {"epochs": 3, "batch_size": 3, "min_epochs": 3}}
    spec = load_spec(write_spec(tmp_path, tiny_spec_body), ["train.objective=next_item"])
    whole = train(spec, tmp_path / "whole")
    assert 0.0 <= whole["test"]["ndcg@10"] <= 1.0
    assert interrupted_and_resumed(spec, tmp_path / "cut")["test"] == whole["test"]
    recommender = load(tmp_path / "whole")
    assert recommender.model.causal
    assert len(recommender.recommend([10, 11], k=3).items) == 3
    assert_recommend_ranks_as_evaluation(recommender)
    empty = recommender.recommend([], k=3)  # no history: popularity, as under cloze
    assert len(empty.items) == 3 and empty.fallback is not None
    export_run(tmp_path / "whole", tmp_path / "exported")  # a causal run exports too
    assert any((tmp_path / "exported").iterdir())


def test_an_ablation_of_a_causal_spec_keeps_its_baselines_valid(
    tmp_path: Path, tiny_spec_body: dict
) -> None:
    spec = load_spec(write_spec(tmp_path, tiny_spec_body), ["train.objective=next_item"])
    found = variants(spec, overrides={"din": ["train.lr=3e-4"]})
    assert found["full"].spec.train.objective == "next_item"
    for variant in found.values():  # each stored spec reads back (resume, report, serve)
        Spec.model_validate(variant.spec.model_dump())


@pytest.mark.parametrize("kind", ["embedding_mlp", "din"])
def test_other_model_kinds_refuse_it(tmp_path: Path, tiny_spec_body: dict, kind: str) -> None:
    overrides = ["train.objective=next_item", f"model.kind={kind}"]
    if kind == "din":
        overrides.append("train.loss=sampled_softmax")
    with pytest.raises(SpecError, match=r"train\.objective next_item is for model\.kind") as error:
        load_spec(write_spec(tmp_path, tiny_spec_body), overrides)
    assert "\n" not in str(error.value)


def test_a_wrong_objective_is_one_line_naming_it_and_exit_2(
    tmp_path: Path, tiny_spec_body: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_cli import run

    spec = write_spec(tmp_path, tiny_spec_body)
    with pytest.raises(SpecError, match=r"train\.objective") as error:
        load_spec(spec, ["train.objective=sasrec"])
    assert "\n" not in str(error.value) and "next_item" in str(error.value)
    code, _, err = run(capsys, "train", str(spec), "--set", "train.objective=sasrec",
                       "--out", str(tmp_path / "run"))  # fmt: skip
    assert code == 2 and "train.objective" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing written

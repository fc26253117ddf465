from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from featrec.cli import main
from featrec.errors import SpecError
from featrec.spec import Spec, apply_override, json_schema, load_spec
from tests.conftest import write_spec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "feature_specs").glob("*.yaml"))


def minimal(**extra) -> dict:
    return {"name": "m", "data": {"dataset": "ml-100k"}, **extra}


def test_defaults_follow_the_paper(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, minimal()))
    assert (spec.model.dim, spec.model.layers, spec.model.heads) == (64, 2, 2)
    assert (spec.model.max_len, spec.model.dropout, spec.train.mask_prob) == (200, 0.2, 0.2)
    assert spec.features == [] and spec.eval.split == "leave_one_out"
    assert spec.eval.ks == [1, 5, 10, 20] and spec.eval.exclude_seen is True


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_specs_load_and_match_the_json_schema(path: Path) -> None:
    spec = load_spec(path)
    # MovieLens has every scope; Sports has item attributes only (no users' data, no time)
    scopes = {"item"} if spec.data.dataset == "s3rec-sports" else {"item", "user", "event"}
    assert {f.scope for f in spec.features} == scopes
    jsonschema.validate(yaml.safe_load(path.read_text()), json_schema())


def test_json_schema_rejects_what_the_loader_rejects() -> None:
    bad = minimal(features=[{"name": "g", "scope": "usr", "type": "categorical", "column": "g"}])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, json_schema())


def test_event_features_default_to_hidden_and_scopes_set_visibility(tmp_path: Path) -> None:
    spec = load_spec(
        write_spec(
            tmp_path,
            minimal(
                features=[
                    {"name": "g", "scope": "item", "type": "categorical", "column": "g"},
                    {"name": "a", "scope": "user", "type": "categorical", "column": "a"},
                    {"name": "r", "scope": "event", "type": "categorical", "column": "r"},
                    {"name": "t", "scope": "event", "type": "time", "column": "t",
                     "known_at": "request"},
                ]
            ),
        )
    )  # fmt: skip
    assert [f.hidden_at_target for f in spec.features] == [True, False, True, False]
    assert spec.features[2].known_at == "after"


def test_behavior_only_drops_features_and_keeps_everything_else() -> None:
    spec = load_spec(ROOT / "feature_specs" / "ml-1m.yaml")
    plain = spec.behavior_only()
    assert plain.features == []
    assert plain.model_dump(exclude={"features"}) == spec.model_dump(exclude={"features"})
    assert len(spec.features) == 7  # the original is untouched


def test_spec_is_frozen() -> None:
    spec = load_spec(ROOT / "feature_specs" / "ml-1m.yaml")
    with pytest.raises(ValueError):
        spec.train.epochs = 3  # type: ignore[misc]


def test_relative_data_paths_are_relative_to_the_spec_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    spec = load_spec(
        write_spec(tmp_path / "sub", {"name": "x", "data": {"interactions": "data/i.csv"}})
    )
    assert spec.data.interactions == tmp_path / "sub" / "data" / "i.csv"
    card = load_spec(write_spec(tmp_path / "sub", {"name": "x", "data": {"dataset": "../c.yaml"}}))
    assert card.data.dataset == str(tmp_path / "c.yaml")  # a card file too, from any cwd
    named = load_spec(write_spec(tmp_path / "sub", {"name": "x", "data": {"dataset": "ml-1m"}}))
    assert named.data.dataset == "ml-1m"  # a card's name stays a name


# --- errors: file, field path, expectation ------------------------------------------------


def error_of(tmp_path: Path, body: dict, overrides: tuple[str, ...] = ()) -> str:
    path = write_spec(tmp_path, body)
    with pytest.raises(SpecError) as caught:
        load_spec(path, overrides)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_unknown_key_names_file_path_and_allowed_keys(tmp_path: Path) -> None:
    message = error_of(tmp_path, minimal(train={"epoch": 3}))
    assert str(tmp_path / "spec.yaml") in message
    assert "train.epoch: unknown key" in message and "did you mean 'epochs'" in message


def test_unknown_top_level_key(tmp_path: Path) -> None:
    assert "modle: unknown key" in error_of(tmp_path, minimal(modle={"dim": 3}))


def test_wrong_value_type(tmp_path: Path) -> None:
    message = error_of(tmp_path, minimal(model={"dim": "wide"}))
    assert "model.dim: expected a valid integer" in message and "'wide'" in message


def test_unknown_scope(tmp_path: Path) -> None:
    body = minimal(features=[{"name": "g", "scope": "usr", "type": "categorical", "column": "g"}])
    message = error_of(tmp_path, body)
    assert "features[0].scope: expected one of 'item', 'user' or 'event'; got 'usr'" in message


def test_unknown_type(tmp_path: Path) -> None:
    body = minimal(features=[{"name": "g", "scope": "user", "type": "categoric", "column": "g"}])
    message = error_of(tmp_path, body)
    assert "features[0]" in message and "got 'categoric'" in message and "'numeric'" in message


def test_duplicate_feature_names(tmp_path: Path) -> None:
    feature = {"name": "g", "scope": "user", "type": "categorical", "column": "g"}
    message = error_of(tmp_path, minimal(features=[feature, {**feature, "column": "h"}]))
    assert "duplicate feature name 'g' (features[0] and features[1])" in message


def test_known_at_is_for_event_features_only(tmp_path: Path) -> None:
    body = minimal(
        features=[
            {
                "name": "a",
                "scope": "user",
                "type": "categorical",
                "column": "a",
                "known_at": "after",
            }
        ]
    )
    assert "features[0]: known_at applies to event features only" in error_of(tmp_path, body)


def test_heads_must_divide_dim(tmp_path: Path) -> None:
    message = error_of(tmp_path, minimal(model={"dim": 10, "heads": 3}))
    assert "model.dim (10) is not a multiple of model.heads (3)" in message


def test_primary_metric_needs_its_k_in_ks(tmp_path: Path) -> None:
    message = error_of(tmp_path, minimal(eval={"ks": [5, 20]}))
    assert "eval.primary is 'ndcg@10' but 10 is not in eval.ks [5, 20]" in message
    assert "eval.primary" in error_of(tmp_path, minimal(eval={"primary": "auc@10"}))
    spec = load_spec(write_spec(tmp_path, minimal(eval={"ks": [5, 20], "primary": "hr@20"})))
    assert spec.eval.primary == "hr@20"


def test_data_needs_exactly_one_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    both = {"dataset": "ml-100k", "interactions": "x.csv"}
    assert "exactly one of" in error_of(tmp_path, {"name": "x", "data": both})
    # none: a spec for featrec.fit's DataFrames, but the commands read files
    assert load_spec(write_spec(tmp_path, {"name": "x"})).data.interactions is None
    assert main(["validate", str(write_spec(tmp_path, {"name": "x", "data": {}}))]) == 2
    assert "data: set exactly one of data.dataset" in capsys.readouterr().err


def test_not_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ndata: {dataset: ml-100k\n")
    with pytest.raises(SpecError, match=r"bad.yaml: not valid YAML at line \d"):
        load_spec(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read spec file"):
        load_spec(tmp_path / "nope.yaml")


# --- --set overrides ------------------------------------------------------------------------


def test_overrides_are_converted_to_each_fields_type(tmp_path: Path) -> None:
    spec = load_spec(
        ROOT / "feature_specs" / "ml-1m.yaml",
        [
            "train.epochs=5",
            "train.lr=1e-4",
            "eval.exclude_seen=false",
            "eval.ks=[5, 10]",
            "features.year.bins=4",
            "features[0].min_count=2",
            "fusion.method=concat",
        ],
    )
    assert spec.train.epochs == 5 and isinstance(spec.train.epochs, int)
    assert spec.train.lr == pytest.approx(1e-4)
    assert spec.eval.exclude_seen is False and spec.eval.ks == [5, 10]
    year = next(f for f in spec.features if f.name == "year")
    assert year.bins == 4 and spec.features[0].min_count == 2
    assert spec.fusion.method == "concat"


def test_override_creates_missing_sections(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, minimal()), ["train.seed=7"])
    assert spec.train.seed == 7


def test_override_error_names_the_override(tmp_path: Path) -> None:
    message = error_of(tmp_path, minimal(), ("train.epochs=many",))
    assert message.startswith("--set train.epochs=many: train.epochs: expected a valid integer")


def test_override_unknown_key(tmp_path: Path) -> None:
    message = error_of(tmp_path, minimal(), ("train.epoch=3",))
    assert "--set train.epoch=3: train.epoch: unknown key" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train.epochs", "expected KEY=VALUE"),
        ("=5", "expected KEY=VALUE"),
        ("train..epochs=5", "empty field name"),
        ("features[9].bins=2", "has 1 entries; no index 9"),
        ("features.nope.bins=2", "no entry named 'nope' (names: g"),
        ("name.x=1", "name is a str"),
        ("eval.ks=[1, 2", "not valid YAML"),
    ],
)
def test_malformed_overrides(text: str, expected: str) -> None:
    raw = minimal(features=[{"name": "g", "scope": "user", "type": "categorical", "column": "g"}])
    with pytest.raises(SpecError, match="--set") as caught:
        apply_override(raw, text)
    assert expected in str(caught.value)


def test_schema_lists_every_section() -> None:
    schema = json_schema()
    assert set(schema["properties"]) == set(Spec.model_fields)
    assert schema["additionalProperties"] is False


def test_fusion_aux_weight_is_a_weight(tmp_path: Path) -> None:
    message = error_of(tmp_path, minimal(fusion={"method": "difsr", "aux_weight": -0.1}))
    assert "fusion.aux_weight" in message and "-0.1" in message
    spec = load_spec(write_spec(tmp_path, minimal(fusion={"method": "nova", "aux_weight": 0.5})))
    assert (spec.fusion.method, spec.fusion.aux_weight) == ("nova", 0.5)


def test_overrides_are_a_list_of_strings(tmp_path: Path) -> None:
    path = write_spec(tmp_path, {"name": "x"})
    for wrong in ("train.epochs=3", [("train.epochs", 3)]):
        with pytest.raises(SpecError, match=r"^overrides: expected a list of KEY=VALUE strings"):
            load_spec(path, wrong)
    assert load_spec(path, ("train.epochs=3",)).train.epochs == 3
    assert load_spec(path, (o for o in ["train.epochs=4"])).train.epochs == 4  # read once
    assert load_spec(path, ["train.seed=-1"]).train.seed == -1  # runs trained so stay valid


def test_booleans_are_no_numbers_from_python_either() -> None:
    import numpy as np
    import pydantic

    from featrec.spec import ModelSpec

    for flag in (True, np.bool_(True)):
        with pytest.raises(pydantic.ValidationError, match="expected a number; got true"):
            ModelSpec(dim=flag)
    assert ModelSpec(dim=np.int64(32)).dim == 32

"""Loading pipelines: every error is one InputError line naming the place and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prunecli.config.loading import (
    apply_cli_overrides,
    check_referenced_files,
    dump_resolved,
    json_schema,
    load_pipeline,
)
from prunecli.config.schema import Pipeline
from prunecli.errors import InputError

VALID = """\
version: 1
model: {path: model.pt, input_shape: [1, 1, 8, 8]}
data: {format: npz, train: train.npz, eval: val.npz}
steps:
  - kind: score
    criterion: l2
  - kind: select
    ratio: 0.5
  - kind: prune
"""


def write(tmp_path: Path, text: str, name: str = "pipeline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path, *overrides: str) -> str:
    with pytest.raises(InputError) as caught:
        load_pipeline(path, overrides=overrides)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_load_valid_pipeline_fills_defaults(tmp_path: Path) -> None:
    pipeline = load_pipeline(write(tmp_path, VALID))
    assert [step.kind for step in pipeline.steps] == ["score", "select", "prune"]
    assert pipeline.model.path == Path("model.pt")  # relative paths stay as written
    assert pipeline.steps[1].scope == "local"
    assert pipeline.latency.repeats == 30


def test_missing_file(tmp_path: Path) -> None:
    message = load_error(tmp_path / "absent.yaml")
    assert message.startswith("pipeline file not found:") and "absent.yaml" in message


def test_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1\nmodel:\n  path: a: b\n")
    assert load_error(path) == f"{path}:3:10: YAML syntax error: mapping values are not allowed here"


@pytest.mark.parametrize(("text", "got"), [("- 1\n- 2\n", "got a list"), ("", "got an empty file")])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, got: str) -> None:
    message = load_error(write(tmp_path, text))
    assert "the top level must be a mapping" in message and got in message


def test_unknown_key_lists_known_keys_and_close_match(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("criterion: l2", "critrion: l2"))
    message = load_error(path)
    known = "kind, criterion, batches, reduction"
    assert message == f"{path}: steps.0.critrion: unknown key; known keys: {known}; did you mean 'criterion'?"


def test_unknown_key_without_close_match_and_nested(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)
    assert load_error(path, "zzz=1").endswith(": zzz: unknown key; known keys: " + ", ".join(Pipeline.model_fields))
    message = load_error(path, "steps.2={kind: finetune, distill: {alpah: 0.3}}")
    assert "steps.2.distill.alpah: unknown key; known keys: alpha, temperature; did you mean 'alpha'?" in message


def test_out_of_range_value_names_path_and_input(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("ratio: 0.5", "ratio: 1.5"))
    assert load_error(path) == f"{path}: steps.1.ratio: Input should be less than 1 (got 1.5)"


def test_wrong_type(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, VALID), "data.batch_size=many")
    expected = "data.batch_size: Input should be a valid integer, unable to parse string as an integer (got 'many')"
    assert message.endswith(expected)


def test_unknown_and_missing_step_kind(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("kind: prune", "kind: prnue"))
    message = load_error(path)
    assert "steps.2.kind: unknown step kind 'prnue'; known kinds: score, select, prune, finetune, evaluate" in message
    assert message.endswith("did you mean 'prune'?")
    assert "steps.2.kind: missing; every step needs a kind" in load_error(path, "steps.2={ratio: 0.5}")


def test_unknown_criterion_uses_registry_message(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, VALID.replace("criterion: l2", "criterion: l22")))
    assert "steps.0.criterion: unknown criterion 'l22'; known: " in message and "did you mean 'l2'?" in message


def test_missing_required_key_and_more_problems(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("    ratio: 0.5\n", "").replace("version: 1", "version: 2"))
    message = load_error(path)
    assert message == f"{path}: version: Input should be 1 (got 2) (and 1 more problem)"
    assert load_error(path, "version=1").endswith("steps.1.ratio: missing required key; add it")


def test_step_order_error_from_model_validator(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, VALID), "steps.0={kind: evaluate}")
    assert message.endswith("steps.1: a 'select' step needs a 'score' step before it")


def test_overrides_set_nested_values_and_create_keys(tmp_path: Path) -> None:
    overrides = ["steps.1.ratio=0.3", "model.path=x.pt", "gates.min_speedup=1.2", "steps.1.ignore=[fc, head]"]
    pipeline = load_pipeline(write(tmp_path, VALID), overrides=overrides)
    assert pipeline.steps[1].ratio == 0.3
    assert pipeline.steps[1].ignore == ["fc", "head"]
    assert pipeline.model.path == Path("x.pt")
    assert pipeline.gates.min_speedup == 1.2


def test_override_with_next_index_appends_a_step(tmp_path: Path) -> None:
    pipeline = load_pipeline(write(tmp_path, VALID), overrides=["steps.3={kind: finetune, epochs: 2}"])
    assert pipeline.steps[3].kind == "finetune" and pipeline.steps[3].epochs == 2


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("steps.1.ratio", "expected KEY=VALUE"),
        ("=0.3", "expected KEY=VALUE"),
        ("steps..ratio=0.3", "expected KEY=VALUE"),
        ("steps.7.ratio=0.3", "steps has 3 items (indices 0-2); '7' is not one of them"),
        ("steps.first.ratio=0.3", "'first' is not one of them"),
        ("model.path.name=x", "model.path is a str, not a mapping or list"),
        ("model.path=[unclosed", "the value is not valid YAML"),
    ],
)
def test_bad_overrides(tmp_path: Path, override: str, expected: str) -> None:
    message = load_error(write(tmp_path, VALID), override)
    assert message.startswith(f"--set {override!r}: ") and expected in message


def test_cli_model_path_is_absolute_and_resets_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    pipeline = load_pipeline(write(tmp_path, VALID), overrides=["model.format=onnx"])
    updated = apply_cli_overrides(pipeline, model=Path("other.pt"), data=None)
    assert updated.model.path == tmp_path.resolve() / "other.pt"
    assert updated.model.format == "auto"
    assert pipeline.model.path == Path("model.pt")  # the input is left alone


def test_cli_data_sets_eval_and_train_only_when_needed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    no_train = load_pipeline(write(tmp_path, VALID), overrides=["data.train=null"])
    updated = apply_cli_overrides(no_train, model=None, data=Path("val.csv"))
    assert updated.data.eval == tmp_path.resolve() / "val.csv"
    assert updated.data.train is None
    assert updated.data.format == "csv"
    with_train = apply_cli_overrides(load_pipeline(tmp_path / "pipeline.yaml"), model=None, data=Path("d.bin"))
    assert with_train.data.train == with_train.data.eval == tmp_path.resolve() / "d.bin"
    assert with_train.data.format == "npz"  # an unknown suffix keeps the format


def test_cli_data_feeds_training_when_pipeline_finetunes(tmp_path: Path) -> None:
    pipeline = load_pipeline(write(tmp_path, VALID), overrides=["data.train=null", "steps.3={kind: finetune}"])
    updated = apply_cli_overrides(pipeline, model=None, data=tmp_path)
    assert updated.data.train == tmp_path.resolve()
    assert updated.data.format == "image_folder"


def test_dump_resolved_round_trips(tmp_path: Path) -> None:
    overrides = [
        "steps.3={kind: finetune, distill: {alpha: 0.7}}",
        "gates.max_accuracy_drop=0.01",
        "model.kwargs={width: 8}",
    ]
    pipeline = load_pipeline(write(tmp_path, VALID), overrides=overrides)
    pipeline = apply_cli_overrides(pipeline, model=tmp_path / "m.onnx", data=None)
    text = dump_resolved(pipeline)
    assert "temperature: 4.0" in text  # defaults are filled in
    assert load_pipeline(write(tmp_path, text, "resolved.yaml")) == pipeline


def test_json_schema_describes_the_pipeline() -> None:
    schema = json.loads(json.dumps(json_schema()))
    assert schema["title"] == "Pipeline"
    assert {"version", "model", "data", "steps"} <= set(schema["required"])
    assert schema["additionalProperties"] is False


def test_check_referenced_files(tmp_path: Path) -> None:
    pipeline = load_pipeline(write(tmp_path, VALID))
    with pytest.raises(InputError, match=r"^model\.path: .*model\.pt does not exist"):
        check_referenced_files(pipeline, base_dir=tmp_path)
    for name in ("model.pt", "train.npz"):
        (tmp_path / name).touch()
    with pytest.raises(InputError, match=r"^data\.eval: "):
        check_referenced_files(pipeline, base_dir=tmp_path)
    (tmp_path / "val.npz").touch()
    check_referenced_files(pipeline, base_dir=tmp_path)

"""``prunecli inspect`` and ``graph.summary``: groups, unprunable params and MACs, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from prunecli.cli.app import app
from prunecli.config.schema import ModelSpec
from prunecli.graph.summary import inspect_model, prunability
from prunecli.graph.trace import build_channel_graph
from prunecli.model_io import load_model
from tests.conftest import SAMPLES

DIGITS_ARGS = ("--arch", SAMPLES / "archs.py:DigitsCNN", "--input-shape", "1,1,8,8")


class CumsumNet(nn.Module):
    """conv1 -> relu -> conv2 -> cumsum over channels (no coupling rule) -> conv3.

    conv1's channels are prunable (conv1.weight dim 0, conv2.weight dim 1); conv2's output
    channels feed the cumsum and conv3's reach the output, so conv2.bias and all of conv3 are
    unprunable: 8 + 4 * 8 * 9 + 4 = 300 of 1100 params, and conv3's 4 * 36 * 8 * 9 = 10368 of
    38880 MACs on a (1, 3, 6, 6) input.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(torch.cumsum(self.conv2(torch.relu(self.conv1(x))), dim=1))


def invoke(*args: str | Path) -> Any:
    return CliRunner().invoke(app, ["inspect", *(str(arg) for arg in args)])


def assert_one_line_error(result: Any, *, contains: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and contains in lines[0], result.stderr
    assert result.stdout == ""


@pytest.fixture
def pickled_cumsum(tmp_path: Path) -> Path:
    path = tmp_path / "cumsum.pt"
    torch.save(CumsumNet(), path)
    return path


def test_digits_json_groups_and_shares() -> None:
    result = invoke(SAMPLES / "digits_cnn.pt", *DIGITS_ARGS, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    groups = {group["name"]: group for group in summary["groups"]}
    assert {"fc", "hidden_fc", "res_conv1", "branch1_conv", "branch3_conv"} <= set(groups)
    assert any(name.startswith("stem_conv") for name in groups)
    assert not groups["fc"]["prunable"] and "output" in groups["fc"]["reason"]
    assert {"fc.weight:0", "fc.bias:0"} <= set(groups["fc"]["members"])
    assert groups["hidden_fc"]["prunable"] and groups["hidden_fc"]["reason"] is None
    assert {"hidden_fc.weight:0", "fc.weight:1"} <= set(groups["hidden_fc"]["members"])
    assert groups["hidden_fc"]["channels"] == 64
    # fc.weight is prunable along dim 1 (hidden_fc's channels): only fc.bias has no prunable dim.
    module = _digits_module()
    assert summary["params"] == sum(p.numel() for p in module.parameters())
    assert summary["unprunable_params_share"] == pytest.approx(module.fc.bias.numel() / summary["params"])
    assert summary["macs"] == 1_919_616
    assert summary["unprunable_macs_share"] == 0.0
    assert [count for reason, count in summary["unprunable_reasons"].items() if "output" in reason] == [1]


def test_an_op_without_a_rule_shows_an_unprunable_share() -> None:
    module = CumsumNet().eval()
    example_input = torch.randn(2, 3, 6, 6)
    summary = prunability(build_channel_graph(module, example_input), module, example_input)
    assert (summary["params"], summary["macs"]) == (1100, 38880)
    assert summary["unprunable_params_share"] == pytest.approx(300 / 1100)
    assert summary["unprunable_macs_share"] == pytest.approx(10368 / 38880)
    reasons = [group["reason"] for group in summary["groups"] if not group["prunable"]]
    assert any("cumsum" in reason for reason in reasons)
    assert sum(summary["unprunable_reasons"].values()) == len(reasons)
    assert [group["prunable"] for group in summary["groups"] if "conv1.weight:0" in group["members"]] == [True]


def test_flat_export_graph_has_no_macs_share(tmp_path: Path) -> None:
    module = _digits_module()
    path = tmp_path / "digits.pt2"
    torch.export.save(torch.export.export(module, (torch.randn(1, 1, 8, 8),)), path)
    summary = inspect_model(ModelSpec(path=path), base_dir=tmp_path, trust_pickle=False)
    assert summary["params"] == sum(p.numel() for p in module.parameters())
    assert summary["macs"] == 1_919_616 and summary["unprunable_macs_share"] is None


def test_table_lists_groups_and_totals() -> None:
    result = invoke(SAMPLES / "digits_cnn.pt", *DIGITS_ARGS)
    assert result.exit_code == 0, result.output
    for text in ("hidden_fc", "branch3_conv", "reaches a model output", "params: 95,530", "MACs: 1,919,616"):
        assert text in result.stdout
    assert "0.00% unprunable" in result.stdout


def test_trusted_pickle_is_inspected(pickled_cumsum: Path) -> None:
    result = invoke(pickled_cumsum, "--trust-pickle", "--input-shape", "1,3,6,6", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["unprunable_macs_share"] == pytest.approx(10368 / 38880)


def test_pickle_needs_trust(pickled_cumsum: Path) -> None:
    assert_one_line_error(invoke(pickled_cumsum, "--input-shape", "1,3,6,6"), contains="--trust-pickle")


def test_missing_file(tmp_path: Path) -> None:
    assert_one_line_error(invoke(tmp_path / "missing.pt", *DIGITS_ARGS), contains="model file not found")


def test_onnx_lists_the_groups_of_its_torch_model() -> None:
    result = invoke(SAMPLES / "digits_cnn.onnx", "--input-shape", "1,1,8,8", "--json")
    assert result.exit_code == 0, result.output
    torch_result = invoke(SAMPLES / "digits_cnn.pt", *DIGITS_ARGS, "--json")
    assert _group_rows(result.stdout) == _group_rows(torch_result.stdout)
    assert json.loads(result.stdout)["macs"] == json.loads(torch_result.stdout)["macs"]


def _group_rows(stdout: str) -> list[tuple]:
    return sorted((g["name"], g["channels"], g["prunable"], g["reason"]) for g in json.loads(stdout)["groups"])


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--input-shape", "1,x", "--input-shape must be integers"),
        ("--input-shape", "1,0,8,8", "input_shape.1"),
        ("--kwargs", "[16]", "--kwargs must be a JSON object"),
        ("--kwargs", "{width", "--kwargs is not valid JSON"),
        ("--format", "zip", "format:"),
    ],
)
def test_bad_options(option: str, value: str, message: str) -> None:
    args = {"--arch": str(SAMPLES / "archs.py:DigitsCNN"), "--input-shape": "1,1,8,8", option: value}
    flat = [item for pair in args.items() for item in pair]
    assert_one_line_error(invoke(SAMPLES / "digits_cnn.pt", *flat), contains=message)


def _digits_module() -> nn.Module:
    spec = ModelSpec(path=SAMPLES / "digits_cnn.pt", arch="archs.py:DigitsCNN", input_shape=[1, 1, 8, 8])
    return load_model(spec, base_dir=SAMPLES, trust_pickle=False).module

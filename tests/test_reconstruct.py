"""The reconstruct step: least-squares core, torch layer refits, and the sample models' recovery."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunecli.config.loading import json_schema, load_pipeline
from prunecli.errors import InputError
from prunecli.pipeline.checks import check_pipeline
from prunecli.pipeline.options import RunOptions
from prunecli.pipeline.runner import run_pipeline
from prunecli.reconstruct import NormalEquations, conv_patches, conv_targets, reconstruct_layers
from prunecli.surgery.torch_surgery import apply_keep
from tests.conftest import CONFIGS, SAMPLES

CONFIG = CONFIGS / "digits_cnn_reconstruct.yaml"
FAST = ["latency.repeats=3", "latency.warmup=1"]


def test_least_squares_recovers_a_linear_map_exactly() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=generator)
    weight, bias = torch.randn(3, 6, generator=generator), torch.randn(3, generator=generator)
    equations = NormalEquations(groups=1, inputs=6, outputs=3, bias=True)
    for rows in x.split(64):  # batch by batch, as calibration data comes
        equations.add(rows.numpy(), (rows @ weight.T + bias).numpy())  # numpy arrays work as well as tensors
    fit = equations.solve(ridge=0.0)
    torch.testing.assert_close(fit.weight[0].float(), weight, atol=1e-5, rtol=0)
    torch.testing.assert_close(fit.bias[0].float(), bias, atol=1e-5, rtol=0)
    assert fit.error_after < 1e-12 and equations.relative_error(torch.zeros(3, 6)) > 0.5
    pulled = equations.solve(ridge=0.5, prior=(weight, bias))  # ridge toward the true weights leaves them
    torch.testing.assert_close(pulled.weight[0].float(), weight, atol=1e-5, rtol=0)


@pytest.mark.parametrize("stride, padding, dilation, groups", [(2, (1, 1, 1, 1), 1, 2), (1, (2, 2, 2, 2), 2, 1)])
def test_least_squares_recovers_a_convolution_exactly(stride, padding, dilation, groups) -> None:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, 4, 7, 7, generator=generator)
    weight, bias = torch.randn(6, 4 // groups, 3, 3, generator=generator), torch.randn(6, generator=generator)
    y = F.conv2d(x, weight, bias, stride=stride, padding=padding[0], dilation=dilation, groups=groups)
    patches = conv_patches(x, kernel_size=(3, 3), stride=(stride,) * 2, padding=padding, dilation=(dilation,) * 2,
                           groups=groups)  # fmt: skip
    equations = NormalEquations(groups=groups, inputs=4 // groups * 9, outputs=6 // groups, bias=True)
    equations.add(patches, conv_targets(y, groups=groups))
    fit = equations.solve(ridge=0.0)
    torch.testing.assert_close(fit.weight.reshape(weight.shape).float(), weight, atol=1e-4, rtol=0)
    torch.testing.assert_close(fit.bias.reshape(-1).float(), bias, atol=1e-4, rtol=0)


class _TwoConvs(nn.Module):
    def __init__(self, *, stride: int, padding, dilation: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 6, 3, stride=stride, padding=padding, dilation=dilation, groups=groups)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv2(F.relu(self.conv1(x))).mean((2, 3)))


@pytest.mark.parametrize("stride, padding, dilation, groups", [(2, 1, 1, 2), (1, "same", 2, 1)])
def test_refit_layers_reproduce_the_original_when_pruned_channels_were_dead(stride, padding, dilation, groups) -> None:
    """Removed channels that carried no weight: the refit of noisy kept weights must give the original's back."""
    torch.manual_seed(0)
    original = _TwoConvs(stride=stride, padding=padding, dilation=dilation, groups=groups).eval()
    per_group_in = [0, 2, 3]  # input channels 1 and 5 go: local position 1 of each group (groups=2) or both
    kept_in = per_group_in if groups == 2 else [0, 2, 3, 4, 6, 7]
    keep = {
        "conv1.weight": {0: [0, 2, 3, 4, 6, 7]}, "conv1.bias": {0: [0, 2, 3, 4, 6, 7]},
        "conv2.weight": {0: [0, 1, 3, 4], 1: kept_in}, "conv2.bias": {0: [0, 1, 3, 4]}, "fc.weight": {1: [0, 1, 3, 4]},
    }  # fmt: skip
    with torch.no_grad():
        original.conv2.weight[:, [1] if groups == 2 else [1, 5]] = 0
        original.fc.weight[:, [2, 5]] = 0
    pruned = copy.deepcopy(original)
    apply_keep(pruned, keep)
    with torch.no_grad():
        for layer in (pruned.conv2, pruned.fc):
            layer.weight.add_(torch.randn_like(layer.weight))
    batches = [torch.randn(8, 3, 9, 9) for _ in range(2)]
    result = reconstruct_layers(pruned, original, keep, batches=batches, ridge=0.0)
    assert [layer.name for layer in result.layers] == ["conv2", "fc"] and not result.skipped
    assert all(layer.error_before > 0.01 and layer.error_after < 1e-9 for layer in result.layers)
    expected = original.conv2.weight[[0, 1, 3, 4]][:, kept_in]
    torch.testing.assert_close(pruned.conv2.weight, expected, atol=1e-4, rtol=0)
    with torch.inference_mode():
        torch.testing.assert_close(pruned(batches[0]), original(batches[0]), atol=1e-4, rtol=0)


def test_layers_called_twice_are_skipped_with_the_reason() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.fc(x))

    module = Twice().eval()
    result = reconstruct_layers(module, copy.deepcopy(module), {"fc.weight": {1: [0, 1, 2, 3]}},
                                batches=[torch.randn(2, 4)], ridge=0.01)  # fmt: skip
    assert result.layers == [] and "called 2 times" in result.skipped["fc"]


@pytest.fixture(scope="module")
def cnn_report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("reconstruct") / "out"
    pipeline = load_pipeline(CONFIG, overrides=FAST)
    report = run_pipeline(pipeline, options=RunOptions(output_dir=out, base_dir=CONFIGS)).report
    return {**report, "markdown": (out / "report.md").read_text()}


def test_reconstruct_alone_recovers_at_least_half_of_the_accuracy_lost_on_the_sample_cnn(cnn_report) -> None:
    original, pruned, rebuilt = (cnn_report[stage]["accuracy"] for stage in ("original", "pruned", "reconstructed"))
    assert pruned < original - 0.1  # ratio 0.5 without training costs the sample CNN real accuracy (0.986 -> 0.758)
    assert rebuilt - pruned >= 0.5 * (original - pruned)  # measured: 0.986 again
    assert cnn_report["reconstructed"]["params"] == cnn_report["pruned"]["params"]


def test_report_has_the_reconstructed_stage_and_the_per_layer_fit(cnn_report) -> None:
    assert cnn_report["stages"] == ["original", "pruned", "reconstructed"]
    (step,) = cnn_report["reconstruction"]["steps"]
    assert step["batches"] == 8 and step["samples"] == 8 * 64 and step["skipped"] == {}
    layers = {layer["name"]: layer for layer in step["layers"]}
    assert list(layers) == ["res_conv1", "res_conv2", "branch1_conv", "branch3_conv", "hidden_fc", "fc"]
    assert layers["hidden_fc"]["inputs"] == "512/1024" and layers["res_conv1"]["rows"] == 8 * 64 * 64
    assert all(layer["error_after"] < layer["error_before"] for layer in layers.values())
    assert "## Reconstruction" in cnn_report["markdown"] and "| res_conv1 | Conv2d | 16/32 |" in cnn_report["markdown"]


def test_pruning_nothing_then_reconstructing_changes_nothing(tmp_path: Path) -> None:
    pipeline = load_pipeline(CONFIG, overrides=[*FAST, "steps.1.ratio=0"])
    result = run_pipeline(pipeline, options=RunOptions(output_dir=tmp_path / "out", base_dir=CONFIGS))
    assert result.report["reconstruction"]["steps"][0]["layers"] == []
    original = load_pipeline(CONFIG)  # the unpruned weights, loaded as the run loaded them
    from prunecli.model_io import load_model

    reference = load_model(original.model, base_dir=CONFIGS, trust_pickle=False).module.eval()
    inputs = torch.from_numpy(np.load(SAMPLES / "digits_val.npz")["inputs"][:64])
    with torch.inference_mode():
        assert torch.equal(result.module.eval()(inputs), reference(inputs))
    assert result.report["reconstructed"]["accuracy"] == result.report["original"]["accuracy"]


def test_reconstruct_recovers_the_sample_mlp(tmp_path: Path) -> None:
    text = CONFIG.read_text().replace("digits_cnn.pt", "digits_mlp.pt").replace("DigitsCNN", "DigitsMLP")
    (tmp_path / "mlp.yaml").write_text(text.replace("../sample_models", str(SAMPLES)))
    pipeline = load_pipeline(tmp_path / "mlp.yaml", overrides=[*FAST, "gates.max_accuracy_drop=null"])
    report = run_pipeline(pipeline, options=RunOptions(output_dir=tmp_path / "out", base_dir=tmp_path)).report
    original, pruned, rebuilt = (report[stage]["accuracy"] for stage in ("original", "pruned", "reconstructed"))
    assert pruned < original - 0.05 and rebuilt - pruned >= 0.5 * (original - pruned)  # measured 0.85 -> 0.964
    assert [layer["name"] for layer in report["reconstruction"]["steps"][0]["layers"]] == ["features.fc2", "fc"]


def test_reconstruct_before_prune_is_refused_with_the_fix(tmp_path: Path) -> None:
    text = CONFIG.read_text().replace("  - kind: prune\n", "")
    (tmp_path / "p.yaml").write_text(text.replace("../sample_models", str(SAMPLES)))
    with pytest.raises(InputError, match="a 'reconstruct' step needs a 'prune' step before it"):
        load_pipeline(tmp_path / "p.yaml")


def test_reconstruct_without_data_is_refused_with_the_fix() -> None:
    pipeline = load_pipeline(CONFIG, overrides=["data.train=null", "data.eval=null", "gates.max_accuracy_drop=null"])
    with pytest.raises(InputError, match="reconstruct step refits layers on calibration data: set data.train"):
        check_pipeline(pipeline, base_dir=CONFIGS)


def test_reconstruct_after_sparsify_is_refused_with_the_fix(tmp_path: Path) -> None:
    sparsify_first = "  - {kind: sparsify, ratio: 0.5}\n  - kind: reconstruct\n"
    text = CONFIG.read_text().replace("  - kind: reconstruct\n", sparsify_first)
    (tmp_path / "p.yaml").write_text(text.replace("../sample_models", str(SAMPLES)))
    with pytest.raises(InputError, match="after sparsify would refill the zeroed weights; put it before sparsify"):
        check_pipeline(load_pipeline(tmp_path / "p.yaml"), base_dir=tmp_path)


def test_the_schema_documents_the_step() -> None:
    step = json_schema()["$defs"]["ReconstructStep"]
    assert "least squares" in step["description"] and set(step["properties"]) == {"kind", "batches", "ridge"}
    ridge = step["properties"]["ridge"]
    assert ridge["default"] == 0.01 and "toward the pruned" in ridge["description"]

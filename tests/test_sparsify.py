"""The sparsify step: magnitude and N:M masks, kept through fine-tuning, counted in the report and outputs."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from onnx import numpy_helper
from pydantic import ValidationError

from prunecli.config.loading import load_pipeline
from prunecli.config.schema import SparsifyStep
from prunecli.errors import InputError
from prunecli.pipeline.options import RunOptions
from prunecli.pipeline.runner import run_pipeline
from prunecli.sparsity.masks import magnitude_masks, n_m_mask
from tests.conftest import SAMPLES

PIPELINE = """
version: 1
model: {path: SAMPLES/digits_NAME.pt, arch: SAMPLES/archs.py:DigitsNAME_ARCH, input_shape: [1, 1, 8, 8]}
data: {format: npz, train: SAMPLES/digits_train.npz, eval: SAMPLES/digits_val.npz}
steps:
STEPS
latency: {repeats: 3, warmup: 1, backends: [torch]}
"""


def run(tmp_path: Path, name: str, steps: list[str]) -> tuple[dict, Path]:
    arch = {"mlp": "MLP", "cnn": "CNN"}[name]
    text = PIPELINE.replace("SAMPLES", str(SAMPLES)).replace("NAME_ARCH", arch).replace("NAME", name)
    path = tmp_path / "pipeline.yaml"
    path.write_text(text.replace("STEPS", "\n".join(f"  - {s}" for s in steps)))
    out = tmp_path / "out"
    result = run_pipeline(load_pipeline(path), options=RunOptions(output_dir=out, base_dir=tmp_path))
    return result.report, out


def saved_weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "model.pt", weights_only=True)


FINETUNE = "{kind: finetune, epochs: 1, lr: 1.0e-2, optimizer: adam}"


@pytest.mark.parametrize(
    ("name", "steps"),
    [
        ("mlp", ["{kind: sparsify, ratio: 0.9, scope: global}", FINETUNE]),
        ("mlp", ['{kind: sparsify, pattern: "2:4"}', FINETUNE]),
        ("cnn", ["{kind: sparsify, ratio: 0.9}", FINETUNE]),
        ("cnn", ["{kind: score}", "{kind: select, ratio: 0.5, ignore: [fc]}", "{kind: prune}",
                 '{kind: sparsify, pattern: "2:4"}', FINETUNE]),
    ],
)  # fmt: skip
def test_masks_hold_through_finetuning_and_report_matches_saved_zeros(tmp_path: Path, name: str, steps: list) -> None:
    report, out = run(tmp_path, name, steps)
    sparsity = report["sparsity"]
    weights = saved_weights(out)
    assert sparsity["layers"], sparsity
    for layer, fraction in sparsity["layers"].items():
        zeros = int((weights[layer] == 0).sum())
        assert fraction == pytest.approx(zeros / weights[layer].numel(), abs=1e-6), layer
        if "global" not in steps[-2]:
            assert fraction >= (0.899 if "ratio" in steps[-2] else 0.5), layer
    total = sum(int((weights[k] == 0).sum()) for k in sparsity["layers"])
    assert sparsity["zeros"] == total
    assert sparsity["overall"] == pytest.approx(total / sum(weights[k].numel() for k in sparsity["layers"]), abs=1e-6)
    assert sparsity["overall"] >= (0.899 if "ratio" in steps[-2] else 0.5)
    assert report["finetuned"]["accuracy"] is not None
    assert "dense kernels do not run faster" in sparsity["note"]
    assert sparsity["bytes"]["final"]["compressed"] < sparsity["bytes"]["final"]["dense"]
    assert "## Sparsity" in (out / "report.md").read_text()
    if "2:4" in steps[-2]:
        for layer in sparsity["layers"]:
            groups = weights[layer].reshape(weights[layer].shape[0], -1, 4)
            assert int((groups != 0).sum(-1).max()) <= 2, layer


def test_finetuned_weights_moved_but_masked_ones_stayed_zero(tmp_path: Path) -> None:
    report, out = run(tmp_path, "mlp", ["{kind: sparsify, ratio: 0.5}", FINETUNE])
    original = torch.load(SAMPLES / "digits_mlp.pt", weights_only=True)
    weights = saved_weights(out)
    layer = next(iter(report["sparsity"]["layers"]))
    kept = weights[layer] != 0
    assert not torch.equal(weights[layer][kept], original[layer][kept])  # training changed the kept weights
    assert report["sparsity"]["layers"][layer] == pytest.approx(0.5, abs=1e-3)


def test_onnx_keeps_the_zeros(tmp_path: Path) -> None:
    report, out = run(tmp_path, "mlp", ["{kind: sparsify, ratio: 0.8, scope: global}", FINETUNE])
    weights = saved_weights(out)
    initializers = onnx.load(str(out / "model.onnx")).graph.initializer
    onnx_zeros = sum(int((numpy_helper.to_array(t) == 0).sum()) for t in initializers)
    pt_zeros = sum(int((w == 0).sum()) for w in weights.values() if w.is_floating_point())
    assert onnx_zeros == pt_zeros >= report["sparsity"]["zeros"]


def test_ratio_zero_changes_nothing(tmp_path: Path) -> None:
    report, out = run(tmp_path, "mlp", ["{kind: sparsify, ratio: 0}"])
    original = torch.load(SAMPLES / "digits_mlp.pt", weights_only=True)
    weights = saved_weights(out)
    for key, tensor in original.items():
        assert torch.equal(weights[key], tensor), key
    assert report["sparsity"]["overall"] == 0.0


def test_output_layer_left_dense_unless_included(tmp_path: Path) -> None:
    report, _ = run(tmp_path, "cnn", ["{kind: sparsify, ratio: 0.5, ignore: [res_*]}"])
    assert "fc.weight" not in report["sparsity"]["layers"]
    assert not any(name.startswith("res_") for name in report["sparsity"]["layers"])
    report, _ = run(tmp_path, "cnn", ["{kind: sparsify, ratio: 0.5, include_output: true}"])
    assert report["sparsity"]["layers"]["fc.weight"] == pytest.approx(0.5, abs=0.01)


def test_magnitude_masks_local_global_threshold() -> None:
    torch.manual_seed(0)
    weights = {"a": torch.randn(8, 16), "b": torch.randn(4, 4) * 10}
    local = magnitude_masks(weights, ratio=0.5, scope="local")
    assert all(int((~m).sum()) == w.numel() // 2 for m, w in zip(local.values(), weights.values()))
    glob = magnitude_masks(weights, ratio=0.5, scope="global")
    assert int(sum((~m).sum() for m in glob.values())) == 72
    assert int((~glob["a"]).sum()) > int((~glob["b"]).sum())  # b's weights are larger
    thresh = magnitude_masks(weights, threshold=1.0)
    assert torch.equal(thresh["a"], weights["a"].abs() >= 1.0)
    assert all(m.all() for m in magnitude_masks(weights, ratio=0.0).values())


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4)])
def test_n_m_mask_exact(n: int, m: int) -> None:
    weight = torch.randn(6, 8, 3, 3)
    keep = n_m_mask(weight, n=n, m=m)
    groups = keep.reshape(6, -1, m)
    assert bool((groups.sum(-1) == n).all())
    values = weight.abs().reshape(6, -1, m)
    kept_min = torch.where(groups, values, torch.inf).min(-1).values
    dropped_max = torch.where(groups, -torch.inf, values).max(-1).values
    assert bool((kept_min >= dropped_max).all())  # the n largest of each group stay


def test_config_validation() -> None:
    with pytest.raises(ValidationError, match="exactly one of ratio, threshold or pattern"):
        SparsifyStep.model_validate({"kind": "sparsify", "ratio": 0.5, "pattern": "2:4"})
    with pytest.raises(ValidationError, match="exactly one"):
        SparsifyStep.model_validate({"kind": "sparsify"})
    with pytest.raises(ValidationError, match="quote the pattern"):
        SparsifyStep.model_validate({"kind": "sparsify", "pattern": 124})  # YAML's reading of unquoted 2:4
    with pytest.raises(ValidationError, match="0 < N < M"):
        SparsifyStep.model_validate({"kind": "sparsify", "pattern": "4:4"})
    with pytest.raises(ValidationError, match="method"):
        SparsifyStep.model_validate({"kind": "sparsify", "ratio": 0.5, "method": "taylor"})
    assert SparsifyStep.model_validate({"kind": "sparsify", "pattern": "4:8"}).n_m == (4, 8)


def test_prune_after_sparsify_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="move the sparsify step after prune"):
        run(tmp_path, "cnn", ["{kind: score}", "{kind: sparsify, ratio: 0.5}", "{kind: select, ratio: 0.5}",
                              "{kind: prune}"])  # fmt: skip



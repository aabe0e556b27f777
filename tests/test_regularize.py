"""Sparsity regularisation (the regularize step, network slimming) and movement sparsity, on the sample models."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from prunecli.config.loading import load_pipeline
from prunecli.config.schema import FinetuneStep
from prunecli.criteria.magnitude import group_norm
from prunecli.data.dataset import Split, make_split
from prunecli.errors import InputError
from prunecli.finetune import TrainingHooks, finetune
from prunecli.graph.trace import build_channel_graph
from prunecli.pipeline.options import RunOptions
from prunecli.pipeline.runner import run_pipeline
from prunecli.regularize.penalties import make_penalty
from prunecli.sparsity.masks import magnitude_masks
from prunecli.sparsity.movement import MovementTraining, movement_masks
from tests.conftest import CONFIGS, SAMPLES, load_sample_cnn

FAST = ["latency.repeats=3", "latency.warmup=1"]
STRENGTH = {"l1_bn": 0.1, "group_lasso": 0.05, "l1": 1e-4, "l2": 1e-3}  # each visibly moves its quantity
RESIDUAL = {  # every parameter of the sample CNN that holds the residual stream's channels
    "stem_conv.weight", "stem_bn.weight", "stem_bn.bias", "res_conv2.weight", "res_bn2.weight", "res_bn2.bias",
    "res_conv1.weight", "branch1_conv.weight", "branch3_conv.weight",
}  # fmt: skip


def _split(name: str, count: int | None = None) -> Split:
    arrays = np.load(SAMPLES / f"digits_{name}.npz")
    return make_split(arrays["inputs"][:count], arrays["labels"][:count], source=name)


@pytest.fixture(scope="module")
def cnn_graph():
    """The sample CNN's channel graph (its tensor names are the same in every loaded copy)."""
    return build_channel_graph(load_sample_cnn(), torch.from_numpy(_split("val", 8).inputs))


def _run(config: Path, out: Path) -> dict:
    pipeline = load_pipeline(config, overrides=FAST)
    return run_pipeline(pipeline, options=RunOptions(output_dir=out, base_dir=config.parent)).report


SHORT = FinetuneStep(kind="finetune", epochs=1, lr=2e-2)  # 6 batches of 64


@pytest.fixture(scope="module")
def plainly_finetuned() -> nn.Module:
    """The sample CNN after SHORT plain fine-tuning (seed 0): the reference every penalty must beat."""
    module = load_sample_cnn()
    finetune(module, train=_split("train", 384), step=SHORT, batch_size=64, device="cpu", seed=0)
    return module


@pytest.mark.parametrize("penalty", ["l1_bn", "group_lasso", "l1", "l2"])
def test_each_penalty_decreases_its_quantity_vs_plain_finetuning(penalty: str, cnn_graph, plainly_finetuned) -> None:
    regularized = load_sample_cnn()
    target = make_penalty(penalty, regularized, graph=cnn_graph)
    hooks = TrainingHooks(penalty=lambda: STRENGTH[penalty] * target.value())
    finetune(regularized, train=_split("train", 384), step=SHORT, batch_size=64, device="cpu", seed=0, hooks=hooks)
    reference = make_penalty(penalty, plainly_finetuned, graph=cnn_graph)
    assert target.value().item() < 0.96 * reference.value().item()  # same seed, batches and steps otherwise
    assert np.median(target.distribution()) < 0.96 * np.median(reference.distribution())


def test_group_lasso_covers_every_member_of_the_residual_group(cnn_graph) -> None:
    module = load_sample_cnn()
    params = dict(module.named_parameters())
    penalty = make_penalty("group_lasso", module, graph=cnn_graph)
    groups = cnn_graph.prunable_groups
    expected = np.concatenate([group_norm(group, params, power=2) for group in groups])
    np.testing.assert_allclose(penalty.distribution(), expected, rtol=1e-5)  # = the l2 criterion's group norm
    index = next(i for i, group in enumerate(groups) if group.name.startswith("stem_conv"))
    residual, start = groups[index], sum(group.channels for group in groups[:index])
    assert {member.tensor for member in residual.members if member.is_parameter} == RESIDUAL
    penalty.terms()[start : start + residual.channels].sum().backward()  # the residual group's terms alone
    for member in residual.members:
        if member.is_parameter:
            grad = params[member.tensor].grad.movedim(member.dim, 0)
            rows = grad[torch.from_numpy(member.positions >= 0)].reshape(residual.channels, -1)
            assert bool((rows.abs().sum(1) > 0).all()), member.tensor  # every channel's slice is penalised
    untouched = [name for name, p in params.items() if name not in RESIDUAL and p.grad is not None and p.grad.any()]
    assert not untouched


MLP_PIPELINE = """version: 1
model: {path: S/digits_mlp.pt, arch: S/archs.py:DigitsMLP, input_shape: [1, 1, 8, 8]}
data: {format: npz, train: S/digits_train.npz, eval: S/digits_val.npz}
steps:
  - {kind: regularize, penalty: group_lasso, strength: 0.05, epochs: 1, lr: 1.0e-2}
  - {kind: score, criterion: l2}
  - {kind: select, ratio: 0.25, ignore: [fc]}
  - {kind: prune}
latency: {backends: [torch]}
"""


def test_group_lasso_step_shares_its_graph_with_score_and_prune(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(MLP_PIPELINE.replace("S/", f"{SAMPLES}/"))
    report = _run(path, tmp_path / "out")
    (step,) = report["regularization"]["steps"]
    assert step["quantity"] == "L2 norm per channel of every prunable group"
    assert step["before"]["count"] == 128 + 64 and step["after"]["penalty"] < step["before"]["penalty"]
    assert report["stages"] == ["original", "regularized", "pruned"] and report["verification"]["passed"]
    top = max(row["score"]["max"] for row in report["groups"] if row["score"])
    assert top == pytest.approx(step["after"]["max"], rel=1e-5)  # the l2 criterion scores the same norms


@pytest.fixture(scope="module")
def slimming(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("slimming")
    return _run(CONFIGS / "digits_cnn_slimming.yaml", out), out


def test_slimming_removes_30_percent_of_channels_within_a_point(slimming, cnn_graph) -> None:
    report, out = slimming
    assert report["stages"] == ["original", "regularized", "pruned", "finetuned"]
    prunable = sum(group.channels for group in cnn_graph.prunable_groups)
    removed = sum(row["channels"] - row["kept"] for row in report["groups"])
    assert removed / prunable >= 0.30, (removed, prunable)
    assert report["finetuned"]["accuracy"] >= report["original"]["accuracy"] - 0.01
    assert report["finetuned"]["macs"] < report["original"]["macs"]


def test_slimming_report_shows_gamma_before_and_after(slimming) -> None:
    report, out = slimming
    (step,) = report["regularization"]["steps"]
    assert step["penalty"] == "l1_bn" and step["before"]["count"] == step["after"]["count"] == 5 * 32
    assert step["after"]["small_share"] > step["before"]["small_share"] + 0.2  # many |gamma| near zero now
    assert step["after"]["penalty"] < step["before"]["penalty"]
    assert sum(step["histogram"]["before"]) == sum(step["histogram"]["after"]) == 160
    markdown = (out / "report.md").read_text()
    assert "## Regularization" in markdown and "![distribution before and after](regularization.png)" in markdown
    assert (out / "regularization.png").stat().st_size > 0
    assert report["regularization"]["plot"] == "regularization.png"


def test_movement_zeroes_the_weights_training_pushes_toward_zero() -> None:
    """Features 0-1 carry the label, 2-3 are noise. The informative weights start small and grow; the noise
    weights start large and training shrinks them: movement zeroes the noise weights, magnitude would not."""
    rng = np.random.default_rng(0)
    labels = np.arange(256) % 2
    informative = (2.0 * labels[:, None] - 1.0) + 0.5 * rng.standard_normal((256, 2))
    inputs = np.concatenate([informative, rng.standard_normal((256, 2))], 1).astype(np.float32)
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[-0.1, -0.1, 1.0, -1.0], [0.1, 0.1, -1.0, 1.0]]))
    start = layer.weight.detach().clone()
    training = MovementTraining(train=make_split(inputs, labels, source="blobs"), epochs=2, lr=1e-2, batch_size=32)
    keep = movement_masks(nn.Sequential(layer), {"0.weight": layer.weight}, ratio=0.5, scope="local", training=training)
    assert torch.equal(keep["0.weight"], torch.tensor([[True, True, False, False]] * 2))
    assert bool((layer.weight[:, 2:].abs() < start[:, 2:].abs()).all())  # training did shrink them
    assert not magnitude_masks({"w": start}, ratio=0.5)["w"][:, :2].any()  # magnitude zeroes the informative ones


@pytest.fixture(scope="module")
def movement(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("movement")
    return _run(CONFIGS / "digits_mlp_movement.yaml", out), out


def test_movement_config_masks_stay_zero_through_finetuning(movement) -> None:
    report, out = movement
    assert report["stages"][:3] == ["original", "sparsified", "finetuned"]
    weights = torch.load(out / "model.pt", weights_only=True)
    original = torch.load(SAMPLES / "digits_mlp.pt", weights_only=True)
    (step,) = report["sparsity"]["steps"]
    layers = report["sparsity"]["layers"]
    assert step["method"] == "movement" and set(layers) == {"features.fc1.weight", "features.fc2.weight"}
    zeros = sum(int((weights[name] == 0).sum()) for name in layers)
    total = sum(weights[name].numel() for name in layers)
    assert zeros == report["sparsity"]["zeros"] == int(step["ratio"] * total)  # exactly the masked ones, after training
    assert not torch.equal(weights["fc.weight"], original["fc.weight"])  # the fine-tuning did train
    assert report["finetuned"]["accuracy"] > 0.9


BAD = "version: 1\nmodel: {path: S/digits_cnn.pt, arch: S/archs.py:DigitsCNN, input_shape: [1, 1, 8, 8]}\n"


@pytest.mark.parametrize(
    ("data", "step", "message"),
    [
        ("train: S/digits_train.npz", "{kind: regularize, penalty: l3, strength: 0.1}",
         r"steps\.0\.penalty: Input should be 'l1_bn', 'group_lasso', 'l1' or 'l2'"),
        ("train: S/digits_train.npz", "{kind: regularize, penalty: l1}",
         r"steps\.0\.strength: missing required key; add it"),
        ("train: S/digits_train.npz", "{kind: regularize, penalty: l1, strength: 0}",
         r"steps\.0\.strength: Input should be greater than 0"),
        ("eval: S/digits_val.npz", "{kind: regularize, penalty: l1, strength: 0.1}",
         r"steps\.0: a regularize step trains the model and needs training data: set data\.train"),
        ("eval: S/digits_val.npz", "{kind: sparsify, method: movement, ratio: 0.5}",
         r"steps\.0: a sparsify method: movement step trains the model and needs training data"),
        ("train: S/digits_train.npz", "{kind: sparsify, method: movement, threshold: 0.1}",
         r"method: movement zeroes the lowest-scored fraction of the weights; give ratio"),
        ("train: S/digits_train.npz", "{kind: sparsify, ratio: 0.5, epochs: 2}",
         r"epochs and lr apply to method: movement only"),
    ],
)  # fmt: skip
def test_bad_configs_are_refused_with_one_line(tmp_path: Path, data: str, step: str, message: str) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text((BAD + f"data: {{format: npz, {data}}}\nsteps:\n  - {step}\n").replace("S/", f"{SAMPLES}/"))
    with pytest.raises(InputError, match=message) as error:
        _run(path, tmp_path / "out")
    assert "\n" not in str(error.value)


def test_l1_bn_refuses_a_model_without_normalisation() -> None:
    sys.path.insert(0, str(SAMPLES))
    try:
        from archs import DigitsMLP
    finally:
        sys.path.remove(str(SAMPLES))
    with pytest.raises(InputError, match="penalty l1_bn needs normalisation layers .* use penalty: group_lasso or l1"):
        make_penalty("l1_bn", DigitsMLP(), graph=None)

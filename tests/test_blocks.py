"""prune_blocks: residual branches and blocks found in the traced graph, scored, removed, verified, replayed.

Real models: the sample CNN (one residual branch in its root forward), the sample MLP (nothing
residual), timm resnet18 (BasicBlocks: ReLU after the add, so branches) and a timm ViT
(transformer blocks made of two residual branches, so whole blocks), at 32x32 inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pydantic import ValidationError

import prunecli
from prunecli.blocks import scoring, stage
from prunecli.blocks.candidates import find_candidates
from prunecli.blocks.scoring import choose, score_candidates
from prunecli.blocks.surgery import PassThrough, ZeroBranch, remove_candidates, verify_removal
from prunecli.config.loading import load_pipeline
from prunecli.config.schema import SelectStep
from prunecli.criteria.inputs import ScoringInputs
from prunecli.criteria.registry import get_criterion
from prunecli.errors import InputError, VerificationError
from prunecli.graph.trace import build_channel_graph
from prunecli.metrics.size import count_params
from prunecli.data.dataset import make_split
from prunecli.pipeline.options import RunOptions, RunResult
from prunecli.pipeline.runner import run_pipeline
from prunecli.selection import select_channels
from prunecli.surgery.prune import prune_module
from tests.conftest import CONFIGS, SAMPLES, load_sample_cnn

FAST_LATENCY = {"repeats": 2, "warmup": 0, "backends": ["torch"]}


def run(folder: Path, *, model: dict, steps: list[dict], data: dict | None = None) -> RunResult:
    """Run a pipeline written into ``folder`` (sample data unless ``data``) and return the result."""
    data = data or {"format": "npz", "train": str(SAMPLES / "digits_train.npz"),
                    "eval": str(SAMPLES / "digits_val.npz")}
    pipeline = {"version": 1, "model": model, "data": data, "steps": steps, "latency": FAST_LATENCY}
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return run_pipeline(load_pipeline(path), options=RunOptions(output_dir=folder / "out", base_dir=folder))


def sample_model(name: str) -> dict:
    arch = {"cnn": "DigitsCNN", "mlp": "DigitsMLP"}[name]
    return {"path": str(SAMPLES / f"digits_{name}.pt"), "arch": f"{SAMPLES}/archs.py:{arch}",
            "input_shape": [1, 1, 8, 8]}


def outputs(module: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return module.eval()(inputs)


def test_sample_cnn_config_removes_the_residual_branch_then_prunes_channels(tmp_path: Path) -> None:
    pipeline = load_pipeline(CONFIGS / "digits_cnn_blocks.yaml", overrides=["latency.repeats=2", "steps.4.epochs=1"])
    result = run_pipeline(pipeline, options=RunOptions(output_dir=tmp_path / "out", base_dir=CONFIGS))
    report, module = result.report, result.module
    blocks = report["blocks"]
    assert blocks["removed"] == ["(res_conv1..res_bn2)"] and blocks["verification"]["passed"]
    row = blocks["candidates"][0]
    assert row["modules"] == ["res_conv1", "res_bn1", "res_conv2", "res_bn2"] and row["score"] > 0
    assert report["original"]["params"] - report["blocks_pruned"]["params"] == row["params"] == 2 * 32 * 32 * 9 + 4 * 32
    assert report["blocks_pruned"]["macs"] < 0.4 * report["original"]["macs"]  # the two 3x3 convs were most MACs
    assert isinstance(module.res_conv1, PassThrough) and isinstance(module.res_bn2, ZeroBranch)
    # the channel steps traced the smaller model: no group names a removed module, and their surgery verified
    assert report["verification"]["passed"] and report["pruned"]["macs"] < report["blocks_pruned"]["macs"]
    assert not any("res_" in group["name"] for group in report["groups"])
    inputs = torch.from_numpy(np.load(SAMPLES / "digits_val.npz")["inputs"][:16]).float()
    reloaded = prunecli.load(tmp_path / "out")  # model.plan.json replays the kept channels and the replaced modules
    torch.testing.assert_close(outputs(reloaded, inputs), outputs(module.cpu(), inputs), rtol=0, atol=1e-5)
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "## Blocks removed" in markdown and "| (res_conv1..res_bn2) | branch | 18560 |" in markdown


def test_nothing_removable_is_a_note_not_a_crash(tmp_path: Path) -> None:
    result = run(tmp_path, model=sample_model("mlp"), steps=[{"kind": "prune_blocks", "count": 1}])
    blocks = result.report["blocks"]
    assert blocks["removed"] == [] and blocks["candidates"] == []
    assert "no residual add x + f(x)" in blocks["note"] and "add 'layer' to candidates" in blocks["note"]
    assert result.report["blocks_pruned"]["params"] == result.report["original"]["params"]
    assert "nothing removed" in (tmp_path / "out" / "report.md").read_text()


def test_layer_candidates_are_modules_that_keep_their_input_shape() -> None:
    cnn = load_sample_cnn()
    found = find_candidates(cnn, torch.randn(2, 1, 8, 8), kinds=["layer"])
    names = [candidate.name for candidate in found.candidates]
    assert names == ["stem_bn", "res_conv1", "res_bn1", "res_conv2", "res_bn2", "branch1_conv", "branch1_bn",
                     "branch3_conv", "branch3_bn"]  # fmt: skip
    assert "stem_conv" not in names and "hidden_fc" not in names  # 1 -> 32 channels, 512 -> 64 features
    chosen = [found.candidates[names.index("branch3_conv")]]
    pruned, replaced = remove_candidates(cnn, chosen)
    assert replaced == {"branch3_conv": "identity"} and isinstance(pruned.branch3_conv, PassThrough)
    inputs = torch.randn(8, 1, 8, 8)
    assert verify_removal(original=cnn, pruned=pruned, chosen=chosen, inputs=inputs, tolerance=1e-5).passed


def test_relative_norm_is_the_branch_size_relative_to_its_input() -> None:
    cnn = load_sample_cnn()
    branch = find_candidates(cnn, torch.randn(2, 1, 8, 8), kinds=["residual"]).candidates
    inputs = torch.from_numpy(np.load(SAMPLES / "digits_val.npz")["inputs"][:20]).float()
    labels = torch.zeros(20, dtype=torch.long)
    [score] = score_candidates(cnn, branch, criterion="relative_norm", data=[(inputs, labels)])
    with torch.no_grad():
        x = torch.relu(cnn.stem_bn(cnn.stem_conv(inputs)))
        f = cnn.res_bn2(cnn.res_conv2(torch.relu(cnn.res_bn1(cnn.res_conv1(x)))))
    expected = (f.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)).mean()
    assert score == pytest.approx(float(expected), rel=1e-5)


def test_choose_takes_the_lowest_scores_without_overlaps_and_refuses_too_many() -> None:
    found = find_candidates(load_sample_cnn(), torch.randn(2, 1, 8, 8), kinds=["residual", "layer"]).candidates
    names = [candidate.name for candidate in found]
    scores = [0.0 if name in ("res_conv1", "(res_conv1..res_bn2)") else 1.0 + index for index, name in enumerate(names)]
    chosen = [names[index] for index in choose(found, scores, count=2, ratio=None)]
    assert "res_conv1" in chosen and "(res_conv1..res_bn2)" not in chosen  # they share res_conv1
    assert len(choose(found, scores, count=None, ratio=0.3)) == int(0.3 * len(found))
    with pytest.raises(InputError, match="only 10 removable candidate"):
        choose(found, scores, count=11, ratio=None)
    assert stage.is_ignored(found[names.index("(res_conv1..res_bn2)")], ["res_bn*"])


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([{"kind": "score"}, {"kind": "select", "ratio": 0.5}, {"kind": "prune"}, {"kind": "prune_blocks", "count": 1}],
         "before score, select and prune"),
        ([{"kind": "prune_blocks", "count": 1, "ratio": 0.5}], "exactly one of count or ratio"),
        ([{"kind": "prune_blocks"}], "exactly one of count or ratio"),
        ([{"kind": "prune_blocks", "count": 1, "criterion": "l2"}], "should be 'loss' or 'relative_norm'"),
    ],
)  # fmt: skip
def test_bad_configs_are_refused_before_the_run(tmp_path: Path, steps: list, message: str) -> None:
    with pytest.raises((ValidationError, InputError), match=message):
        run(tmp_path, model=sample_model("cnn"), steps=steps)


def test_bad_input_found_on_the_model_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="count is 2 but the model has only 1 removable candidate"):
        run(tmp_path, model=sample_model("cnn"), steps=[{"kind": "prune_blocks", "count": 2}])
    with pytest.raises(InputError, match="'res_cnv1' matches no module of the model; did you mean 'res_conv1'"):
        run(tmp_path, model=sample_model("cnn"), steps=[{"kind": "prune_blocks", "count": 1, "ignore": ["res_cnv1"]}])


def test_a_removal_that_breaks_the_invariant_raises_and_keeps_the_evidence(tmp_path: Path, monkeypatch) -> None:
    def wrong(module, chosen):  # forgets to zero the branch: the block then adds x to itself
        pruned, replaced = remove_candidates(module, chosen)
        pruned.res_bn2 = PassThrough()
        return pruned, replaced

    monkeypatch.setattr(stage, "remove_candidates", wrong)
    with pytest.raises(VerificationError, match="differs from the original with those branches zeroed"):
        run(tmp_path, model=sample_model("cnn"), steps=[{"kind": "prune_blocks", "count": 1}])
    assert "FAILED" in (tmp_path / "out" / "report.md").read_text()


def timm_model(folder: Path, timm, name: str, **kwargs) -> dict:
    """Save a random-weight timm model's state_dict and return its pipeline ``model`` entry (32x32 inputs)."""
    kwargs = {"model_name": name, "pretrained": False, "num_classes": 10, **kwargs}
    torch.manual_seed(0)
    torch.save(timm.create_model(**kwargs).state_dict(), folder / "model.pt")
    return {"path": "model.pt", "arch": "timm:create_model", "kwargs": kwargs, "input_shape": [1, 3, 32, 32]}


def random_data(folder: Path, samples: int = 16) -> dict:
    generator = np.random.default_rng(0)
    inputs = generator.standard_normal((samples, 3, 32, 32), dtype=np.float32)
    np.savez(folder / "data.npz", inputs=inputs, labels=generator.integers(0, 10, samples))
    return {"format": "npz", "train": "data.npz", "eval": "data.npz", "batch_size": 8}


def test_timm_resnet18_loses_two_basic_block_branches_and_its_channels_still_prune(tmp_path: Path, timm_module) -> None:
    model = timm_model(tmp_path, timm_module, "resnet18")
    steps = [{"kind": "prune_blocks", "count": 2, "batches": 1}]
    result = run(tmp_path, model=model, steps=steps, data=random_data(tmp_path))
    report, module = result.report, result.module.cpu()
    blocks = report["blocks"]
    candidates = [row["name"] for row in blocks["candidates"]]
    identity_blocks = ("layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1")
    assert candidates == [f"{block} (conv1..bn2)" for block in identity_blocks]
    assert len(blocks["removed"]) == 2 and blocks["verification"]["passed"]
    removed_params = sum(row["params"] for row in blocks["candidates"] if row["removed"])
    assert report["original"]["params"] - report["blocks_pruned"]["params"] == removed_params
    assert report["blocks_pruned"]["macs"] < report["original"]["macs"]
    for name in blocks["removed"]:
        block = module.get_submodule(name.split()[0])
        assert isinstance(block.conv1, PassThrough) and isinstance(block.bn2, ZeroBranch)
        assert not list(block.parameters())  # conv1, bn1, conv2, bn2 are gone; act2 stays
    inputs = torch.randn(2, 3, 32, 32)
    reloaded = prunecli.load(tmp_path / "out")
    torch.testing.assert_close(outputs(reloaded, inputs), outputs(module, inputs), rtol=0, atol=1e-5)
    # channel pruning after it traces the smaller model (as a later score step does) and verifies
    graph = build_channel_graph(module, inputs)
    scores = get_criterion("l2")(ScoringInputs(graph=graph, module=module))
    plan = select_channels(graph, scores, SelectStep(kind="select", ratio=0.25, ignore=["fc"]))
    outcome = prune_module(module, graph, plan.removed, inputs=inputs, tolerance=1e-4)
    assert outcome.verification.passed and count_params(outcome.module) < count_params(module)


def test_timm_vit_loses_two_whole_transformer_blocks(tmp_path: Path, timm_module) -> None:
    model = timm_model(tmp_path, timm_module, "vit_tiny_patch16_224", img_size=32, depth=6)
    steps = [{"kind": "prune_blocks", "ratio": 0.34, "criterion": "relative_norm", "batches": 1}]
    result = run(tmp_path, model=model, steps=steps, data=random_data(tmp_path))
    report, module = result.report, result.module
    blocks = report["blocks"]
    assert [row["name"] for row in blocks["candidates"]] == [f"blocks.{index}" for index in range(6)]
    assert {row["kind"] for row in blocks["candidates"]} == {"block"} and len(blocks["removed"]) == 2
    assert blocks["verification"]["passed"]
    for name in blocks["removed"]:
        assert isinstance(module.get_submodule(name), PassThrough)
    block_macs = (report["original"]["macs"] - report["blocks_pruned"]["macs"]) / 2
    assert block_macs > 0.1 * report["original"]["macs"]  # each block is about a sixth of this ViT
    assert report["original"]["params"] - report["blocks_pruned"]["params"] == sum(
        row["params"] for row in blocks["candidates"] if row["removed"]
    )


@pytest.mark.parametrize("family", ["gpt2", "vit"])
def test_transformers_layers_from_config_are_whole_blocks(family: str, timm_module) -> None:
    transformers = pytest.importorskip("transformers")  # not a project dependency: runs where it is installed
    torch.manual_seed(0)
    if family == "gpt2":
        config = transformers.GPT2Config(vocab_size=50, n_embd=32, n_layer=3, n_head=4, n_positions=16)
        model, inputs = transformers.GPT2Model(config), torch.randint(0, 50, (2, 8))
    else:
        config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                        intermediate_size=64, image_size=32, patch_size=8)  # fmt: skip
        model, inputs = transformers.ViTModel(config), torch.randn(2, 3, 32, 32)

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x, use_cache=False).last_hidden_state if family == "gpt2" else self.model(x)[0]

    wrapped = LastHidden().eval()
    found = find_candidates(wrapped, inputs, kinds=["residual"])
    layers = "model.h" if family == "gpt2" else "model.layers"
    assert [(c.name, c.kind) for c in found.candidates] == [(f"{layers}.{i}", "block") for i in range(3)], found.notes
    pruned, replaced = remove_candidates(wrapped, found.candidates[:2])
    assert replaced == {f"{layers}.0": "identity", f"{layers}.1": "identity"}
    assert count_params(pruned) < count_params(wrapped)
    chosen = found.candidates[:2]
    assert verify_removal(original=wrapped, pruned=pruned, chosen=chosen, inputs=inputs, tolerance=1e-5).passed


def test_scoring_leaves_the_model_as_it_was() -> None:
    cnn = load_sample_cnn()
    candidates = find_candidates(cnn, torch.randn(2, 1, 8, 8), kinds=["residual", "layer"]).candidates
    inputs = torch.randn(8, 1, 8, 8)
    before = outputs(cnn, inputs)
    split = make_split(np.random.default_rng(0).standard_normal((16, 1, 8, 8), dtype=np.float32),
                       np.arange(16) % 10, source="test")  # fmt: skip
    data = scoring.scoring_batches(split, batch_size=8, count=2, seed=0, device="cpu")
    scores = score_candidates(cnn, candidates, criterion="loss", data=data)
    assert len(scores) == len(candidates) and all(np.isfinite(scores))
    torch.testing.assert_close(outputs(cnn, inputs), before, rtol=0, atol=0)

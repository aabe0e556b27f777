"""The channel graph and torch surgery on tiny models: groups, invariants, attributes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from prunecli.config.schema import SelectStep
from prunecli.criteria.inputs import ScoringInputs
from prunecli.criteria.registry import get_criterion
from prunecli.graph.trace import build_channel_graph
from prunecli.selection import select_channels
from prunecli.model_io.outputs import output_tensors
from prunecli.surgery import apply_keep
from prunecli.surgery.prune import prune_module
from prunecli.surgery.verify import verify_surgery
from tests.models import TEST_MODELS, UnsupportedOpNet, randomize_batchnorm


def _build(name: str):
    factory, shape = TEST_MODELS[name]
    torch.manual_seed(0)
    model = randomize_batchnorm(factory())
    inputs = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    return model, inputs, build_channel_graph(model, inputs)


def _prune(model, graph, removed):
    keep = graph.keep_indices(removed)
    pruned = copy.deepcopy(model)
    apply_keep(pruned, keep)
    return pruned, keep


@pytest.mark.parametrize("name", sorted(TEST_MODELS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pruned_equals_masked_original(name: str, seed: int) -> None:
    model, inputs, graph = _build(name)
    rng = np.random.default_rng(seed)
    removed = {g.id: rng.choice(g.channels, g.channels // 2, replace=False) for g in graph.prunable_groups}
    outcome = prune_module(model, graph, removed, inputs=inputs, tolerance=1e-5)
    assert outcome.verification.passed, outcome.verification
    assert outcome.left_intact == {}
    assert sum(p.numel() for p in outcome.module.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(TEST_MODELS))
def test_ratio_zero_changes_nothing(name: str) -> None:
    model, inputs, graph = _build(name)
    scores = get_criterion("l2")(ScoringInputs(graph=graph, module=model, seed=0))
    plan = select_channels(graph, scores, SelectStep(kind="select", ratio=0.0))
    pruned, keep = _prune(model, graph, plan.removed)
    assert keep == {}
    with torch.inference_mode():
        for before, after in zip(output_tensors(model(inputs)), output_tensors(pruned(inputs)), strict=True):
            assert torch.equal(before, after)
    for (name_a, a), (name_b, b) in zip(model.state_dict().items(), pruned.state_dict().items()):
        assert name_a == name_b and torch.equal(a, b)


def test_output_layer_and_input_channels_are_never_pruned() -> None:
    model, _, graph = _build("residual")
    by_name = {g.name: g for g in graph.groups}
    assert not by_name["head"].prunable and "output" in by_name["head"].reason
    tensors = {m.tensor for g in graph.prunable_groups for m in g.members}
    assert "head.bias" not in tensors


def test_residual_sum_ties_both_branches_into_one_group() -> None:
    _, _, graph = _build("residual")
    tied = [g for g in graph.prunable_groups if {"conv2.weight", "shortcut.weight"} <= {m.tensor for m in g.members}]
    assert len(tied) == 1
    members = {(m.tensor, m.dim) for m in tied[0].members}
    assert {("conv2.weight", 0), ("shortcut.weight", 0), ("conv2.bias", 0), ("head.weight", 1)} <= members


def test_concat_then_flatten_maps_channels_to_linear_column_blocks() -> None:
    _, _, graph = _build("concat_flatten")
    group_b = next(g for g in graph.groups if g.name == "b")
    fc1 = next(m for m in group_b.members if m.tensor == "fc1.weight")
    # fc1 input = [mix (8 ch x 9), pooled cat (a: 6, b: 4, c: 5 channels, x 9 positions each)]
    expected = np.full(8 * 9 + 15 * 9, -1)
    expected[8 * 9 + 6 * 9 : 8 * 9 + 10 * 9] = np.repeat(np.arange(4), 9)
    np.testing.assert_array_equal(fc1.positions, expected)


def test_depthwise_and_grouped_convs_keep_their_structure() -> None:
    model, inputs, graph = _build("depthwise")
    removed = {g.id: np.arange(g.channels // 2) for g in graph.prunable_groups}
    pruned, keep = _prune(model, graph, removed)
    assert pruned.dw.groups == pruned.dw.in_channels == pruned.dw.out_channels == 6
    assert pruned.grouped.groups == 2 and pruned.grouped.in_channels % 2 == 0
    assert verify_surgery(original=model, pruned=pruned, keep=keep, inputs=inputs, tolerance=1e-5).passed


def test_unsupported_op_is_left_intact_with_a_reason() -> None:
    model = UnsupportedOpNet().eval()
    inputs = torch.randn(2, 3, 6, 6)
    graph = build_channel_graph(model, inputs)
    by_name = {g.name: g for g in graph.groups}
    assert not by_name["conv2"].prunable and "cumsum" in by_name["conv2"].reason
    assert by_name["conv1"].prunable and by_name["conv3"].prunable
    removed = {g.id: np.array([0, 1]) for g in graph.prunable_groups}
    pruned, keep = _prune(model, graph, removed)
    assert verify_surgery(original=model, pruned=pruned, keep=keep, inputs=inputs, tolerance=1e-5).passed


def test_attributes_follow_the_new_shapes() -> None:
    model, inputs, graph = _build("residual")
    removed = {g.id: np.arange(g.channels // 2) for g in graph.prunable_groups}
    pruned, _ = _prune(model, graph, removed)
    assert pruned.conv1.out_channels == pruned.conv1.weight.shape[0] == 8
    assert pruned.bn1.num_features == 8
    assert pruned.head.in_features == pruned.head.weight.shape[1] == 8
    assert pruned(inputs).shape == (2, 5)


def test_selection_rounds_and_respects_min_channels_and_ignore() -> None:
    model, _, graph = _build("residual")
    scores = get_criterion("l1")(ScoringInputs(graph=graph, module=model, seed=0))
    step = SelectStep(kind="select", ratio=0.9, round_to=4, min_channels=4, ignore=["stem"])
    plan = select_channels(graph, scores, step)
    for group in graph.prunable_groups:
        kept = plan.kept(group)
        if group.name == "stem":
            assert kept == group.channels and "ignore" in plan.skipped[group.id]
        else:
            assert kept % 4 == 0 and kept >= 4


def test_l2_removes_the_weakest_channels() -> None:
    model = TEST_MODELS["mlp"][0]().eval()
    with torch.no_grad():
        model.net[0].weight[:8] *= 1e-3  # neurons 0..7 of the first hidden layer barely matter
    graph = build_channel_graph(model, torch.randn(4, 10))
    scores = get_criterion("l2")(ScoringInputs(graph=graph, module=model, seed=0))
    plan = select_channels(graph, scores, SelectStep(kind="select", ratio=0.25))
    first = next(g for g in graph.prunable_groups if g.name == "net.0")
    assert plan.removed[first.id].tolist() == list(range(8))


def test_global_scope_removes_the_requested_share_of_channels() -> None:
    model, _, graph = _build("depthwise")
    scores = get_criterion("random")(ScoringInputs(graph=graph, module=model, seed=3))
    plan = select_channels(graph, scores, SelectStep(kind="select", ratio=0.5, scope="global"))
    total = sum(g.channels for g in graph.prunable_groups)
    removed = sum(len(r) for r in plan.removed.values())
    assert abs(removed - total // 2) <= len(graph.prunable_groups)


def test_attention_heads_are_pruned_and_num_heads_follows() -> None:
    model, inputs, graph = _build("vit")
    heads = [g for g in graph.prunable_groups if g.channels == 4 and any("qkv.weight" in m.tensor for m in g.members)]
    assert len(heads) == 2  # one head group per block; head_dim stays (the attention scale depends on it)
    outcome = prune_module(model, graph, {g.id: [0, 2] for g in heads}, inputs=inputs, tolerance=1e-5)
    assert outcome.verification.passed
    attention = outcome.module.blocks[0].attn
    assert attention.num_heads == 2 and attention.head_dim == 8 and attention.qkv.out_features == 3 * 16


def test_embedding_dimension_through_layernorm_tokens_and_position_embedding() -> None:
    model, inputs, graph = _build("vit")
    embed = next(g for g in graph.prunable_groups if any(m.tensor == "pos_embed" for m in g.members))
    assert {"cls_token", "norm.weight", "blocks.1.norm2.weight", "head.weight"} <= {m.tensor for m in embed.members}
    outcome = prune_module(model, graph, {embed.id: list(range(0, 32, 2))}, inputs=inputs, tolerance=1e-5)
    assert outcome.verification.passed
    assert outcome.module.norm.normalized_shape == (16,) and outcome.module.pos_embed.shape == (1, 5, 16)


def test_pruned_vit_exports_to_onnx_and_runs_in_onnxruntime(tmp_path) -> None:
    import onnxruntime as ort

    from prunecli.model_io import export_onnx

    model, inputs, graph = _build("vit")
    removed = {g.id: np.arange(g.channels // 2) for g in graph.prunable_groups}
    pruned = prune_module(model, graph, removed, inputs=inputs, tolerance=1e-5).module
    export_onnx(pruned, inputs, tmp_path / "vit.onnx")
    session = ort.InferenceSession(str(tmp_path / "vit.onnx"))
    with torch.inference_mode():
        expected = pruned(inputs).numpy()
    np.testing.assert_allclose(session.run(None, {"input": inputs.numpy()})[0], expected, atol=1e-4)


def test_multihead_attention_module_prunes_around_it_without_crashing() -> None:
    model, inputs, graph = _build("mha")
    removed = {g.id: np.arange(g.channels // 2) for g in graph.prunable_groups}
    outcome = prune_module(model, graph, removed, inputs=inputs, tolerance=1e-5)
    assert outcome.verification.passed
    assert outcome.module.fc1.out_features == 12  # the MLP after the attention still prunes

"""Engine fallbacks: counted and reported for users, errors in strict mode (PRUNECLI_STRICT) for bugs.

Tests that exercise a bug-kind fallback on purpose turn strict mode off with monkeypatch and
assert what was recorded; the rest of the suite runs strict (tests/conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunecli.surgery.prune as prune
from prunecli.errors import InternalError
from prunecli.graph.fallbacks import STRICT_ENV, FallbackLog, strict_mode
from prunecli.graph.layout import SpaceTable
from prunecli.graph.rules import RULES
from prunecli.graph.summary import prunability
from prunecli.graph.trace import build_channel_graph, layout_mismatch
from prunecli.surgery.prune import prune_module
from prunecli.surgery.torch_surgery import apply_keep
from tests.models import TEST_MODELS, UnsupportedOpNet


class HardWiredViewNet(nn.Module):
    """conv -> a view whose width is a literal (8 * 36) -> linear: the model's code fixes the conv's width."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.other = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 36, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.other(F.relu(self.conv(x)))
        return self.fc(F.relu(y).view(-1, 8 * 36))


class TiedNet(nn.Module):
    """Two linears sharing one weight (tied), summed into a head."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(8, 3)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.a(x)) + F.relu(self.b(x)))


def _residual():
    factory, shape = TEST_MODELS["residual"]
    torch.manual_seed(0)
    return factory().eval(), torch.randn(shape, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(("value", "strict"), [("1", True), ("true", True), ("0", False), ("", False)])
def test_strict_mode_is_read_when_asked(monkeypatch, value: str, strict: bool) -> None:
    monkeypatch.setenv(STRICT_ENV, value)
    assert strict_mode() is strict


def test_the_suite_runs_strict() -> None:
    assert strict_mode()


def test_log_counts_by_kind_and_rejects_unknown_kinds(monkeypatch) -> None:
    monkeypatch.setenv(STRICT_ENV, "0")
    log = FallbackLog()
    log.record("unsupported_op", "aten::cumsum (cumsum)", "no coupling rule")
    log.record("rule_error", "aten::cat (cat)", "IndexError:   list index\n out of range")
    assert log.counts() == {"unsupported_op": 1, "rule_error": 1}
    assert log.of_kind("rule_error")[0].detail == "IndexError: list index out of range"
    with pytest.raises(InternalError, match="unknown fallback kind 'oops'"):
        log.record("oops", "here", "why")


def test_op_without_a_rule_is_recorded_not_raised_in_strict_mode() -> None:
    model, inputs = UnsupportedOpNet().eval(), torch.randn(2, 3, 6, 6)
    graph = build_channel_graph(model, inputs)
    assert graph.fallbacks.counts() == {"unsupported_op": 1}
    assert graph.fallbacks.records[0].where.startswith("aten::cumsum (cumsum")
    assert prunability(graph, model, inputs)["fallbacks"] == {"unsupported_op": 1}


def _raising_rule(ctx, node, args):
    raise IndexError("tuple index out of range")


def _dimension_dropping_rule(ctx, node, args):
    return ctx.layouts(args["self"])[:-1]


def test_raising_rule_is_an_internal_error_in_strict_mode(monkeypatch) -> None:
    model, inputs = _residual()
    monkeypatch.setitem(RULES._entries, "aten::relu", _raising_rule)
    with pytest.raises(InternalError, match=r"^rule_error: aten::relu \(relu.*IndexError: tuple index") as caught:
        build_channel_graph(model, inputs)
    assert "\n" not in str(caught.value)


def test_raising_rule_keeps_its_tensors_whole_outside_strict_mode(monkeypatch) -> None:
    model, inputs = _residual()
    monkeypatch.setenv(STRICT_ENV, "0")
    monkeypatch.setitem(RULES._entries, "aten::relu", _raising_rule)
    graph = build_channel_graph(model, inputs)
    assert graph.fallbacks.counts() == {"rule_error": 3}  # three relus in ResidualNet
    stem = next(group for group in graph.groups if group.name == "stem")
    assert not stem.prunable and "IndexError: tuple index out of range" in stem.reason


def test_rule_whose_layouts_disagree_with_the_traced_shape_is_an_internal_error(monkeypatch) -> None:
    model, inputs = _residual()
    monkeypatch.setitem(RULES._entries, "aten::relu", _dimension_dropping_rule)
    with pytest.raises(InternalError, match=r"layout_mismatch: aten::relu .*layouts of sizes \(2, 8, 8\) for a tensor"):
        build_channel_graph(model, inputs)
    monkeypatch.setenv(STRICT_ENV, "0")
    graph = build_channel_graph(model, inputs)
    assert graph.fallbacks.counts() == {"layout_mismatch": 3}
    assert not next(group for group in graph.groups if group.name == "stem").prunable


def _batch_tying_rule(ctx, node, args):
    layouts = ctx.layouts(args["self"])
    ctx.table.unify(layouts[0], layouts[1])  # batch (2) with channels (8 or 16): a rule's mistake
    return list(layouts)


def test_rule_tying_dimensions_of_different_sizes_is_an_internal_error(monkeypatch) -> None:
    model, inputs = _residual()
    monkeypatch.setitem(RULES._entries, "aten::relu", _batch_tying_rule)
    with pytest.raises(InternalError, match=r"size_conflict: aten::relu .*tied dimensions of sizes 2 and 8"):
        build_channel_graph(model, inputs)
    monkeypatch.setenv(STRICT_ENV, "0")
    graph = build_channel_graph(model, inputs)
    assert graph.fallbacks.counts() == {"size_conflict": 3}
    stem = next(group for group in graph.groups if group.name == "stem")
    assert not stem.prunable and stem.reason == "dimensions of different sizes meet"


def test_layout_mismatch_checks_sizes_tuples_and_missing_layouts() -> None:
    table = SpaceTable()
    c, s = table.new(4), table.new(3)
    traced = torch.empty(4, 3)
    assert layout_mismatch(table, [c, s], traced) is None
    assert layout_mismatch(table, [s, c], traced) == "layouts of sizes (3, 4) for a tensor of shape (4, 3)"
    assert layout_mismatch(table, None, traced) == "no layouts for a tensor of shape (4, 3)"
    assert layout_mismatch(table, [[c, s], None], (traced, torch.empty(2))) is None
    assert layout_mismatch(table, [[c, s]], (traced, traced)) == "1 outputs for a tuple of 2"
    expected = "output 1: layouts of sizes (4,) for a tensor of shape (4, 3)"
    assert layout_mismatch(table, [None, [c]], (traced, traced)) == expected
    assert layout_mismatch(table, None, 3) is None  # not a tensor: nothing to check


def _slicing_bug(module, keep, *, attributes=None):
    """apply_keep, then one row too few when the stem conv is pruned: the kind of bug strict mode must catch."""
    apply_keep(module, keep, attributes=attributes)
    if "stem.weight" in keep:
        module.stem.weight = nn.Parameter(module.stem.weight[:-1].detach())


def test_surgery_that_mis_shapes_a_tensor_is_an_internal_error(monkeypatch) -> None:
    model, inputs = _residual()
    graph = build_channel_graph(model, inputs)
    removed = {group.id: np.arange(group.channels // 2) for group in graph.prunable_groups}
    monkeypatch.setattr(prune, "apply_keep", _slicing_bug)
    expected = r"surgery_error: group stem: tensor 'stem.weight' has shape \(3, 3, 3, 3\)"
    with pytest.raises(InternalError, match=expected):
        prune_module(model, graph, removed, inputs=inputs, tolerance=1e-5)
    monkeypatch.setenv(STRICT_ENV, "0")
    outcome = prune_module(model, graph, removed, inputs=inputs, tolerance=1e-5)
    stem = next(group for group in graph.groups if group.name == "stem")
    assert outcome.fallbacks.counts() == {"surgery_error": 1} and set(outcome.left_intact) == {stem.id}
    assert outcome.left_intact[stem.id].startswith("slicing it failed, a prunecli bug (tensor 'stem.weight'")
    assert outcome.verification.passed and outcome.module.stem.weight.shape[0] == 8


def test_hard_wired_size_leaves_its_group_whole_with_a_reason_even_in_strict_mode() -> None:
    model, inputs = HardWiredViewNet().eval(), torch.randn(2, 3, 6, 6)
    graph = build_channel_graph(model, inputs)
    removed = {group.id: np.arange(group.channels // 2) for group in graph.prunable_groups}
    outcome = prune_module(model, graph, removed, inputs=inputs, tolerance=1e-5)
    other = next(group for group in graph.groups if group.name == "other")
    assert set(outcome.left_intact) == {other.id}
    assert outcome.left_intact[other.id].startswith("the model's forward fails once pruned (RuntimeError: ")
    assert outcome.fallbacks.counts() == {"forward_fails": 1}
    assert outcome.fallbacks.records[0].where == "group other"
    assert outcome.verification.passed and outcome.module.conv.out_channels == 4


def test_tied_weights_are_sliced_under_every_name_and_stay_tied() -> None:
    model, inputs = TiedNet().eval(), torch.randn(4, 6)
    graph = build_channel_graph(model, inputs)
    removed = {group.id: np.array([0, 1, 2]) for group in graph.prunable_groups}
    outcome = prune_module(model, graph, removed, inputs=inputs, tolerance=1e-5)
    assert outcome.left_intact == {} and outcome.verification.passed
    assert outcome.module.a.weight is outcome.module.b.weight and outcome.module.a.weight.shape == (5, 6)

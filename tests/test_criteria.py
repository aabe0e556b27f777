"""Importance criteria on tiny models built to have a known-unimportant channel."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from prunecli.config.schema import ScoreStep
from prunecli.criteria.hooks import consumer_sites, observed_sites
from prunecli.criteria.hybrid import rank_normalised
from prunecli.criteria.inputs import ScoringInputs, reduce_members
from prunecli.criteria.registry import get_criterion
from prunecli.criteria.scoring import score_groups
from prunecli.data.dataset import make_split
from prunecli.errors import InputError
from prunecli.graph.trace import build_channel_graph
from tests.models import ConcatFlattenNet, MLP

DEAD = 2  # the channel made unimportant in each model


class ChainNet(nn.Module):
    """conv1 (6 channels) -> BN -> ReLU -> conv2 -> ReLU -> pool -> fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)
        self.conv2, self.fc = nn.Conv2d(6, 5, 3, padding=1), nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv2(F.relu(self.bn(self.conv1(x)))))
        return self.fc(x.mean((2, 3)))


class AddNet(nn.Module):
    """Two branches added channel-wise (a residual-style sum: one coupled group), then conv and head."""

    def __init__(self) -> None:
        super().__init__()
        self.branch_a, self.branch_b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(3, 6, 1)
        self.conv, self.fc = nn.Conv2d(6, 5, 3, padding=1), nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.branch_a(x) + self.branch_b(x))
        return self.fc(F.relu(self.conv(y)).mean((2, 3)))


def _inputs(model: nn.Module, shape: tuple[int, ...], *, classes: int = 3, **options) -> ScoringInputs:
    generator = torch.Generator().manual_seed(1)
    graph = build_channel_graph(model.eval(), torch.randn((2, *shape), generator=generator))
    features = np.random.default_rng(0).normal(size=(48, *shape)).astype(np.float32)
    split = make_split(features, np.arange(48) % classes, source="test")
    return ScoringInputs(graph=graph, module=model, split=split, batch_size=16, batch_count=3, **options)


def _group_of(inputs: ScoringInputs, module: str):
    return next(g for g in inputs.graph.prunable_groups if module in {m.module for m in g.producers})


def _chain(*, dead: bool = True) -> tuple[ChainNet, ScoringInputs]:
    torch.manual_seed(0)
    model = ChainNet()
    with torch.no_grad():
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(0.1, 0.5)
        if dead:  # conv1 channel DEAD outputs 0, and 0 after BN + ReLU: removing it changes nothing
            model.conv1.weight[DEAD] = 0
            model.bn.bias[DEAD] = -1.0
    return model, _inputs(model, (3, 6, 6))


def _ranks_last(scores: np.ndarray, channel: int) -> bool:
    return int(np.argmin(scores)) == channel and (np.delete(scores, channel) > scores[channel]).all()


@pytest.mark.parametrize("criterion", ["activation", "apoz", "taylor", "gradient", "weight_activation"])
def test_data_driven_criteria_rank_a_dead_channel_last(criterion: str) -> None:
    model, inputs = _chain()
    group = _group_of(inputs, "conv1")
    scores = get_criterion(criterion)(inputs)
    assert _ranks_last(scores[group.id], DEAD)
    assert scores[group.id][DEAD] == pytest.approx(0.0, abs=1e-12)
    assert all(parameter.grad is None for parameter in model.parameters())  # scoring leaves no gradients


def test_dead_channel_really_leaves_the_loss_unchanged() -> None:
    model, inputs = _chain()
    batch, labels = torch.from_numpy(inputs.split.inputs[:16]), torch.from_numpy(inputs.split.labels[:16])
    before = F.cross_entropy(model(batch), labels)
    with torch.no_grad():
        model.conv2.weight[:, DEAD] = 0  # cut the channel off
    assert F.cross_entropy(model(batch), labels).item() == pytest.approx(before.item(), abs=1e-7)


def test_bn_scale_ranks_a_zero_gamma_last() -> None:
    model, inputs = _chain(dead=False)
    with torch.no_grad():
        model.bn.weight[DEAD] = 0
    scores = get_criterion("bn_scale")(inputs)
    assert _ranks_last(scores[_group_of(inputs, "conv1").id], DEAD)


def test_bn_scale_refuses_a_model_without_normalisation() -> None:
    torch.manual_seed(0)
    inputs = _inputs(MLP(), (10,))
    with pytest.raises(InputError, match="use another criterion"):
        score_groups("bn_scale", inputs)


def test_bn_scale_leaves_groups_without_normalisation_unscored_and_says_so() -> None:
    _, inputs = _chain()
    result = score_groups("bn_scale", inputs)
    conv2 = _group_of(inputs, "conv2")
    assert conv2.id not in result.scores and "no normalisation" in result.unscored[conv2.id]
    assert list(result.to_report(names={conv2.id: conv2.name})["unscored"]) == [conv2.name]


def test_fpgm_ranks_a_duplicated_filter_last() -> None:
    model, inputs = _chain(dead=False)
    with torch.no_grad():
        basis = torch.eye(27)[:6].reshape(6, 3, 3, 3)
        model.conv1.weight.copy_(basis)
        model.conv1.weight[DEAD] = model.conv1.weight[4]  # DEAD duplicates filter 4
    scores = get_criterion("fpgm")(inputs)[_group_of(inputs, "conv1").id]
    assert set(np.argsort(scores)[:2]) == {DEAD, 4} and scores[DEAD] < scores[0]


def _add_net(*, dead_in: tuple[str, ...]) -> ScoringInputs:
    torch.manual_seed(0)
    model = AddNet()
    with torch.no_grad():
        for name in dead_in:
            getattr(model, name).weight[DEAD] = 0
            getattr(model, name).bias[DEAD] = 0
    return _inputs(model, (3, 6, 6))


@pytest.mark.parametrize("criterion", ["activation", "taylor", "apoz", "weight_activation", "gradient"])
def test_residual_group_is_scored_over_every_branch(criterion: str) -> None:
    one_dead = _add_net(dead_in=("branch_a",))
    group = _group_of(one_dead, "branch_a")
    assert {member.module for member in group.producers} == {"branch_a", "branch_b"}
    alive = get_criterion(criterion)(one_dead)[group.id][DEAD]
    assert alive > 1e-6  # dead in branch_a but alive in branch_b: a dead channel scores exactly 0
    both_dead = _add_net(dead_in=("branch_a", "branch_b"))
    assert _ranks_last(get_criterion(criterion)(both_dead)[group.id], DEAD)


class RawHead(nn.Module):
    """conv -> ReLU -> pool -> a matmul with a bare parameter: the group has no consumer layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.proj = nn.Parameter(torch.randn(4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x)).mean((2, 3)) @ self.proj


def test_activations_fall_back_to_producers_without_a_consumer_layer() -> None:
    torch.manual_seed(0)
    model = RawHead()
    with torch.no_grad():
        model.conv.weight[DEAD], model.conv.bias[DEAD] = 0, 0
    inputs = _inputs(model, (3, 5, 5))
    group = _group_of(inputs, "conv")
    assert [(site.module, site.on) for site in observed_sites(inputs.graph, model)] == [("conv", "output")]
    assert _ranks_last(get_criterion("activation")(inputs)[group.id], DEAD)


def _concat_inputs(reduction: str) -> tuple[ScoringInputs, int]:
    torch.manual_seed(0)
    model = ConcatFlattenNet()
    inputs = _inputs(model, (2, 6, 6), reduction=reduction)
    return inputs, _group_of(inputs, "b").id


def test_reduction_combines_the_members_of_a_group() -> None:
    # group b reaches two consumers, mix (a concat offset) and fc1 (a flattened block), which read
    # the same pooled activations: sum is twice the mean, max equals the mean.
    by_reduction = {how: get_criterion("activation")(_concat_inputs(how)[0])[_concat_inputs(how)[1]]
                    for how in ("sum", "mean", "max")}  # fmt: skip
    assert by_reduction["sum"] == pytest.approx(2 * by_reduction["mean"])
    assert by_reduction["max"] == pytest.approx(by_reduction["mean"])


@pytest.mark.parametrize("reduction", ["sum", "mean", "max"])
def test_reduction_of_weight_members(reduction: str) -> None:
    model, inputs = _chain(dead=False)
    inputs = dataclasses.replace(inputs, reduction=reduction)
    per_member = [
        model.conv1.weight.abs().sum((1, 2, 3)), model.bn.weight.abs(), model.bn.bias.abs(),
        model.conv2.weight.abs().sum((0, 2, 3)),
    ]  # fmt: skip
    stacked = torch.stack(per_member).detach().double()
    expected = {"sum": stacked.sum(0), "mean": stacked.mean(0), "max": stacked.max(0).values}[reduction]
    assert get_criterion("l1")(inputs)[_group_of(inputs, "conv1").id] == pytest.approx(expected.numpy())


def test_reduction_of_members_lacking_channels() -> None:
    members = [np.array([1.0, np.nan, 3.0]), np.array([3.0, np.nan, np.nan])]
    assert reduce_members(members, "sum").tolist() == [4.0, 0.0, 3.0]
    assert reduce_members(members, "mean").tolist() == [2.0, 0.0, 3.0]
    assert reduce_members(members, "max").tolist() == [3.0, 0.0, 3.0]


def test_concat_parts_are_seen_by_every_consumer() -> None:
    torch.manual_seed(0)
    model = ConcatFlattenNet()
    with torch.no_grad():
        model.b.weight[DEAD] = 0
        model.b.bias[DEAD] = 0
    inputs = _inputs(model, (2, 6, 6))
    group = _group_of(inputs, "b")
    consumers = {site.module for site in consumer_sites(inputs.graph, model) if site.group_id == group.id}
    assert consumers == {"mix", "fc1"}  # the concat into mix and the flattened copy into fc1
    for criterion in ("apoz", "activation", "taylor"):
        assert _ranks_last(get_criterion(criterion)(inputs)[group.id], DEAD), criterion


def test_rank_normalisation_averages_ties() -> None:
    assert rank_normalised(np.array([3.0, 1.0, 3.0, 2.0])) == pytest.approx([5 / 6, 0, 5 / 6, 1 / 3])


def test_hybrid_is_the_weighted_sum_of_rank_normalised_criteria() -> None:
    _, inputs = _chain()
    result = score_groups({"l2": 0.25, "taylor": 0.75}, inputs)
    l2, taylor = get_criterion("l2")(inputs), get_criterion("taylor")(inputs)
    for group_id, scores in result.scores.items():
        expected = 0.25 * rank_normalised(l2[group_id]) + 0.75 * rank_normalised(taylor[group_id])
        assert scores == pytest.approx(expected)
    assert result.batches == inputs.batches_per_pass  # one data pass: taylor's
    assert result.to_report(names={})["criterion"] == {"hybrid": {"l2": 0.25, "taylor": 0.75}}


def test_score_step_validates_criteria_and_hybrids() -> None:
    step = ScoreStep(kind="score", criterion={"hybrid": {"l2": 0.5, "taylor": 0.5}}, reduction="max")
    assert step.criterion_spec == {"l2": 0.5, "taylor": 0.5} and step.batches == 8
    assert ScoreStep.model_validate(step.model_dump()) == step  # round-trips
    with pytest.raises(ValidationError, match="unknown criterion 'taylr'.*did you mean 'taylor'"):
        ScoreStep(kind="score", criterion={"hybrid": {"taylr": 1.0}})
    with pytest.raises(ValidationError, match="did you mean 'fpgm'"):
        ScoreStep(kind="score", criterion="fpmg")
    with pytest.raises(ValidationError, match="unknown key 'hybird'"):
        ScoreStep(kind="score", criterion={"hybird": {"l2": 1.0}})


def test_data_driven_criteria_need_data() -> None:
    _, inputs = _chain()
    with pytest.raises(InputError, match="needs data"):
        score_groups("taylor", ScoringInputs(graph=inputs.graph, module=inputs.module))


def test_report_has_the_scoring_cost_and_score_statistics_per_group(tmp_path) -> None:
    from prunecli.config.loading import load_pipeline
    from prunecli.pipeline.options import RunOptions
    from prunecli.pipeline.runner import run_pipeline
    from tests.conftest import CONFIGS

    pipeline = load_pipeline(CONFIGS / "digits_cnn_bn_scale_50.yaml", overrides=["latency.repeats=3"])
    options = RunOptions(output_dir=tmp_path / "out", base_dir=CONFIGS)
    report = run_pipeline(pipeline, options=options).report
    (scoring,) = report["scoring"]
    assert scoring["criterion"] == "bn_scale" and scoring["batches"] == 0 and scoring["seconds"] >= 0
    assert list(scoring["unscored"]) == ["hidden_fc"]  # a Linear without a normalisation after it: kept whole
    rows = {row["name"]: row for row in report["groups"]}
    assert rows["hidden_fc"]["score"] is None and rows["hidden_fc"]["kept"] == rows["hidden_fc"]["channels"]
    stats = rows["res_conv1"]["score"]
    assert 0 <= stats["min"] <= stats["median"] <= stats["max"]

"""Iterative pruning: schedules, repeat blocks on the sample models, targets against the original, dynamic masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import prunecli
from prunecli.config.loading import load_pipeline
from prunecli.errors import InputError
from prunecli.graph.trace import build_channel_graph
from prunecli.metrics.macs import count_macs
from prunecli.pipeline.options import RunOptions
from prunecli.pipeline.runner import run_pipeline
from prunecli.selection.measures import pruned_copy, structure_measure
from prunecli.selection.schedule import scheduled_kept, scheduled_ratios
from prunecli.sparsity.dynamic import recompute_masks
from prunecli.sparsity.masks import apply_masks
from prunecli.sparsity.state import SparsityState
from tests.conftest import CONFIGS, SAMPLES, load_sample_cnn

HEAD = """
version: 1
model: {path: SAMPLES/digits_NAME.pt, arch: SAMPLES/archs.py:DigitsARCH, input_shape: [1, 1, 8, 8]}
data: {format: npz, train: SAMPLES/digits_train.npz, eval: SAMPLES/digits_val.npz}
latency: {repeats: 3, warmup: 1, backends: [torch]}
steps:
"""
FAST = ["latency.repeats=3", "latency.warmup=1", "latency.backends=[torch]"]


def write(tmp_path: Path, steps: str, *, model: str = "cnn") -> Path:
    arch = {"cnn": "CNN", "mlp": "MLP"}[model]
    path = tmp_path / "pipeline.yaml"
    path.write_text(HEAD.replace("SAMPLES", str(SAMPLES)).replace("NAME", model).replace("ARCH", arch) + steps)
    return path


def run(path: Path, out: Path, overrides: list[str] | None = None) -> dict:
    pipeline = load_pipeline(path, overrides=overrides or [])
    return run_pipeline(pipeline, options=RunOptions(output_dir=out, base_dir=path.parent)).report


# --- schedules -------------------------------------------------------------------------------


def test_schedules_follow_their_formulas_and_end_on_the_final_value() -> None:
    assert scheduled_ratios("linear", rounds=4, final=0.5) == pytest.approx([0.125, 0.25, 0.375, 0.5])
    agp = [0.5 * (1 - (1 - k / 4) ** 3) for k in (1, 2, 3, 4)]  # Zhu & Gupta from s_i = 0
    assert scheduled_ratios("agp", rounds=4, final=0.5) == pytest.approx(agp)
    kept = scheduled_kept("geometric", rounds=3, final=0.125)
    assert kept == pytest.approx([0.5, 0.25, 0.125])  # the same share kept every round
    assert scheduled_ratios("geometric", rounds=3, final=0.875) == pytest.approx([0.5, 0.75, 0.875])
    assert scheduled_kept("agp", rounds=3, final=0.3, start=0.6) == pytest.approx([0.6, 0.3 + 0.3 / 8, 0.3])
    assert scheduled_ratios("linear", rounds=3, final=0.5, start=0.1) == pytest.approx([0.1, 0.3, 0.5])
    for schedule in ("linear", "agp", "geometric"):
        values = scheduled_ratios(schedule, rounds=5, final=0.7)
        assert values[-1] == 0.7 and all(a < b for a, b in zip(values, values[1:]))
        assert scheduled_kept(schedule, rounds=1, final=0.3) == [0.3]


# --- config checks ---------------------------------------------------------------------------

ROUND = "{kind: score}, {kind: select, ratio: 0.5}, {kind: prune}"


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (f"- {{kind: repeat, rounds: 2, steps: [{ROUND}, {{kind: quantize}}]}}",
         "steps.3: quantize can't run inside a repeat; put it after the repeat"),
        (f"- {{kind: repeat, rounds: 2, steps: [{{kind: repeat, rounds: 2, steps: [{ROUND}]}}]}}",
         "a repeat can't hold another repeat"),
        ("- {kind: repeat, rounds: 2, steps: [{kind: finetune}]}", "a repeat needs a prune or a sparsify step"),
        ("- {kind: repeat, rounds: 2, steps: [{kind: select, ratio: 0.5}, {kind: prune}]}",
         "'select' needs a 'score' step before it in the same round"),
        ("- {kind: repeat, rounds: 2, steps: [{kind: score}, {kind: select, threshold: 0.1}, {kind: prune}]}",
         "select needs ratio or target"),
        ("- {kind: repeat, rounds: 2, steps: [{kind: score}, {kind: select, target: {latency_ms: 1}},"
         " {kind: prune}]}",
         "a latency_ms target can't be scheduled over rounds"),
        (f"- {{kind: repeat, rounds: 2, steps: [{ROUND}, {{kind: sparsify, ratio: 0.5}}]}}",
         "can't hold both prune and sparsify"),
        (f"- {{kind: repeat, rounds: 2, start: 0.6, steps: [{ROUND}]}}", "start 0.6 is outside [0, 0.5]"),
        ("- {kind: repeat, rounds: 2, start: 0.2, steps: [{kind: sparsify, ratio: 0.5}, {kind: sparsify, ratio: 0.6}]}",
         "this repeat schedules 2"),
        ("- {kind: repeat, rounds: 0, steps: [{kind: sparsify, ratio: 0.5}]}",
         "steps.0.rounds: Input should be greater than or equal to 1"),
        ("- {kind: sparsify, ratio: 0.5, dynamic: true}", "dynamic recomputes masks each round of a repeat"),
        ("- {kind: repeat, rounds: 2, steps: [{kind: sparsify, pattern: '2:4', dynamic: true}]}",
         "dynamic applies to method: magnitude with a ratio"),
        (f"- {{kind: score}}\n- {{kind: select, ratio: 0.1}}\n- {{kind: prune}}\n"
         f"- {{kind: repeat, rounds: 2, steps: [{ROUND}]}}", "only one 'prune' step (or one repeat that prunes)"),
        (f"- {{kind: repeat, rounds: 2, steps: [{ROUND}]}}\n- {{kind: evaluate, name: round2}}",
         "'round2' is a repeat round's stage name"),
        (f"- {{kind: repeat, rounds: 2, steps: [{ROUND}, {{kind: evaluate, name: pruned}}]}}",
         "steps.0.steps.3.name: 'pruned' is taken by the report"),
    ],
)  # fmt: skip
def test_bad_repeat_blocks_are_refused_with_the_fix(tmp_path: Path, steps: str, message: str) -> None:
    with pytest.raises(InputError) as caught:
        load_pipeline(write(tmp_path, steps))
    assert message in str(caught.value) and "\n" not in str(caught.value)


# --- rounds on the sample models ---------------------------------------------------------------


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory) -> tuple[dict, Path]:
    """Two linear rounds of local ratio pruning to 0.5 on the sample CNN, an evaluate inside the round."""
    folder = tmp_path_factory.mktemp("two_rounds")
    steps = f"- {{kind: repeat, rounds: 2, schedule: linear, steps: [{ROUND}, {{kind: evaluate, name: check}}]}}\n"
    return run(write(folder, steps), folder / "out"), folder / "out"


def test_rounds_rebuild_the_graph_verify_and_end_at_the_scheduled_size(two_rounds) -> None:
    report, out = two_rounds
    assert report["stages"] == ["original", "round1.pruned", "round1.check", "round2.pruned", "round2.check"]
    assert [row["scheduled"] for row in report["rounds"]] == [{"steps.1.ratio": 0.25}, {"steps.1.ratio": 0.5}]
    assert all(row["verification"]["passed"] for row in report["rounds"])
    module = prunecli.load(out)
    # round 1 leaves 24 of 32 channels; round 2's ratio counts against the original 32, so 8 more go
    assert module.stem_conv.out_channels == 16 and module.res_conv1.out_channels == 16
    assert module.hidden_fc.out_features == 32
    assert {row["name"]: row["kept"] for row in report["groups"]}["hidden_fc"] == 32  # the whole block's table
    assert report["round1.pruned"]["params"] < report["original"]["params"] and report["rounds"][0]["macs_kept"] < 1
    one_shot = half_of_every_group(load_sample_cnn())  # the size of one-shot ratio 0.5
    assert report["round2.check"]["params"] == sum(p.numel() for p in one_shot.parameters())
    assert report["round2.check"]["latency_ms"] and report["round2.pruned"]["latency_ms"] is None


def half_of_every_group(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` without the first ``channels // 2`` channels of every prunable group."""
    graph = build_channel_graph(module, torch.zeros(2, 1, 8, 8))
    return pruned_copy(module, graph, {g.id: list(range(g.channels // 2)) for g in graph.prunable_groups})


def test_round_outputs_reload_and_report_their_curve(two_rounds) -> None:
    report, out = two_rounds
    module = prunecli.load(out)
    split = np.load(SAMPLES / "digits_val.npz")
    inputs, labels = torch.from_numpy(split["inputs"]), torch.from_numpy(split["labels"])
    with torch.inference_mode():
        accuracy = (module(inputs).argmax(1) == labels).float().mean().item()
    assert accuracy == pytest.approx(report["round2.check"]["accuracy"])
    markdown = (out / "report.md").read_text()
    assert "## Rounds" in markdown and "| 2 | `round2.check` | ratio 0.5 |" in markdown
    assert (out / "rounds.png").stat().st_size > 0 and "![accuracy against MACs kept per round](rounds.png)" in markdown
    assert load_pipeline(out / "pipeline.resolved.yaml").steps[0].rounds == 2  # the resolved file round-trips


def test_pruning_nothing_for_several_rounds_changes_nothing(tmp_path: Path) -> None:
    steps = "- {kind: repeat, rounds: 3, steps: [{kind: score}, {kind: select, ratio: 0.0}, {kind: prune}]}\n"
    report = run(write(tmp_path, steps), tmp_path / "out")
    assert [row["stage"] for row in report["rounds"]] == ["round1.pruned", "round2.pruned", "round3.pruned"]
    for row in report["rounds"]:
        assert row["verification"]["max_abs_diff"] == 0.0 and row["macs_kept"] == 1.0
        assert row["accuracy"] == report["original"]["accuracy"] and row["params"] == report["original"]["params"]
    module, original = prunecli.load(tmp_path / "out"), load_sample_cnn()
    sample = torch.rand(4, 1, 8, 8)
    with torch.inference_mode():
        assert torch.equal(module(sample), original(sample))


def test_targets_count_against_the_unpruned_model() -> None:
    original = load_sample_cnn()
    sample = torch.zeros(2, 1, 8, 8)
    half = half_of_every_group(original)
    kept = count_macs(half, sample[:1]) / count_macs(original, sample[:1])
    measure = structure_measure(half, build_channel_graph(half, sample), sample, metric="macs", reference=original)
    assert measure({}) == pytest.approx(kept) and kept < 0.5


def test_the_agp_config_meets_its_targets_round_by_round(tmp_path: Path) -> None:
    report = run(CONFIGS / "digits_cnn_agp.yaml", tmp_path / "out", FAST)
    rows = report["rounds"]
    requested = [row["scheduled"]["steps.1.target.macs"] for row in rows]
    assert requested == pytest.approx(scheduled_kept("agp", rounds=len(rows), final=requested[-1]), abs=1e-6)
    for row, wanted in zip(rows, requested):
        assert row["macs_kept"] == pytest.approx(wanted, rel=0.03) and row["verification"]["passed"]
    final = report[report["stages"][-1]]
    assert final["macs"] <= 0.3 * report["original"]["macs"]
    assert final["accuracy"] >= report["original"]["accuracy"] - 0.01
    assert report["selection"]["mode"] == "repeat" and len(report["selection"]["rounds"]) == len(rows)


# --- dynamic sparsity ------------------------------------------------------------------------


def test_dynamic_masks_bring_back_a_weight_that_now_outranks_a_kept_one() -> None:
    weight = torch.nn.Parameter(torch.tensor([[0.875, 0.5, 0.125, 0.75]]))
    sparsity = SparsityState()
    sparsity.add(recompute_masks(sparsity, {"w": weight}, ratio=0.5, scope="local"))
    apply_masks({"w": weight}, sparsity.masks)
    assert weight.tolist() == [[0.875, 0.0, 0.0, 0.75]]
    with torch.no_grad():
        weight[0, 3] = 0.25  # fine-tuning shrank a kept weight below the masked 0.5
    sparsity.add(recompute_masks(sparsity, {"w": weight}, ratio=0.5, scope="local"))
    apply_masks({"w": weight}, sparsity.masks)
    assert weight.tolist() == [[0.875, 0.5, 0.0, 0.0]]  # 0.5 is back with its value; 0.25 is masked
    assert sparsity.remembered["w"].tolist() == [[0.0, 0.0, 0.125, 0.25]]


def test_the_dynamic_sparsity_config_holds_its_schedule_and_its_zeros(tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = run(CONFIGS / "digits_mlp_dynamic_sparsity.yaml", out, FAST)
    rows = report["rounds"]
    for row in rows:
        assert row["weights_zero"] == pytest.approx(row["scheduled"]["steps.0.ratio"], abs=1e-4)
    assert sum(row["weights_revived"] for row in rows) > 0  # masks were recomputed, not only grown
    weights = torch.load(out / "model.pt", weights_only=True)
    layers = report["sparsity"]["layers"]
    zeros = sum(int((weights[name] == 0).sum()) for name in layers)
    assert zeros / sum(weights[name].numel() for name in layers) == pytest.approx(0.9, abs=1e-3)
    assert report["sparsity"]["overall"] == pytest.approx(0.9, abs=1e-3)
    assert json.loads((out / "report.json").read_text())["rounds"][-1]["stage"] == rows[-1]["stage"]

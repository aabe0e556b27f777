"""Sensitivity sweeps: every prunable group alone at each ratio, resumable, written as json, md and png."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prunecli.api import sensitivity_file
from prunecli.cli.sensitivity import parse_ratios
from prunecli.errors import InputError
from prunecli.pipeline import sensitivity
from prunecli.pipeline.sensitivity import ratios_within
from tests.test_end_to_end import CNN_PIPELINE, cli, write_pipeline


def test_cli_writes_curves_for_every_prunable_group(tmp_path: Path) -> None:
    out = tmp_path / "sens"
    result = cli("sensitivity", write_pipeline(tmp_path, CNN_PIPELINE), "--ratios", "0.5,0.25", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    sweep = json.loads(result.stdout)
    assert sweep == json.loads((out / "sensitivity.json").read_text())
    assert sweep["ratios"] == [0.25, 0.5] and 0.9 < sweep["baseline"]["accuracy"] <= 1
    names = [group["name"] for group in sweep["groups"]]
    assert len(names) >= 4 and "stem_conv (+1 tied)" in names
    for group in sweep["groups"]:
        assert [point["ratio"] for point in group["curve"]] == [0.25, 0.5]
        assert [point["removed"] for point in group["curve"]] == [group["channels"] // 4, group["channels"] // 2]
        assert all(0 <= point["accuracy"] <= 1 and point["loss"] > 0 for point in group["curve"])
    markdown = (out / "sensitivity.md").read_text()
    assert "| stem_conv (+1 tied) |" in markdown and "sensitivity.png" in markdown
    assert (out / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(tmp_path.glob(".sens.prunecli-*"))  # no progress file or staging folder left


def test_an_interrupted_sweep_continues_where_it_stopped(tmp_path: Path, monkeypatch) -> None:
    pipeline, out = write_pipeline(tmp_path, CNN_PIPELINE), tmp_path / "sens"
    computed: list[str] = []
    real_point = sensitivity._point

    def counting_point(state, group, ratio, *, baseline):
        if len(computed) == 3 and not (tmp_path / "resumed").exists():
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during the fourth point
        computed.append(f"{group.name}@{ratio}")
        return real_point(state, group, ratio, baseline=baseline)

    monkeypatch.setattr(sensitivity, "_point", counting_point)
    with pytest.raises(KeyboardInterrupt):
        sensitivity_file(pipeline, ratios=[0.25, 0.5], output=out)
    assert not out.exists() and len(json.loads((tmp_path / ".sens.prunecli-progress.json").read_text())["points"]) == 3
    (tmp_path / "resumed").touch()
    first_three = list(computed)
    result = sensitivity_file(pipeline, ratios=[0.25, 0.5], output=out)
    points = len(result.sweep["groups"]) * 2
    assert len(computed) == points and computed[:3] == first_three  # each point computed once in all
    fresh = sensitivity_file(pipeline, ratios=[0.25, 0.5], output=tmp_path / "fresh").sweep
    assert result.sweep == fresh


def test_ratios_within_stop_at_the_first_ratio_that_costs_too_much() -> None:
    curve = [(0.1, 0.97), (0.3, 0.955), (0.5, 0.93), (0.7, 0.96)]  # a noisy recovery at 0.7 is not taken
    sweep = {"baseline": {"accuracy": 0.97},
             "groups": [{"name": "a", "curve": [{"ratio": r, "accuracy": a} for r, a in curve]},
                        {"name": "b", "curve": [{"ratio": 0.1, "accuracy": 0.5}]}]}  # fmt: skip
    assert ratios_within(sweep, max_drop=0.02) == {"a": 0.3, "b": 0.0}


@pytest.mark.parametrize("text", ["", "0.5,x", "0,0.5", "1.0"])
def test_bad_ratios_are_one_line_errors(text: str) -> None:
    with pytest.raises(InputError, match="--ratios"):
        parse_ratios(text)


def test_select_by_sensitivity_gives_each_group_the_ratio_its_curve_allows(tmp_path: Path) -> None:
    select = "{kind: select, by: sensitivity, max_drop: 0.01, sensitivity_ratios: [0.25, 0.5]}"
    pipeline = write_pipeline(tmp_path, CNN_PIPELINE.replace("{kind: select, ratio: 0.5}", select))
    result = cli("run", pipeline, "-o", tmp_path / "run", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    chosen = report["selection"]["group_ratios"]
    sweep = sensitivity_file(pipeline, ratios=[0.25, 0.5], output=tmp_path / "sens").sweep
    assert chosen == ratios_within(sweep, max_drop=0.01) and any(chosen.values())
    for group in report["groups"]:
        if group["name"] in chosen:
            assert group["kept"] == group["channels"] - int(chosen[group["name"]] * group["channels"])
    written = {path.name for path in (tmp_path / "run").iterdir()}
    assert {"sensitivity.json", "sensitivity.md", "sensitivity.png", "channels.png"} <= written
    markdown = (tmp_path / "run" / "report.md").read_text()
    assert "![accuracy against ratio removed](sensitivity.png)" in markdown and "channels.png" in markdown

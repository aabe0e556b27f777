"""Speed-up gates judged on the measured interval; threads and phase timings recorded in the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prunecli.config.schema import Gates
from prunecli.pipeline.gates import evaluate_gates
from tests.test_end_to_end import CNN_PIPELINE, cli, write_pipeline


def final_stage(median: float, low: float, high: float, stable: bool = True) -> dict:
    speedup = {"median": median, "low": low, "high": high, "rounds": 30, "stable": stable}
    return {"latency_ms": {"backend": "torch", "p50": 1.0, "speedup": speedup}}


@pytest.mark.parametrize(
    ("interval", "passed", "decided"),
    [((2.0, 1.9, 2.1), True, True), ((1.6, 1.4, 1.7), False, False), ((1.3, 1.2, 1.4), False, True)],
    ids=["clear-pass", "straddles", "clear-fail"],
)
def test_min_speedup_passes_only_on_the_low_end_of_the_interval(interval, passed: bool, decided: bool) -> None:
    gates = evaluate_gates(Gates(min_speedup=1.5), original={}, final=final_stage(*interval))
    gate = gates["min_speedup"]
    assert (gate["passed"], gate["decided"], gate["value"], gate["interval"]) == (passed, decided, interval[0],
                                                                                  list(interval[1:]))  # fmt: skip
    assert ("unstable" in gate.get("note", "")) == (not decided)


def test_an_unstable_speedup_never_passes_a_gate() -> None:
    gate = evaluate_gates(Gates(min_speedup=1.5), original={}, final=final_stage(3.0, 2.5, 9.3, stable=False))
    assert gate["min_speedup"]["passed"] is False and gate["min_speedup"]["decided"] is False
    assert "too wide" in gate["min_speedup"]["note"]


def test_min_speedup_without_a_measurement_fails_with_the_reason() -> None:
    final = {"latency_ms": {"backend": "onnxruntime", "p50": None, "unavailable": "cannot export the model"}}
    gate = evaluate_gates(Gates(min_speedup=1.1), original={}, final=final)["min_speedup"]
    assert gate["passed"] is False and gate["note"] == "cannot export the model"


def test_report_records_threads_phase_timings_and_speedup_intervals(tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path, CNN_PIPELINE.replace("repeats: 3", "repeats: 8"))
    result = cli("run", pipeline, "-o", tmp_path / "out", "--json", "--threads", "2",
                 "--set", "latency.threads=1", "--set", "gates.min_speedup=100")  # fmt: skip
    assert result.exit_code == 1, result.output  # a 100x speed-up cannot be shown
    report = json.loads(result.stdout)
    assert report["threads"] == {"work": 2, "latency": 1}
    assert {"load", "trace", "score", "select", "prune", "measure", "latency", "write", "export"} <= set(
        report["timings_s"])
    assert all(seconds >= 0 for seconds in report["timings_s"].values())
    for latency in report["pruned"]["latency"]:
        assert latency["threads"] == 1 and latency["rounds"] == 8
        speedup = latency["speedup"]
        assert speedup["low"] <= speedup["median"] <= speedup["high"]
    assert report["original"]["latency"][0]["speedup"] is None  # the baseline
    gate = report["gates"]["min_speedup"]
    assert gate["passed"] is False and gate["value"] == report["pruned"]["latency_ms"]["speedup"]["median"]
    resolved = (tmp_path / "out" / "pipeline.resolved.yaml").read_text()
    assert "threads: 2" in resolved  # what ran, overrides included

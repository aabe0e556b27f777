"""Report rendering (rich tables, markdown) and writing report.json / report.md."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from prunecli.report.render import gates_table, report_markdown, report_table
from prunecli.report.write import write_report


def stage(
    *, params: int, macs: int, size_bytes: int, p50: float, accuracy: float | None, speedup: float | None = None
) -> dict[str, Any]:
    interval = None if speedup is None else {"median": speedup, "low": speedup * 0.95, "high": speedup * 1.05,
                                             "rounds": 30, "stable": True}  # fmt: skip
    latencies = [
        {"backend": "torch", "device": "cpu", "p50": p50, "p90": p50 * 1.5, "threads": 2, "batch_size": 1,
         "speedup": interval},
        {"backend": "onnxruntime", "device": "cpu", "p50": p50 / 2, "p90": p50, "threads": 2, "batch_size": 1,
         "speedup": interval and {**interval, "low": speedup * 0.7, "stable": False}},
    ]  # fmt: skip
    return {
        "params": params,
        "macs": macs,
        "size_bytes": size_bytes,
        "latency_ms": latencies[0],
        "latency": latencies,
        "accuracy": accuracy,
        "top5": None,
        "loss": 0.25 if accuracy is not None else None,
    }


SAMPLE: dict[str, Any] = {
    "stages": ["original", "pruned", "finetuned"],
    "original": stage(params=120000, macs=4000000, size_bytes=2 * 1024 * 1024, p50=0.8, accuracy=0.975),
    "pruned": stage(params=60000, macs=2000000, size_bytes=1024 * 1024, p50=0.5, accuracy=0.9, speedup=1.6),
    "finetuned": stage(params=60000, macs=2000000, size_bytes=1024 * 1024, p50=0.4, accuracy=0.965, speedup=2.0),
    "verification": {"max_abs_diff": 3.5e-07, "passed": True, "tolerance": 1e-4},
    "gates": {
        "max_accuracy_drop": {"value": 0.01, "limit": 0.02, "passed": True},
        "min_speedup": {"value": 2.0, "limit": 2.5, "passed": False},
    },
    "groups": [
        {"name": "conv1", "channels": 16, "kept": 8, "prunable": True, "reason": None},
        {"name": "fc|head", "channels": 10, "kept": 10, "prunable": False, "reason": "network output"},
    ],
    "model": {"path": "zoo/digits_cnn.pt", "format": "state_dict"},
    "outputs": {"model": "out/digits/model.pt", "onnx": "out/digits/model.onnx"},
    "seed": 0,
    "device": "cpu",
    "prunecli_version": "0.1.0",
}


def rendered(table: Table) -> str:
    console = Console(record=True, width=250, color_system=None)
    console.print(table)
    return console.export_text()


def test_report_table_has_one_column_per_stage_and_change() -> None:
    table = report_table(SAMPLE)
    headers = [column.header for column in table.columns]
    assert headers == ["metric", "original", "pruned", "finetuned", "vs original"]
    text = rendered(table)
    assert "120,000" in text and "60,000" in text and "4.00M" in text and "-50.0%" in text
    assert "2.00 MiB" in text and "2,097,152" in text
    assert "p50 ms torch/cpu" in text and "p90 ms onnxruntime/cpu" in text
    assert "0.800" in text and "-50.0%" in text
    speedups = next(line for line in text.splitlines() if "speed-up torch/cpu" in line)
    assert "baseline" in speedups and "1.60x (1.52-1.68)" in speedups and "2.00x (1.90-2.10)" in speedups
    assert "unstable" not in speedups
    assert "2.00x (1.40-2.10) unstable" in text  # the ONNX Runtime interval is too wide
    assert "97.50%" in text and "-1.00 pts" in text
    assert "top-5" not in text  # no stage measured it


def test_report_table_with_missing_stage_extra_stage_and_none_values() -> None:
    report = copy.deepcopy(SAMPLE)
    del report["finetuned"]
    report["stages"] = ["original", "pruned", "finetuned", "final"]
    report["final"] = stage(params=50000, macs=1000000, size_bytes=900, p50=0.3, accuracy=None)
    table = report_table(report)
    assert [column.header for column in table.columns][1:4] == ["original", "pruned", "final"]
    text = rendered(table)
    assert "900 B" in text
    accuracy_line = next(line for line in text.splitlines() if "accuracy" in line)
    assert "97.50%" in accuracy_line and accuracy_line.count("n/a") == 2  # final value and change


def test_gates_table_shows_pass_and_fail() -> None:
    text = rendered(gates_table(SAMPLE))
    assert "max_accuracy_drop" in text and "<= 0.02" in text and "pass" in text
    assert "min_speedup" in text and ">= 2.5" in text and "FAIL" in text


def test_markdown_contains_numbers_verification_gates_and_groups() -> None:
    markdown = report_markdown(SAMPLE)
    assert markdown.startswith("# prunecli report\n")
    assert "| params | 120,000 | 60,000 | 60,000 | -50.0% |" in markdown
    assert "verification: passed (max abs diff 3.50e-07, tolerance 1.00e-04)" in markdown
    assert "a gate FAILED" in markdown and "| min_speedup | 2 | >= 2.5 | FAIL |" in markdown
    assert "| conv1 | 16 | 8 | 50.0% | prunable |" in markdown
    assert "| fc\\|head | 10 | 10 | 0.0% | kept: network output |" in markdown
    assert "`zoo/digits_cnn.pt` (state_dict)" in markdown


def test_markdown_of_a_minimal_report() -> None:
    report = {"stages": ["original"], "original": stage(params=10, macs=20, size_bytes=40, p50=1.0, accuracy=None)}
    markdown = report_markdown(report)
    assert "| metric | original |" in markdown
    assert "| size | 40 B |" in markdown and "accuracy" not in markdown
    assert "verification: not run" in markdown
    assert "## Gates" not in markdown and "## Channels kept" not in markdown


def test_write_report_writes_json_markdown_and_html_atomically(tmp_path: Path) -> None:
    out_dir = tmp_path / "out" / "run"
    written = write_report(SAMPLE, out_dir=out_dir)
    assert set(written.values()) == {out_dir / "report.json", out_dir / "report.md", out_dir / "report.html"}
    assert json.loads((out_dir / "report.json").read_text(encoding="utf-8")) == SAMPLE
    assert list(json.loads((out_dir / "report.json").read_text(encoding="utf-8"))) == list(SAMPLE)  # order kept
    assert (out_dir / "report.md").read_text(encoding="utf-8") == report_markdown(SAMPLE)
    assert sorted(path.name for path in out_dir.iterdir()) == ["report.html", "report.json", "report.md"]  # no temp

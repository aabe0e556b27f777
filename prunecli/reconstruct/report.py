"""The report's ``reconstruction`` entry and its markdown section.

Per reconstruct step the entry holds the options, the calibration samples, the seconds taken,
and per refit layer (forward order) its relative output error on the calibration data before
and after the refit (``||Y - Y_pruned||^2 / ||Y||^2``, Y the original layer's kept outputs)::

    {"steps": [{"batches": 8, "ridge": 0.01, "samples": 512, "seconds": 0.4,
                "layers": [{"name": "res_conv1", "kind": "Conv2d", "inputs": "16/32", "rows": 32768,
                            "error_before": 0.42, "error_after": 0.014}, ...],
                "skipped": {"blocks.0.dw": "called 2 times per forward; ..."}}]}

The accuracy before and after is in the stages ``pruned`` and ``reconstructed``.
"""

from __future__ import annotations

from typing import Any


def reconstruction_report(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The report's ``reconstruction`` entry (None without a reconstruct step)."""
    return {"steps": entries} if entries else None


def reconstruction_markdown(report: dict[str, Any]) -> list[str]:
    """The ``## Reconstruction`` section of report.md (empty without a reconstruct step)."""
    entry = report.get("reconstruction")
    if not entry:
        return []
    sections = ["## Reconstruction", _accuracy_line(report)]
    for step in entry["steps"]:
        sections += [_step_line(step), _layer_table(step)]
        sections += [f"- `{name}` not refit: {reason}" for name, reason in step["skipped"].items()]
    return sections


def _accuracy_line(report: dict[str, Any]) -> str:
    before, after = (report.get(stage) or {} for stage in ("pruned", "reconstructed"))
    if before.get("accuracy") is None or after.get("accuracy") is None:
        return "Accuracy: no eval data."
    return f"Accuracy {before['accuracy']:.4f} pruned, {after['accuracy']:.4f} reconstructed."


def _step_line(step: dict[str, Any]) -> str:
    return (
        f"{len(step['layers'])} layer(s) refit by least squares on {step['samples']} calibration samples "
        f"({step['batches']} batches), ridge {step['ridge']:g}, in {step['seconds']:.2f} s. Error: relative "
        "squared error of the layer's outputs against the original's, on the calibration data."
    )


def _layer_table(step: dict[str, Any]) -> str:
    rows = ["| layer | type | inputs kept | rows | error before | error after |", "|---|---|---:|---:|---:|---:|"]
    for layer in step["layers"]:
        rows.append(f"| {layer['name']} | {layer['kind']} | {layer['inputs']} | {layer['rows']} | "
                    f"{layer['error_before']:.4g} | {layer['error_after']:.4g} |")  # fmt: skip
    return "\n".join(rows)

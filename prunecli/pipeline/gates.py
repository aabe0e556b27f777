"""Gates: pass/fail limits on the final stage, compared with the original."""

from __future__ import annotations

from typing import Any

from prunecli.config.schema import Gates


def evaluate_gates(gates: Gates, *, original: dict[str, Any], final: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{gate name: {"value", "limit", "passed"}} for every gate that is set."""
    measured = {
        "max_accuracy_drop": lambda: _difference(original.get("accuracy"), final.get("accuracy")),
        "min_macs_reduction": lambda: _reduction(original["macs"], final["macs"]),
        "min_params_reduction": lambda: _reduction(original["params"], final["params"]),
        "min_speedup": lambda: _ratio(original["latency_ms"]["p50"], final["latency_ms"]["p50"]),
    }
    results = {}
    for name, limit in gates.model_dump().items():
        if limit is None:
            continue
        value = measured[name]()
        passed = value is not None and (value <= limit if name.startswith("max_") else value >= limit)
        results[name] = {"value": value, "limit": limit, "passed": passed}
    return results


def _difference(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else before - after


def _reduction(before: int, after: int) -> float:
    return 1.0 - after / before if before else 0.0


def _ratio(before: float, after: float) -> float:
    return before / after if after else 0.0

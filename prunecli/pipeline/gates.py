"""Gates: pass/fail limits on the final stage, compared with the original.

Each gate gives ``{"value", "limit", "passed"}``. ``min_speedup`` is judged on the measured
interval (see ``prunecli.metrics.interleave``): it passes only when the measurement is stable and
the interval's low end reaches the limit, so noise can fail the gate but never pass it. It also
gives the ``interval`` and ``decided``: False when the interval straddles the limit or is too wide
to decide on, i.e. the machine was too noisy to tell.
"""

from __future__ import annotations

from typing import Any

from prunecli.config.schema import Gates


def evaluate_gates(gates: Gates, *, original: dict[str, Any], final: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{gate name: {"value", "limit", "passed", ...}} for every gate that is set."""
    results = {}
    for name, limit in gates.model_dump().items():
        if limit is None:
            continue
        if name == "min_speedup":
            results[name] = _speedup_gate(final, limit=limit)
            continue
        value = _measured(name, original=original, final=final)
        passed = value is not None and (value <= limit if name.startswith("max_") else value >= limit)
        results[name] = {"value": value, "limit": limit, "passed": passed}
    return results


def _measured(name: str, *, original: dict[str, Any], final: dict[str, Any]) -> float | None:
    if name == "max_accuracy_drop":
        before, after = original.get("accuracy"), final.get("accuracy")
        return None if before is None or after is None else before - after
    key = {"min_macs_reduction": "macs", "min_params_reduction": "params"}[name]
    return 1.0 - final[key] / original[key] if original[key] else 0.0


def _speedup_gate(final: dict[str, Any], *, limit: float) -> dict[str, Any]:
    latency = final.get("latency_ms") or {}
    measured = latency.get("speedup")
    if not measured:
        reason = latency.get("unavailable") or "no speed-up was measured for the final stage"
        return {"value": None, "limit": limit, "passed": False, "decided": False, "note": reason}
    low, high = measured["low"], measured["high"]
    passed = measured["stable"] and low >= limit
    gate = {"value": measured["median"], "interval": [low, high], "limit": limit, "passed": passed}
    gate["decided"] = passed or high < limit
    if not gate["decided"]:
        why = "straddles the limit" if low < limit else "is too wide to decide on (latency.max_interval_width)"
        gate["note"] = (
            f"unstable: the speed-up interval [{low:.3g}, {high:.3g}] {why}; "
            "rerun on a quieter machine or raise latency.repeats"
        )
    return gate

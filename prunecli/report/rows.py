"""The report as rows of display strings; ``render`` lays them out as rich tables or markdown.

A report (what the runner writes to report.json) holds one measurement dict per stage,
named in ``report["stages"]`` order, e.g. ``original``, ``pruned``, ``finetuned``::

    {"stages": ["original", "pruned"],
     "original": {"params": 1200, "macs": 50000, "size_bytes": 6144,
                  "latency": [{"backend": "torch", "device": "cpu", "p50": 0.21, "p90": 0.25, ...}],
                  "accuracy": 0.975, "top5": None, "loss": 0.08},
     "pruned": {...}, "verification": {...}, "gates": {...}, "groups": [...]}

Any stage may be missing and any value may be None (shown as ``n/a``; a row with no value
at all is left out). The last column (``vs original``) compares the last stage with the
first (normally ``original``): relative change for counts, sizes and latencies, points for
accuracies, the difference for the loss. Speed-ups are not derived from two p50s: each stage's
row shows the measured median of per-round ratios with its 95 % interval, marked ``unstable``
when the interval is too wide to decide on (see ``prunecli.metrics.interleave``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Row = list[str]
Stage = dict[str, Any]

MISSING = "n/a"
_DEFAULT_STAGES = ("original", "pruned", "finetuned")


def stage_names(report: dict[str, Any]) -> list[str]:
    """The stages present in ``report``, in ``report["stages"]`` order."""
    names = report.get("stages") or _DEFAULT_STAGES
    return [name for name in names if isinstance(report.get(name), dict)]


def comparison_rows(report: dict[str, Any]) -> tuple[Row, list[Row]]:
    """Header and rows of the stage comparison: one column per stage, then the change.

    >>> comparison_rows({"stages": ["original", "pruned"], "original": {"params": 200}, "pruned": {"params": 150}})
    (['metric', 'original', 'pruned', 'vs original'], [['params', '200', '150', '-25.0%']])
    """
    stages = stage_names(report)
    header = ["metric", *stages]
    if len(stages) > 1:
        header.append(f"vs {stages[0]}")
    rows = []
    for label, read, kind in _metrics(report, stages):
        values = [read(report[name]) for name in stages]
        if all(value is None for value in values):
            continue
        if kind == "speedup" and values[0] is None:
            values[0] = "baseline"
        row = [label, *(_format(value, kind) for value in values)]
        if len(stages) > 1:
            row.append(_change(values[0], values[-1], kind))
        rows.append(row)
    return header, rows


def gate_rows(report: dict[str, Any]) -> tuple[Row, list[Row]]:
    """Header and one row per gate: name, measured value, limit, ``pass`` or ``FAIL``."""
    rows = []
    for name, gate in (report.get("gates") or {}).items():
        comparator = "<=" if name.startswith("max_") else ">="
        limit = f"{comparator} {_number(gate.get('limit'))}"
        value = _number(gate.get("value"))
        if gate.get("interval"):
            value += " [{}, {}]".format(*(_number(bound) for bound in gate["interval"]))
        result = "pass" if gate.get("passed") else "FAIL" if gate.get("decided", True) else "FAIL (unstable)"
        rows.append([name, value, limit, result])
    return ["gate", "value", "limit", "result"], rows


def group_rows(report: dict[str, Any]) -> tuple[Row, list[Row]]:
    """Header and one row per pruning group: channels before, kept, fraction removed, status.

    A ``threshold`` column (the score cutoff, in the group's score units) appears when a
    threshold selected the channels; the status names an override or a limit that decided the
    count (``min_channels kept``: the mode would have left fewer).
    """
    groups = report.get("groups") or []
    thresholds = any(group.get("threshold") is not None for group in groups)
    rows = []
    for group in groups:
        channels, kept = group.get("channels"), group.get("kept")
        removed = f"{(1 - kept / channels) * 100:.1f}%" if channels and kept is not None else MISSING
        row = [str(group.get("name")), _format(channels, "count"), _format(kept, "count"), removed]
        if thresholds:
            row.append(_number(group.get("threshold")))
        rows.append([*row, _group_status(group)])
    header = ["group", "channels", "kept", "removed", *(["threshold"] if thresholds else []), "status"]
    return header, rows


def selection_line(report: dict[str, Any]) -> str:
    """How channels were selected: ``target macs: requested 0.5, achieved 0.4984 (10 measurements)``."""
    selection = report.get("selection") or {}
    mode = selection.get("mode")
    if mode == "target":
        return (f"target {selection.get('metric')}: requested {_number(selection.get('requested'))}, achieved "
                f"{_number(selection.get('achieved'))} ({selection.get('measurements')} measurements)")  # fmt: skip
    if mode == "threshold":
        return f"threshold ({selection.get('form')} {_number(selection.get('value'))}, {selection.get('scope')})"
    if mode == "ratio":
        return f"ratio {_number(selection.get('ratio'))} ({selection.get('scope')})"
    if mode == "repeat":  # one selection per round; the group table counts every round's channels
        rounds = "; ".join(
            f"round {index}: {selection_line({'selection': each})}" for index, each in enumerate(selection["rounds"], 1)
        )
        return f"repeat, {selection.get('schedule')} schedule: {rounds}"
    return MISSING


def _group_status(group: dict[str, Any]) -> str:
    if not group.get("prunable"):
        return f"kept: {group.get('reason') or 'not prunable'}"
    notes = [f"override {group['override']:g}"] if group.get("override") is not None else []
    limit = group.get("limit")
    notes += ["min_channels kept"] if limit == "min_channels" else ["capped at max_ratio"] if limit else []
    return "; ".join(["prunable", *notes])


def verification_line(report: dict[str, Any]) -> str:
    """One line: did the pruned model match the masked original, and by how much."""
    check = report.get("verification")
    if not check:
        return "verification: not run (no prune step)"
    verdict = "passed" if check.get("passed") else "FAILED"
    diff, tolerance = _scientific(check.get("max_abs_diff")), _scientific(check.get("tolerance"))
    return f"verification: {verdict} (max abs diff {diff}, tolerance {tolerance})"


def gates_passed(report: dict[str, Any]) -> bool:
    """True when every gate in the report passed (also when there are none)."""
    return all(gate.get("passed") for gate in (report.get("gates") or {}).values())


def _metrics(report: dict[str, Any], stages: list[str]) -> list[tuple[str, Callable[[Stage], Any], str]]:
    """(label, reader, kind) per row; one pair of latency rows per backend and device measured."""
    metrics: list[tuple[str, Callable[[Stage], Any], str]] = [
        ("params", lambda stage: stage.get("params"), "count"),
        ("MACs", lambda stage: stage.get("macs"), "large_count"),
        ("size", lambda stage: stage.get("size_bytes"), "bytes"),
        ("size (bytes)", lambda stage: stage.get("size_bytes"), "count"),
    ]
    for backend, device in _latency_keys(report, stages):
        for quantile in ("p50", "p90"):
            label = f"{quantile} ms {backend}/{device}"
            metrics.append((label, _latency_reader(backend, device, quantile), "ms"))
        metrics.append((f"speed-up {backend}/{device}", _latency_reader(backend, device, "speedup"), "speedup"))
    metrics += [
        ("accuracy", lambda stage: stage.get("accuracy"), "fraction"),
        ("top-5", lambda stage: stage.get("top5"), "fraction"),
        ("loss", lambda stage: stage.get("loss"), "float"),
    ]
    return metrics


def _latencies(stage: Stage) -> list[dict[str, Any]]:
    measured = stage.get("latency")
    if measured:
        return measured
    return [stage["latency_ms"]] if stage.get("latency_ms") else []


def _latency_keys(report: dict[str, Any], stages: list[str]) -> list[tuple[str, str]]:
    keys: list[tuple[str, str]] = []
    for name in stages:
        for latency in _latencies(report[name]):
            key = (str(latency.get("backend")), str(latency.get("device")))
            if key not in keys:
                keys.append(key)
    return keys


def _latency_reader(backend: str, device: str, quantile: str) -> Callable[[Stage], Any]:
    def read(stage: Stage) -> Any:
        for latency in _latencies(stage):
            if (str(latency.get("backend")), str(latency.get("device"))) == (backend, device):
                if latency.get("unavailable"):
                    return "unavailable"
                return latency.get(quantile)
        return None

    return read


def _format(value: Any, kind: str) -> str:
    if value is None:
        return MISSING
    if isinstance(value, str):
        return value
    if kind == "speedup":
        unstable = "" if value.get("stable") else " unstable"
        return f"{value['median']:.2f}x ({value['low']:.2f}-{value['high']:.2f}){unstable}"
    if kind == "count":
        return f"{int(value):,}"
    if kind == "large_count":
        return _human_count(value)
    if kind == "bytes":
        return _human_bytes(value)
    if kind == "ms":
        return f"{value:.3f}"
    if kind == "fraction":
        return f"{value * 100:.2f}%"
    return f"{value:.4f}"


def _change(first: Any, last: Any, kind: str) -> str:
    if kind == "speedup":
        return ""  # the row itself holds each stage's measured speed-up over the first
    if first is None or last is None or isinstance(first, str) or isinstance(last, str):
        return MISSING
    if kind == "fraction":
        return f"{(last - first) * 100:+.2f} pts"
    if kind == "float":
        return f"{last - first:+.4f}"
    if first == 0:
        return MISSING
    return f"{(last - first) / first * 100:+.1f}%"


def _human_count(count: float) -> str:
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(count) >= scale:
            return f"{count / scale:.2f}{unit}"
    return f"{int(count)}"


def _human_bytes(size: float) -> str:
    units = ("B", "KiB", "MiB", "GiB")
    index = 0
    while abs(size) >= 1024 and index < len(units) - 1:
        size /= 1024
        index += 1
    return f"{size:.0f} B" if index == 0 else f"{size:.2f} {units[index]}"


def _number(value: Any) -> str:
    return MISSING if value is None else f"{value:.4g}"


def _scientific(value: Any) -> str:
    return MISSING if value is None else f"{value:.2e}"

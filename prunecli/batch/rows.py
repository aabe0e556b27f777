"""One summary row per model of a batch, and the batch's exit code.

Statuses and their exit codes: ``passed`` 0, ``gate_failed`` 1, ``bad_input`` 2, ``error`` (a
crash, exit 3 or a signal) 3, ``timeout`` 3, ``memory`` (killed past its memory limit) 3. The
batch exits with the worst (highest) of them, so 0 means every model passed, 1 that a gate failed
somewhere, 2 that a model was bad input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from prunecli.batch.models import TIMM_PREFIX, ModelEntry

SEVERITY = {"passed": 0, "gate_failed": 1, "bad_input": 2, "error": 3, "timeout": 3, "memory": 3}
# fields that differ run to run
VOLATILE = ("seconds", "resumed", "output", "latency_p50_ms_before", "latency_p50_ms_after", "peak_rss_mb")


@dataclass
class BatchRow:
    """A model's outcome: status, exit code, before/after figures, gates, seconds and error line.

    Figures are None when the run wrote no report; latency is the first backend's p50 in ms, and
    ``gates`` maps each gate to whether it passed. ``peak_rss_mb`` is the peak resident memory of
    the model's process tree in MiB (see ``prunecli.batch.process``).
    """

    name: str
    model: str
    status: str
    exit_code: int
    params_before: int | None = None
    params_after: int | None = None
    macs_before: int | None = None
    macs_after: int | None = None
    latency_p50_ms_before: float | None = None
    latency_p50_ms_after: float | None = None
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    gates_passed: bool | None = None
    gates: dict[str, bool] = field(default_factory=dict)
    seconds: float = 0.0
    peak_rss_mb: float | None = None
    error: str | None = None
    output: str = ""
    resumed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The row as a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BatchRow:
        """A row from ``to_dict``'s output (unknown keys ignored)."""
        names = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


def batch_exit_code(rows: list[BatchRow]) -> int:
    """The worst status's exit code (0 for no rows)."""
    return max((SEVERITY.get(row.status, 3) for row in rows), default=0)


def model_label(entry: ModelEntry) -> str:
    """What the row names as the model: ``timm:NAME`` or the file path."""
    return f"{TIMM_PREFIX}{entry.timm}" if entry.timm is not None else str(entry.path)


def failed_row(
    entry: ModelEntry, folder: Path, *, exit_code: int, status: str, error: str, seconds: float,
    peak_rss_mb: float | None = None,
) -> BatchRow:  # fmt: skip
    """The row of a model whose run wrote no report."""
    return BatchRow(name=entry.name, model=model_label(entry), status=status, exit_code=exit_code,
                    seconds=round(seconds, 2), peak_rss_mb=peak_rss_mb, error=error, output=str(folder))  # fmt: skip


def row_from_report(
    entry: ModelEntry, folder: Path, report: dict[str, Any], *, exit_code: int, seconds: float, error: str | None,
    peak_rss_mb: float | None = None,
) -> BatchRow:  # fmt: skip
    """The row of a model whose run wrote ``report`` (exit 0, or 1 for a failed gate)."""
    original, final = report.get("original") or {}, report.get(report["stages"][-1]) or {}
    gates = {name: bool(gate.get("passed")) for name, gate in (report.get("gates") or {}).items()}
    return BatchRow(
        name=entry.name, model=model_label(entry), status="passed" if exit_code == 0 else "gate_failed",
        exit_code=exit_code,
        params_before=original.get("params"), params_after=final.get("params"),
        macs_before=original.get("macs"), macs_after=final.get("macs"),
        latency_p50_ms_before=_p50(original), latency_p50_ms_after=_p50(final),
        accuracy_before=original.get("accuracy"), accuracy_after=final.get("accuracy"),
        gates_passed=all(gates.values()), gates=gates, seconds=round(seconds, 2), peak_rss_mb=peak_rss_mb,
        error=error, output=str(folder),
    )  # fmt: skip


def _p50(stage: dict[str, Any]) -> float | None:
    latency = stage.get("latency_ms")
    return latency.get("p50") if isinstance(latency, dict) else None

"""Run the models of a batch, each in its own ``python -m prunecli run`` process with a timeout.

    settings = BatchSettings(pipeline=Path("p.yaml"), output=Path("out/zoo"), jobs=2, timeout_s=600)
    rows = run_batch(entries, settings)   # one BatchRow per model; a failure is a row, never a raise

Each model writes ``DIR/<name>/`` exactly as ``prunecli run -o DIR/<name>`` does. Its summary row
is also kept in ``DIR/.batch-rows/<name>.json`` so that ``--resume`` can reuse it when the output
folder is complete (a readable report.json listed in the folder's manifest).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from prunecli.batch.models import ModelEntry
from prunecli.batch.rows import BatchRow, failed_row, row_from_report
from prunecli.batch.timm_source import ARCH
from prunecli.model_io.atomic import atomic_write_text
from prunecli.model_io.output_folder import MANIFEST

ROWS_FOLDER = ".batch-rows"
WEIGHTS_FOLDER = ".batch-weights"
TIMEOUT_EXIT_CODE = 124


@dataclass(frozen=True)
class BatchSettings:
    """How a batch runs: the pipeline, the output folder, processes, threads each, timeout, resume."""

    pipeline: Path
    output: Path
    jobs: int = 1
    threads: int | None = None  # per model process; default: the machine's cores divided by jobs
    timeout_s: float | None = None
    resume: bool = False

    def threads_per_job(self) -> int:
        """Intra-op threads of each model process, so that ``jobs`` processes do not oversubscribe the cores."""
        if self.threads is not None:
            return self.threads
        return max(1, (os.cpu_count() or 1) // self.jobs)


def run_batch(
    entries: list[ModelEntry], settings: BatchSettings, *, on_row: Callable[[BatchRow], None] | None = None
) -> list[BatchRow]:
    """Run every entry (``settings.jobs`` at a time); ``on_row(row)`` is called as each one ends."""
    settings.output.mkdir(parents=True, exist_ok=True)

    def one(entry: ModelEntry) -> BatchRow:
        row = _resumed_row(entry, settings) if settings.resume else None
        if row is None:
            row = run_model(entry, settings)
            atomic_write_text(_row_path(entry, settings), json.dumps(row.to_dict(), indent=2) + "\n")
        if on_row is not None:
            on_row(row)
        return row

    with ThreadPoolExecutor(max_workers=settings.jobs) as pool:
        rows = list(pool.map(one, entries))
    return sorted(rows, key=lambda row: row.name)


def run_model(entry: ModelEntry, settings: BatchSettings) -> BatchRow:
    """Run one model in a child process; its outcome (including a timeout or a crash) as a row."""
    started = time.perf_counter()
    folder = settings.output / entry.name
    try:
        if entry.timm is not None:
            _write_timm_weights(entry, settings)
        completed = _run(run_command(entry, settings), settings)
    except subprocess.TimeoutExpired:
        return failed_row(entry, folder, exit_code=TIMEOUT_EXIT_CODE, status="timeout",
                          error=f"timed out after {settings.timeout_s:g} s",
                          seconds=time.perf_counter() - started)  # fmt: skip
    except _StepFailed as failure:
        return failed_row(entry, folder, exit_code=failure.exit_code, status=_status(failure.exit_code),
                          error=failure.line, seconds=time.perf_counter() - started)  # fmt: skip
    seconds = time.perf_counter() - started
    report = read_report(folder) if completed.returncode in (0, 1) else None
    if report is None:
        line = _error_line(completed.stderr) or f"prunecli run exited {completed.returncode} without a report"
        return failed_row(entry, folder, exit_code=completed.returncode or 3, status=_status(completed.returncode),
                          error=line, seconds=seconds)  # fmt: skip
    return row_from_report(entry, folder, report, exit_code=completed.returncode, seconds=seconds,
                           error=_error_line(completed.stderr) if completed.returncode else None)  # fmt: skip


def run_command(entry: ModelEntry, settings: BatchSettings) -> list[str]:
    """The ``python -m prunecli run`` command line of ``entry``."""
    command = [sys.executable, "-m", "prunecli", "run", str(settings.pipeline.resolve()),
               "-o", str((settings.output / entry.name).resolve()), "--json",
               "--threads", str(settings.threads_per_job())]  # fmt: skip
    if entry.timm is not None:
        kwargs = {"model_name": entry.timm, **entry.timm_kwargs}
        command += ["--model", str(_weights_path(entry, settings)), "--set", f"model.arch={ARCH}",
                    "--set", f"model.kwargs={json.dumps(kwargs)}"]  # fmt: skip
    elif entry.path is not None:
        command += ["--model", str(entry.path)]
    if entry.data is not None:
        command += ["--data", str(entry.data)]
    for override in entry.overrides:
        command += ["--set", override]
    return command


def read_report(folder: Path) -> dict | None:
    """The report of a complete output folder (manifest lists a readable report.json), else None."""
    try:
        listed = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["files"]
        if "report.json" not in listed:
            return None
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return report if isinstance(report, dict) else None


class _StepFailed(Exception):
    """A preparatory child process (timm weights) failed; carries its exit code and error line."""

    def __init__(self, exit_code: int, line: str) -> None:
        super().__init__(line)
        self.exit_code = exit_code
        self.line = line


def _run(command: list[str], settings: BatchSettings) -> subprocess.CompletedProcess[str]:
    threads = str(settings.threads_per_job())
    environment = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    return subprocess.run(command, capture_output=True, text=True, timeout=settings.timeout_s, env=environment)


def _write_timm_weights(entry: ModelEntry, settings: BatchSettings) -> None:
    path = _weights_path(entry, settings)
    if path.is_file():
        return
    command = [sys.executable, "-m", "prunecli.batch.timm_source", str(entry.timm), str(path),
               "--kwargs", json.dumps(entry.timm_kwargs)]  # fmt: skip
    completed = _run(command, settings)
    if completed.returncode != 0:
        line = _error_line(completed.stderr) or f"writing the timm weights exited {completed.returncode}"
        raise _StepFailed(completed.returncode, line)


def _resumed_row(entry: ModelEntry, settings: BatchSettings) -> BatchRow | None:
    """The kept row of a model whose output folder is complete and valid, marked resumed; else None."""
    if read_report(settings.output / entry.name) is None:
        return None
    try:
        kept = json.loads(_row_path(entry, settings).read_text(encoding="utf-8"))
        return BatchRow.from_dict({**kept, "resumed": True})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _row_path(entry: ModelEntry, settings: BatchSettings) -> Path:
    folder = settings.output / ROWS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{entry.name}.json"


def _weights_path(entry: ModelEntry, settings: BatchSettings) -> Path:
    return (settings.output / WEIGHTS_FOLDER / f"{entry.name}.pt").resolve()


def _status(exit_code: int) -> str:
    return {0: "passed", 1: "gate_failed", 2: "bad_input"}.get(exit_code, "error")


def _error_line(stderr: str) -> str | None:
    """The child's ``error: ...`` line, else its last non-empty stderr line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("error:", "internal error:", "gate failed:"))]
    chosen = errors[-1] if errors else (lines[-1] if lines else None)
    return chosen[:300] if chosen else None

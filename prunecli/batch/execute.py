"""Run the models of a batch, each in its own ``python -m prunecli run`` process with a timeout.

    settings = BatchSettings(pipeline=Path("p.yaml"), output=Path("out/zoo"), jobs=2, timeout_s=600)
    rows = run_batch(entries, settings)   # one BatchRow per model; a failure is a row, never a raise

Each child runs under ``prunecli.batch.process.run_limited`` (timeout, memory limit, peak RSS).
Ctrl-C or SIGTERM kills the running children and stops the batch; ``--resume`` goes on from there.
Each model writes ``DIR/<name>/`` exactly as ``prunecli run -o DIR/<name>`` does. Its summary row
is also kept in ``DIR/.batch-rows/<name>.json`` so that ``--resume`` can reuse it when the output
folder is complete (a readable report.json listed in the folder's manifest).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from prunecli.batch.models import ModelEntry
from prunecli.batch.process import GB, ProcessOutcome, run_limited, terminate_as_interrupt
from prunecli.batch.rows import BatchRow, failed_row, row_from_report
from prunecli.batch.timm_source import ARCH
from prunecli.model_io.atomic import atomic_write_text
from prunecli.model_io.output_folder import MANIFEST

ROWS_FOLDER = ".batch-rows"
WEIGHTS_FOLDER = ".batch-weights"
TIMEOUT_EXIT_CODE = 124
MEMORY_EXIT_CODE = 3


@dataclass(frozen=True)
class BatchSettings:
    """How a batch runs: the pipeline, the output folder, processes, threads each, timeout, memory limit, resume.

    ``memory_limit_gb`` bounds the resident memory of each model's process tree (a manifest entry's
    ``memory_limit`` takes precedence for that model).
    """

    pipeline: Path
    output: Path
    jobs: int = 1
    threads: int | None = None  # per model process; default: the machine's cores divided by jobs
    timeout_s: float | None = None
    memory_limit_gb: float | None = None
    resume: bool = False

    def threads_per_job(self) -> int:
        """Intra-op threads of each model process, so that ``jobs`` processes do not oversubscribe the cores."""
        if self.threads is not None:
            return self.threads
        return max(1, (os.cpu_count() or 1) // self.jobs)


def run_batch(
    entries: list[ModelEntry], settings: BatchSettings, *, on_row: Callable[[BatchRow], None] | None = None
) -> list[BatchRow]:
    """Run every entry (``settings.jobs`` at a time); ``on_row(row)`` is called as each one ends.

    On Ctrl-C or SIGTERM the running children are killed, the models not started are dropped, and
    KeyboardInterrupt propagates; the finished models' rows are kept for ``--resume``.
    """
    settings.output.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()

    def one(entry: ModelEntry) -> BatchRow:
        row = _resumed_row(entry, settings) if settings.resume else None
        if row is None:
            row = run_model(entry, settings, stop=stop)
            atomic_write_text(_row_path(entry, settings), json.dumps(row.to_dict(), indent=2) + "\n")
        if on_row is not None:
            on_row(row)
        return row

    pool = ThreadPoolExecutor(max_workers=settings.jobs)
    try:
        with terminate_as_interrupt():
            futures = [pool.submit(one, entry) for entry in entries]
            rows = [future.result() for future in futures]
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return sorted(rows, key=lambda row: row.name)


def run_model(entry: ModelEntry, settings: BatchSettings, *, stop: threading.Event | None = None) -> BatchRow:
    """Run one model in a child process; its outcome (including a timeout, the memory limit or a crash) as a row.

    Raises ``BatchStopped`` when ``stop`` is set while the child runs (the child is killed).
    """
    started = time.perf_counter()
    folder = settings.output / entry.name
    limit = entry.memory_limit_gb if entry.memory_limit_gb is not None else settings.memory_limit_gb
    peak, what = 0, "prunecli run"
    try:
        if entry.timm is not None:
            peak = _write_timm_weights(entry, settings, limit=limit, stop=stop)
        completed = _run(run_command(entry, settings), settings, limit=limit, stop=stop)
    except _StepFailed as failure:
        completed, what = failure.outcome, "writing the timm weights"
    peak = max(peak, completed.peak_rss_bytes)
    common = {"seconds": time.perf_counter() - started, "peak_rss_mb": round(peak / 2**20, 1)}
    if completed.killed is not None:
        return failed_row(entry, folder, **_killed(completed.killed, settings, limit=limit, peak=peak), **common)
    report = read_report(folder) if completed.returncode in (0, 1) and what == "prunecli run" else None
    if report is None:
        line = _error_line(completed.stderr) or f"{what} exited {completed.returncode} without a report"
        return failed_row(entry, folder, exit_code=completed.returncode or 3, status=_status(completed.returncode),
                          error=line, **common)  # fmt: skip
    return row_from_report(entry, folder, report, exit_code=completed.returncode,
                           error=_error_line(completed.stderr) if completed.returncode else None, **common)  # fmt: skip


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
    """A preparatory child process (timm weights) failed or was killed; carries its outcome."""

    def __init__(self, outcome: ProcessOutcome) -> None:
        super().__init__(outcome.stderr)
        self.outcome = outcome


def _run(
    command: list[str], settings: BatchSettings, *, limit: float | None, stop: threading.Event | None
) -> ProcessOutcome:
    threads = str(settings.threads_per_job())
    environment = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    return run_limited(command, env=environment, timeout_s=settings.timeout_s, memory_limit_gb=limit, stop=stop)


def _write_timm_weights(
    entry: ModelEntry, settings: BatchSettings, *, limit: float | None, stop: threading.Event | None
) -> int:
    """Write the timm model's random weights (once); the child's peak RSS in bytes (0 when already written)."""
    path = _weights_path(entry, settings)
    if path.is_file():
        return 0
    command = [sys.executable, "-m", "prunecli.batch.timm_source", str(entry.timm), str(path),
               "--kwargs", json.dumps(entry.timm_kwargs)]  # fmt: skip
    outcome = _run(command, settings, limit=limit, stop=stop)
    if outcome.returncode != 0 or outcome.killed is not None:
        raise _StepFailed(outcome)
    return outcome.peak_rss_bytes


def _killed(reason: str, settings: BatchSettings, *, limit: float | None, peak: int) -> dict[str, object]:
    """The status, exit code and error line of a child killed for ``reason`` ("timeout" or "memory")."""
    if reason == "timeout":
        line = f"timed out after {settings.timeout_s:g} s"
        return {"status": "timeout", "exit_code": TIMEOUT_EXIT_CODE, "error": line}
    line = (f"exceeded the memory limit of {limit:g} GB (peak {peak / GB:.3g} GB); raise --memory-limit "
            "(or the manifest's memory_limit), or run fewer --jobs at a time")  # fmt: skip
    return {"status": "memory", "exit_code": MEMORY_EXIT_CODE, "error": line}


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

"""What the caller (the CLI or a test) hands the runner, and what it gets back."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunOptions:
    """Run-time choices that are not part of the pipeline file.

    ``device``, ``seed`` and ``threads`` given here override the pipeline's; ``progress`` turns
    on progress bars (the CLI sets it only when stderr is a terminal). ``pipeline_file`` is the
    file the pipeline was read from, if any: an input the outputs must never overwrite.
    """

    output_dir: Path
    base_dir: Path
    device: str | None = None
    seed: int | None = None
    threads: int | None = None
    pipeline_file: Path | None = None
    trust_pickle: bool = False
    progress: bool = False


@dataclass
class RunResult:
    """The report (as written to report.json), whether every gate passed, the files written,
    and the final model (a torch module; None for ONNX inputs). Under torchrun, ``rank`` is this
    process's: ranks other than 0 write nothing and carry an empty report (rank 0's verdict)."""

    report: dict[str, Any]
    gates_passed: bool
    written: dict[str, Path] = field(default_factory=dict)
    module: Any = None
    rank: int = 0

"""What file-based readers share: resolving ``data.train``/``data.eval`` and picking named arrays."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunecli.data.dataset import DataSet, Split
from prunecli.errors import InputError

if TYPE_CHECKING:
    from prunecli.config.schema import DataSpec

SplitReader = Callable[[Path, "DataSpec"], Split]
"""Reads one file (or folder) into a Split: ``read(path, spec)``."""

INPUT_KEYS = ("inputs", "x")
LABEL_KEYS = ("labels", "y")


def resolve_data_path(path: Path, *, base_dir: Path, field: str) -> Path:
    """``path`` made absolute against ``base_dir``; an InputError naming ``data.<field>`` if it is missing."""
    resolved = path.expanduser()
    resolved = resolved if resolved.is_absolute() else base_dir / resolved
    if not resolved.exists():
        raise InputError(f"data file not found: {resolved}; check data.{field} or pass --data")
    return resolved


def read_each_file(spec: DataSpec, *, base_dir: Path, read: SplitReader) -> DataSet:
    """Read ``spec.train`` and ``spec.eval`` (whichever are set) with ``read``."""
    if spec.train is None and spec.eval is None:
        raise InputError(f"data.format '{spec.format}' reads files: set data.train and/or data.eval, or pass --data")
    splits = {
        field: read(resolve_data_path(path, base_dir=base_dir, field=field), spec) if path is not None else None
        for field, path in (("train", spec.train), ("eval", spec.eval))
    }
    return DataSet(train=splits["train"], eval=splits["eval"])


def pick_arrays(named: Mapping[str, Any], *, source: str, save_hint: str) -> tuple[Any, Any]:
    """The (inputs, labels) entries of ``named``, under ``inputs``/``labels`` or ``x``/``y``."""
    inputs = _first_present(named, INPUT_KEYS)
    labels = _first_present(named, LABEL_KEYS)
    if inputs is None or labels is None:
        found = ", ".join(sorted(map(str, named))) or "nothing"
        raise InputError(f"{source} needs keys 'inputs' and 'labels' (or 'x' and 'y') but has {found}; {save_hint}")
    return inputs, labels


def _first_present(named: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    return next((named[key] for key in keys if key in named), None)


def short_reason(error: BaseException) -> str:
    """The first line of ``error``'s message, at most 120 characters, for a one-line InputError."""
    lines = str(error).strip().splitlines()
    reason = lines[0] if lines else type(error).__name__
    return reason if len(reason) <= 120 else reason[:117] + "..."

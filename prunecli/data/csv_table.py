"""``format: csv``: a header row, numeric feature columns and an integer label column.

The label column is ``data.label_column`` (default ``label``); every other column is a feature,
in file order. Inputs stay (N, F) here; ``check_against_model`` reshapes them to the model's input.
A CSV is text, with no dtype that says "8-bit pixels": values are used as written (never divided by
255); pixel tables of 0..255 need ``data.scale: 0.00392156862745098`` (1/255).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from prunecli.data.dataset import DataSet, Split, make_split
from prunecli.data.files import read_each_file, short_reason
from prunecli.errors import InputError

if TYPE_CHECKING:
    from prunecli.config.schema import DataSpec


def read(spec: DataSpec, *, base_dir: Path) -> DataSet:
    """Read ``data.train`` and ``data.eval`` as CSV tables."""
    return read_each_file(spec, base_dir=base_dir, read=read_csv)


def read_csv(path: Path, spec: DataSpec) -> Split:
    """One CSV table as a Split: features (N, F) float32, labels from ``spec.label_column``."""
    header, rows = _read_rows(path)
    if spec.label_column not in header:
        raise InputError(
            f"{path} has no column '{spec.label_column}' (columns: {', '.join(header[:8])}"
            f"{', ...' if len(header) > 8 else ''}); set data.label_column"
        )
    if len(header) < 2:
        raise InputError(f"{path} has no feature columns besides '{spec.label_column}'; add feature columns")
    table = np.array([_numbers(row, header=header, line=line, path=path) for line, row in rows], dtype=np.float64)
    table = table.reshape(len(rows), len(header))
    label_index = header.index(spec.label_column)
    return make_split(np.delete(table, label_index, axis=1), table[:, label_index], source=str(path))


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the non-empty data rows, each with its 1-based line number."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            lines = [(number, row) for number, row in enumerate(csv.reader(file), start=1) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise InputError(f"cannot read {path} as a CSV table ({short_reason(error)}); save it as UTF-8 text") from error
    if not lines:
        raise InputError(f"{path} is empty; give a CSV table with a header row")
    header = [name.strip() for name in lines[0][1]]
    return header, lines[1:]


def _numbers(row: list[str], *, header: list[str], line: int, path: Path) -> list[float]:
    if len(row) != len(header):
        raise InputError(f"{path} line {line} has {len(row)} fields but the header has {len(header)}; fix the row")
    try:
        return [float(value) for value in row]
    except ValueError:
        column, value = next((name, value) for name, value in zip(header, row) if not _is_number(value))
        raise InputError(f"{path} line {line}, column '{column}': '{value}' is not a number; fix the value") from None


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True

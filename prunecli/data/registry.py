"""The data readers, keyed by ``data.format``.

A reader is ``read(spec, *, base_dir) -> DataSet`` and returns unscaled data (``load_data``
applies ``data.scale``). The built-in readers are registered on first use; registering a name
twice is an error, and so is asking for a name nobody registered.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from prunecli.data.dataset import DataSet
from prunecli.errors import InputError

if TYPE_CHECKING:
    from prunecli.config.schema import DataSpec


class DataReader(Protocol):
    """Reads the data a DataSpec names; relative paths are resolved against ``base_dir``."""

    def __call__(self, spec: DataSpec, *, base_dir: Path) -> DataSet: ...


_READERS: dict[str, DataReader] = {}


def register_reader(format_name: str, reader: DataReader) -> None:
    """Make ``reader`` handle ``data.format: <format_name>``."""
    readers = _registered()
    if format_name in readers:
        raise ValueError(f"a data reader for format '{format_name}' is already registered")
    readers[format_name] = reader


def get_reader(format_name: str) -> DataReader:
    """The reader for ``format_name``; an InputError listing the known formats if there is none."""
    readers = _registered()
    if format_name not in readers:
        close = difflib.get_close_matches(format_name, list(readers), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise InputError(f"unknown data format '{format_name}'; known formats: {', '.join(sorted(readers))}{hint}")
    return readers[format_name]


def known_formats() -> list[str]:
    """Every registered format name, sorted."""
    return sorted(_registered())


def _registered() -> dict[str, DataReader]:
    if not _READERS:
        from prunecli.data import csv_table, digits, image_folder, npz, pt

        builtins: dict[str, DataReader] = {
            "npz": npz.read,
            "pt": pt.read,
            "csv": csv_table.read,
            "image_folder": image_folder.read,
            "digits": digits.read,
        }
        _READERS.update(builtins)
    return _READERS

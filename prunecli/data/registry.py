"""The data readers, keyed by ``data.format``.

A reader is ``read(spec, *, base_dir) -> DataSet`` and returns unscaled data (``load_data``
applies ``data.scale``). The built-in readers are registered on first use; registering a name
twice is an error, and so is asking for a name nobody registered.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from prunecli.data.dataset import DataSet
from prunecli.errors import InputError
from prunecli.registry import Registry

if TYPE_CHECKING:
    from prunecli.config.schema import DataSpec


class DataReader(Protocol):
    """Reads the data a DataSpec names; relative paths are resolved against ``base_dir``."""

    def __call__(self, spec: DataSpec, *, base_dir: Path) -> DataSet: ...


_READERS: Registry[str, DataReader] = Registry("data format")


def register_reader(format_name: str, reader: DataReader) -> None:
    """Make ``reader`` handle ``data.format: <format_name>``; a name registered twice is an error."""
    _registered().add(format_name, reader)


def get_reader(format_name: str) -> DataReader:
    """The reader for ``format_name``; an InputError listing the known formats if there is none."""
    try:
        return _registered().lookup(format_name)
    except KeyError as error:
        raise InputError(error.args[0]) from None


def known_formats() -> list[str]:
    """Every registered format name, sorted."""
    return sorted(_registered())


def _registered() -> Registry[str, DataReader]:
    if "npz" not in _READERS:
        from prunecli.data import csv_table, digits, image_folder, npz, pt

        for name, reader in {
            "npz": npz.read,
            "pt": pt.read,
            "csv": csv_table.read,
            "image_folder": image_folder.read,
            "digits": digits.read,
        }.items():
            _READERS.add(name, reader)
    return _READERS

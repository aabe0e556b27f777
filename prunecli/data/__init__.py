"""Data sets: read the files a pipeline's ``data`` section names and check them against the model.

``load_data(spec, base_dir=...)`` picks the reader registered for ``spec.format`` (npz, pt, csv,
image_folder, digits), applies ``spec.scale`` and returns a ``DataSet`` tagged with its format;
``check_against_model`` then fits the inputs to the model's input shape. Readers hand their arrays
to ``make_split``, which divides 8-bit (``uint8``) inputs by 255 for every format; ``data.scale``
multiplies after that. Every problem is an InputError of one line.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from prunecli.data.checks import check_against_model
from prunecli.data.dataset import DataSet, Split, batches
from prunecli.data.registry import get_reader

if TYPE_CHECKING:
    from prunecli.config.schema import DataSpec

__all__ = ["DataSet", "Split", "batches", "check_against_model", "load_data"]


def load_data(spec: DataSpec, *, base_dir: Path) -> DataSet:
    """Read the data ``spec`` names (relative paths against ``base_dir``), inputs times ``spec.scale``."""
    data = replace(get_reader(spec.format)(spec, base_dir=base_dir), format=spec.format)
    if spec.scale == 1.0:
        return data
    return replace(data, train=_scaled(data.train, spec.scale), eval=_scaled(data.eval, spec.scale))


def _scaled(split: Split | None, scale: float) -> Split | None:
    return None if split is None else replace(split, inputs=split.inputs * scale)

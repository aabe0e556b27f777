"""``format: npz``: a numpy ``.npz`` archive with arrays ``inputs`` and ``labels`` (or ``x`` and ``y``).

``uint8`` inputs are divided by 255 (in ``make_split``, as in every format); others keep their values.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from prunecli.data.dataset import DataSet, Split, make_split
from prunecli.data.files import pick_arrays, read_each_file, short_reason
from prunecli.errors import InputError

if TYPE_CHECKING:
    from prunecli.config.schema import DataSpec

SAVE_HINT = "save it with numpy.savez(path, inputs=..., labels=...)"


def read(spec: DataSpec, *, base_dir: Path) -> DataSet:
    """Read ``data.train`` and ``data.eval`` as npz archives."""
    return read_each_file(spec, base_dir=base_dir, read=read_npz)


def read_npz(path: Path, spec: DataSpec) -> Split:
    """One npz archive as a Split (no pickled object arrays are loaded)."""
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise InputError(f"{path} is a single .npy array, not an npz archive; {SAVE_HINT}")
        with archive:
            inputs, labels = pick_arrays(archive, source=str(path), save_hint=SAVE_HINT)
            return make_split(inputs, labels, source=str(path))
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
        raise InputError(f"cannot read {path} as an npz archive ({short_reason(error)}); {SAVE_HINT}") from error

"""``format: pt``: a file saved with ``torch.save({"inputs": Tensor, "labels": Tensor}, path)``.

It is loaded with ``weights_only=True``: plain tensors and containers only, no pickled code.
``uint8`` inputs are divided by 255 (in ``make_split``, as in every format); others keep their values.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunecli.data.dataset import DataSet, Split, make_split
from prunecli.data.files import pick_arrays, read_each_file, short_reason
from prunecli.errors import InputError

if TYPE_CHECKING:
    from prunecli.config.schema import DataSpec

SAVE_HINT = 'save it with torch.save({"inputs": inputs, "labels": labels}, path)'


def read(spec: DataSpec, *, base_dir: Path) -> DataSet:
    """Read ``data.train`` and ``data.eval`` as torch files."""
    return read_each_file(spec, base_dir=base_dir, read=read_pt)


def read_pt(path: Path, spec: DataSpec) -> Split:
    """One torch file holding a dict of two tensors as a Split."""
    contents = _load_weights_only(path)
    if not isinstance(contents, dict):
        raise InputError(f"{path} holds a {type(contents).__name__}, not a dict of tensors; {SAVE_HINT}")
    inputs, labels = pick_arrays(contents, source=str(path), save_hint=SAVE_HINT)
    return make_split(_as_numpy(inputs, path=path), _as_numpy(labels, path=path), source=str(path))


def _load_weights_only(path: Path) -> Any:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise InputError(
            f"cannot read {path} as a weights-only torch file "
            f"(corrupt, or pickled objects besides tensors); {SAVE_HINT}"
        ) from error
    except (OSError, EOFError, RuntimeError, ValueError, zipfile.BadZipFile) as error:
        raise InputError(f"cannot read {path} as a torch file ({short_reason(error)}); {SAVE_HINT}") from error


def _as_numpy(value: Any, *, path: Path) -> Any:
    import torch

    if not isinstance(value, torch.Tensor):
        raise InputError(f"{path}: expected tensors but found a {type(value).__name__}; {SAVE_HINT}")
    value = value.detach().cpu()
    return (value.float() if value.is_floating_point() else value).numpy()  # numpy has no bfloat16

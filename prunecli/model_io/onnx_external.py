"""ONNX external data: the weights of a graph kept in a file beside it (``model.onnx`` + ``model.onnx.data``).

An ONNX file is one protobuf message, and protobuf cannot serialise a message over 2 GB, so large
models keep their initializers' bytes in a separate file that each initializer points into
(``location``, ``offset``, ``length``). ``onnx.load`` reads that file from beside the graph; ONNX
Runtime does the same when a session is opened from the path.

prunecli writes a model the way its input was written: an input with external data gives
``model.onnx`` + ``model.onnx.data``, an input with embedded weights gives ``model.onnx`` alone,
and a graph whose weights would pass the protobuf limit always gets external data::

    write_onnx(pruned, out / "model.onnx", external_data=uses_external_data(source))
    # -> [out/model.onnx.data, out/model.onnx]   (tensors under 1 KiB stay inside the graph)
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from prunecli.model_io.atomic import atomic_path

if TYPE_CHECKING:
    import onnx

INLINE_LIMIT_BYTES = 2**31 - 2**27  # weights above this go to external data: 2 GB less room for the graph itself
DATA_SUFFIX = ".data"


def uses_external_data(path: Path) -> bool:
    """Whether the ONNX file at ``path`` keeps any initializer's bytes in an external file."""
    return bool(external_data_files(path))


def external_data_files(path: Path) -> list[Path]:
    """The external data files the ONNX file at ``path`` points into, in first-use order."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data as tensor_is_external

    model = onnx.load(str(path), load_external_data=False)
    locations = [ExternalDataInfo(t).location for t in model.graph.initializer if tensor_is_external(t)]
    return [Path(path).parent / location for location in dict.fromkeys(locations)]


def onnx_file_bytes(path: Path) -> int:
    """Bytes on disk of an ONNX model: the graph file plus the external data files it points into."""
    return sum(file.stat().st_size for file in [Path(path), *external_data_files(path)])


def needs_external_data(model: onnx.ModelProto) -> bool:
    """Whether ``model``'s weights are too large for one protobuf message (and so must go to external data)."""
    return _initializer_bytes(model) > INLINE_LIMIT_BYTES


@contextmanager
def model_source(model: onnx.ModelProto) -> Iterator[bytes | str]:
    """What ONNX Runtime and ``onnx.checker`` read ``model`` from: its bytes, or, when its weights pass
    protobuf's 2 GB limit (so it cannot be serialised), the path of a temporary copy with external data."""
    if not needs_external_data(model):
        yield model.SerializeToString()
        return
    with tempfile.TemporaryDirectory(prefix="prunecli-onnx-") as folder:
        path = Path(folder) / "model.onnx"
        write_onnx(model, path, external_data=True)
        yield str(path)


def write_onnx(model: onnx.ModelProto, path: Path, *, external_data: bool) -> list[Path]:
    """Write ``model`` at ``path`` (external data in ``<name>.data`` beside it when asked or needed); files written.

    Each file appears whole or not at all: the data file is moved into place before the graph
    that points into it. ``model`` itself is left unchanged.
    """
    import onnx

    path = Path(path)
    if not external_data and not needs_external_data(model):
        with atomic_path(path) as temporary:
            onnx.save_model(model, str(temporary))
        return [path]
    data = path.with_name(path.name + DATA_SUFFIX)
    scratch = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    scratch.mkdir()
    try:
        detached = onnx.ModelProto()
        detached.CopyFrom(model)  # saving with external data moves the bytes out of the message it is given
        onnx.save_model(
            detached, str(scratch / path.name), save_as_external_data=True, all_tensors_to_one_file=True,
            location=data.name,
        )  # fmt: skip
        written = [data] if (scratch / data.name).exists() else []  # none when every tensor is under 1 KiB
        if written:
            os.replace(scratch / data.name, data)
        os.replace(scratch / path.name, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return [*written, path]


def _initializer_bytes(model: onnx.ModelProto) -> int:
    from onnx import helper

    total = 0
    for tensor in model.graph.initializer:
        count = 1
        for size in tensor.dims:
            count *= int(size)
        total += count * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return total

"""Checks of the data against the model, made before any work: input shape and label range."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from prunecli.data.dataset import DataSet, Split
from prunecli.errors import InputError


def check_against_model(data: DataSet, *, input_shape: Sequence[int], num_outputs: int | None) -> DataSet:
    """``data`` with inputs shaped like the model's input, or an InputError saying what differs.

    ``input_shape`` is the model's input shape, batch first (e.g. [1, 1, 8, 8]). Inputs with the
    same number of elements per sample are reshaped (a CSV row of 64 features becomes (1, 8, 8));
    any other difference is an error. Images are never reshaped: an ``image_folder`` data set
    must match exactly, and the error names ``data.grayscale``/``data.image_size``; channels-last
    arrays (H, W, C) for a (C, H, W) model are refused too. With ``num_outputs`` every label must
    be below it.
    """
    expected = tuple(int(size) for size in input_shape[1:])
    if not expected:
        raise InputError(
            f"model.input_shape {list(input_shape)} has no dimension after the batch; fix model.input_shape"
        )
    data = _reshaped(data, expected)
    if num_outputs is not None and data.num_classes > num_outputs:
        raise InputError(
            f"labels go up to {data.num_classes - 1} but the model has {num_outputs} outputs; "
            "use labels 0..outputs-1 or a model with more outputs"
        )
    return data


def _reshaped(data: DataSet, expected: tuple[int, ...]) -> DataSet:
    actual = data.sample_input_shape
    if actual == expected:
        return data
    mismatch = f"data inputs have shape {actual} per sample but the model expects {expected}"
    if data.format == "image_folder":
        raise InputError(f"{mismatch}; {_image_fix(actual, expected)}")
    if len(expected) == 3 and expected[0] > 1 and actual == (*expected[1:], expected[0]):
        raise InputError(f"{mismatch}: the inputs are channels-last; save them as (samples, channels, height, width)")
    if math.prod(actual) != math.prod(expected):
        raise InputError(f"{mismatch}; fix data or model.input_shape")
    return replace(data, train=_reshape_split(data.train, expected), eval=_reshape_split(data.eval, expected))


def _image_fix(actual: tuple[int, ...], expected: tuple[int, ...]) -> str:
    """What makes image_folder images (C, H, W) fit a model input of ``expected`` per sample."""
    if len(expected) != 3 or expected[0] not in (1, 3):
        return "image_folder gives (1 or 3, height, width) images; fix model.input_shape or use another data.format"
    fixes = []
    if actual[0] != expected[0]:
        fixes.append(f"set data.grayscale: {'true' if expected[0] == 1 else 'false'}")
    if actual[1:] != expected[1:]:
        fixes.append(f"set data.image_size: [{expected[1]}, {expected[2]}]")
    return " and ".join(fixes)


def _reshape_split(split: Split | None, expected: tuple[int, ...]) -> Split | None:
    if split is None:
        return None
    return replace(split, inputs=split.inputs.reshape((len(split), *expected)))

"""The in-memory data set every reader produces: labelled splits of numpy arrays.

A ``Split`` is ``inputs`` (float32, one row per sample, any per-sample shape) and ``labels``
(int64 class indices). A ``DataSet`` holds an optional training split and an optional eval
split; at least one is present and both have the same per-sample shape. ``format`` is the
``data.format`` it was read with (``load_data`` sets it; checks word their fixes by it)::

    train = make_split(np.zeros((100, 1, 8, 8)), np.arange(100) % 10, source="train.npz")
    data = DataSet(train=train, eval=None)
    data.num_classes           # 10
    data.sample_input_shape    # (1, 8, 8)
    for inputs, labels in batches(train, batch_size=32, shuffle=True, seed=0):
        ...                    # torch tensors: (32, 1, 8, 8) float32, (32,) int64; the last batch has 4

``make_split`` is the one place raw arrays are checked and converted: every reader calls it, so
8-bit inputs (``uint8``, e.g. image pixels 0..255) are divided by 255 the same way in every format;
inputs of any other dtype keep their values (``data.scale`` multiplies afterwards)::

    make_split(np.full((2, 1, 8, 8), 255, np.uint8), np.array([0, 1]), source="x").inputs.max()   # 1.0
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from prunecli.errors import InputError

if TYPE_CHECKING:
    import torch

UINT8_MAX = 255.0


@dataclass(frozen=True)
class Split:
    """One labelled split: ``inputs`` float32 (N, ...) and ``labels`` int64 (N,), N >= 1."""

    inputs: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one input, without the batch dimension."""
        return tuple(self.inputs.shape[1:])


@dataclass(frozen=True)
class DataSet:
    """A training split and an eval split; either may be missing, not both.

    ``format`` is the ``data.format`` the splits were read with, or None when unknown.
    """

    train: Split | None
    eval: Split | None
    format: str | None = None

    def __post_init__(self) -> None:
        if self.train is None and self.eval is None:
            raise InputError("the data set has no split; set data.train and/or data.eval")
        if self.train is not None and self.eval is not None and self.train.sample_shape != self.eval.sample_shape:
            raise InputError(
                f"train inputs have shape {self.train.sample_shape} per sample but eval inputs have "
                f"{self.eval.sample_shape}; use files with the same input shape"
            )

    @property
    def splits(self) -> tuple[Split, ...]:
        """The splits present, train first."""
        return tuple(split for split in (self.train, self.eval) if split is not None)

    @property
    def num_classes(self) -> int:
        """Largest label over the splits present, plus one."""
        return max(int(split.labels.max()) for split in self.splits) + 1

    @property
    def sample_input_shape(self) -> tuple[int, ...]:
        """Shape of one input, without the batch dimension."""
        return self.splits[0].sample_shape


def make_split(inputs: np.ndarray, labels: np.ndarray, *, source: str) -> Split:
    """Check raw arrays read from ``source`` and convert them to a ``Split``.

    Inputs must be numeric, finite and at least 2-D; ``uint8`` inputs are divided by 255 (to
    [0, 1]), any other dtype is converted to float32 as it is. Labels must be a 1-D array of
    non-negative integers (integral floats, as CSV files give, are accepted) as long as the inputs.
    """
    inputs = _checked_inputs(np.asarray(inputs), source=source)
    labels = _checked_labels(np.asarray(labels), inputs, source=source)
    return Split(inputs=inputs, labels=labels)


def _checked_inputs(inputs: np.ndarray, *, source: str) -> np.ndarray:
    if not (np.issubdtype(inputs.dtype, np.number) or inputs.dtype == np.bool_):
        raise InputError(f"{source}: inputs have dtype {inputs.dtype}; save numeric inputs")
    if inputs.ndim < 2:
        raise InputError(f"{source}: inputs have shape {inputs.shape}; save them as (samples, features...)")
    if len(inputs) == 0:
        raise InputError(f"{source} has no samples; give a file with at least one sample")
    if inputs.dtype == np.uint8:
        inputs = inputs.astype(np.float32) / UINT8_MAX  # 8-bit pixels 0..255 -> [0, 1], in every format
    inputs = inputs.astype(np.float32, copy=False)
    if not np.isfinite(inputs).all():
        raise InputError(f"{source}: inputs contain NaN or infinity; clean the data")
    return inputs


def _checked_labels(labels: np.ndarray, inputs: np.ndarray, *, source: str) -> np.ndarray:
    if labels.ndim != 1:
        raise InputError(
            f"{source}: labels have shape {labels.shape}; save a 1-D array of class indices (not one-hot)"
        )
    if len(labels) != len(inputs):
        raise InputError(f"{source}: {len(inputs)} inputs but {len(labels)} labels; save one label per input")
    if not (np.issubdtype(labels.dtype, np.number) or labels.dtype == np.bool_):
        raise InputError(f"{source}: labels have dtype {labels.dtype}; save integer class indices")
    if np.issubdtype(labels.dtype, np.floating):
        fractional = labels[~np.isfinite(labels) | (labels != np.round(labels))]
        if len(fractional):
            raise InputError(f"{source}: labels must be integer class indices, found {fractional[0]}; fix the labels")
    if labels.min() < 0:
        raise InputError(f"{source}: labels must be >= 0, found {labels.min()}; use class indices 0..C-1")
    return labels.astype(np.int64)


def batches(
    split: Split, *, batch_size: int, shuffle: bool = False, seed: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (inputs, labels) tensors of ``batch_size`` samples; the last batch may be smaller.

    With ``shuffle`` the order is a permutation from ``numpy.random.default_rng(seed)``: the same
    seed always gives the same batches.
    """
    import torch

    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}; fix data.batch_size")
    order = np.random.default_rng(seed).permutation(len(split)) if shuffle else np.arange(len(split))
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        yield torch.from_numpy(split.inputs[indices]), torch.from_numpy(split.labels[indices])

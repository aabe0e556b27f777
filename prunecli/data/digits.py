"""``format: digits``: scikit-learn's bundled 8x8 handwritten digits, split like the sample models.

``digits_splits`` is the one definition of that split: ``sample_models/make_samples.py`` uses it
to write ``digits_train.npz``/``digits_val.npz``, so ``format: digits`` and those files hold the
same samples. ``data.train`` and ``data.eval`` are ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from prunecli.data.dataset import DataSet, Split, make_split
from prunecli.errors import InputError

if TYPE_CHECKING:
    from prunecli.config.schema import DataSpec

SPLIT_SEED = 0
EVAL_FRACTION = 0.2
PIXEL_MAX = 16.0  # load_digits pixels are integers 0..16


def read(spec: DataSpec, *, base_dir: Path) -> DataSet:
    """The digits train and eval splits; ``spec`` and ``base_dir`` are not needed."""
    train, eval_split = digits_splits()
    return DataSet(train=train, eval=eval_split)


def digits_splits(*, seed: int = SPLIT_SEED, eval_fraction: float = EVAL_FRACTION) -> tuple[Split, Split]:
    """A stratified (train, eval) split of load_digits: inputs float32 (N, 1, 8, 8) in [0, 1], labels int64.

    With the defaults: 1437 train and 360 eval samples, the same on every machine.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise InputError("data.format 'digits' needs scikit-learn; pip install 'prunecli[digits]'") from error

    digits = load_digits()
    inputs = (digits.images / PIXEL_MAX).astype(np.float32)[:, None]  # (1797, 1, 8, 8)
    labels = digits.target.astype(np.int64)
    train_inputs, eval_inputs, train_labels, eval_labels = train_test_split(
        inputs, labels, test_size=eval_fraction, random_state=seed, stratify=labels
    )
    return (
        make_split(train_inputs, train_labels, source="digits train split"),
        make_split(eval_inputs, eval_labels, source="digits eval split"),
    )

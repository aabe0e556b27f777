"""Make the bundled sample data and models from scikit-learn's digits (CPU, deterministic, < 1 min).

Writes, next to this file: digits_train.npz, digits_val.npz (arrays ``inputs`` float32
(N, 1, 8, 8) in [0, 1] and ``labels`` int64), digits_val.csv (columns p0..p63, label),
digits_mlp.pt / digits_cnn.pt (state_dicts of archs.DigitsMLP / archs.DigitsCNN) and
digits_mlp.onnx / digits_cnn.onnx (opset 17, input "input", output "logits", dynamic batch).

Run: ``make samples`` (or ``python sample_models/make_samples.py``).
"""

from __future__ import annotations

import csv
import io
import os
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # the prunecli package and archs.py

from archs import DigitsCNN, DigitsMLP  # noqa: E402

from prunecli.data.dataset import Split, batches  # noqa: E402
from prunecli.data.digits import digits_splits  # noqa: E402

SEED = 0
BATCH_SIZE = 64
MIN_ACCURACY = 0.95
ONNX_TOLERANCE = 1e-4


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write`` on a temporary file beside ``path``, then move it into place."""
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(handle)
    try:
        write(Path(temp_name))
        os.chmod(temp_name, 0o644)  # mkstemp makes it 0600
        os.replace(temp_name, path)
    finally:
        Path(temp_name).unlink(missing_ok=True)


def save_npz(path: Path, split: Split) -> None:
    write_atomically(path, lambda temp: np.savez_compressed(temp, inputs=split.inputs, labels=split.labels))


def save_csv(path: Path, split: Split) -> None:
    """One row per sample: the 64 pixels p0..p63, then the label."""

    def write(temp: Path) -> None:
        with temp.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow([f"p{index}" for index in range(64)] + ["label"])
            for pixels, label in zip(split.inputs.reshape(len(split), -1), split.labels):
                writer.writerow([f"{value:.6g}" for value in pixels] + [int(label)])

    write_atomically(path, write)


def train(model: nn.Module, split: Split, *, epochs: int, lr: float) -> nn.Module:
    """Adam with a cosine schedule over ``epochs``; a fixed shuffle per epoch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    model.train()
    for epoch in range(epochs):
        for inputs, labels in batches(split, batch_size=BATCH_SIZE, shuffle=True, seed=SEED + epoch):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(inputs), labels).backward()
            optimizer.step()
        schedule.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, split: Split) -> float:
    predictions = model(torch.from_numpy(split.inputs)).argmax(dim=1).numpy()
    return float((predictions == split.labels).mean())


def save_state_dict(path: Path, model: nn.Module) -> None:
    buffer = io.BytesIO()  # torch.save names the archive after the file: saving to a temp name is not reproducible
    torch.save(model.state_dict(), buffer)
    write_atomically(path, lambda temp: temp.write_bytes(buffer.getvalue()))


def save_onnx(path: Path, model: nn.Module, split: Split) -> None:
    """Export with the TorchScript exporter, then check ONNX Runtime gives the same logits."""
    example = torch.from_numpy(split.inputs[:2])

    def write(temp: Path) -> None:
        with warnings.catch_warnings():  # the TorchScript exporter is deprecated but asked for on purpose
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model,
                (example,),
                str(temp),
                dynamo=False,
                opset_version=17,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
        check_onnx(temp, model, split)

    write_atomically(path, write)


@torch.no_grad()
def check_onnx(path: Path, model: nn.Module, split: Split) -> None:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(["logits"], {"input": split.inputs})
    difference = float(np.abs(onnx_logits - model(torch.from_numpy(split.inputs)).numpy()).max())
    if difference > ONNX_TOLERANCE:
        raise RuntimeError(f"{path.name}: ONNX Runtime logits differ from torch by {difference:.2e}")


def make_model(
    name: str, build: Callable[[], nn.Module], *, train_split: Split, val_split: Split, epochs: int, lr: float
) -> None:
    """Train ``build()`` from a fixed seed, check its val accuracy, save it as .pt and .onnx."""
    torch.manual_seed(SEED)
    model = train(build(), train_split, epochs=epochs, lr=lr)
    val_accuracy = accuracy(model, val_split)
    print(f"{name}: val accuracy {val_accuracy:.4f} ({len(val_split)} samples)")
    if val_accuracy < MIN_ACCURACY:
        raise RuntimeError(f"{name} reached only {val_accuracy:.4f} val accuracy; expected >= {MIN_ACCURACY}")
    save_state_dict(HERE / f"{name}.pt", model)
    save_onnx(HERE / f"{name}.onnx", model, val_split)


def main() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    train_split, val_split = digits_splits()
    save_npz(HERE / "digits_train.npz", train_split)
    save_npz(HERE / "digits_val.npz", val_split)
    save_csv(HERE / "digits_val.csv", val_split)
    make_model("digits_mlp", DigitsMLP, train_split=train_split, val_split=val_split, epochs=30, lr=3e-3)
    make_model("digits_cnn", DigitsCNN, train_split=train_split, val_split=val_split, epochs=15, lr=3e-3)


if __name__ == "__main__":
    main()

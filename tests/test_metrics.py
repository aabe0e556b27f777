"""Size, MACs, latency and accuracy on tiny models, torch and ONNX measured the same way."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunecli.config.schema import LatencySpec
from prunecli.data.dataset import Split
from prunecli.errors import InputError, UnsupportedModelError
from prunecli.metrics.accuracy import Evaluation, evaluate_onnx, evaluate_torch
from prunecli.metrics import interleave
from prunecli.metrics.interleave import median_interval, speedup, time_interleaved
from prunecli.metrics.latency import Latency, measure_onnx_latencies, measure_torch_latencies
from prunecli.metrics.macs import count_macs, onnx_macs
from prunecli.metrics.size import count_params, onnx_params, serialized_size, size_bytes
from prunecli.model_io import export_onnx


class ConvLinear(nn.Module):
    """conv 3->8 (3x3, pad 1), grouped conv 8->8 (groups 4, stride 2), transposed conv 8->4, linear over
    the last dim of a 4-D tensor (MatMul in ONNX), linear head (Gemm in ONNX)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, groups=4, stride=2)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2, groups=2)
        self.mix = nn.Linear(4, 6)
        self.head = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(F.relu(self.grouped(F.relu(self.conv(x)))))  # (N, 4, 14, 14)
        y = self.mix(y.permute(0, 2, 3, 1))  # (N, 14, 14, 6)
        return self.head(y.mean(dim=(1, 2)))


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return ConvLinear().eval()


@pytest.fixture
def onnx_path(model, tmp_path) -> Path:
    path = tmp_path / "model.onnx"
    export_onnx(model, torch.randn(1, 3, 16, 16), path)
    return path


def _split(count: int = 50, *, classes: int = 5, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    return Split(inputs=rng.standard_normal((count, 3, 16, 16)).astype(np.float32),
                 labels=rng.integers(0, classes, count).astype(np.int64))


# --- size ------------------------------------------------------------------------------------


def test_params_and_bytes(model, onnx_path, tmp_path):
    expected = (8 * 3 * 9 + 8) + (8 * 2 * 9 + 8) + (8 * 2 * 4 + 4) + (4 * 6 + 6) + (6 * 5 + 5)
    assert count_params(model) == expected
    assert onnx_params(onnx_path) == expected  # integer shape initializers are not weights
    assert size_bytes(onnx_path) == os.path.getsize(onnx_path)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    assert abs(serialized_size(model) - size_bytes(tmp_path / "weights.pt")) < 512  # same bytes, other zip names


# --- MACs ------------------------------------------------------------------------------------


def test_conv_macs_by_hand():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    # every one of the 8 x 16 x 16 outputs takes 3 x 3 x 3 multiply-accumulates
    assert count_macs(conv, torch.randn(1, 3, 16, 16)) == 8 * 16 * 16 * 3 * 3 * 3
    grouped = nn.Conv2d(8, 8, 3, groups=4)
    # 8 x 14 x 14 outputs, each over 8 / 4 = 2 input channels x 3 x 3
    assert count_macs(grouped, torch.randn(4, 8, 16, 16)) == 8 * 14 * 14 * 2 * 9  # one sample, whatever the batch


def test_onnx_macs_equal_torch_macs(model, onnx_path):
    example = torch.randn(1, 3, 16, 16)
    conv = 8 * 16 * 16 * 27
    grouped = 8 * 7 * 7 * 18
    up = 8 * 7 * 7 * (2 * 2 * 2)  # transposed: every input position times C_out / groups x kernel
    mix = 14 * 14 * 4 * 6
    head = 6 * 5
    assert count_macs(model, example) == conv + grouped + up + mix + head
    assert onnx_macs(onnx_path, [1, 3, 16, 16]) == count_macs(model, example)
    assert onnx_macs(onnx_path, [8, 3, 16, 16]) == count_macs(model, example)  # per sample


def test_onnx_macs_rejects_a_wrong_rank(onnx_path):
    with pytest.raises(InputError, match="model.input_shape has 3 dims"):
        onnx_macs(onnx_path, [1, 16, 16])


# --- latency ---------------------------------------------------------------------------------


def _spec(**fields) -> LatencySpec:
    return LatencySpec(**({"warmup": 1, "repeats": 5} | fields))


def test_torch_latencies_fields_speedup_and_threads_restored(model):
    threads_before = torch.get_num_threads()
    spec = _spec(batch_size=3, repeats=8)
    latencies = measure_torch_latencies({"a": model, "b": model}, torch.randn(1, 3, 16, 16), spec=spec,
                                        device="cpu", threads=1, baseline="a")  # fmt: skip
    latency = latencies["b"]
    assert isinstance(latency, Latency)
    assert 0 < latency.p50_ms <= latency.p90_ms < 10_000
    assert (latency.backend, latency.device, latency.threads, latency.batch_size, latency.rounds) == (
        "torch", "cpu", 1, 3, 8)  # fmt: skip
    assert torch.get_num_threads() == threads_before
    assert latencies["a"].speedup is None and latency.speedup.low <= latency.speedup.median <= latency.speedup.high
    record = latency.to_dict()
    assert set(record) == {"p50", "p90", "spread", "backend", "device", "threads", "batch_size", "rounds", "speedup"}
    assert set(record["speedup"]) == {"median", "low", "high", "rounds", "stable"}


def test_onnx_latencies_fields(onnx_path):
    example = np.zeros((1, 3, 16, 16), np.float32)
    latency = measure_onnx_latencies({"m": onnx_path}, example, spec=_spec(batch_size=2), device="cpu", threads=1,
                                     baseline=None)["m"]  # fmt: skip
    assert 0 < latency.p50_ms <= latency.p90_ms < 10_000
    assert (latency.backend, latency.device, latency.batch_size, latency.threads) == ("onnxruntime", "cpu", 2, 1)


def test_cuda_latency_without_a_gpu_is_an_input_error(model, onnx_path):
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        with pytest.raises(InputError, match="CUDAExecutionProvider"):
            measure_onnx_latencies({"m": onnx_path}, np.zeros((1, 3, 16, 16), np.float32), spec=_spec(),
                                   device="cuda", threads=1, baseline=None)  # fmt: skip
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="--device cpu"):
            measure_torch_latencies({"m": model}, torch.randn(1, 3, 16, 16), spec=_spec(), device="cuda", threads=1,
                                    baseline=None)  # fmt: skip


def test_onnx_latency_with_a_wrong_input_shape_is_an_input_error(onnx_path):
    with pytest.raises(InputError, match="cannot run the model on inputs of shape"):
        measure_onnx_latencies({"m": onnx_path}, np.zeros((1, 3, 9, 9, 1), np.float32), spec=_spec(), device="cpu",
                               threads=1, baseline=None)  # fmt: skip


def test_median_interval_uses_binomial_order_statistics():
    values = list(range(1, 31))  # x_(i) = i
    assert median_interval(values) == (10.0, 21.0, True)  # n = 30: [x_(10), x_(21)]
    assert median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0, False)  # too few rounds for a 95 % interval


def test_speedup_is_the_median_of_per_round_ratios_and_flags_wide_intervals():
    baseline = [2.0] * 30
    steady = speedup(baseline, [1.0] * 30, max_interval_width=0.2)
    assert (steady.median, steady.low, steady.high, steady.stable) == (2.0, 2.0, 2.0, True)
    noisy = speedup(baseline, [1.0, 2.0] * 15, max_interval_width=0.2)
    assert noisy.low == 1.0 and noisy.high == 2.0 and not noisy.stable
    # A machine that slows down for half the rounds slows both models in those rounds: the ratio holds.
    slow_half = [4.0] * 15 + [2.0] * 15
    assert speedup(slow_half, [t / 2 for t in slow_half], max_interval_width=0.2).median == 2.0


def test_time_interleaved_alternates_the_order_of_models(monkeypatch):
    monkeypatch.setattr(interleave, "MIN_ROUND_MS", 0.0)  # one call per timing
    calls: list[str] = []
    times = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=0, rounds=2)
    assert calls[-4:] == ["a", "b", "b", "a"]  # round 0 in order, round 1 reversed
    assert {name: len(values) for name, values in times.items()} == {"a": 2, "b": 2}


# --- accuracy --------------------------------------------------------------------------------


class Scaled(nn.Module):
    """Logits = inputs x 10, returned inside a tuple and a dict like real models do."""

    def forward(self, x: torch.Tensor):
        return ({"logits": x * 10.0},)


def test_accuracy_loss_and_top5_match_hand_computation():
    labels = np.arange(20, dtype=np.int64) % 8
    rows = np.arange(20)
    inputs = np.eye(8, dtype=np.float32)[labels]
    inputs[:7] = np.eye(8, dtype=np.float32)[(labels[:7] + 1) % 8]  # 7 of 20 point at the wrong class...
    inputs[rows[:5], labels[:5]] = 0.5  # ...5 of them with the true class second (within top 5)
    inputs[rows[5:7], labels[5:7]] = -1.0  # ...2 with the true class last
    evaluation = evaluate_torch(Scaled(), Split(inputs, labels), batch_size=6, device="cpu")
    expected_loss = F.cross_entropy(torch.from_numpy(inputs) * 10, torch.from_numpy(labels)).item()
    assert evaluation.samples == 20
    assert evaluation.accuracy == pytest.approx(13 / 20)
    assert evaluation.top5 == pytest.approx(18 / 20)  # 8 classes > 5: top-5 is reported
    assert evaluation.loss == pytest.approx(expected_loss, rel=1e-5)


def test_top5_is_none_with_five_classes_or_fewer(model):
    evaluation = evaluate_torch(model, _split(classes=5), batch_size=16, device="cpu")
    assert evaluation.top5 is None and 0 <= evaluation.accuracy <= 1 and evaluation.loss > 0


def test_onnx_evaluation_agrees_with_torch(model, onnx_path):
    split = _split()
    torch_eval = evaluate_torch(model, split, batch_size=16, device="cpu")
    onnx_eval = evaluate_onnx(onnx_path, split, batch_size=16)
    assert isinstance(onnx_eval, Evaluation) and onnx_eval.samples == 50
    assert onnx_eval.accuracy == torch_eval.accuracy
    assert onnx_eval.loss == pytest.approx(torch_eval.loss, abs=1e-4)


def test_labels_beyond_the_outputs_and_non_logit_outputs_are_errors(model):
    with pytest.raises(InputError, match="labels go up to 7 but the model has 5 outputs"):
        evaluate_torch(model, Split(_split().inputs, np.full(50, 7, np.int64)), batch_size=16, device="cpu")
    with pytest.raises(UnsupportedModelError, match=r"accuracy needs \(batch, classes\) logits"):
        evaluate_torch(nn.Identity(), _split(), batch_size=16, device="cpu")

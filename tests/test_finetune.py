"""The fine-tuning loop on a small learnable task: it learns, it is reproducible, distillation pulls
the student toward the teacher, and the optimizer and schedule follow the step's settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunecli.config.schema import DistillSpec, FinetuneStep
from prunecli.data.dataset import Split
from prunecli.errors import InputError
from prunecli.finetune import finetune
from prunecli.finetune.distill import distillation_loss, soft_target_loss
from prunecli.finetune.optim import make_optimizer, make_scheduler


def _blobs(count: int = 96, *, seed: int = 0) -> Split:
    """Three Gaussian blobs in 6-D: linearly separable, so a tiny MLP learns it in a few epochs."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((3, 6)) * 3
    labels = np.arange(count) % 3
    inputs = centers[labels] + rng.standard_normal((count, 6))
    return Split(inputs=inputs.astype(np.float32), labels=labels.astype(np.int64))


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3)).eval()


def _step(**fields) -> FinetuneStep:
    return FinetuneStep(**({"kind": "finetune", "epochs": 4, "lr": 0.01} | fields))


def _run(module: nn.Module, split: Split, step: FinetuneStep, *, seed: int = 0, teacher: nn.Module | None = None):
    return finetune(module, train=split, step=step, batch_size=16, device="cpu", seed=seed, teacher=teacher)


def _mean_kl(student: nn.Module, teacher: nn.Module, split: Split) -> float:
    inputs = torch.from_numpy(split.inputs)
    with torch.no_grad():
        return soft_target_loss(student(inputs), teacher(inputs), temperature=1.0).item()


def test_loss_decreases_and_the_model_learns():
    split, module = _blobs(), _mlp()
    losses = _run(module, split, _step(epochs=5))
    assert len(losses) == 5 and losses[-1] < losses[0] * 0.5
    assert not module.training  # left in eval mode
    with torch.no_grad():
        predictions = module(torch.from_numpy(split.inputs)).argmax(dim=1).numpy()
    assert (predictions == split.labels).mean() > 0.9


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_same_seed_gives_identical_weights(optimizer):
    split = _blobs()
    first, second, other = _mlp(), _mlp(), _mlp()
    step = _step(epochs=2, optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 0.01)
    assert _run(first, split, step, seed=3) == _run(second, split, step, seed=3)
    _run(other, split, step, seed=4)
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name])
    assert not torch.equal(first[0].weight, other[0].weight)  # another seed shuffles (and drops out) differently


def test_zero_epochs_changes_nothing():
    module = _mlp()
    before = {name: tensor.clone() for name, tensor in module.state_dict().items()}
    assert _run(module, _blobs(), _step(epochs=0)) == []
    assert all(torch.equal(tensor, before[name]) for name, tensor in module.state_dict().items())


def test_distillation_with_alpha_one_moves_the_student_toward_the_teacher():
    split = _blobs()
    teacher = _mlp(seed=1)
    _run(teacher, split, _step(epochs=4))
    student = _mlp(seed=2)
    distance_before = _mean_kl(student, teacher, split)
    step = _step(epochs=4, distill=DistillSpec(alpha=1.0, temperature=2.0))
    _run(student, split, step, teacher=teacher)
    assert _mean_kl(student, teacher, split) < distance_before * 0.5
    assert not teacher.training


def test_distillation_loss_blends_hard_and_soft_terms():
    torch.manual_seed(0)
    student, teacher, labels = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    hard = F.cross_entropy(student, labels)
    assert torch.allclose(distillation_loss(student, teacher, labels, alpha=0.0, temperature=4.0), hard)
    assert distillation_loss(teacher, teacher, labels, alpha=1.0, temperature=4.0).abs() < 1e-6  # student == teacher
    # KL(p_teacher || p_student) by hand, times T^2
    temperature = 3.0
    p_teacher = F.softmax(teacher / temperature, dim=1)
    kl = (p_teacher * (p_teacher.log() - F.log_softmax(student / temperature, dim=1))).sum(dim=1).mean()
    blended = distillation_loss(student, teacher, labels, alpha=0.25, temperature=temperature)
    assert torch.allclose(blended, 0.75 * hard + 0.25 * temperature**2 * kl, atol=1e-6)


def test_optimizer_and_schedules_follow_the_step():
    module = _mlp()
    sgd = make_optimizer(module.parameters(), _step(optimizer="sgd", lr=0.1, momentum=0.5, weight_decay=0.01))
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["momentum"] == 0.5 and sgd.defaults["weight_decay"] == 0.01
    assert isinstance(make_optimizer(module.parameters(), _step(optimizer="adamw")), torch.optim.AdamW)

    step_schedule = _step(epochs=4, lr=0.1, schedule="step", step_size=2, gamma=0.5)
    optimizer = make_optimizer(module.parameters(), step_schedule)
    scheduler = make_scheduler(optimizer, step_schedule, batches_per_epoch=3)
    rates = []
    for _ in range(4 * 3):  # per batch, as the loop steps it
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0::3] == pytest.approx([0.1, 0.1, 0.05, 0.05])  # halved after every 2 epochs

    cosine = _step(epochs=2, lr=0.1, schedule="cosine")
    optimizer = make_optimizer(module.parameters(), cosine)
    scheduler = make_scheduler(optimizer, cosine, batches_per_epoch=5)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # annealed to 0 over all batches
    assert make_scheduler(optimizer, _step(schedule="none"), batches_per_epoch=5) is None


def test_progress_bar_writes_nothing_to_stdout(capsys):
    losses = finetune(_mlp(), train=_blobs(count=32), step=_step(epochs=1), batch_size=16, device="cpu", seed=0,
                      progress=True)
    assert len(losses) == 1 and capsys.readouterr().out == ""  # the bar goes to stderr


def test_diverging_loss_and_frozen_models_are_input_errors():
    with pytest.raises(InputError, match="lower finetune.lr"):
        _run(_mlp(), _blobs(), _step(epochs=1, optimizer="sgd", lr=1e30))
    frozen = _mlp().requires_grad_(False)
    with pytest.raises(InputError, match="no trainable parameters"):
        _run(frozen, _blobs(), _step())

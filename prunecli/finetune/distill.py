"""Knowledge distillation loss (Hinton et al., 2015): the student matches the teacher's softened outputs.

    loss = (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(p_teacher || p_student)

with ``p = softmax(logits / T)``. The ``T^2`` keeps the soft term's gradients on the same scale
as the hard term's when T changes. ``alpha = 0`` is plain cross-entropy; ``alpha = 1`` ignores
the labels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """Mean over the batch of the blended hard-label and soft-teacher loss; logits (B, C), labels (B,)."""
    hard = F.cross_entropy(student_logits, labels)
    soft = soft_target_loss(student_logits, teacher_logits, temperature=temperature)
    return (1.0 - alpha) * hard + alpha * soft


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch."""
    student_log_probs = F.log_softmax(student_logits / temperature, dim=1)
    teacher_log_probs = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True)
    return kl * temperature**2

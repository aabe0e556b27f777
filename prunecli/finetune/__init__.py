"""Fine-tuning after pruning: the training loop (``loop``), optimizers and schedules (``optim``)
and the distillation loss (``distill``). Importing this package imports torch.
"""

from prunecli.finetune.loop import TrainingHooks, finetune

__all__ = ["TrainingHooks", "finetune"]

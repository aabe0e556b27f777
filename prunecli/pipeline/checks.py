"""Checks that run before any weights load: capabilities, required data, devices."""

from __future__ import annotations

from pathlib import Path

from prunecli.config.schema import Pipeline
from prunecli.errors import InputError

_TORCH_ONLY = {"score", "select", "prune", "finetune"}


def check_before_work(pipeline: Pipeline, *, base_dir: Path, device: str) -> None:
    """Refuse, with the fix, a pipeline that cannot run on this model, data or machine."""
    kinds = [step.kind for step in pipeline.steps]
    if pipeline.model.path is None:
        raise InputError("model.path is missing: set it in the pipeline or pass --model PATH")
    is_onnx = pipeline.model.format == "onnx" or (
        pipeline.model.format == "auto" and Path(pipeline.model.path).suffix.lower() == ".onnx"
    )
    blocked = sorted(_TORCH_ONLY.intersection(kinds))
    if is_onnx and blocked:
        raise InputError(
            f"steps {', '.join(blocked)} need a PyTorch model; native ONNX pruning is not supported yet: "
            "pass the PyTorch checkpoint (state_dict + model.arch) or keep only 'evaluate' steps"
        )
    has_train = pipeline.data.format == "digits" or pipeline.data.train is not None
    has_eval = pipeline.data.format == "digits" or pipeline.data.eval is not None
    if "finetune" in kinds and not has_train:
        raise InputError("a finetune step needs training data: set data.train")
    if pipeline.gates.max_accuracy_drop is not None and not has_eval:
        raise InputError("gates.max_accuracy_drop needs eval data: set data.eval")
    if device == "cuda":
        _check_cuda(pipeline)


def _check_cuda(pipeline: Pipeline) -> None:
    import torch

    if not torch.cuda.is_available():
        raise InputError("device cuda asked but no CUDA device is available; use --device cpu")
    if "onnxruntime" in pipeline.latency.backends:
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise InputError(
                "device cuda asked but ONNX Runtime has no CUDAExecutionProvider; install onnxruntime-gpu, "
                "or measure torch only with --set 'latency.backends=[torch]'"
            )

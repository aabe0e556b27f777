"""The one pre-run check that ``validate`` and ``run`` share: everything short of running the model.

``check_pipeline`` needs no file contents: capabilities per model format, the data splits the
steps need, devices, files that must exist. ``prepare`` then reads the model and the data (the
arch is imported and called, weights load; nothing runs) and checks what needs them: every
``select.ignore`` entry names modules of the model, ``select.min_channels`` leaves something to
prune, and the data fits the model's input shape::

    check_pipeline(pipeline, base_dir=folder)
    prepared = prepare(pipeline, base_dir=folder, trust_pickle=False)   # Prepared(loaded, data)
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prunecli.config.loading import check_referenced_files
from prunecli.config.schema import Pipeline, PruneBlocksStep, SelectStep
from prunecli.distributed import check_global_batch
from prunecli.errors import InputError

if TYPE_CHECKING:
    import torch

    from prunecli.data.dataset import DataSet
    from prunecli.model_io import LoadedModel


@dataclass(frozen=True)
class Prepared:
    """The model and data a checked pipeline names, read and checked against each other."""

    loaded: LoadedModel
    data: DataSet


def check_pipeline(pipeline: Pipeline, *, base_dir: Path) -> None:
    """Refuse, with the fix, a pipeline that cannot run on this model format, data or machine."""
    if pipeline.model.path is None:
        raise InputError("model.path is missing: set it in the pipeline or pass --model PATH")
    check_referenced_files(pipeline, base_dir=base_dir)
    kinds = [step.kind for step in pipeline.all_steps]  # inside repeat blocks too
    if _is_onnx(pipeline):  # score (static criteria), select, prune and evaluate run on the ONNX graph
        from prunecli.onnx_graph.pipeline import check_onnx_pipeline

        check_onnx_pipeline(pipeline)
    has_train = pipeline.data.format == "digits" or pipeline.data.train is not None
    has_eval = pipeline.data.format == "digits" or pipeline.data.eval is not None
    static = any(step.kind == "quantize" and step.mode == "static" for step in pipeline.steps)
    if static and not (has_train or has_eval):
        raise InputError("quantize mode: static calibrates on data: set data.train or data.eval, or use mode: dynamic")
    if "finetune" in kinds and not has_train:
        raise InputError("a finetune step needs training data: set data.train")
    if "reconstruct" in kinds and not (has_train or has_eval):
        raise InputError("a reconstruct step refits layers on calibration data: set data.train or data.eval")
    if "reconstruct" in kinds and "sparsify" in kinds[: kinds.index("reconstruct")]:
        raise InputError("a reconstruct step after sparsify would refill the zeroed weights; put it before sparsify")
    _check_training_steps(pipeline, has_train=has_train)
    if pipeline.gates.max_accuracy_drop is not None and not has_eval:
        raise InputError("gates.max_accuracy_drop needs eval data: set data.eval")
    if pipeline.device == "cuda":
        _check_cuda(pipeline)
    movement = any(getattr(step, "method", "") == "movement" for step in pipeline.all_steps)
    if movement or {"finetune", "regularize"} & set(kinds):
        check_global_batch(pipeline.data.batch_size)  # under torchrun: the global batch must split over the ranks


def prepare(pipeline: Pipeline, *, base_dir: Path, trust_pickle: bool) -> Prepared:
    """Load the model and data of a checked pipeline and check them against each other and the steps."""
    from prunecli.data import load_data
    from prunecli.data.checks import check_against_model
    from prunecli.model_io import load_model

    loaded = load_model(pipeline.model, base_dir=base_dir, trust_pickle=trust_pickle)
    if loaded.module is not None:
        for where, step in pipeline.steps_with_paths():
            if isinstance(step, SelectStep):
                _check_select(step, where=where, module=loaded.module)
            if isinstance(step, PruneBlocksStep):
                _check_globs(step.ignore, where=f"{where}.ignore", module=loaded.module)
    elif loaded.onnx_path is not None:
        _check_onnx_globs(pipeline, onnx_path=loaded.onnx_path, input_shape=loaded.input_shape)
        from prunecli.onnx_torch.stage import check_onnx_executable

        check_onnx_executable(pipeline, onnx_path=loaded.onnx_path)  # ops of finetune/data-driven criteria
    data = load_data(pipeline.data, base_dir=base_dir)
    return Prepared(loaded=loaded, data=check_against_model(data, input_shape=loaded.input_shape, num_outputs=None))


def _check_select(step: SelectStep, *, where: str, module: torch.nn.Module) -> None:
    for key, patterns in (("ignore", step.ignore), ("overrides", list(step.overrides))):
        _check_globs(patterns, where=f"{where}.{key}", module=module)
    widest = max((p.shape[0] for p in module.parameters() if p.dim() >= 2), default=0)
    if step.ratio != 0 and 0 < widest <= step.min_channels:  # threshold and target modes (ratio None) prune too
        raise InputError(
            f"{where}.min_channels is {step.min_channels} but the widest layer has {widest} channels, "
            "so nothing would be pruned; lower min_channels"
        )


def _check_onnx_globs(pipeline: Pipeline, *, onnx_path: Path, input_shape: tuple[int, ...]) -> None:
    """Refuse ``select`` globs that match no module producing a group of the ONNX graph (names as in inspect)."""
    selects = [(where, step) for where, step in pipeline.steps_with_paths() if isinstance(step, SelectStep)]
    if not any(step.ignore or step.overrides for _, step in selects):
        return
    import onnx

    from prunecli.onnx_graph.build import build_onnx_graph, group_modules

    names = group_modules(build_onnx_graph(onnx.load(str(onnx_path)), input_shape=input_shape))
    for where, step in selects:
        for key, patterns in (("ignore", step.ignore), ("overrides", list(step.overrides))):
            _match_globs(patterns, names, where=f"{where}.{key}")


def _check_globs(patterns: list[str], *, where: str, module: torch.nn.Module) -> None:
    """Refuse a module glob that matches no module of ``module``, suggesting a close name."""
    _match_globs(patterns, [name for name, _ in module.named_modules() if name], where=where)


def _match_globs(patterns: list[str], names: list[str], *, where: str) -> None:
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            close = difflib.get_close_matches(pattern, names, n=1)
            hint = f"did you mean '{close[0]}'?" if close else f"names look like '{names[0]}'" if names else ""
            raise InputError(f"{where}: '{pattern}' matches no module of the model; {hint}")


def _check_training_steps(pipeline: Pipeline, *, has_train: bool) -> None:
    """Refuse regularize and movement-sparsify steps (they train) without training data."""
    for where, step in pipeline.steps_with_paths():
        name = "regularize" if step.kind == "regularize" else None
        if step.kind == "sparsify" and step.method == "movement":
            name = "sparsify method: movement"
        if name and not has_train:
            raise InputError(f"{where}: a {name} step trains the model and needs training data: set data.train")


def _is_onnx(pipeline: Pipeline) -> bool:
    model = pipeline.model
    return model.format == "onnx" or (model.format == "auto" and Path(model.path).suffix.lower() == ".onnx")


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

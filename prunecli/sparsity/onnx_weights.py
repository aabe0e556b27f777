"""The sparsify step on an ONNX input: masks on the weight initializers of Conv / Gemm / MatMul nodes.

The same masks as on torch (``step_masks``: magnitude ratio or threshold, local or global, N:M),
computed on each weight viewed as ``(outputs, inputs...)``: a MatMul's or ``transB=0`` Gemm's
``(inputs, outputs)`` initializer is masked through its transpose, so N:M runs along the inputs.
``dynamic: true`` recomputes the masks from the current initializers each round
(``sparsity.dynamic``); ``method: movement`` first trains the graph in torch (``onnx_torch``,
parameters named as the initializers) accumulating the scores (``sparsity.movement``).
The masked graph becomes the current model; the masks, by initializer name, go to
``state.sparsity`` like torch's by parameter name. The report counts the zeros of the current
(written) file::

    sparsify_onnx(state, SparsifyStep(kind="sparsify", ratio=0.5))
    onnx_sparsity_report(state.sparsity, current=path, original=input_path)["overall"]   # 0.5
"""

from __future__ import annotations

import fnmatch
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx
import torch
from onnx import numpy_helper

from prunecli.errors import InputError
from prunecli.onnx_graph.build import module_path
from prunecli.onnx_graph.context import attribute
from prunecli.sparsity.layers import step_masks
from prunecli.sparsity.report import sparsity_entry
from prunecli.sparsity.state import SparsityState

if TYPE_CHECKING:
    from prunecli.config.schema import SparsifyStep
    from prunecli.pipeline.state import RunState

_OPS = ("Conv", "Gemm", "MatMul")


def sparsify_onnx(state: RunState, step: SparsifyStep) -> None:
    """Zero the step's weights in the current ONNX graph, record the masks, make the masked graph current."""
    from prunecli.onnx_graph.pipeline import current_model, replace_current_model

    model = current_model(state)
    views = weight_views(model, ignore=step.ignore, include_output=step.include_output)
    if not views:
        raise InputError("sparsify found no conv or linear weights to zero; shorten ignore or set include_output: true")
    sparsity = state.sparsity or SparsityState()
    skipped: dict[str, str] = {}
    if step.method == "movement":  # trains the graph in torch first; the trained graph becomes current
        masks = _movement_masks(state, step, names=list(views))
        model = current_model(state)
    elif step.dynamic:
        masks = dynamic_onnx_masks(sparsity, model, step, names=list(views))
    else:
        masks, skipped = _magnitude_masks(model, step, views)
    sparsity.add(masks)  # in the initializers' stored orientation
    sparsity.skipped.update(skipped)
    sparsity.steps.append(step.model_dump(exclude_none=True))
    for tensor in model.graph.initializer:
        if tensor.name in sparsity.masks:
            array = numpy_helper.to_array(tensor) * sparsity.masks[tensor.name].numpy()  # bool mask: dtype kept
            tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    state.sparsity = sparsity
    replace_current_model(state, model)


def _magnitude_masks(
    model: onnx.ModelProto, step: SparsifyStep, views: dict[str, bool]
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``step_masks`` on each weight viewed as ``(outputs, inputs...)``, returned in stored orientation."""
    arrays = {name: numpy_helper.to_array(tensor) for name, tensor in _initializers(model).items() if name in views}
    weights = {name: _oriented(torch.from_numpy(arrays[name].copy()), views[name]) for name in views}
    pattern = tuple(int(part) for part in step.pattern.split(":")) if step.pattern else None
    masks, skipped = step_masks(weights, ratio=step.ratio, threshold=step.threshold, pattern=pattern, scope=step.scope)
    return {name: _oriented(mask, views[name]) for name, mask in masks.items()}, skipped


def dynamic_onnx_masks(
    sparsity: SparsityState, model: onnx.ModelProto, step: SparsifyStep, *, names: list[str]
) -> dict[str, torch.Tensor]:
    """``recompute_masks`` on the stored initializers (magnitude masks are elementwise: orientation is moot);
    revived weights get their remembered values back in ``model``."""
    from prunecli.sparsity.dynamic import recompute_masks

    initializers = _initializers(model)
    weights = {name: torch.from_numpy(numpy_helper.to_array(initializers[name]).copy()) for name in names}
    masks = recompute_masks(sparsity, weights, ratio=step.ratio, scope=step.scope)
    for name, weight in weights.items():
        initializers[name].CopyFrom(numpy_helper.from_array(weight.numpy(), name))
    return masks


def _movement_masks(state: RunState, step: SparsifyStep, *, names: list[str]) -> dict[str, torch.Tensor]:
    """Movement keep-masks of the initializers ``names``, training the current graph as an ``OnnxModule``."""
    from prunecli.onnx_torch.stage import train_onnx
    from prunecli.sparsity.movement import step_movement_masks

    def train(module: torch.nn.Module, _teacher: object) -> dict[str, torch.Tensor]:
        weights = {name: tensor for name, tensor in module.state_tensors() if name in names}
        return step_movement_masks(state, step, weights, module=module)

    return train_onnx(state, purpose="sparsify method: movement", train=train, distill=False)


def weight_views(
    model: onnx.ModelProto, *, ignore: Sequence[str] = (), include_output: bool = False
) -> dict[str, bool]:
    """Initializer name -> whether it is stored transposed, for the Conv / Gemm / MatMul weights a step considers.

    In graph order; the last such node (the output layer) is left out unless ``include_output``;
    ``ignore`` globs match the node's module path (``features.fc1``) or the initializer name.
    """
    initializers = _initializers(model)
    found = []
    for node in model.graph.node:
        weight = node.input[1] if node.op_type in _OPS and len(node.input) > 1 else ""
        transposed = node.op_type == "MatMul" or (node.op_type == "Gemm" and not attribute(node, "transB", 0))
        rank = len(initializers[weight].dims) if weight in initializers else 0
        if rank == 2 or (rank > 2 and not transposed):  # a batched MatMul weight has no (outputs, inputs) view
            found.append((module_path(node.name) if node.name else weight, weight, transposed))
    if found and not include_output:
        found = found[:-1]
    return {weight: transposed for path, weight, transposed in found if not _ignored(path, weight, ignore)}


def onnx_sparsity_report(state: SparsityState | None, *, current: Path, original: Path) -> dict[str, Any] | None:
    """The report's ``sparsity`` entry counted on the ONNX file ``current`` (as torch's, sizes of the files)."""
    if state is None:
        return None
    arrays = {name: numpy_helper.to_array(t) for name, t in _initializers(onnx.load(str(current))).items()}
    return sparsity_entry(state, arrays, sizes={"original": _stored_sizes(original), "final": _stored_sizes(current)})


def _stored_sizes(path: Path) -> dict[str, int]:
    """``{"dense": bytes of the ONNX file, "compressed": the same bytes zlib-compressed}``."""
    data = Path(path).read_bytes()
    return {"dense": len(data), "compressed": len(zlib.compress(data, 6))}


def _oriented(tensor: torch.Tensor, transposed: bool) -> torch.Tensor:
    """A stored 2-D ``(inputs, outputs)`` weight as ``(outputs, inputs)`` and back (the same swap both ways)."""
    return tensor.T.contiguous() if transposed else tensor


def _ignored(path: str, weight: str, patterns: Sequence[str]) -> bool:
    return any(
        fnmatch.fnmatchcase(path, p) or path.startswith(p + ".") or fnmatch.fnmatchcase(weight, p) for p in patterns
    )


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {tensor.name: tensor for tensor in model.graph.initializer}

"""Save a pruned model in its input's format, plus ONNX, each file written atomically.

``save_model`` writes into ``out_dir``:

- state_dict input -> ``model.pt`` (weights) + ``model.plan.json`` (arch, kwargs, input shape,
  kept channels: what ``load_model`` needs to rebuild the slimmer module);
- pickle input -> ``model.pt``, a pickled module (the user trusted the input pickle);
- ``.pt2`` input -> ``model.pt2`` (``torch.export``, batch dimension dynamic);
- always ``model.onnx`` (weights embedded, batch dimension dynamic).

An ONNX input, pruned by ONNX surgery, is written by ``save_onnx_model``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from prunecli.errors import InternalError, UnsupportedModelError
from prunecli.model_io.atomic import atomic_path, atomic_write_text
from prunecli.model_io.loaded import LoadedModel
from prunecli.model_io.plan_file import (
    KeepMapping,
    SavedPlan,
    compose_keep,
    merge_attributes,
    plan_path_for,
    plan_to_json,
)

if TYPE_CHECKING:
    import onnx
    import torch

ONNX_OPSET = 17


def save_model(
    loaded: LoadedModel,
    module: torch.nn.Module,
    *,
    out_dir: Path,
    example_input: torch.Tensor,
    keep: KeepMapping | None,
    attributes: Mapping[str, Mapping[str, int]] | None = None,
) -> dict[str, Path]:
    """Write ``module`` (pruned from ``loaded``) into ``out_dir``; returns {"model", "onnx", ...} paths.

    ``keep`` is the channel plan the surgery applied (tensor name -> dim -> kept indices, relative
    to ``loaded.module``); it goes into plan.json for state_dict inputs.
    """
    import torch

    if loaded.format == "onnx":
        raise InternalError("save_model got an ONNX model; ONNX inputs are written by save_onnx_model")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    export_onnx(module, example_input, onnx_path)  # first: the export most likely to refuse a model
    if loaded.format == "state_dict":
        written = _save_state_dict(loaded, module, out_dir=out_dir, keep=keep or {}, attributes=attributes or {})
    elif loaded.format == "pickle":
        written = {"model": out_dir / "model.pt"}
        with atomic_path(written["model"]) as temporary:
            torch.save(module, temporary)
    else:
        written = {"model": out_dir / "model.pt2"}
        program = _export_program(module, example_input)
        with atomic_path(written["model"]) as temporary:
            torch.export.save(program, temporary)
    return {**written, "onnx": onnx_path}


def save_onnx_model(model: onnx.ModelProto, *, out_dir: Path) -> dict[str, Path]:
    """Write an ONNX model (the result of ONNX surgery) as ``out_dir/model.onnx``."""
    import onnx

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.onnx"
    with atomic_path(path) as temporary:
        onnx.save_model(model, str(temporary))
    return {"model": path, "onnx": path}


def export_onnx(module: torch.nn.Module, example_input: torch.Tensor, path: Path) -> None:
    """Export ``module`` to ONNX at ``path`` (opset 17, input "input", output "output", dynamic batch)."""
    import torch

    with atomic_path(Path(path)) as temporary, warnings.catch_warnings():
        # The TorchScript exporter is deprecated but fast and needs no onnxscript; silence only its notices.
        for notice in ("You are using the legacy TorchScript-based", "The feature will be removed"):
            warnings.filterwarnings("ignore", message=notice, category=DeprecationWarning)
        # Input guards of a module loaded from a .pt2 are traced too; they are not the model's own code.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"torch\._export\.")
        try:
            torch.onnx.export(
                module,
                (example_input,),
                str(temporary),
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )
        except Exception as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UnsupportedModelError(
                f"cannot export the model to ONNX: {reason}; the model uses an op the exporter lacks"
            ) from exc


def _save_state_dict(
    loaded: LoadedModel,
    module: torch.nn.Module,
    *,
    out_dir: Path,
    keep: KeepMapping,
    attributes: Mapping[str, Mapping[str, int]],
) -> dict[str, Path]:
    import torch

    model_path, plan_path = out_dir / "model.pt", plan_path_for(out_dir / "model.pt")
    with atomic_path(model_path) as temporary:
        torch.save(_compact(module.state_dict()), temporary)
    plan = SavedPlan(
        arch=str(loaded.arch),
        kwargs=loaded.arch_kwargs,
        input_shape=loaded.input_shape,
        keep=compose_keep(loaded.keep, keep),
        attributes=merge_attributes(loaded.attributes, attributes),
    )
    atomic_write_text(plan_path, plan_to_json(plan))
    return {"model": model_path, "plan": plan_path}


def _compact(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copy tensors that are views into larger storages: torch.save writes whole storages."""
    return {
        name: tensor.clone() if tensor.untyped_storage().nbytes() > tensor.numel() * tensor.element_size() else tensor
        for name, tensor in state.items()
    }


def _export_program(module: torch.nn.Module, example_input: torch.Tensor) -> torch.export.ExportedProgram:
    """Export with a dynamic batch dimension when the model allows it, else with ``example_input``'s shape."""
    import torch

    sample = example_input[:1]
    pair = sample.expand(2, *sample.shape[1:]).contiguous()  # a batch of 1 would be specialised to size 1
    try:
        return torch.export.export(module, (pair,), dynamic_shapes=({0: torch.export.Dim.AUTO},), strict=False)
    except Exception:  # e.g. a graph loaded from a .pt2 that was exported for batch 1 only
        return torch.export.export(module, (example_input,), strict=False)

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

import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from prunecli.capture import captured_output
from prunecli.errors import InternalError, OnnxExportError
from prunecli.model_io.arch import portable_arch
from prunecli.model_io.atomic import atomic_path, atomic_write_text
from prunecli.model_io.loaded import LoadedModel
from prunecli.model_io.onnx_external import write_onnx
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
DYNAMO_ONNX_OPSET = 18


def save_model(
    loaded: LoadedModel,
    module: torch.nn.Module,
    *,
    out_dir: Path,
    example_input: torch.Tensor,
    keep: KeepMapping | None,
    attributes: Mapping[str, Mapping[str, int]] | None = None,
    modules: Mapping[str, str] | None = None,
    onnx: bool = True,
) -> dict[str, Path]:
    """Write ``module`` (pruned from ``loaded``) into ``out_dir``; returns {"model", "onnx", ...} paths.

    ``keep`` is the channel plan the surgery applied (tensor name -> dim -> kept indices, relative
    to ``loaded.module``); it goes into plan.json for state_dict inputs, with ``modules`` (the modules
    ``prune_blocks`` replaced, path -> "identity" | "zero"). ``onnx=False`` leaves
    ``model.onnx`` to the caller (the runner exports it on a best-effort basis).
    """
    import torch

    if loaded.format == "onnx":
        raise InternalError("save_model got an ONNX model; ONNX inputs are written by save_onnx_model")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_paths = {"onnx": export_onnx(module, example_input, out_dir / "model.onnx")} if onnx else {}
    if loaded.format == "state_dict":
        written = _save_state_dict(
            loaded, module, out_dir=out_dir, keep=keep or {}, attributes=attributes or {}, modules=modules or {}
        )
    elif loaded.format == "pickle":
        written = {"model": out_dir / "model.pt"}
        with atomic_path(written["model"]) as temporary:
            torch.save(module, temporary)
    else:
        written = {"model": out_dir / "model.pt2"}
        program = _export_program(module, example_input)
        with atomic_path(written["model"]) as temporary:
            torch.export.save(program, temporary)
    return {**written, **onnx_paths}


def save_onnx_model(model: onnx.ModelProto, *, out_dir: Path, external_data: bool = False) -> dict[str, Path]:
    """Write an ONNX model (the result of ONNX surgery) as ``out_dir/model.onnx``.

    With ``external_data`` (the input had it), or when the weights pass protobuf's 2 GB limit, they
    go to ``model.onnx.data`` beside it (key ``onnx_data``); see ``prunecli.model_io.onnx_external``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "model.onnx"
    data = [file for file in write_onnx(model, path, external_data=external_data) if file != path]
    return {"model": path, "onnx": path, **({"onnx_data": data[0]} if data else {})}


def export_onnx(module: torch.nn.Module, example_input: torch.Tensor, path: Path) -> Path:
    """Export ``module`` to ONNX at ``path`` (input "input", output "output", dynamic batch); returns ``path``.

    The TorchScript exporter (opset 17) goes first: it is fast and covers most models. What it
    cannot export (ops that need opset 18, arguments it mistypes) goes to the dynamo exporter
    (opset 18). When both fail, OnnxExportError names both reasons.
    """
    reasons, printed = [], []
    for name, exporter in (("TorchScript exporter", _export_torchscript), ("dynamo exporter", _export_dynamo)):
        try:
            with atomic_path(Path(path)) as temporary, warnings.catch_warnings(), captured_output() as captured:
                warnings.simplefilter("ignore")  # deprecation and tracer notices are not the user's business
                exporter(module, example_input, temporary)
            return Path(path)
        except Exception as exc:  # exporters raise anything; the next one may still succeed
            reasons.append(f"{name}: {_first_line(exc)}")
            printed.append(captured.text)
    error = OnnxExportError(f"cannot export the model to ONNX ({'; '.join(reasons)}); it uses an op no exporter has")
    if hasattr(error, "add_note"):  # Python >= 3.11: --debug shows the exporters' own dumps
        error.add_note("".join(printed))
    raise error


def _export_torchscript(module: torch.nn.Module, example_input: torch.Tensor, path: Path) -> None:
    import torch

    torch.onnx.export(
        module, (example_input,), str(path), dynamo=False, opset_version=ONNX_OPSET, input_names=["input"],
        output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
    )  # fmt: skip


def _export_dynamo(module: torch.nn.Module, example_input: torch.Tensor, path: Path) -> None:
    import torch

    torch.onnx.export(
        module, (example_input,), str(path), dynamo=True, opset_version=DYNAMO_ONNX_OPSET, input_names=["input"],
        output_names=["output"], dynamic_shapes=({0: torch.export.Dim.AUTO},), external_data=False, verbose=False,
    )  # fmt: skip


def _first_line(exc: BaseException) -> str:
    """The first line of the innermost cause (the dynamo exporter wraps the telling error twice), plain text."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return re.sub(r"\x1b\[[0-9;]*m", "", line)[:200]


def _save_state_dict(
    loaded: LoadedModel,
    module: torch.nn.Module,
    *,
    out_dir: Path,
    keep: KeepMapping,
    attributes: Mapping[str, Mapping[str, int]],
    modules: Mapping[str, str],
) -> dict[str, Path]:
    import torch

    model_path, plan_path = out_dir / "model.pt", plan_path_for(out_dir / "model.pt")
    with atomic_path(model_path) as temporary:
        torch.save(_compact(module.state_dict()), temporary)
    arch, arch_files = portable_arch(str(loaded.arch), out_dir=out_dir)  # an arch file is copied beside the plan
    plan = SavedPlan(
        arch=arch,
        kwargs=loaded.arch_kwargs,
        input_shape=loaded.input_shape,
        keep=compose_keep(loaded.keep, keep),
        attributes=merge_attributes(loaded.attributes, attributes),
        modules={**loaded.modules, **modules},
    )
    atomic_write_text(plan_path, plan_to_json(plan))
    return {"model": model_path, "plan": plan_path, **arch_files}


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
        with captured_output():  # a failed export prints its partial graph; the fallback below decides
            return torch.export.export(module, (pair,), dynamic_shapes=({0: torch.export.Dim.AUTO},), strict=False)
    except Exception:  # e.g. a graph loaded from a .pt2 that was exported for batch 1 only
        return torch.export.export(module, (example_input,), strict=False)

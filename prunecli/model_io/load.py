"""Load a model file into a ``LoadedModel``: PyTorch state_dict, trusted pickle, ``.pt2`` or ONNX.

With ``model.format: auto`` the file decides: ``.onnx`` -> onnx, ``.pt2`` -> export;
``.pt``/``.pth``/``.bin`` -> state_dict when an arch is known (``model.arch`` or a sibling
plan.json), else whatever ``torch.load(weights_only=True)`` finds. A pickled module is refused
unless the user passed ``--trust-pickle``: unpickling runs code from the file.

``load_saved`` (``prunecli.load``) reads back what ``prunecli run`` wrote: an output folder or
one of its model files, with no pipeline needed. A plan's arch file path is resolved against the
plan file's folder, so a moved output folder still loads.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunecli.errors import InputError
from prunecli.model_io.arch import build_module, resolve_arch
from prunecli.model_io.loaded import LoadedFormat, LoadedModel
from prunecli.model_io.onnx_file import check_onnx_file, onnx_input_shape
from prunecli.model_io.plan_file import SavedPlan, plan_path_for, read_plan

if TYPE_CHECKING:
    import onnx
    import torch

    from prunecli.config.schema import ModelSpec

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
SAVED_NAMES = ("model.pt", "model.pt2", "model.onnx")  # what prunecli run writes, in the order load_saved picks


def load_model(spec: ModelSpec, *, base_dir: Path, trust_pickle: bool) -> LoadedModel:
    """Load the model ``spec`` names (relative paths against ``base_dir``); torch modules come in eval mode."""
    path = _model_path(spec, base_dir=base_dir)
    model_format = spec.format if spec.format != "auto" else _detect_format(path, has_arch=spec.arch is not None)
    if model_format == "onnx":
        check_onnx_file(path)
        shape = tuple(spec.input_shape) if spec.input_shape else onnx_input_shape(path)
        return LoadedModel(
            format="onnx", source=path, module=None, onnx_path=path, arch=None, arch_kwargs={}, input_shape=shape
        )
    if model_format == "export":
        module, program = _exported_module(path)
        shape = _required_shape(spec.input_shape or _exported_input_shape(program), "export")
        return LoadedModel(
            format="export", source=path, module=module, onnx_path=None, arch=None, arch_kwargs={}, input_shape=shape
        )
    if model_format == "pickle":
        module = _unpickled_module(path, trust_pickle=trust_pickle)
        shape = _required_shape(spec.input_shape, "pickle")
        return LoadedModel(
            format="pickle", source=path, module=module, onnx_path=None, arch=None, arch_kwargs={}, input_shape=shape
        )
    return _load_state_dict(path, spec=spec, base_dir=base_dir)


def load_saved(path: Path, *, trust_pickle: bool) -> torch.nn.Module | onnx.ModelProto:
    """The model in an output folder of ``prunecli run``, or in a model file given directly.

    A folder's ``model.pt`` is read first (state_dict + ``model.plan.json``, or a pickled module
    when ``trust_pickle``), then ``model.pt2``; a folder holding only ``model.onnx`` (an ONNX
    input's output) gives an ``onnx.ModelProto``, as does a ``.onnx`` file. Torch modules come
    back in eval mode.
    """
    model_path = _saved_model_file(Path(path))
    model_format = _detect_format(model_path, has_arch=False)
    if model_format == "onnx":
        import onnx

        check_onnx_file(model_path)
        return onnx.load(str(model_path))
    if model_format == "export":
        return _exported_module(model_path)[0]
    if model_format == "pickle":
        return _unpickled_module(model_path, trust_pickle=trust_pickle)
    plan_path = plan_path_for(model_path)
    if not plan_path.is_file():
        raise InputError(
            f"{model_path} holds weights only and no {plan_path.name} is beside it; keep the plan file "
            "prunecli wrote with it, or load the weights into your model with load_state_dict"
        )
    plan = read_plan(plan_path)
    state = _state_dict_from(_read_weights_only(model_path), path=model_path)
    arch = resolve_arch(plan.arch, base_dir=plan_path.parent)
    return _rebuilt_module(state, arch=arch, kwargs=plan.kwargs, plan=plan, path=model_path)


def _saved_model_file(path: Path) -> Path:
    """The model file of an output folder, or ``path`` itself when it is a model file."""
    if path.is_dir():
        found = next((path / name for name in SAVED_NAMES if (path / name).is_file()), None)
        if found is None:
            raise InputError(
                f"{path} holds no {', '.join(SAVED_NAMES)}; pass an output folder of prunecli run or a model file"
            )
        return found.resolve()
    if not path.is_file():
        raise InputError(f"{path} does not exist; pass an output folder of prunecli run or a model file in it")
    if path.suffix.lower() not in (*TORCH_SUFFIXES, ".pt2", ".onnx"):
        raise InputError(f"{path.name} is not a model file; pass model.pt, model.pt2 or model.onnx, or their folder")
    return path.resolve()


def _model_path(spec: ModelSpec, *, base_dir: Path) -> Path:
    if spec.path is None:
        raise InputError("model.path is not set; set it in the pipeline or pass --model")
    path = spec.path if spec.path.is_absolute() else Path(base_dir) / spec.path
    if not path.is_file():
        raise InputError(f"model file not found: {path}; check model.path (relative paths start at {base_dir})")
    return path.resolve()


def _detect_format(path: Path, *, has_arch: bool) -> LoadedFormat:
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if suffix == ".pt2":
        return "export"
    if suffix not in TORCH_SUFFIXES:
        raise InputError(
            f"cannot tell the format of {path.name} from its suffix; "
            "set model.format to state_dict, pickle, export or onnx"
        )
    if has_arch or plan_path_for(path).is_file():
        return "state_dict"
    return "pickle" if _unsafe_globals(path) else "state_dict"


def _load_state_dict(path: Path, *, spec: ModelSpec, base_dir: Path) -> LoadedModel:
    """Weights into ``model.arch`` (against ``base_dir``) or else the sibling plan's arch (against its folder)."""
    plan_path = plan_path_for(path)
    plan = read_plan(plan_path) if plan_path.is_file() else None
    state = _state_dict_from(_read_weights_only(path), path=path)
    if spec.arch is not None:
        arch, kwargs = resolve_arch(spec.arch, base_dir=base_dir), spec.kwargs
    elif plan is not None:
        arch, kwargs = resolve_arch(plan.arch, base_dir=plan_path.parent), plan.kwargs
    else:
        raise InputError("model.arch is required to load a state_dict: set model.arch to 'module:Callable'")
    module = _rebuilt_module(state, arch=arch, kwargs=kwargs, plan=plan, path=path)
    shape = _required_shape(spec.input_shape or (plan.input_shape if plan else None), "state_dict")
    return LoadedModel(
        format="state_dict", source=path, module=module, onnx_path=None, arch=arch, arch_kwargs=dict(kwargs),
        input_shape=shape, keep=plan.keep if plan else {}, attributes=plan.attributes if plan else {},
        modules=plan.modules if plan else {},
    )  # fmt: skip


def _rebuilt_module(
    state: dict[str, torch.Tensor], *, arch: str, kwargs: dict[str, Any], plan: SavedPlan | None, path: Path
) -> torch.nn.Module:
    """Build ``arch`` (already resolved), replay ``plan``'s kept channels and replaced modules, load ``state``."""
    module = build_module(arch, kwargs, base_dir=path.parent)
    if plan is not None and (plan.keep or plan.attributes):
        from prunecli.surgery import apply_keep

        apply_keep(module, plan.keep, attributes=plan.attributes)
    if plan is not None and plan.modules:
        from prunecli.blocks.surgery import replace_modules

        replace_modules(module, plan.modules)
    _load_weights(module, state, path=path, arch=arch)
    return module.eval()


def _unpickled_module(path: Path, *, trust_pickle: bool) -> torch.nn.Module:
    """The module pickled in ``path``, in eval mode; refused unless ``trust_pickle``."""
    import torch

    if not trust_pickle:
        raise InputError(_pickle_refusal(path, _unsafe_globals(path)))
    try:
        module = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        reason = _short_reason(exc)
        raise InputError(f"cannot unpickle {path}: {reason}; the classes it holds must be importable") from exc
    if not isinstance(module, torch.nn.Module):
        raise InputError(f"{path} holds a {type(module).__name__}, not a torch.nn.Module; save the module itself")
    return module.eval()


def _exported_module(path: Path) -> tuple[torch.nn.Module, torch.export.ExportedProgram]:
    """The ``.pt2`` program in ``path`` as a module (eval mode, any batch size), and the program."""
    import torch

    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        reason = _short_reason(exc)
        raise InputError(f"cannot read exported program {path}: {reason}; save it with torch.export.save") from exc
    try:
        module = program.module(check_guards=False)  # guards as a pre-hook, not a _guards_fn node in the graph
    except TypeError:  # torch < 2.9 has no check_guards
        module = program.module()
    _allow_mode_switch(module)
    _drop_input_shape_check(module)
    return module.eval(), program


def _drop_input_shape_check(module: torch.nn.Module) -> None:
    """Let a program exported with a static batch size run on other batch sizes.

    Most graphs do not depend on the batch size (conv, linear, flatten(1)); one that does
    fails loudly on the first other batch, which the runner reports.
    """
    hooks = module._forward_pre_hooks
    for key in [k for k, hook in hooks.items() if getattr(hook, "__name__", "") == "_check_input_constraints_pre_hook"]:
        del hooks[key]


def _allow_mode_switch(module: torch.nn.Module) -> None:
    """Undo ``ExportedProgram.module()``'s ban on train()/eval().

    The graph is fixed in the mode it was exported in, so the restored methods only set the
    ``training`` flag; fine-tuning and ONNX export (which call them) then work.
    """
    for name in ("train", "eval"):
        if name in vars(module):
            delattr(module, name)


def _exported_input_shape(program: Any) -> tuple[int, ...] | None:
    names = program.graph_signature.user_inputs
    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    value = placeholders[names[0]].meta.get("val") if len(names) == 1 and names[0] in placeholders else None
    if value is None or not hasattr(value, "shape"):
        return None
    return tuple(size if isinstance(size, int) else 1 for size in value.shape)


def _required_shape(shape: Any, model_format: str) -> tuple[int, ...]:
    if not shape:
        raise InputError(
            f"model.input_shape is required for {model_format} models: "
            "set it to one input batch's shape, e.g. [1, 3, 224, 224]"
        )
    return tuple(int(size) for size in shape)


def _read_weights_only(path: Path) -> Any:
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        unsafe = _unsafe_globals(path)
        if unsafe or "Unsupported global" in str(exc):
            raise InputError(_pickle_refusal(path, unsafe)) from exc
        raise InputError(f"cannot read model file {path}: {_short_reason(exc)}; is it a PyTorch checkpoint?") from exc


def _unsafe_globals(path: Path) -> list[str]:
    """Classes and functions a (zip) checkpoint would import when unpickled; [] if none or unreadable."""
    import torch

    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:
        return []


def _pickle_refusal(path: Path, unsafe: list[str]) -> str:
    detail = f" ({unsafe[0]}{', ...' if len(unsafe) > 1 else ''})" if unsafe else ""
    return (
        f"{path} is a pickled module{detail}: unpickling runs code from the file; pass --trust-pickle "
        "(trust_pickle=True in Python) if you trust it, or save a state_dict and set model.arch"
    )


def _short_reason(exc: BaseException) -> str:
    """One line out of torch's multi-paragraph load errors."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0].split(". ")[0].rstrip(".") if lines else f"{type(exc).__name__} (file ended early?)"


def _state_dict_from(loaded: Any, *, path: Path) -> dict[str, torch.Tensor]:
    """The tensors in ``loaded``: a state_dict, or one under a checkpoint's ``state_dict``/``model`` key."""
    if not isinstance(loaded, Mapping):
        raise InputError(f"{path} holds a {type(loaded).__name__}, not a state_dict; save module.state_dict() to it")
    for candidate in (loaded, loaded.get("state_dict"), loaded.get("model")):
        if _is_tensor_dict(candidate):
            return dict(candidate)
    raise InputError(f"{path} holds a dict that is not a state_dict (names -> tensors); save module.state_dict() to it")


def _is_tensor_dict(candidate: Any) -> bool:
    import torch

    return (
        isinstance(candidate, Mapping)
        and len(candidate) > 0
        and all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in candidate.items())
    )


def _load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], *, path: Path, arch: str) -> None:
    expected = module.state_dict()
    problems = [
        _named("missing keys", [key for key in expected if key not in state]),
        _named("unexpected keys", [key for key in state if key not in expected]),
        _named(
            "shape mismatch",
            [
                f"{key} file {tuple(state[key].shape)} vs arch {tuple(value.shape)}"
                for key, value in expected.items()
                if key in state and state[key].shape != value.shape
            ],
        ),
    ]
    problems = [problem for problem in problems if problem]
    if problems:
        raise InputError(
            f"{path.name} does not fit model.arch '{arch}': {'; '.join(problems)}; check model.arch and model.kwargs"
        )
    module.load_state_dict(state)


def _named(label: str, items: list[str], *, shown: int = 5) -> str:
    if not items:
        return ""
    more = f" (+{len(items) - shown} more)" if len(items) > shown else ""
    return f"{label}: {', '.join(items[:shown])}{more}"

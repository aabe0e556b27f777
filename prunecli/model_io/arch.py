"""Architecture references: ``package.module:Callable`` or ``path/to/file.py:Callable``.

A state_dict holds only tensors; the arch is the code that builds the module they load into::

    resolve_arch("archs.py:DigitsCNN", base_dir=Path("/proj"))   # "/proj/archs.py:DigitsCNN"
    build_module("/proj/archs.py:DigitsCNN", {"width": 8}, base_dir=Path("/proj"))

File paths are relative to ``base_dir`` (the pipeline file's folder, or a plan file's folder
for the arch saved in it); the file is imported under a module name unique to its absolute path.
``portable_arch`` copies an arch file into an output folder, so the folder can be moved::

    portable_arch("/proj/archs.py:DigitsCNN", out_dir=Path("out"))
    # ("archs.py:DigitsCNN", {"arch": Path("out/archs.py")})
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from prunecli.errors import InputError
from prunecli.model_io.atomic import atomic_write_bytes

if TYPE_CHECKING:
    import torch


def resolve_arch(arch: str, *, base_dir: Path) -> str:
    """Return ``arch`` with a file path made absolute (importable module names are unchanged)."""
    location, name = arch.rsplit(":", 1)
    if not _is_file_reference(location):
        return arch
    return f"{_resolve_file(location, base_dir=base_dir)}:{name}"


def portable_arch(arch: str, *, out_dir: Path) -> tuple[str, dict[str, Path]]:
    """The reference to ``arch`` to save in ``out_dir``, and the files written for it.

    A file reference (made absolute by ``resolve_arch``) is copied into ``out_dir`` atomically and
    named relative to it: the plan saved there replays wherever the folder goes. An importable
    name (``timm:create_model``, ``pkg.mod:Net``) is returned as it is, and nothing is written.
    """
    location, name = arch.rsplit(":", 1)
    if not _is_file_reference(location):
        return arch, {}
    source = Path(location)
    try:
        code = source.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot copy the model.arch file {source} into the outputs: {exc}; restore it") from exc
    copy = Path(out_dir) / source.name
    atomic_write_bytes(copy, code)
    return f"{source.name}:{name}", {"arch": copy}


def build_module(arch: str, kwargs: dict[str, Any], *, base_dir: Path) -> torch.nn.Module:
    """Import the callable ``arch`` names, call it with ``kwargs`` and return the module it builds."""
    import torch

    location, name = arch.rsplit(":", 1)
    factory = _attribute(_import_location(location, base_dir=base_dir), name, arch=arch)
    try:
        module = factory(**kwargs)
    except Exception as exc:
        raise InputError(f"model.arch '{arch}' failed when called with {kwargs}: {exc!r}; check model.kwargs") from exc
    if not isinstance(module, torch.nn.Module):
        raise InputError(
            f"model.arch '{arch}' returned a {type(module).__name__}, not a torch.nn.Module; point it at a model class"
        )
    return module


def _is_file_reference(location: str) -> bool:
    return location.endswith(".py") or "/" in location or "\\" in location


def _resolve_file(location: str, *, base_dir: Path) -> Path:
    path = Path(location).expanduser()
    return (path if path.is_absolute() else Path(base_dir) / path).resolve()


def _import_location(location: str, *, base_dir: Path) -> ModuleType:
    if _is_file_reference(location):
        return _import_file(_resolve_file(location, base_dir=base_dir))
    try:
        return importlib.import_module(location)
    except ModuleNotFoundError as exc:
        raise InputError(
            f"cannot import '{location}' for model.arch: {exc}; install it or give a file path like 'archs.py:Net'"
        ) from exc
    except Exception as exc:
        raise InputError(f"importing '{location}' for model.arch failed: {exc!r}; fix that module") from exc


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise InputError(f"model.arch file not found: {path}; paths are relative to the pipeline file's folder")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    module_name = f"_prunecli_arch_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"cannot import {path} for model.arch; give a Python file ending in .py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # classes defined there must be findable by name (pickle, dataclasses)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise InputError(f"importing {path} for model.arch failed: {exc!r}; fix that file") from exc
    return module


def _attribute(module: ModuleType, name: str, *, arch: str) -> Callable[..., Any]:
    factory = getattr(module, name, None)
    if factory is None or not callable(factory):
        known = sorted(key for key, value in vars(module).items() if callable(value) and not key.startswith("_"))
        raise InputError(
            f"model.arch '{arch}': no callable '{name}' there; known: {', '.join(known[:10]) or 'none'}"
        )
    return factory


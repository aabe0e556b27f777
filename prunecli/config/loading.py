"""Read a pipeline file, apply ``--set`` overrides, validate, and write it back resolved.

Every failure is an :class:`~prunecli.errors.InputError` with one line that names the file,
the place in it and the fix, e.g.::

    pipeline.yaml:3:5: YAML syntax error: mapping values are not allowed here
    pipeline.yaml: steps.1.ratio: Input should be less than 1 (got 1.5)
    p.yaml: steps.0.critrion: unknown key; known keys: kind, criterion, batches, reduction; did you mean 'criterion'?

Relative paths inside the pipeline stay as written: they are relative to the pipeline
file's folder, and the runner resolves them against it (``RunOptions.base_dir``).
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from prunecli.config.schema import Pipeline
from prunecli.errors import InputError
from prunecli.model_io.plan_file import plan_path_for

_DATA_FORMAT_BY_SUFFIX = {".npz": "npz", ".pt": "pt", ".pth": "pt", ".csv": "csv"}


def load_pipeline(path: Path, *, overrides: Sequence[str] = ()) -> Pipeline:
    """Read, override and validate the pipeline at ``path``.

    ``overrides`` are ``KEY=VALUE`` strings: KEY is a dotted path with list indices
    (``steps.1.ratio``), VALUE is read as YAML (``0.3``, ``true``, ``[fc, head]``). Missing
    mapping keys are created; ``steps.N=...`` with N the number of steps appends a step.
    """
    data = _read_mapping(path)
    for override in overrides:
        _apply_override(data, override)
    try:
        return Pipeline.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"{path}: {describe_validation_error(exc)}") from None


def apply_cli_overrides(pipeline: Pipeline, *, model: Path | None, data: Path | None) -> Pipeline:
    """Return a copy of ``pipeline`` with the ``--model`` and ``--data`` command-line paths applied.

    Both are relative to the current directory, so they are made absolute here.
    ``model`` sets ``model.path`` and resets ``model.format`` to ``auto``. ``data`` sets
    ``data.eval``, and ``data.train`` too when the pipeline fine-tunes or already named a
    training split; ``data.format`` follows the file (``.npz``, ``.pt``/``.pth``, ``.csv``,
    a folder for ``image_folder``) and is kept when the suffix says nothing.
    """
    fields = pipeline.model_dump()
    if model is not None:
        fields["model"].update(path=model.resolve(), format="auto")
    if data is not None:
        fields["data"].update(_data_update(pipeline, data.resolve()))
    return Pipeline.model_validate(fields)


def dump_resolved(pipeline: Pipeline) -> str:
    """YAML text of ``pipeline`` with every default filled in; ``load_pipeline`` reads it back equal."""
    resolved = pipeline.model_dump(mode="json")
    return yaml.dump(resolved, Dumper=_ResolvedDumper, sort_keys=False, default_flow_style=False)


def with_absolute_paths(pipeline: Pipeline, *, base_dir: Path) -> Pipeline:
    """``pipeline`` with its relative file paths (model, arch file, data) made absolute against ``base_dir``.

    The resolved pipeline saved beside the outputs then re-runs from any folder.
    """
    fields = pipeline.model_dump()
    model, data = fields["model"], fields["data"]
    for section, key in ((model, "path"), (data, "train"), (data, "eval")):
        if section[key] is not None:
            section[key] = (base_dir / section[key]).resolve()
    arch_file = _arch_file(model["arch"])
    if arch_file is not None:
        model["arch"] = f"{(base_dir / arch_file).resolve()}:{model['arch'].rpartition(':')[2]}"
    return Pipeline.model_validate(fields)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a pipeline file (for editors and ``prunecli schema``)."""
    return Pipeline.model_json_schema()


def check_referenced_files(pipeline: Pipeline, *, base_dir: Path) -> None:
    """Raise InputError naming the first file the pipeline refers to that does not exist.

    Relative paths are taken against ``base_dir`` (the pipeline file's folder).
    """
    for key, path in _referenced_files(pipeline).items():
        if not (base_dir / path).exists():
            relative = "" if path.is_absolute() else f" (relative paths start at {base_dir})"
            raise InputError(f"{key}: {base_dir / path} does not exist; fix the path{relative}")


def input_files(pipeline: Pipeline, *, base_dir: Path) -> list[Path]:
    """Absolute paths of the files and folders a run reads: model (and its plan.json), arch file, data."""
    paths = [(base_dir / path).absolute() for path in _referenced_files(pipeline).values()]
    model = pipeline.model.path
    if model is not None:
        paths.append(plan_path_for((base_dir / model).absolute()))
    return paths


def _referenced_files(pipeline: Pipeline) -> dict[str, Path]:
    """The paths the pipeline names, by key, as written (relative to the pipeline's folder or absolute)."""
    named = {"model.path": pipeline.model.path, "data.train": pipeline.data.train, "data.eval": pipeline.data.eval}
    named["model.arch"] = _arch_file(pipeline.model.arch)
    return {key: path for key, path in named.items() if path is not None}


def describe_validation_error(exc: ValidationError) -> str:
    """The first problem of ``exc`` as one line, plus how many more there are."""
    errors = exc.errors()
    line = _describe_error(errors[0])
    if len(errors) > 1:
        more = len(errors) - 1
        line += f" (and {more} more problem{'s' if more > 1 else ''})"
    return line


# --- reading -------------------------------------------------------------------------------


def _read_mapping(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise InputError(f"pipeline file not found: {path}; pass the path of a pipeline .yaml file")
    if not path.is_file():
        raise InputError(f"{path} is not a file; pass the path of a pipeline .yaml file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc.reason}); save the pipeline as UTF-8 YAML") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{path}{_yaml_location(exc)}: YAML syntax error: {_yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise InputError(f"{path}: the top level must be a mapping (key: value lines), got {got}")
    return data


def _yaml_location(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""


def _yaml_problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None)
    return problem if problem else str(exc).splitlines()[0]


# --- overrides -----------------------------------------------------------------------------


def _apply_override(data: dict[str, Any], override: str) -> None:
    """Set one ``KEY=VALUE`` in ``data`` in place; missing mapping keys are created."""
    key, sep, text = override.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise InputError(f"--set {override!r}: expected KEY=VALUE with a dotted KEY, e.g. steps.1.ratio=0.3")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise InputError(f"--set {override!r}: the value is not valid YAML; quote it, e.g. {key}='{text}'") from None
    container: Any = data
    for depth, part in enumerate(parts[:-1]):
        container = _child(container, part, where=".".join(parts[:depth]), override=override)
    _assign(container, parts[-1], value, where=".".join(parts[:-1]), override=override)


def _child(container: Any, part: str, *, where: str, override: str) -> Any:
    if isinstance(container, dict):
        return container.setdefault(part, {})
    if isinstance(container, list):
        return container[_list_index(container, part, where=where, override=override)]
    raise InputError(f"--set {override!r}: {where} is a {type(container).__name__}, not a mapping or list")


def _assign(container: Any, part: str, value: Any, *, where: str, override: str) -> None:
    if isinstance(container, dict):
        container[part] = value
    elif isinstance(container, list) and part == str(len(container)):
        container.append(value)
    elif isinstance(container, list):
        container[_list_index(container, part, where=where, override=override)] = value
    else:
        raise InputError(f"--set {override!r}: {where} is a {type(container).__name__}, not a mapping or list")


def _list_index(items: list[Any], part: str, *, where: str, override: str) -> int:
    if not part.isdigit() or int(part) >= len(items):
        known = f"indices 0-{len(items) - 1}" if items else "no items"
        raise InputError(f"--set {override!r}: {where} has {len(items)} items ({known}); '{part}' is not one of them")
    return int(part)


# --- validation errors ---------------------------------------------------------------------


def _describe_error(error: dict[str, Any]) -> str:
    location, model = _walk_location(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden" and model is not None:
        problem = _unknown_key(str(error["loc"][-1]), sorted_keys=list(model.model_fields))
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        location = f"{location}.kind" if location else "kind"
        problem = _unknown_kind(error)
    elif kind == "missing":
        problem = "missing required key; add it"
    elif kind == "value_error":
        problem = str(error["ctx"]["error"])
    else:
        problem = f"{error['msg']} (got {_short_repr(error['input'])})"
    return f"{location}: {problem}" if location else problem


def _unknown_key(key: str, *, sorted_keys: list[str]) -> str:
    close = difflib.get_close_matches(key, sorted_keys, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown key; known keys: {', '.join(sorted_keys)}{hint}"


def _unknown_kind(error: dict[str, Any]) -> str:
    kinds = _step_kinds()
    tag = error.get("ctx", {}).get("tag")
    if tag is None:
        return f"missing; every step needs a kind, one of: {', '.join(kinds)}"
    close = difflib.get_close_matches(str(tag), kinds, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown step kind {tag!r}; known kinds: {', '.join(kinds)}{hint}"


def _step_kinds() -> list[str]:
    step_union = _unwrap(Pipeline.model_fields["steps"].annotation)
    members = typing.get_args(_unwrap(typing.get_args(step_union)[0]))
    return [typing.get_args(member.model_fields["kind"].annotation)[0] for member in members]


def _walk_location(loc: tuple[Any, ...]) -> tuple[str, type[BaseModel] | None]:
    """The dotted path of ``loc`` without pydantic's union tags, and the model holding its last key."""
    shown: list[str] = []
    annotation: Any = Pipeline
    for part in loc[:-1]:
        annotation = _unwrap(annotation)
        member = _tagged_member(annotation, part)
        if member is not None:
            annotation = member
            continue
        shown.append(str(part))
        annotation = _field_annotation(annotation, part)
    if loc:
        shown.append(str(loc[-1]))
    container = _unwrap(annotation)
    model = container if isinstance(container, type) and issubclass(container, BaseModel) else None
    return ".".join(shown), model


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated[...]`` and ``X | None`` down to the type that holds the fields."""
    while True:
        origin = typing.get_origin(annotation)
        args = typing.get_args(annotation)
        if origin is typing.Annotated:
            annotation = args[0]
        elif origin in (typing.Union, types.UnionType) and sum(arg is not type(None) for arg in args) == 1:
            annotation = next(arg for arg in args if arg is not type(None))
        else:
            return annotation


def _tagged_member(annotation: Any, part: Any) -> type[BaseModel] | None:
    """The member of a ``kind``-discriminated union whose tag is ``part``, else None."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return None
    for member in typing.get_args(annotation):
        kind_field = getattr(member, "model_fields", {}).get("kind")
        if kind_field is not None and part in typing.get_args(kind_field.annotation):
            return member
    return None


def _field_annotation(annotation: Any, part: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(str(part))
        return field.annotation if field is not None else None
    if typing.get_origin(annotation) in (list, dict):
        return typing.get_args(annotation)[-1]
    return None


def _short_repr(value: Any, *, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _ResolvedDumper(yaml.SafeDumper):
    """Safe YAML with block mappings and lists of scalars on one line (``input_shape: [1, 1, 8, 8]``)."""


def _represent_list(dumper: yaml.SafeDumper, items: list[Any]) -> yaml.Node:
    flat = all(not isinstance(item, (dict, list)) for item in items)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", items, flow_style=flat)


_ResolvedDumper.add_representer(list, _represent_list)


# --- command-line paths --------------------------------------------------------------------


def _trains(step: Any) -> bool:
    """Whether a step trains the model on the train split (finetune, regularize, sparsify by movement)."""
    return step.kind in ("finetune", "regularize") or (step.kind == "sparsify" and step.method == "movement")


def _data_update(pipeline: Pipeline, data_path: Path) -> dict[str, Any]:
    update: dict[str, Any] = {"eval": data_path}
    fine_tunes = any(_trains(step) for step in pipeline.all_steps)
    if fine_tunes or pipeline.data.train is not None:
        update["train"] = data_path
    data_format = "image_folder" if data_path.is_dir() else _DATA_FORMAT_BY_SUFFIX.get(data_path.suffix.lower())
    if data_format is not None:
        update["format"] = data_format
    return update


def _arch_file(arch: str | None) -> Path | None:
    """The file part of an ``arch`` like ``archs.py:DigitsCNN``; None for ``package.module:Callable``."""
    if arch is None:
        return None
    module, _, _ = arch.rpartition(":")
    return Path(module) if module.endswith(".py") else None

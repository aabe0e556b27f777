"""The models of a batch: paths or globs, manifest files (YAML or CSV) and ``timm:NAME`` references.

    entries = expand_models(["models/*.pt", "zoo.yaml", "timm:resnet18"])
    select_shard(entries, shard="1/2")   # a deterministic half, by sorted model name

A manifest lists one model per entry (YAML: a list of mappings, or ``{models: [...]}``; CSV: a
header row). Keys: ``path`` (or ``timm``), and optionally ``name``, ``arch``, ``kwargs``,
``input_shape``, ``data``, ``set`` (overrides as the CLI's ``--set``, ``KEY=VALUE`` strings or a
mapping) and ``memory_limit`` (GB, this model's instead of ``--memory-limit``). Paths in a
manifest are relative to the manifest's folder.
"""

from __future__ import annotations

import csv
import glob
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prunecli.errors import InputError
from prunecli.model_io.arch import resolve_arch

TIMM_PREFIX = "timm:"
MANIFEST_SUFFIXES = (".yaml", ".yml", ".csv")
_KEYS = {"name", "path", "timm", "arch", "kwargs", "input_shape", "data", "set", "memory_limit"}


@dataclass(frozen=True)
class ModelEntry:
    """One model of a batch: where it is (a file, or a timm architecture name) and its per-model overrides.

    ``overrides`` are ``KEY=VALUE`` strings passed to ``prunecli run --set``; ``name`` names the
    model's output folder and summary row, and is unique within a batch. ``memory_limit_gb``, when
    set, replaces the batch's ``--memory-limit`` for this model.
    """

    name: str
    path: Path | None = None
    timm: str | None = None
    timm_kwargs: dict[str, Any] = field(default_factory=dict)  # timm only: create_model keywords
    data: Path | None = None
    overrides: tuple[str, ...] = field(default_factory=tuple)
    memory_limit_gb: float | None = None


def expand_models(specs: list[str]) -> list[ModelEntry]:
    """All models named by ``specs`` (paths, globs, manifests, ``timm:NAME``), with names checked unique."""
    entries: list[ModelEntry] = []
    for spec in specs:
        entries.extend(_expand_one(spec))
    if not entries:
        raise InputError("no models given; pass model files, globs, a manifest (.yaml/.csv) or timm:NAME")
    _check_unique(entries)
    return sorted(entries, key=lambda entry: entry.name)


def select_shard(entries: list[ModelEntry], *, shard: str | None) -> list[ModelEntry]:
    """The K-th of N interleaved slices of ``entries`` sorted by name (``shard`` is ``"K/N"``, 1-based)."""
    if shard is None:
        return entries
    index, count = parse_shard(shard)
    ordered = sorted(entries, key=lambda entry: entry.name)
    return [entry for position, entry in enumerate(ordered) if position % count == index - 1]


def parse_shard(shard: str) -> tuple[int, int]:
    """``"K/N"`` as ``(K, N)`` with ``1 <= K <= N``."""
    try:
        index, count = (int(part) for part in shard.split("/"))
    except ValueError:
        raise InputError(f"--shard {shard!r} is not K/N; pass e.g. --shard 1/2") from None
    if not 1 <= index <= count:
        raise InputError(f"--shard {shard}: K must be between 1 and N; pass e.g. --shard 1/{max(count, 1)}")
    return index, count


def _expand_one(spec: str) -> list[ModelEntry]:
    if spec.startswith(TIMM_PREFIX):
        return [_timm_entry(spec[len(TIMM_PREFIX) :], name=None)]
    path = Path(spec)
    if path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file():
        return _manifest_entries(path)
    if glob.has_magic(spec):
        matches = sorted(glob.glob(spec))
        if not matches:
            raise InputError(f"model glob {spec!r} matches no file; check the pattern")
        return [ModelEntry(name=Path(match).stem, path=Path(match).resolve()) for match in matches]
    # a missing file is recorded as that model's failure (exit 2) by its run; the batch goes on
    return [ModelEntry(name=path.stem, path=path.resolve())]


def _timm_entry(
    architecture: str, *, name: str | None, overrides: tuple[str, ...] = (), kwargs: dict[str, Any] | None = None
) -> ModelEntry:
    if not architecture:
        raise InputError("timm: needs an architecture name; pass e.g. timm:resnet18")
    return ModelEntry(name=name or architecture, timm=architecture, overrides=overrides, timm_kwargs=kwargs or {})


def _manifest_entries(path: Path) -> list[ModelEntry]:
    rows = _read_csv(path) if path.suffix.lower() == ".csv" else _read_yaml(path)
    return [_manifest_entry(row, manifest=path, number=number) for number, row in enumerate(rows, start=1)]


def _read_yaml(path: Path) -> list[dict[str, Any]]:
    import yaml

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read the model manifest {path}: {exc}; fix the YAML") from exc
    rows = document.get("models") if isinstance(document, dict) else document
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise InputError(f"model manifest {path} must be a list of mappings (or {{models: [...]}}); fix the file")
    return rows


def _read_csv(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise InputError(f"cannot read the model manifest {path}: {exc}; check the path") from exc
    return [{key: value for key, value in row.items() if key and value not in (None, "")} for row in rows]


def _manifest_entry(row: dict[str, Any], *, manifest: Path, number: int) -> ModelEntry:
    where = f"model manifest {manifest} entry {number}"
    unknown = sorted(set(row) - _KEYS)
    if unknown:
        raise InputError(f"{where} has unknown key(s) {', '.join(unknown)}; use {', '.join(sorted(_KEYS))}")
    base = manifest.resolve().parent
    limit = _memory_limit(row.get("memory_limit"), where=where)
    if "timm" in row:
        kwargs = row.get("kwargs") or {}
        if not isinstance(kwargs, dict):
            raise InputError(f"{where}: kwargs must be a mapping; fix it")
        overrides = _overrides({key: value for key, value in row.items() if key != "kwargs"}, where=where, base=base)
        entry = _timm_entry(str(row["timm"]), name=row.get("name"), overrides=overrides, kwargs=kwargs)
        return replace(entry, memory_limit_gb=limit)
    overrides = _overrides(row, where=where, base=base)
    if "path" not in row:
        raise InputError(f"{where} has neither path nor timm; add one")
    path = (base / str(row["path"])).resolve()
    data = (base / str(row["data"])).resolve() if "data" in row else None
    return ModelEntry(name=str(row.get("name") or path.stem), path=path, data=data, overrides=overrides,
                      memory_limit_gb=limit)  # fmt: skip


def _memory_limit(value: Any, *, where: str) -> float | None:
    """A manifest's ``memory_limit`` in GB (a positive number; CSV gives it as text), or None."""
    if value is None:
        return None
    try:
        limit = float(value)
    except (TypeError, ValueError):
        limit = 0.0
    if not limit > 0:
        raise InputError(f"{where}: memory_limit must be a positive number of GB (e.g. 4); got {value!r}")
    return limit


def _overrides(row: dict[str, Any], *, where: str, base: Path) -> tuple[str, ...]:
    """The entry's ``--set`` overrides: arch, kwargs and input_shape, then its ``set``."""
    found = []
    if "arch" in row:
        found.append(f"model.arch={resolve_arch(str(row['arch']), base_dir=base)}")
    for key in ("kwargs", "input_shape"):
        if key in row:
            found.append(f"model.{key}={_yaml_value(row[key])}")
    extra = row.get("set") or []
    if isinstance(extra, str):
        extra = [part.strip() for part in extra.split(";") if part.strip()]
    elif isinstance(extra, dict):
        extra = [f"{key}={_yaml_value(value)}" for key, value in extra.items()]
    if not all(isinstance(item, str) and "=" in item for item in extra):
        raise InputError(f"{where}: set must hold KEY=VALUE strings or a mapping; fix it")
    return (*found, *extra)


def _yaml_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _check_unique(entries: list[ModelEntry]) -> None:
    seen: dict[str, ModelEntry] = {}
    for entry in entries:
        if entry.name in seen:
            raise InputError(
                f"two models are named {entry.name!r} (output folders would clash); give one a name in a manifest"
            )
        seen[entry.name] = entry

"""The Python API: run a pipeline and load what it wrote, with no CLI in between::

    import prunecli

    report = prunecli.run("configs/digits_cnn_l2_50.yaml", output="out/demo", set={"steps.1.ratio": 0.3})
    report["gates"]                      # the dict written to report.json; a failed gate does not raise
    module = prunecli.load("out/demo")   # the pruned torch.nn.Module, in eval mode

Both raise ``prunecli.errors.InputError`` (the CLI's exit 2) with one line naming the fix. Heavy
libraries (torch, onnx, pydantic) are imported when a function is called, not with this module.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunecli.errors import InputError

if TYPE_CHECKING:
    import onnx
    import torch

    from prunecli.config.schema import Pipeline
    from prunecli.pipeline.options import RunOptions, RunResult
    from prunecli.pipeline.sensitivity import SensitivityResult

PathLike = str | os.PathLike[str]
DEVICES = ("cpu", "cuda")


def load(path: PathLike, *, trust_pickle: bool = False) -> torch.nn.Module | onnx.ModelProto:
    """The model in an output folder of ``prunecli run`` (or one of its model files), ready to use.

    ``model.pt`` + ``model.plan.json`` (weights and the replay plan) and ``model.pt2`` give a
    ``torch.nn.Module`` in eval mode; a pickled ``model.pt`` does too, only with
    ``trust_pickle=True`` (unpickling runs code from the file). A folder with only ``model.onnx``,
    or a ``.onnx`` file, gives an ``onnx.ModelProto`` (run it with ONNX Runtime).
    """
    from prunecli.model_io.load import load_saved

    return load_saved(Path(path), trust_pickle=trust_pickle)


def run(
    pipeline: PathLike,
    *,
    model: PathLike | None = None,
    data: PathLike | None = None,
    output: PathLike | None = None,
    set: Sequence[str] | Mapping[str, Any] | None = None,  # named like the CLI's --set (shadows the builtin here)
    device: str | None = None,
    seed: int | None = None,
    threads: int | None = None,
    trust_pickle: bool = False,
) -> dict[str, Any]:
    """Run the pipeline file ``pipeline`` as ``prunecli run`` does; returns the report (as in report.json).

    The keywords mirror the CLI's options: ``model``/``data`` replace the pipeline's paths
    (relative to the current folder), ``output`` is the output folder (default
    ``out/<pipeline file stem>``), ``set`` overrides values (``["steps.1.ratio=0.3"]`` or
    ``{"steps.1.ratio": 0.3}``), ``device`` (``cpu`` or ``cuda``), ``seed`` and ``threads`` replace
    the pipeline's, ``trust_pickle`` allows a pickled model. Gates do not raise: see ``report["gates"]``.
    """
    return run_file(
        pipeline, model=model, data=data, output=output, set=set, device=device, seed=seed, threads=threads,
        trust_pickle=trust_pickle,
    ).report  # fmt: skip


def run_file(pipeline: PathLike, **options: Any) -> RunResult:
    """``run`` returning the whole ``RunResult`` (report, gates verdict, written paths, module); the CLI's path.

    ``options`` are ``run``'s keywords plus ``progress`` (progress bars on stderr).
    """
    from prunecli.pipeline.runner import run_pipeline

    loaded, run_options = load_run(pipeline, **options)
    return run_pipeline(loaded, options=run_options)


def sensitivity_file(pipeline: PathLike, *, ratios: Sequence[float], **options: Any) -> SensitivityResult:
    """``prunecli sensitivity``: sweep every prunable group of the pipeline's model at ``ratios``.

    ``options`` are ``run``'s keywords (the output folder defaults to ``out/<stem>-sensitivity``)
    plus ``progress``, a callable ``(points done, points in all)``.
    """
    from prunecli.pipeline.sensitivity import run_sensitivity

    progress = options.pop("progress", None)
    if options.get("output") is None:
        options["output"] = Path("out") / f"{Path(pipeline).stem}-sensitivity"
    loaded, run_options = load_run(pipeline, **options)
    return run_sensitivity(loaded, options=run_options, ratios=ratios, progress=progress)


def load_run(
    pipeline: PathLike,
    *,
    model: PathLike | None = None,
    data: PathLike | None = None,
    output: PathLike | None = None,
    set: Sequence[str] | Mapping[str, Any] | None = None,
    device: str | None = None,
    seed: int | None = None,
    threads: int | None = None,
    trust_pickle: bool = False,
    progress: bool = False,
) -> tuple[Pipeline, RunOptions]:
    """The validated pipeline file with its overrides applied, and the options a run of it takes."""
    from prunecli.config.loading import apply_cli_overrides, load_pipeline
    from prunecli.pipeline.options import RunOptions

    if device is not None and device not in DEVICES:
        raise InputError(f"device must be one of {', '.join(DEVICES)}, got {device!r}; pass device='cpu' or 'cuda'")
    pipeline_path = Path(pipeline)
    loaded = load_pipeline(pipeline_path, overrides=_override_strings(set))
    loaded = apply_cli_overrides(loaded, model=_optional_path(model), data=_optional_path(data))
    options = RunOptions(
        output_dir=Path(output) if output is not None else Path("out") / pipeline_path.stem,
        base_dir=pipeline_path.absolute().parent,
        device=device,
        seed=seed,
        threads=threads,
        pipeline_file=pipeline_path.absolute(),
        trust_pickle=trust_pickle,
        progress=progress,
    )
    return loaded, options


def _override_strings(overrides: Sequence[str] | Mapping[str, Any] | None) -> list[str]:
    """``KEY=VALUE`` strings from a list of them or from a {key: value} dict (values written as YAML)."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [f"{key}={_yaml_value(key, value)}" for key, value in overrides.items()]
    if isinstance(overrides, str) or not all(isinstance(item, str) for item in overrides):
        raise InputError(f"set must be a list of 'KEY=VALUE' strings or a dict, got {overrides!r}; e.g. set=['seed=1']")
    return list(overrides)


def _yaml_value(key: str, value: Any) -> str:
    """``value`` as the YAML text an override is read from: 0.3 -> ``0.3``, ["fc"] -> ``[fc]``."""
    import yaml

    try:
        text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"))
    except yaml.YAMLError as exc:
        raise InputError(
            f"set[{key!r}]: cannot write a value of type {type(value).__name__} as YAML; "
            "pass a number, string, bool, list or dict"
        ) from exc
    return text.removesuffix("\n...\n").strip()  # a bare scalar ends with a document-end marker


def _optional_path(path: PathLike | None) -> Path | None:
    return None if path is None else Path(path)

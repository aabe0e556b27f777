"""The command line: exit codes, one-line errors on stderr, JSON outputs, lazy heavy imports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from prunecli import __version__
from prunecli.cli.app import app
from prunecli.cli.errors import error_boundary
from prunecli.cli.options import DebugOption
from prunecli.errors import InputError
from prunecli.pipeline.options import RunOptions, RunResult
from tests.conftest import SAMPLES

PIPELINE = f"""\
version: 1
model: {{path: model.pt, arch: {SAMPLES}/archs.py:DigitsCNN, input_shape: [1, 1, 8, 8]}}
data: {{format: npz, eval: val.npz}}
steps:
  - {{kind: score, criterion: l2}}
  - {{kind: select, ratio: 0.5, scope: global}}
  - {{kind: prune}}
gates: {{min_speedup: 1.5}}
"""


@pytest.fixture
def pipeline_file(tmp_path: Path) -> Path:
    path = tmp_path / "digits.yaml"
    path.write_text(PIPELINE, encoding="utf-8")
    shutil.copy(SAMPLES / "digits_cnn.pt", tmp_path / "model.pt")
    shutil.copy(SAMPLES / "digits_val.npz", tmp_path / "val.npz")
    return path


def invoke(*args: str | Path) -> Any:
    return CliRunner().invoke(app, [str(arg) for arg in args])


def assert_one_line_error(result: Any, *, exit_code: int, contains: str) -> None:
    assert result.exit_code == exit_code, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and contains in lines[0], result.stderr


def test_importing_the_cli_does_not_import_heavy_modules() -> None:
    heavy = "('torch', 'onnx', 'onnxruntime', 'pydantic')"
    code = f"import prunecli.cli.app, sys; print(sorted(m for m in {heavy} if m in sys.modules))"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "[]"


def test_version_and_help() -> None:
    assert invoke("--version").stdout == f"prunecli {__version__}\n"
    result = invoke("--help")
    assert result.exit_code == 0
    assert all(command in result.stdout for command in ("run", "validate", "inspect", "schema", "env"))


def test_validate_ok_summarises_steps(pipeline_file: Path) -> None:
    result = invoke("validate", pipeline_file, "--set", "steps.1.ratio=0.25")
    assert result.exit_code == 0, result.output
    assert result.stdout == "ok: score -> select(ratio=0.25, scope=global) -> prune\n"


def test_validate_json(pipeline_file: Path) -> None:
    result = invoke("validate", pipeline_file, "--json")
    assert result.exit_code == 0
    steps = ["score", "select(ratio=0.5, scope=global)", "prune"]
    assert json.loads(result.stdout) == {"ok": True, "pipeline": str(pipeline_file), "steps": steps}


def test_validate_json_reports_errors_on_stdout_too(pipeline_file: Path) -> None:
    result = invoke("validate", pipeline_file, "--json", "--set", "steps.1.ratio=2")
    assert_one_line_error(result, exit_code=2, contains="steps.1.ratio: Input should be less than 1 (got 2)")
    assert json.loads(result.stdout)["ok"] is False


def test_missing_pipeline_file(tmp_path: Path) -> None:
    result = invoke("validate", tmp_path / "nope.yaml")
    assert_one_line_error(result, exit_code=2, contains="pipeline file not found")
    assert result.stdout == ""


def test_yaml_syntax_error(pipeline_file: Path) -> None:
    pipeline_file.write_text("version: 1\nmodel: [1, 2\n", encoding="utf-8")
    result = invoke("validate", pipeline_file)
    assert_one_line_error(result, exit_code=2, contains=f"{pipeline_file}:3:1: YAML syntax error")


def test_unknown_key(pipeline_file: Path) -> None:
    pipeline_file.write_text(PIPELINE.replace("scope: global", "scop: global"), encoding="utf-8")
    result = invoke("validate", pipeline_file)
    assert_one_line_error(result, exit_code=2, contains="steps.1.scop: unknown key; known keys: kind, ratio, scope")
    assert "did you mean 'scope'?" in result.stderr


def test_wrong_type(pipeline_file: Path) -> None:
    result = invoke("validate", pipeline_file, "--set", "seed=abc")
    assert_one_line_error(result, exit_code=2, contains="seed: Input should be a valid integer")


def test_validate_checks_referenced_files(pipeline_file: Path) -> None:
    moved = pipeline_file.parent / "moved.npz"
    (pipeline_file.parent / "val.npz").rename(moved)
    assert_one_line_error(invoke("validate", pipeline_file), exit_code=2, contains="data.eval:")
    assert invoke("validate", pipeline_file, "--data", moved).exit_code == 0


def test_schema_outputs_json(tmp_path: Path) -> None:
    result = invoke("schema")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["title"] == "Pipeline"
    target = tmp_path / "schemas" / "pipeline.json"
    assert invoke("schema", "-o", target).exit_code == 0
    assert json.loads(target.read_text(encoding="utf-8")) == json.loads(result.stdout)


def test_env_json() -> None:
    result = invoke("env", "--json")
    assert result.exit_code == 0
    facts = json.loads(result.stdout)
    assert facts["prunecli"] == __version__
    assert facts["torch"] and facts["typer"] and facts["numpy"]
    assert facts["torch_threads"] >= 1
    assert isinstance(facts["cuda_available"], bool) and isinstance(facts["cuda_devices"], list)


@pytest.fixture
def fake_runner(monkeypatch: pytest.MonkeyPatch) -> list[RunOptions]:
    """Stand in for the runner: record the options, return a report whose gate failed."""
    calls: list[RunOptions] = []

    def run_pipeline(pipeline: Any, *, options: RunOptions) -> RunResult:
        calls.append(options)
        report = {
            "stages": ["original", "pruned"],
            "original": {"params": 1000, "macs": 5000, "size_bytes": 4096, "accuracy": 0.9},
            "pruned": {"params": 500, "macs": 2500, "size_bytes": 2048, "accuracy": 0.88},
            "gates": {"min_speedup": {"value": 1.2, "limit": 1.5, "passed": False}},
        }
        return RunResult(report=report, gates_passed=False, written={"report_json": options.output_dir / "report.json"})

    module = types.ModuleType("prunecli.pipeline.runner")
    module.run_pipeline = run_pipeline  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "prunecli.pipeline.runner", module)
    return calls


def test_run_renders_report_and_exits_1_on_failed_gate(pipeline_file: Path, fake_runner: list[RunOptions]) -> None:
    result = invoke("run", pipeline_file, "--seed", "7")
    assert result.exit_code == 1, result.output
    assert "1,000" in result.stdout and "-50.0%" in result.stdout and "FAIL" in result.stdout
    assert result.stdout.splitlines()[-1] == f"wrote {Path('out') / 'digits'}: report.json"
    assert result.stderr == "gate failed: min_speedup: value 1.2, limit 1.5\n"
    (options,) = fake_runner
    assert options.output_dir == Path("out") / "digits"
    assert options.base_dir == pipeline_file.parent.absolute()
    assert (options.seed, options.device, options.trust_pickle, options.progress) == (7, None, False, False)


def test_run_json_prints_only_the_report(pipeline_file: Path, fake_runner: list[RunOptions], tmp_path: Path) -> None:
    result = invoke("run", pipeline_file, "--json", "-o", tmp_path / "o")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["pruned"]["params"] == 500
    assert fake_runner[0].output_dir == tmp_path / "o"


def test_run_refuses_cuda_without_a_device(pipeline_file: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")
    result = invoke("run", pipeline_file, "--device", "cuda")
    expected = "device cuda asked but no CUDA device is available; use --device cpu"
    assert_one_line_error(result, exit_code=2, contains=expected)


def boundary_app(action: Any) -> typer.Typer:
    """A one-command app whose command runs ``action`` inside the error boundary."""
    guarded_app = typer.Typer()

    @guarded_app.command()
    @error_boundary
    def command(debug: DebugOption = False) -> int | None:
        return action()

    return guarded_app


def raise_(exc: BaseException) -> Any:
    def action() -> None:
        raise exc

    return action


@pytest.mark.parametrize(
    ("action", "exit_code", "line"),
    [
        (raise_(InputError("bad value; fix it")), 2, "error: bad value; fix it"),
        (raise_(KeyboardInterrupt()), 130, "error: interrupted"),
        (
            raise_(ValueError("boom\nsecond line")),
            3,
            "internal error: ValueError: boom second line (run with --debug for the traceback; please report it)",
        ),
    ],
)
def test_error_boundary_maps_errors_to_one_line(action: Any, exit_code: int, line: str) -> None:
    result = CliRunner().invoke(boundary_app(action), [])
    assert result.exit_code == exit_code
    assert result.stderr == line + "\n"


def test_error_boundary_debug_prints_traceback_and_keeps_exit_code() -> None:
    result = CliRunner().invoke(boundary_app(raise_(RuntimeError("boom"))), ["--debug"])
    assert result.exit_code == 3
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert result.stderr.splitlines()[-1] == "internal error: RuntimeError: boom"


def test_error_boundary_returns_command_exit_code() -> None:
    assert CliRunner().invoke(boundary_app(lambda: 1), []).exit_code == 1
    assert CliRunner().invoke(boundary_app(lambda: None), []).exit_code == 0

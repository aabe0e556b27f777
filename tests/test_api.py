"""The Python API: ``prunecli.run`` returns the report, ``prunecli.load`` reads every kind of output back."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

import prunecli
from prunecli.errors import InputError
from tests.conftest import SAMPLES

PIPELINE = """
version: 1
model: {path: SAMPLES/digits_cnn.pt, arch: src/archs.py:DigitsCNN, input_shape: [1, 1, 8, 8]}
data: {format: npz, eval: SAMPLES/digits_val.npz}
steps:
  - {kind: score, criterion: l2}
  - {kind: select, ratio: 0.5}
  - {kind: prune}
latency: {repeats: 2, warmup: 0, backends: [torch]}
"""

DIGITS = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _outputs(module: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return module(DIGITS)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A pipeline run whose arch file is then deleted: the output folder must carry its own copy."""
    root = tmp_path_factory.mktemp("api")
    (root / "src").mkdir()
    shutil.copy(SAMPLES / "archs.py", root / "src" / "archs.py")
    pipeline = root / "pipeline.yaml"
    pipeline.write_text(PIPELINE.replace("SAMPLES", str(SAMPLES)))
    report = prunecli.run(pipeline, output=root / "out", set={"steps.1.ratio": 0.25}, seed=3)
    shutil.rmtree(root / "src")
    return root / "out", report


def test_importing_prunecli_stays_light() -> None:
    heavy = "('torch', 'onnx', 'onnxruntime', 'pydantic', 'prunecli.api')"
    code = f"import prunecli, sys; prunecli.load, prunecli.run; print(sorted(m for m in {heavy} if m in sys.modules))"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "['prunecli.api']"  # asked for, the API comes without torch or pydantic
    with pytest.raises(AttributeError, match="no attribute 'lod'"):
        prunecli.lod  # noqa: B018


def test_run_returns_the_report_and_writes_the_outputs(run_folder: tuple[Path, dict]) -> None:
    out, report = run_folder
    assert report == json.loads((out / "report.json").read_text())
    assert report["seed"] == 3 and report["verification"]["passed"]
    pruned = [(group["kept"], group["channels"]) for group in report["groups"] if group["prunable"]]
    assert pruned and all(channels > kept >= 0.7 * channels for kept, channels in pruned)  # the set ratio, 0.25
    assert {"model.pt", "model.plan.json", "archs.py", "model.onnx", "report.md"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "model.plan.json").read_text())["arch"] == "archs.py:DigitsCNN"
    assert report["outputs"]["arch"] == str(out / "archs.py")


def test_load_from_the_folder_and_from_its_files(run_folder: tuple[Path, dict]) -> None:
    out, _ = run_folder
    module = prunecli.load(out)
    assert isinstance(module, nn.Module) and not module.training
    torch.testing.assert_close(_outputs(prunecli.load(out / "model.pt")), _outputs(module))
    proto = prunecli.load(out / "model.onnx")
    assert isinstance(proto, onnx.ModelProto) and proto.graph.input[0].name == "input"


def test_moved_folder_loads_and_gives_the_same_outputs(run_folder: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = run_folder
    expected = _outputs(prunecli.load(out))
    moved = shutil.copytree(out, tmp_path / "moved")
    module = prunecli.load(moved)
    assert Path(sys.modules[type(module).__module__].__file__) == moved / "archs.py"  # the folder's own copy
    torch.testing.assert_close(_outputs(module), expected)


def test_run_takes_set_as_a_list_and_the_cli_paths(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("version: 1\nmodel: {path: none.onnx}\ndata: {format: csv}\nsteps: [{kind: evaluate}]\n")
    report = prunecli.run(
        pipeline, model=SAMPLES / "digits_cnn.onnx", data=SAMPLES / "digits_val.npz", output=tmp_path / "out",
        set=["latency.repeats=2", "latency.warmup=0", "latency.backends=[onnxruntime]"],
    )  # fmt: skip
    assert report["model"] == {"path": str(SAMPLES / "digits_cnn.onnx"), "format": "onnx"}
    assert report["original"]["accuracy"] > 0.9  # --data set the format to npz
    assert isinstance(prunecli.load(tmp_path / "out"), onnx.ModelProto)  # an ONNX-only output folder


def test_pickled_model_needs_trust_pickle(tmp_path: Path) -> None:
    module = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    torch.save(module, tmp_path / "model.pt")
    with pytest.raises(InputError, match="pickled module.*trust_pickle=True"):
        prunecli.load(tmp_path)
    trusted = prunecli.load(tmp_path, trust_pickle=True)
    torch.testing.assert_close(_outputs(trusted), _outputs(module))


def test_exported_program_folder_loads(tmp_path: Path) -> None:
    module = nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval()
    torch.export.save(torch.export.export(module, (DIGITS,)), tmp_path / "model.pt2")
    torch.testing.assert_close(_outputs(prunecli.load(tmp_path)), _outputs(module))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing", "does not exist; pass an output folder of prunecli run or a model file in it"),
        ("empty", "holds no model.pt, model.pt2, model.onnx; pass an output folder of prunecli run or a model file"),
        ("notes.txt", "notes.txt is not a model file; pass model.pt, model.pt2 or model.onnx, or their folder"),
        ("weights/model.pt", "holds weights only and no model.plan.json is beside it; keep the plan file"),
    ],
)
def test_load_errors_name_the_fix(tmp_path: Path, name: str, message: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "weights").mkdir()
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "weights" / "model.pt")
    with pytest.raises(InputError, match=message) as caught:
        prunecli.load(tmp_path / name)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"device": "gpu"}, "device must be one of cpu, cuda, got 'gpu'"),
        ({"set": "seed=1"}, "set must be a list of 'KEY=VALUE' strings or a dict"),
        ({"set": {"seed": object()}}, r"set\['seed'\]: cannot write a value of type object as YAML"),
    ],
)
def test_run_refuses_bad_overrides_before_work(tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        prunecli.run(tmp_path / "never_read.yaml", **overrides)

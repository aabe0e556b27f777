"""Nothing lost: inputs are never overwritten, an output folder holds exactly one run's files, kills leave no mix."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prunecli.errors import InputError
from prunecli.model_io import output_folder
from prunecli.model_io.output_folder import MANIFEST, OutputFolder
from tests.conftest import REPO, SAMPLES, save_sample_cnn_program
from tests.test_end_to_end import CNN_PIPELINE, cli, write_pipeline


def digests(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative name -> sha256)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def assert_complete(folder: Path) -> None:
    """The folder holds exactly the files its manifest lists, and its report reads."""
    listed = set(json.loads((folder / MANIFEST).read_text())["files"])
    assert set(digests(folder)) - {MANIFEST} == listed
    json.loads((folder / "report.json").read_text())


def assert_one_error_line(result, *, contains: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and contains in lines[0], result.stderr


def test_output_folder_holding_the_input_model_is_refused_before_work(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(SAMPLES / "digits_cnn.pt", models / "model.pt")
    before = digests(models)
    result = cli("run", write_pipeline(tmp_path, CNN_PIPELINE), "--model", models / "model.pt", "-o", models)
    assert_one_error_line(result, contains="holds the run's input")
    assert digests(models) == before


def test_output_folder_holding_the_pipeline_file_is_refused(tmp_path: Path) -> None:
    result = cli("run", write_pipeline(tmp_path, CNN_PIPELINE), "-o", tmp_path)
    assert_one_error_line(result, contains="pipeline.yaml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline.yaml"]


def test_output_inside_an_input_folder_is_refused(tmp_path: Path) -> None:
    images = tmp_path / "images"
    (images / "zero").mkdir(parents=True)
    with pytest.raises(InputError, match="lies inside the run's input folder"):
        output_folder.check_output_path(images / "out", inputs=[images])


def test_output_naming_a_file_is_exit_2_before_any_work(tmp_path: Path) -> None:
    target = tmp_path / "report.txt"
    target.write_text("mine")
    started = time.perf_counter()
    result = cli("run", write_pipeline(tmp_path, CNN_PIPELINE), "-o", target)
    assert_one_error_line(result, contains="is a file")
    assert time.perf_counter() - started < 5 and target.read_text() == "mine"


def test_foreign_files_in_the_output_folder_are_never_deleted(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = cli("run", write_pipeline(tmp_path, CNN_PIPELINE), "-o", out)
    assert_one_error_line(result, contains="notes.txt")
    assert digests(out) == {"notes.txt": hashlib.sha256(b"mine").hexdigest()}


def test_a_reused_output_folder_holds_exactly_the_last_runs_files(tmp_path: Path) -> None:
    out, pipeline = tmp_path / "out", write_pipeline(tmp_path, CNN_PIPELINE)
    assert cli("run", pipeline, "-o", out).exit_code == 0
    assert {"model.pt", "model.plan.json"} <= set(digests(out))
    result = cli("run", pipeline, "--model", save_sample_cnn_program(tmp_path / "cnn.pt2"), "-o", out)
    assert result.exit_code == 0, result.output
    assert_complete(out)
    names = set(digests(out))
    assert "model.pt2" in names and not {"model.pt", "model.plan.json"} & names
    assert not [p for p in tmp_path.iterdir() if "prunecli-staging" in p.name]


def test_a_failed_run_leaves_the_previous_outputs(tmp_path: Path) -> None:
    out, pipeline = tmp_path / "out", write_pipeline(tmp_path, CNN_PIPELINE)
    assert cli("run", pipeline, "-o", out).exit_code == 0
    before = digests(out)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an archive")
    assert cli("run", pipeline, "--data", bad, "-o", out).exit_code == 2
    assert digests(out) == before


def test_a_crash_while_swapping_leaves_the_previous_outputs(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    for run in ("first", "second"):
        folder = OutputFolder.open(out, inputs=[])
        with pytest.raises(OSError) if run == "second" else contextlib.nullcontext(), folder:
            (folder.staging / "report.json").write_text(json.dumps({"run": run}))
            if run == "second":
                monkeypatch.setattr(output_folder, "_swap_in", _crash)
            folder.commit()
    assert_complete(out)
    assert json.loads((out / "report.json").read_text()) == {"run": "first"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the staging folder is gone


def test_staging_folders_of_killed_runs_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    abandoned = tmp_path / f".out.prunecli-staging-{dead.pid}-abcd1234"
    abandoned.mkdir()
    (abandoned / "model.pt").write_bytes(b"half")
    with OutputFolder.open(tmp_path / "out", inputs=[]) as folder:
        assert not abandoned.exists() and folder.staging.is_dir()


@pytest.mark.parametrize("moment", ["model.pt", "model.onnx", "report.json"])
def test_a_run_killed_while_writing_leaves_the_previous_complete_outputs(tmp_path: Path, moment: str) -> None:
    out, pipeline = tmp_path / "out", write_pipeline(tmp_path, CNN_PIPELINE)
    assert cli("run", pipeline, "-o", out).exit_code == 0
    before = digests(out)
    process = subprocess.Popen(
        [sys.executable, "-m", "prunecli", "run", str(pipeline), "-o", str(out), "--seed", "1"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _kill_when_staged(process, tmp_path, moment)
    assert process.returncode == -signal.SIGKILL  # killed mid-write, not finished
    if digests(out) != before:  # the kill came after the swap: then the new set is whole
        assert_complete(out)


def _kill_when_staged(process: subprocess.Popen, folder: Path, name: str, *, timeout_s: float = 120) -> None:
    """SIGKILL ``process`` as soon as a file ``name`` shows up in a staging folder under ``folder``."""
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and time.monotonic() < deadline:
        staged = f".out.prunecli-staging-*/{name}"
        being_written = f".out.prunecli-staging-*/.{Path(name).stem}.*"  # atomic writes' temporary names
        if any(folder.glob(staged)) or any(folder.glob(being_written)):
            break
        time.sleep(0.001)
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()


def _crash(staging: Path, path: Path) -> None:
    raise OSError("disk full")

"""``prunecli batch`` / ``batch-merge`` on the sample models with a structure-only pipeline.

One batch (CNN, MLP from a manifest with its own arch and --set, a broken file; --jobs 2) is run
once for the module; a batch killed halfway and resumed, shards run from scratch and merged, and
the JUnit files (validated against tests/data/junit.xsd) are checked against it.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import IO, Any

import numpy as np
import psutil
import pytest
import xmlschema
import yaml
from typer.testing import CliRunner

from prunecli.batch.junit import junit_xml
from prunecli.batch.models import expand_models, select_shard
from prunecli.batch.rows import VOLATILE, BatchRow
from prunecli.cli.app import app
from prunecli.errors import InputError
from tests.conftest import REPO, SAMPLES

PIPELINE = {
    "version": 1,
    "model": {"arch": str(SAMPLES / "archs.py") + ":DigitsCNN", "input_shape": [1, 1, 8, 8]},
    "data": {"format": "npz", "eval": str(SAMPLES / "digits_val.npz")},
    "steps": [{"kind": "score", "criterion": "l2"}, {"kind": "select", "ratio": 0.5, "scope": "local",
              "ignore": ["fc"]}, {"kind": "prune"}],
    "latency": {"repeats": 2, "warmup": 0, "backends": ["torch"]},
    "gates": {"min_macs_reduction": 0.3},
}  # fmt: skip


JUNIT_XSD = Path(__file__).parent / "data" / "junit.xsd"


def invoke(*args: str | Path, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, [str(arg) for arg in args], env=env)


@functools.cache
def junit_schema() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(JUNIT_XSD)


def valid_junit(source: Path | IO[bytes]) -> ElementTree.Element:
    """The root of a JUnit document that validates against the CI schema and whose counts add up."""
    junit_schema().validate(source)
    if not isinstance(source, Path):
        source.seek(0)
    root = ElementTree.parse(source).getroot()
    assert root.tag == "testsuites"
    for suite in root.findall("testsuite"):
        cases = suite.findall("testcase")
        assert int(suite.get("tests")) == len(cases)
        for kind in ("failure", "error"):
            assert int(suite.get(f"{kind}s")) == sum(case.find(kind) is not None for case in cases)
    return root


def run_case(root: ElementTree.Element, model: str) -> ElementTree.Element:
    return root.find(f"testsuite/testcase[@classname='prunecli.batch.{model}'][@name='run']")


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The pipeline, the model arguments and one full batch run (--jobs 2, --junit) in a module folder."""
    folder = tmp_path_factory.mktemp("batch")
    pipeline = folder / "structure.yaml"
    pipeline.write_text(yaml.safe_dump(PIPELINE, sort_keys=False))
    (folder / "broken.pt").write_bytes(b"not a checkpoint")
    manifest = folder / "zoo.yaml"
    manifest.write_text(yaml.safe_dump([{"name": "mlp", "path": str(SAMPLES / "digits_mlp.pt"),
                                         "arch": str(SAMPLES / "archs.py") + ":DigitsMLP",
                                         "set": ["steps.1.ignore=[]"]}]))  # fmt: skip
    models = [str(SAMPLES / "digits_cnn.pt"), str(manifest), str(folder / "broken.pt")]
    out = folder / "full"
    result = invoke("batch", pipeline, *models, "-o", out, "--jobs", "2", "--junit", folder / "junit.xml", "--json")
    return {"folder": folder, "pipeline": pipeline, "models": models, "out": out, "result": result,
            "summary": json.loads(result.stdout)}  # fmt: skip


def stable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{key: value for key, value in row.items() if key not in VOLATILE} for row in rows]


def test_jobs_2_records_the_broken_model_and_completes_the_others(case: dict[str, Any]) -> None:
    summary, out = case["summary"], case["out"]
    assert case["result"].exit_code == 2 == summary["exit_code"]
    rows = {row["name"]: row for row in summary["rows"]}
    assert [rows[name]["status"] for name in ("broken", "digits_cnn", "mlp")] == ["bad_input", "passed", "passed"]
    assert "broken.pt" in rows["broken"]["error"] and rows["broken"]["exit_code"] == 2
    for name in ("digits_cnn", "mlp"):
        report = json.loads((out / name / "report.json").read_text())
        assert rows[name]["params_after"] == report["pruned"]["params"] < rows[name]["params_before"]
        assert rows[name]["gates"] == {"min_macs_reduction": True} and rows[name]["accuracy_after"] is not None
    assert rows["mlp"]["params_before"] == 17226  # the manifest's arch (DigitsMLP) was used
    assert not (out / "broken").exists()
    assert json.loads((out / "summary.json").read_text()) == summary
    assert (out / "summary.csv").read_text().count("\n") == 4
    assert "a model was bad input" in (out / "summary.md").read_text()


def test_junit_has_a_case_per_model_and_gate(case: dict[str, Any]) -> None:
    root = valid_junit(case["folder"] / "junit.xml")  # passed and bad-input models
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert root.tag == "testsuites" and int(suite.get("tests")) == len(cases) == 5
    failed = [(c.get("classname"), c.get("name")) for c in cases if c.find("failure") is not None]
    assert failed == [("prunecli.batch.broken", "run")] and suite.get("failures") == "1"
    assert ("prunecli.batch.mlp", "gate min_macs_reduction") in [(c.get("classname"), c.get("name")) for c in cases]
    assert run_case(root, "mlp").findtext("system-out").startswith(f"output: {case['out'] / 'mlp'}\nparams: 17226 -> ")


def test_junit_of_a_crash_validates() -> None:
    """A crashed model (no report; its line in <error>) next to a gate failure, escaped where XML needs it."""
    rows = [BatchRow(name="crash", model="crash.pt", status="error", exit_code=3, error="internal error: <&> 'x'"),
            BatchRow(name="gated", model="gated.pt", status="gate_failed", exit_code=1, params_before=10,
                     params_after=5, gates={"max_accuracy_drop": False, "min_macs_reduction": True})]  # fmt: skip
    root = valid_junit(io.BytesIO(junit_xml(rows)))
    error = run_case(root, "crash").find("error")
    assert (error.get("type"), error.text) == ("error", "internal error: <&> 'x'")
    failed = [case.get("name") for case in root.iter("testcase") if case.find("failure") is not None]
    assert failed == ["gate max_accuracy_drop"] and run_case(root, "gated").find("failure") is None


def test_a_batch_killed_halfway_resumes_without_redoing_finished_models(case: dict[str, Any], tmp_path: Path) -> None:
    """SIGTERM the batch process once digits_cnn is done and mlp's run has started, then --resume."""
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "prunecli", "batch", str(case["pipeline"]), *case["models"][:2], "-o", str(out),
               "--jobs", "1", "--threads", "1", "--json"]  # fmt: skip
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    children: list[psutil.Process] = []
    deadline = time.monotonic() + 180
    while not children and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        if (out / ".batch-rows" / "digits_cnn.json").exists():
            children = psutil.Process(process.pid).children(recursive=True)  # mlp's prunecli run
    process.send_signal(signal.SIGTERM)
    stderr = process.communicate(timeout=60)[1].decode()
    assert children and process.returncode == 130 and "error: interrupted" in stderr
    assert not any(child.is_running() for child in children)  # the batch killed the run it had started
    assert not (out / ".batch-rows" / "mlp.json").exists() and not (out / "mlp" / "report.json").exists()
    kept = (out / "digits_cnn" / "report.json").stat().st_mtime_ns
    result = invoke("batch", case["pipeline"], *case["models"][:2], "-o", out, "--resume", "--threads", "1", "--json")
    rows = {row["name"]: row for row in json.loads(result.stdout)["rows"]}
    assert result.exit_code == 0 and rows["digits_cnn"]["resumed"] and not rows["mlp"]["resumed"]
    assert (out / "digits_cnn" / "report.json").stat().st_mtime_ns == kept
    assert (out / "mlp" / "report.json").is_file() and rows["mlp"]["status"] == "passed"
    assert stable(list(rows.values())) == stable(case["summary"]["rows"][1:])


def test_shards_run_from_scratch_merge_to_the_full_rows(case: dict[str, Any], tmp_path: Path) -> None:
    """--shard 1/2 and --shard 2/2 of (digits_cnn, broken), each run in an empty folder (as CI matrix jobs do);
    merged, the rows are the full run's."""
    shards = [tmp_path / "shard1", tmp_path / "shard2"]
    models = [case["models"][0], case["models"][2]]
    outputs = [json.loads(invoke("batch", case["pipeline"], *models, "-o", shard, "--shard", f"{index}/2", "--threads",
                                 "1", "--json").stdout) for index, shard in enumerate(shards, start=1)]  # fmt: skip
    assert [[row["name"] for row in output["rows"]] for output in outputs] == [["broken"], ["digits_cnn"]]
    assert [output["shard"] for output in outputs] == ["1/2", "2/2"]
    assert not any(row["resumed"] for output in outputs for row in output["rows"])
    step_summary = tmp_path / "step_summary.md"
    step_summary.write_text("earlier\n")
    merged = invoke("batch-merge", *shards, "-o", tmp_path / "merged", "--json",
                    env={"GITHUB_STEP_SUMMARY": str(step_summary)})  # fmt: skip
    document = json.loads(merged.stdout)
    assert merged.exit_code == 2 == document["exit_code"]
    assert stable(document["rows"]) == stable(case["summary"]["rows"][:2])
    assert step_summary.read_text().startswith("earlier\n## prunecli batch")
    again = invoke("batch-merge", shards[0], shards[0], "-o", tmp_path / "twice")
    assert again.exit_code == 2 and "in two summaries" in again.stderr


def test_models_expand_and_shard_deterministically(tmp_path: Path) -> None:
    manifest = tmp_path / "zoo.csv"
    manifest.write_text("path,input_shape,set,memory_limit\ndigits_cnn.pt,\"[1, 1, 8, 8]\",steps.1.ratio=0.3,2.5\n")
    entries = expand_models([str(manifest), "timm:test_vit", str(SAMPLES / "digits_m*.pt")])
    assert [entry.name for entry in entries] == ["digits_cnn", "digits_mlp", "test_vit"]
    assert entries[0].path == tmp_path / "digits_cnn.pt"  # manifest paths start at the manifest's folder
    assert [entry.memory_limit_gb for entry in entries] == [2.5, None, None]
    (tmp_path / "bad.yaml").write_text("- {timm: resnet18, memory_limit: lots}\n")
    with pytest.raises(InputError, match="entry 1: memory_limit must be a positive number of GB"):
        expand_models([str(tmp_path / "bad.yaml")])
    with pytest.raises(InputError, match="two models are named 'digits_cnn'"):
        expand_models([str(manifest), str(SAMPLES / "*.pt")])
    entries = expand_models([str(manifest), "timm:test_vit", "timm:b", "timm:a"])
    assert entries[2].overrides == ("model.input_shape=[1, 1, 8, 8]", "steps.1.ratio=0.3")
    halves = [select_shard(entries, shard=f"{k}/2") for k in (1, 2)]
    assert [e.name for e in halves[0]] == ["a", "digits_cnn"] and [e.name for e in halves[1]] == ["b", "test_vit"]
    with pytest.raises(InputError, match="K must be between 1 and N"):
        select_shard(entries, shard="3/2")


def test_a_model_past_its_timeout_is_recorded(case: dict[str, Any], tmp_path: Path) -> None:
    result = invoke("batch", case["pipeline"], case["models"][0], "-o", tmp_path, "--timeout", "1", "--junit",
                    tmp_path / "junit.xml", "--json")  # fmt: skip
    (row,) = json.loads(result.stdout)["rows"]
    assert result.exit_code == 3
    assert (row["status"], row["exit_code"], row["error"]) == ("timeout", 124, "timed out after 1 s")
    error = run_case(valid_junit(tmp_path / "junit.xml"), "digits_cnn").find("error")
    assert error is not None and error.get("type") == "timeout"


def test_a_model_past_its_memory_limit_is_killed_and_recorded(case: dict[str, Any], tmp_path: Path) -> None:
    """--memory-limit 8 for the batch, 0.1 GB in the manifest for one model: that one is killed, the other ends."""
    manifest = tmp_path / "zoo.yaml"
    manifest.write_text(yaml.safe_dump([
        {"name": "tiny", "path": str(SAMPLES / "digits_cnn.pt"), "memory_limit": 0.1},
        {"name": "gated", "path": str(SAMPLES / "digits_cnn.pt"), "set": ["gates.min_macs_reduction=0.99"]},
    ]))  # fmt: skip
    result = invoke("batch", case["pipeline"], manifest, "-o", tmp_path / "out", "--jobs", "2", "--memory-limit", "8",
                    "--junit", tmp_path / "junit.xml", "--json")  # fmt: skip
    rows = {row["name"]: row for row in json.loads(result.stdout)["rows"]}
    tiny, gated = rows["tiny"], rows["gated"]
    assert result.exit_code == 3 and (tiny["status"], tiny["exit_code"]) == ("memory", 3)
    assert tiny["peak_rss_mb"] >= 0.1 * 1024  # the kernel's peak: it may have grown past the limit within a poll
    peak = re.fullmatch(r"exceeded the memory limit of 0\.1 GB \(peak ([\d.]+) GB\); raise --memory-limit .*",
                        tiny["error"])  # fmt: skip
    assert peak and abs(float(peak[1]) - tiny["peak_rss_mb"] / 1024) < 0.01
    assert not (tmp_path / "out" / "tiny" / "report.json").exists()
    assert (gated["status"], gated["gates"]) == ("gate_failed", {"min_macs_reduction": False})
    assert 150 < gated["peak_rss_mb"] < 8 * 1024  # a whole run's measured peak: python, torch, the model
    root = valid_junit(tmp_path / "junit.xml")  # memory and gate-failed models
    assert run_case(root, "tiny").find("error").get("type") == "memory"
    assert f"peak RSS: {gated['peak_rss_mb']:g} MB" in run_case(root, "gated").findtext("system-out")
    assert "| tiny | memory | 3 |" in (tmp_path / "out" / "summary.md").read_text()


@pytest.mark.zoo
def test_timm_models_run_with_random_weights(tmp_path: Path, timm_module: Any) -> None:
    inputs = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype("float32")
    np.savez(tmp_path / "rgb.npz", inputs=inputs, labels=[0, 1, 2, 3])
    pipeline = {**PIPELINE, "model": {"input_shape": [1, 3, 32, 32]}, "gates": {},
                "data": {"format": "npz", "eval": str(tmp_path / "rgb.npz")}}  # fmt: skip
    pipeline["steps"] = [*PIPELINE["steps"][:1], {"kind": "select", "ratio": 0.5, "scope": "local"}, {"kind": "prune"}]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(pipeline))
    (tmp_path / "zoo.yaml").write_text(yaml.safe_dump([{"timm": "test_efficientnet", "kwargs": {"num_classes": 4}}]))
    result = invoke("batch", tmp_path / "p.yaml", tmp_path / "zoo.yaml", "timm:no_such_net", "-o", tmp_path / "o",
                    "--jobs", "2", "--json")  # fmt: skip
    rows = {row["name"]: row for row in json.loads(result.stdout)["rows"]}
    row = rows["test_efficientnet"]
    assert row["status"] == "passed" and row["model"] == "timm:test_efficientnet"
    assert rows["test_efficientnet"]["params_after"] < rows["test_efficientnet"]["params_before"]
    assert rows["no_such_net"]["status"] == "bad_input" and "unknown timm architecture" in rows["no_such_net"]["error"]

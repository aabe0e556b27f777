"""``prunecli batch`` / ``batch-merge`` on the sample models with a structure-only pipeline.

One batch (CNN, MLP from a manifest with its own arch and --set, a broken file; --jobs 2) is run
once for the module; resume, shards and JUnit are checked against it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from prunecli.batch.models import expand_models, select_shard
from prunecli.batch.rows import VOLATILE
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


def invoke(*args: str | Path, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, [str(arg) for arg in args], env=env)


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
    root = ElementTree.parse(case["folder"] / "junit.xml").getroot()
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert root.tag == "testsuites" and int(suite.get("tests")) == len(cases) == 5
    failed = [(c.get("classname"), c.get("name")) for c in cases if c.find("failure") is not None]
    assert failed == [("prunecli.batch.broken", "run")] and suite.get("failures") == "1"
    assert ("prunecli.batch.mlp", "gate min_macs_reduction") in [(c.get("classname"), c.get("name")) for c in cases]


def test_resume_skips_complete_models(case: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    shutil.copytree(case["out"], out)
    (out / "mlp" / "report.json").unlink()  # a half-finished batch: mlp's outputs are not valid
    kept = (out / "digits_cnn" / "report.json").stat().st_mtime_ns
    result = invoke("batch", case["pipeline"], *case["models"][:2], "-o", out, "--resume", "--json")
    rows = {row["name"]: row for row in json.loads(result.stdout)["rows"]}
    assert result.exit_code == 0 and rows["digits_cnn"]["resumed"] and not rows["mlp"]["resumed"]
    assert (out / "digits_cnn" / "report.json").stat().st_mtime_ns == kept
    assert (out / "mlp" / "report.json").is_file() and rows["mlp"]["status"] == "passed"
    assert stable(list(rows.values())) == stable(case["summary"]["rows"][1:])


def test_shards_merged_give_the_full_rows(case: dict[str, Any], tmp_path: Path) -> None:
    """Shards resume from copies of the full run, with one finished model removed so that each shard runs one."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    shards = [tmp_path / "shard1", tmp_path / "shard2"]
    for shard in shards:
        shutil.copytree(case["out"], shard)
    shutil.rmtree(shards[1] / "digits_cnn")  # shard 2/2 runs digits_cnn again; shard 1/2 runs broken again
    processes = [
        subprocess.Popen([sys.executable, "-m", "prunecli", "batch", str(case["pipeline"]), *case["models"], "-o",
                          str(shard), "--shard", f"{index}/2", "--resume", "--json"], cwd=REPO, env=environment,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for index, shard in enumerate(shards, start=1)
    ]  # fmt: skip
    outputs = [json.loads(process.communicate(timeout=120)[0]) for process in processes]
    assert [[row["name"] for row in output["rows"]] for output in outputs] == [["broken", "mlp"], ["digits_cnn"]]
    assert [row["resumed"] for output in outputs for row in output["rows"]] == [False, True, False]
    step_summary = tmp_path / "step_summary.md"
    step_summary.write_text("earlier\n")
    merged = invoke("batch-merge", *shards, "-o", tmp_path / "merged", "--json",
                    env={"GITHUB_STEP_SUMMARY": str(step_summary)})  # fmt: skip
    document = json.loads(merged.stdout)
    assert merged.exit_code == 2 == document["exit_code"]
    assert stable(document["rows"]) == stable(case["summary"]["rows"])
    assert step_summary.read_text().startswith("earlier\n## prunecli batch")
    again = invoke("batch-merge", shards[0], shards[0], "-o", tmp_path / "twice")
    assert again.exit_code == 2 and "in two summaries" in again.stderr


def test_models_expand_and_shard_deterministically(tmp_path: Path) -> None:
    manifest = tmp_path / "zoo.csv"
    manifest.write_text("path,input_shape,set\ndigits_cnn.pt,\"[1, 1, 8, 8]\",steps.1.ratio=0.3\n")
    entries = expand_models([str(manifest), "timm:test_vit", str(SAMPLES / "digits_m*.pt")])
    assert [entry.name for entry in entries] == ["digits_cnn", "digits_mlp", "test_vit"]
    assert entries[0].path == tmp_path / "digits_cnn.pt"  # manifest paths start at the manifest's folder
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
    error = ElementTree.parse(tmp_path / "junit.xml").getroot().find("testsuite/testcase/error")
    assert error is not None and error.get("type") == "timeout"


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

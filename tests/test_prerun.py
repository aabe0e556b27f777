"""One pre-run check: ``validate`` and ``run`` refuse the same pipelines, before any work, in one line."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import SAMPLES
from tests.test_end_to_end import CNN_PIPELINE, cli, write_pipeline

FINETUNE = "  - {kind: finetune, epochs: 1}\n"


def _edit(old: str, new: str):
    return lambda text: text.replace(old, new)


PRUNE = "  - {kind: prune}\n"


def _after_prune(extra: str):
    return lambda text: text.replace(PRUNE, PRUNE + extra)


BAD_PIPELINES = {
    "arch-typo": (_edit("archs.py:DigitsCNN", "archs.py:DigitCNN"), "no callable 'DigitCNN'"),
    "finetune-without-train": (
        lambda text: _after_prune(FINETUNE)(text.replace(" train: SAMPLES/digits_train.npz,", "")),
        "a finetune step needs training data",
    ),
    "l1-bn-onnx": (
        lambda text: _after_prune("  - {kind: regularize, penalty: l1_bn, strength: 1.0e-4}\n")(
            text.replace("pt, arch: SAMPLES/archs.py:DigitsCNN", "onnx")
        ),
        "penalty l1_bn reads the scales of normalisation nodes and this ONNX graph has none",
    ),
    "ignore-typo": (
        _edit("ratio: 0.5}", "ratio: 0.5, ignore: [fcc]}"),
        "'fcc' matches no module of the model; did you mean 'fc'?",
    ),
    "min-channels": (_edit("ratio: 0.5}", "ratio: 0.5, min_channels: 4096}"), "nothing would be pruned"),
    "evaluate-name-taken": (_after_prune("  - {kind: evaluate, name: pruned}\n"), "'pruned' is taken by the report"),
    "evaluate-name-twice": (_after_prune("  - {kind: evaluate}\n" * 2), "another evaluate step's name"),
}


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("case", sorted(BAD_PIPELINES))
def test_validate_and_run_refuse_the_same_pipelines_before_work(case: str, command: str, tmp_path: Path) -> None:
    edit, expected = BAD_PIPELINES[case]
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(edit(CNN_PIPELINE).replace("SAMPLES", str(SAMPLES)))
    arguments = ["-o", tmp_path / "out"] if command == "run" else []
    started = time.perf_counter()
    result = cli(command, pipeline, *arguments)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert time.perf_counter() - started < 10  # before any tracing, training or measuring
    assert not (tmp_path / "out").exists()


def test_validate_accepts_what_run_accepts(tmp_path: Path) -> None:
    pipeline = write_pipeline(tmp_path, CNN_PIPELINE.replace("ratio: 0.5}", "ratio: 0.5, ignore: [fc, 'stem_*']}"))
    result = cli("validate", pipeline)
    assert result.exit_code == 0, result.output
    assert cli("run", pipeline, "-o", tmp_path / "out").exit_code == 0

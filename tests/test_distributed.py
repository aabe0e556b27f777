"""Fine-tuning on several processes (torchrun): 2 gloo ranks on CPU against 1 process, and the pieces.

The torchrun test runs ``configs/digits_cnn_torchrun.yaml`` (regularize, prune, sparsify, distilled
fine-tuning) with ``torchrun --standalone --nproc-per-node 2`` and in this process, and compares.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import prunecli
from prunecli.config.loading import load_pipeline
from prunecli.data.dataset import batches, make_split
from prunecli.distributed import World, compare_fingerprints, per_rank_batch_size, process_group, structure_fingerprint
from prunecli.errors import DistributedMismatchError, InputError
from prunecli.finetune.sharding import DataParallel
from prunecli.pipeline.checks import check_pipeline
from tests.conftest import CONFIGS, REPO, load_sample_cnn

PIPELINE = CONFIGS / "digits_cnn_torchrun.yaml"


def _torchrun(*args: str, cwd: Path) -> subprocess.Popen[str]:
    """Start ``python -m torch.distributed.run --standalone --nproc-per-node 2 -m prunecli ARGS`` (loopback gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one machine: no network needed, whatever the hostname resolves to
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    return subprocess.Popen([*command, "-m", "prunecli", *args], cwd=cwd, env=env, text=True, **pipes)


def test_torchrun_two_ranks_match_one_process(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    ranks = _torchrun("run", str(PIPELINE), "-o", str(outputs / "ranks2"), "--device", "cpu", cwd=tmp_path)
    single = prunecli.run(PIPELINE, output=outputs / "ranks1", device="cpu")  # meanwhile, in this process
    stdout, stderr = ranks.communicate(timeout=300)
    assert ranks.returncode == 0, stderr[-3000:]

    # only rank 0 wrote: one output folder, no staging folder or anything else from another rank
    assert sorted(path.name for path in outputs.iterdir()) == ["ranks1", "ranks2"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["outputs"]
    assert stdout.count("wrote ") == 1 and "prunecli report" in stdout
    report = json.loads((outputs / "ranks2" / "report.json").read_text())

    check = report["distributed"]["structure_check"]
    assert report["distributed"]["world_size"] == 2 and report["distributed"]["backend"] == "gloo"
    assert check["passed"] is True and check["ranks"] == 2
    assert single["distributed"] == {"world_size": 1, "backend": None, "structure_check": None}
    # same pruned structure, the sparsify masks held through the DDP fine-tuning, accuracy within a point
    assert [group["kept"] for group in report["groups"]] == [group["kept"] for group in single["groups"]]
    assert [group["kept"] for group in report["groups"]] != [group["channels"] for group in report["groups"]]
    assert report["sparsity"]["zeros"] == single["sparsity"]["zeros"] > 0
    assert report["stages"] == single["stages"]
    assert abs(report["finetuned"]["accuracy"] - single["finetuned"]["accuracy"]) <= 0.01
    assert report["finetuned"]["accuracy"] > report["sparsified"]["accuracy"] + 0.2  # it did train
    assert report["finetuned"]["latency_ms"]["p50"] > 0  # timed on rank 0
    assert all(gate["passed"] for gate in report["gates"].values())
    markdown = (outputs / "ranks2" / "report.md").read_text()
    identical = f"identical on every rank (fingerprint {check['fingerprint'][:12]})"
    assert f"processes: 2 (torchrun, gloo); pruned structure {identical}" in markdown


def test_mismatching_fingerprints_raise_exit_3() -> None:
    same = structure_fingerprint(load_sample_cnn())
    compare_fingerprints([same, same], where="before fine-tuning")  # equal: no error
    with pytest.raises(DistributedMismatchError, match=r"differs between ranks before fine-tuning .*rank 2") as error:
        compare_fingerprints([same, same, "0" * 64], where="before fine-tuning")
    assert error.value.exit_code == 3
    assert "rank 0 " + same[:12] in str(error.value)


def test_fingerprint_sees_channels_and_masks() -> None:
    module = load_sample_cnn()
    pruned = copy.deepcopy(module)
    pruned.fc = torch.nn.Linear(64, 9)  # one output channel fewer
    mask = {"fc.weight": module.fc.weight.abs() > 0.01}
    fingerprints = {
        structure_fingerprint(module),
        structure_fingerprint(pruned),
        structure_fingerprint(module, mask),
        structure_fingerprint(module, {"fc.weight": module.fc.weight.abs() > 0.02}),
    }
    assert len(fingerprints) == 4
    assert structure_fingerprint(copy.deepcopy(module), mask) == structure_fingerprint(module, mask)


def test_ranks_share_the_global_permutation() -> None:
    split = make_split(torch.randn(21, 1, 8, 8).numpy(), torch.arange(21).numpy() % 10, source="test")
    single = list(batches(split, batch_size=8, shuffle=True, seed=3))  # 8, 8, 5 samples
    ranks = [DataParallel(world=World(rank=rank, size=2), model=torch.nn.Identity()) for rank in range(2)]
    shards = [list(parallel.shard(batches(split, batch_size=8, shuffle=True, seed=3))) for parallel in ranks]
    for index, (_, labels) in enumerate(single):
        halves = [shards[rank][index] for rank in range(2)]
        assert torch.equal(torch.cat([half[1] for half in halves]), labels)  # rank 0 first half, rank 1 the rest
        averaged = sum(weight * shard.float().mean() for _, shard, weight in halves) / 2  # what DDP's average gives
        assert averaged == pytest.approx(labels.float().mean())  # the global batch's mean, also when uneven
    assert [len(shard[1]) for shard in shards[0]] == [4, 4, 2] and [shard[2] for shard in shards[1]][-1] == 1.2
    assert ranks[0].batches_per_epoch(21, 8) == 3
    three = [DataParallel(world=World(rank=rank, size=3), model=torch.nn.Identity()) for rank in range(3)]
    tail = make_split(split.inputs[:17], split.labels[:17], source="test")  # 8, 8 and 1: too few for 3 ranks
    assert [len(labels) for _, labels, _ in three[2].shard(batches(tail, batch_size=8))] == [3, 3]
    assert three[0].batches_per_epoch(17, 8) == 2


def test_global_batch_must_split_over_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    assert per_rank_batch_size(64, World(rank=0, size=2)) == 32
    pipeline = load_pipeline(PIPELINE)
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_pipeline(pipeline, base_dir=CONFIGS)
    monkeypatch.setenv("WORLD_SIZE", "3")  # checked before any work, on every rank alike
    with pytest.raises(InputError, match="data.batch_size 64 does not split over 3 processes; use a multiple of 3"):
        check_pipeline(pipeline, base_dir=CONFIGS)


def test_world_size_without_torchrun_is_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(InputError, match="RANK, MASTER_ADDR, MASTER_PORT are not set; launch with torchrun"):
        with process_group():
            pass
    monkeypatch.setenv("WORLD_SIZE", "1")
    with process_group() as world:  # one process: no group, rank 0 of 1
        assert world == World() and world.is_main and not world.distributed

"""Runs launched by torchrun: one process per rank, fine-tuning shared, everything else checked identical.

``torchrun --nproc-per-node 2 -m prunecli run PIPELINE`` starts the same run on every rank. The
process group is opened from torchrun's environment (``WORLD_SIZE > 1``; ``RANK``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT`` as torchrun sets them, on one node or many)::

    with process_group() as world:                     # gloo for CPU tensors, NCCL for CUDA ones
        ...                                            # every rank loads, scores, selects, prunes alike
        check_structure(world, state_fingerprint(state), where="at the end of the run")
        outcome = on_main(world, write_outputs, exit_code=...)  # rank 0 alone; the others wait, get its code

Pruning runs identically on every rank (same seed, same data, deterministic code); the check
all-gathers a fingerprint of the pruned structure and raises ``DistributedMismatchError`` (exit 3)
when ranks differ. Fine-tuning is the only work split between ranks (``prunecli.finetune.sharding``).
torchrun stops every rank as soon as one exits with a non-zero code, so when rank 0's code is not
0 (a failed gate, an error) the other ranks exit with it only after rank 0's process has gone:
rank 0 shows its whole report or error, and torchrun's summary names rank 0 as the root cause.
Without torchrun (or with ``WORLD_SIZE=1``) the world is rank 0 of 1 and every function here is a
no-op: a single-process run does exactly what it did before.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from prunecli.errors import DistributedMismatchError, InputError, PruneCliError, RankFailedError

if TYPE_CHECKING:
    import torch

    from prunecli.pipeline.state import RunState

T = TypeVar("T")
INTERNAL = 3


@dataclass(frozen=True)
class World:
    """The processes of one run: this process's ``rank`` among ``size`` (rank 0 of 1 without torchrun).

    ``backend`` is the process group's (``gloo``, or ``cpu:gloo,cuda:nccl`` where NCCL exists),
    None when there is none. Rank 0 is the main process: the only one that times and writes.
    """

    rank: int = 0
    size: int = 1
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()
_outcome = {"code": 0}  # rank 0's exit code once broadcast (see ``on_main``); read when the group closes


@contextmanager
def process_group() -> Iterator[World]:
    """The run's world: under torchrun (``WORLD_SIZE > 1``) a process group opened here and closed on exit.

    CPU tensors go through gloo; where NCCL and a GPU per local rank exist, CUDA tensors go through
    NCCL and this process uses ``cuda:LOCAL_RANK`` (so a pipeline's ``device: cuda`` means that GPU).
    A process group that is already open (the CLI's, or the caller's own) is used as is and left open.
    """
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        yield current_world()
        return
    backend = "gloo"
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    if dist.is_nccl_available() and torch.cuda.is_available() and torch.cuda.device_count() >= local_ranks:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))  # a GPU per rank: cuda:LOCAL_RANK
        backend = "cpu:gloo,cuda:nccl"
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise InputError(
            f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
            "not set; launch with torchrun "
            "(torchrun --nproc-per-node N -m prunecli run ...) or unset WORLD_SIZE"
        )
    dist.init_process_group(backend=backend)  # env://: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT from torchrun
    world = current_world()
    try:
        yield world
    finally:
        if _outcome["code"] and not world.is_main:
            _wait_for_main_to_exit()
        _outcome["code"] = 0
        dist.destroy_process_group()


def _wait_for_main_to_exit() -> None:
    """Block until rank 0 has closed its connections: it never sends, so this ends when it is gone."""
    import torch
    import torch.distributed as dist

    try:
        dist.recv(torch.zeros(1), src=0)
    except RuntimeError:  # gloo: "Connection closed by peer", rank 0 has left
        return


def leaving_together(command: Callable[..., T]) -> Callable[..., T]:
    """Run a CLI command inside ``process_group()``, outside its error boundary (which prints errors).

    The group then closes after the command has printed its report or error: see the module docstring.
    """

    @functools.wraps(command)
    def wrapped(*args: Any, **kwargs: Any) -> T:
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(process_group())
            except InputError as error:  # outside the command's error boundary: the same one line, exit 2
                print(f"error: {error}", file=sys.stderr)
                raise SystemExit(error.exit_code) from None
            return command(*args, **kwargs)

    return wrapped


def current_world() -> World:
    """The world of the open process group (torch's), or ``SINGLE`` when there is none."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return SINGLE
    return World(rank=dist.get_rank(), size=dist.get_world_size(), backend=dist.get_backend())


def is_main_process() -> bool:
    """True on rank 0 and in a single-process run: the process that evaluates, times and writes."""
    return current_world().is_main


def on_main(world: World, work: Callable[[], T], *, exit_code: Callable[[T], int]) -> tuple[T | None, int]:
    """Run ``work`` on rank 0 alone; every rank gets rank 0's exit code: ``(result or None, code)``.

    The other ranks wait in a broadcast (blocked on a socket, using no CPU) while rank 0 works, so
    latency measured there is not disturbed. When ``work`` raises on rank 0, its exit code (2 bad
    input, 3 a bug) is sent before the error goes on; the other ranks then raise ``RankFailedError``
    with that code, so every process of the run exits alike.
    """
    if not world.distributed:
        result = work()
        return result, exit_code(result)
    if not world.is_main:
        code = _broadcast_code(None)
        if code > 1:  # rank 0 failed: 2 bad input, 3 a bug
            raise RankFailedError(code)
        return None, code
    try:
        result = work()
    except PruneCliError as error:
        _broadcast_code(error.exit_code)
        raise
    except BaseException:
        _broadcast_code(INTERNAL)
        raise
    code = exit_code(result)
    _broadcast_code(code)
    return result, code


def _broadcast_code(code: int | None) -> int:
    """Rank 0's exit code, sent from rank 0 (``code``) to every other rank (``None``)."""
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([-1 if code is None else code], dtype=torch.int64, device=control_device())
    dist.broadcast(tensor, src=0)
    _outcome["code"] = int(tensor.item())
    return _outcome["code"]


def control_device() -> str:
    """Where small tensors for collectives live: ``cuda`` for a pure NCCL group, else ``cpu`` (gloo)."""
    import torch.distributed as dist

    return "cuda" if dist.get_backend() == "nccl" else "cpu"


def check_structure(world: World, fingerprint: str, *, where: str) -> dict[str, Any] | None:
    """All-gather ``fingerprint`` from every rank; the check's record, or None in a single-process run.

    Raises ``DistributedMismatchError`` (exit 3) when the ranks' fingerprints differ.
    """
    if not world.distributed:
        return None
    import torch.distributed as dist

    gathered: list[Any] = [None] * world.size
    dist.all_gather_object(gathered, fingerprint)
    compare_fingerprints([str(value) for value in gathered], where=where)
    return {"passed": True, "fingerprint": fingerprint, "ranks": world.size, "where": where}


def compare_fingerprints(fingerprints: list[str], *, where: str) -> None:
    """Raise ``DistributedMismatchError`` unless every rank's fingerprint (index = rank) is rank 0's."""
    differing = [rank for rank, value in enumerate(fingerprints) if value != fingerprints[0]]
    if differing:
        shown = ", ".join(f"rank {rank} {fingerprints[rank][:12]}" for rank in [0, *differing[:3]])
        raise DistributedMismatchError(
            f"the pruned structure differs between ranks {where} ({shown}): pruning was not deterministic "
            "on every rank; rerun with --device cpu or a deterministic criterion, and report it with --debug output"
        )


def per_rank_batch_size(batch_size: int, world: World) -> int:
    """``batch_size / world.size``; ``InputError`` when the global batch does not split evenly over the ranks."""
    if batch_size % world.size:
        raise InputError(
            f"data.batch_size {batch_size} does not split over {world.size} processes; "
            f"use a multiple of {world.size} (it is the global batch, shared by all ranks)"
        )
    return batch_size // world.size


def check_global_batch(batch_size: int) -> None:
    """Before any work: under torchrun, ``InputError`` unless ``batch_size`` splits over ``WORLD_SIZE`` ranks."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1:
        per_rank_batch_size(batch_size, World(size=size))


def structure_fingerprint(module: torch.nn.Module, masks: Mapping[str, torch.Tensor] | None = None) -> str:
    """A hash of ``module``'s structure: every parameter's and buffer's name and shape, and the keep-masks' bits."""
    digest = hashlib.sha256()
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
    for name in sorted(masks or {}):
        mask = masks[name].detach().to("cpu").bool().contiguous()
        digest.update(f"mask {name}:".encode() + mask.numpy().tobytes())
    return digest.hexdigest()


def state_fingerprint(state: RunState) -> str:
    """The fingerprint of a run's pruned model: its structure (see above) and the kept channels of the plan."""
    masks = state.sparsity.masks if state.sparsity else None
    digest = hashlib.sha256()
    if state.module is not None:
        digest.update(structure_fingerprint(state.module, masks).encode())
    elif state.loaded.onnx_path is not None:
        digest.update(_onnx_structure(state.loaded.onnx_path).encode())
    kept = sorted((name, repr(sorted(channels.items()))) for name, channels in state.keep.items())
    digest.update(repr(kept).encode())
    return digest.hexdigest()


def _onnx_structure(path: Any) -> str:
    """Names and shapes of an ONNX file's initializers and the operator types of its nodes, in order."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = [f"{tensor.name}:{tuple(tensor.dims)}" for tensor in graph.initializer]
    return ";".join(initializers + [node.op_type for node in graph.node])


def distributed_report(world: World, structure_check: dict[str, Any] | None) -> dict[str, Any]:
    """The report's ``distributed`` entry: world size, backend and the structure check (None with one process)."""
    return {"world_size": world.size, "backend": world.backend, "structure_check": structure_check}

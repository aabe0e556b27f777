"""Remove chosen candidates from a module, imitate the removal with hooks, and check one against the other.

Surgery replaces modules: a removed block or layer becomes a ``PassThrough`` (an ``nn.Identity``
that accepts any call), the end of a removed branch a ``ZeroBranch``. Their parameters, MACs and
time are gone. The invariant every removal is checked against: the pruned model's outputs equal
the unmodified model's outputs with the branches zeroed (and removed layers bypassed) by hooks.
The replacements, as ``{module path: "identity" | "zero"}``, go into ``model.plan.json`` so that
loading the weights replays them (``replace_modules``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

from prunecli.errors import InputError
from prunecli.model_io.outputs import output_tensors
from prunecli.surgery.verify import Verification

if TYPE_CHECKING:
    from prunecli.blocks.candidates import BlockCandidate

IDENTITY, ZERO = "identity", "zero"  # what surgery puts in a module's place
BYPASS = "bypass"  # a reference hook: the module returns its input


class PassThrough(nn.Identity):
    """What a removed block or layer becomes: returns its first argument (keyword arguments are ignored)."""

    def forward(self, *args: object, **kwargs: object) -> object:
        return args[0]


class ZeroBranch(nn.Module):
    """What the last module of a removed residual branch becomes: zeros shaped like its first argument."""

    def forward(self, *args: torch.Tensor, **kwargs: object) -> torch.Tensor:
        return torch.zeros_like(args[0])


_REPLACEMENTS = {IDENTITY: PassThrough, ZERO: ZeroBranch}


def remove_candidates(module: nn.Module, chosen: Sequence[BlockCandidate]) -> tuple[nn.Module, dict[str, str]]:
    """A copy of ``module`` without the ``chosen`` candidates, and the replacements made (path -> kind)."""
    replacements = {path: kind for candidate in chosen for path, kind in candidate.replacements.items()}
    pruned = copy.deepcopy(module)
    replace_modules(pruned, replacements)
    return pruned, replacements


def replace_modules(module: nn.Module, replacements: Mapping[str, str]) -> None:
    """Put a ``PassThrough`` (``"identity"``) or a ``ZeroBranch`` (``"zero"``) at each path, in place.

    Paths inside an already replaced module are skipped (a plan merged from two runs may hold both).
    """
    done: list[str] = []
    for path in sorted(replacements, key=lambda name: name.count(".")):
        if any(path.startswith(outer + ".") for outer in done):
            continue
        kind = replacements[path]
        if kind not in _REPLACEMENTS or not path:
            raise InputError(f"cannot replace module '{path}' by '{kind}'; use 'identity' or 'zero' on a submodule")
        try:
            module.get_submodule(path)
        except AttributeError:
            raise InputError(f"the model has no module '{path}' to replace; check model.arch") from None
        module.set_submodule(path, _REPLACEMENTS[kind]())
        done.append(path)


@contextmanager
def swapped(module: nn.Module, replacements: Mapping[str, str]) -> Iterator[nn.Module]:
    """``module`` with ``replacements`` made in place (no copy), the original modules put back on exit."""
    saved = {path: module.get_submodule(path) for path in replacements}
    try:
        replace_modules(module, replacements)
        yield module
    finally:
        for path, original in saved.items():
            module.set_submodule(path, original)


@contextmanager
def imitated(module: nn.Module, candidates: Sequence[BlockCandidate]) -> Iterator[nn.Module]:
    """``module`` with the candidates' removal imitated by forward hooks (branch ends zeroed, layers bypassed)."""
    reference = {path: kind for candidate in candidates for path, kind in candidate.reference.items()}
    handles = [module.get_submodule(path).register_forward_hook(_hook(kind)) for path, kind in reference.items()]
    try:
        yield module
    finally:
        for handle in handles:
            handle.remove()


def _hook(kind: str):  # forward hooks: a returned value replaces the module's output
    if kind == BYPASS:
        return lambda _module, args, _output: args[0]
    return lambda _module, _args, output: zeroed(output)


def zeroed(output: object) -> object:
    """``output`` with every tensor in it (alone, or in a tuple or list) replaced by zeros of its shape."""
    if isinstance(output, torch.Tensor):
        return torch.zeros_like(output)
    if isinstance(output, (tuple, list)):
        return type(output)(zeroed(item) for item in output)
    return output


def verify_removal(
    *, original: nn.Module, pruned: nn.Module, chosen: Sequence[BlockCandidate], inputs: torch.Tensor, tolerance: float
) -> Verification:
    """Compare ``pruned(inputs)`` with ``original(inputs)`` under ``imitated``; tolerance scales with the outputs."""
    with torch.no_grad():  # not inference_mode: some models cache tensors on their first forward
        with imitated(original.eval(), chosen) as reference:
            expected = output_tensors(reference(inputs))
        actual = output_tensors(pruned.eval()(inputs))
    return compare_outputs(expected, actual, tolerance=tolerance)


def trial_failure(
    module: nn.Module, candidate: BlockCandidate, *, inputs: torch.Tensor, tolerance: float,
    zero_shapes: Mapping[str, tuple[int, ...]],
) -> str | None:  # fmt: skip
    """Why removing ``candidate`` alone breaks the invariant on ``inputs`` (None: it holds); ``module`` is restored.

    ``zero_shapes`` are the output shapes of the modules that become ``ZeroBranch``: their zeros
    must have them (a broadcast of wrong-shaped zeros could hide in the outputs).
    """
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        with torch.no_grad(), swapped(module.eval(), candidate.replacements) as pruned:
            handles = [pruned.get_submodule(p).register_forward_hook(_shape_reader(p, shapes)) for p in zero_shapes]
            actual = output_tensors(pruned(inputs))
            for handle in handles:
                handle.remove()
    except Exception as error:  # the model's own code can fail in any way once its modules are replaced
        return f"the model fails without it ({type(error).__name__}: {str(error).splitlines()[0][:120]})"
    wrong = [path for path, shape in zero_shapes.items() if shapes.get(path) != tuple(shape)]
    if wrong:
        return f"{wrong[0]} would return zeros of shape {shapes.get(wrong[0])}, not {tuple(zero_shapes[wrong[0]])}"
    with torch.no_grad(), imitated(module, [candidate]) as reference:
        expected = output_tensors(reference(inputs))
    verdict = compare_outputs(expected, actual, tolerance=tolerance)
    return None if verdict.passed else f"without its modules the outputs differ by {verdict.max_abs_diff:.3g}"


def _shape_reader(path: str, shapes: dict[str, tuple[int, ...]]):
    def hook(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
        shapes[path] = tuple(output.shape)

    return hook


def compare_outputs(expected: list[torch.Tensor], actual: list[torch.Tensor], *, tolerance: float) -> Verification:
    """Largest absolute difference, passing within ``tolerance`` times the larger of 1 and the largest |output|."""
    if len(expected) != len(actual) or any(e.shape != a.shape for e, a in zip(expected, actual)):
        return Verification(float("inf"), tolerance, False)
    diff = max((float((e - a).abs().max()) for e, a in zip(expected, actual) if e.numel()), default=0.0)
    scale = max((float(e.abs().max()) for e in expected if e.numel()), default=1.0)
    return Verification(diff, tolerance, diff <= tolerance * max(1.0, scale))

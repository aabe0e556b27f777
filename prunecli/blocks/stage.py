"""The ``prune_blocks`` step on a run: find, score, choose, remove, verify, measure stage ``blocks_pruned``.

``state.blocks`` becomes the report's ``blocks`` entry::

    {"criterion": "loss", "batches": 4, "removed": ["layer1.1 (conv1..bn2)", ...],
     "candidates": [{"name", "kind", "modules", "params", "score", "removed", "ignored"}, ...],
     "verification": {"max_abs_diff", "tolerance", "passed"}, "note": None, "notes": [...]}

``note`` says why nothing was removed, when nothing was; ``notes`` why some residual adds or
branches are no candidates. ``state.replaced_modules`` collects the replacements for
``model.plan.json``; the channel graph is reset, so a later ``score`` traces the smaller model.
On an ONNX input (no ``state.module``) the same flow runs on the graph's residual branches
(``prunecli.blocks.onnx_stage``), and the pruned graph becomes the current model.
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Any, Protocol

from prunecli.blocks.candidates import BlockCandidate, CandidateSearch, find_candidates
from prunecli.blocks.scoring import choose, score_candidates, scoring_batches
from prunecli.blocks.surgery import remove_candidates, verify_removal
from prunecli.errors import VerificationError

if TYPE_CHECKING:
    from torch import nn

    from prunecli.config.schema import PruneBlocksStep
    from prunecli.pipeline.state import RunState
    from prunecli.surgery.verify import Verification

STAGE = "blocks_pruned"
GRAPH_BATCH = 2  # tracing batch: keeps the batch dimension apart from sizes of 1


def prune_blocks_stage(state: RunState, step: PruneBlocksStep) -> None:
    """Remove the step's lowest-scored candidates from the current model, verify, and measure the stage."""
    from prunecli.pipeline.measure import measure_stage

    if state.module is None:  # an ONNX input: residual branches of the graph (prunecli.blocks.onnx_stage)
        from prunecli.blocks.onnx_stage import OnnxBlocks

        removal: BlockRemoval = OnnxBlocks(state, step)
    else:
        removal = TorchBlocks(state, step)
    with state.timed("trace"):
        search = removal.find()
    state.blocks = {"criterion": step.criterion, "batches": step.batches, "removed": [], "candidates": [],
                    "verification": None, "note": None, "notes": search.notes}  # fmt: skip
    with state.timed("blocks"):
        _remove(state, step, search, removal)
    measure_stage(state, STAGE)


class BlockRemoval(Protocol):
    """``prune_blocks`` on one kind of model: find and score candidates, remove and verify, then commit."""

    def find(self) -> CandidateSearch: ...

    def score(self, eligible: list[BlockCandidate]) -> list[float]: ...

    def remove(self, chosen: list[BlockCandidate]) -> Verification: ...

    def commit(self) -> None: ...


class TorchBlocks:
    """``prune_blocks`` on ``state.module``: modules replaced by pass-throughs and zeros (``blocks.surgery``)."""

    def __init__(self, state: RunState, step: PruneBlocksStep) -> None:
        self.state, self.step = state, step
        self.pruned: nn.Module | None = None
        self.replaced: dict[str, str] = {}

    def find(self) -> CandidateSearch:
        return find_candidates(self.state.module, self.state.sample[:GRAPH_BATCH], kinds=self.step.candidates)

    def score(self, eligible: list[BlockCandidate]) -> list[float]:
        data = scoring_data(self.state, self.step)
        return score_candidates(self.state.module, eligible, criterion=self.step.criterion, data=data)

    def remove(self, chosen: list[BlockCandidate]) -> Verification:
        self.pruned, self.replaced = remove_candidates(self.state.module, chosen)
        return verify_removal(original=self.state.module, pruned=self.pruned, chosen=chosen,
                              inputs=self.state.sample, tolerance=self.step.tolerance)  # fmt: skip

    def commit(self) -> None:
        state = self.state
        state.module, state.graph, state.scores = self.pruned.to(state.device), None, None
        state.replaced_modules.update(self.replaced)
        drop_removed_masks(state, present={name for name, _ in state.module.named_parameters()})


def _remove(state: RunState, step: PruneBlocksStep, search: CandidateSearch, removal: BlockRemoval) -> None:
    entry = state.blocks
    eligible = [candidate for candidate in search.candidates if not is_ignored(candidate, step.ignore)]
    entry["candidates"] = _rows(search.candidates, eligible, scores=[], chosen=[])
    if not eligible:
        entry["note"] = _nothing_removable(search, step)
        return
    scores = removal.score(eligible)
    chosen = choose(eligible, scores, count=step.count, ratio=step.ratio)
    entry["candidates"] = _rows(search.candidates, eligible, scores=scores, chosen=chosen)
    if not chosen:
        entry["note"] = f"ratio {step.ratio:g} of {len(eligible)} candidates rounds down to none; nothing removed"
        return
    removed = [eligible[index] for index in chosen]
    verification = removal.remove(removed)
    entry["verification"] = verification.to_dict()
    if not verification.passed:
        raise VerificationError(
            f"the model without {', '.join(c.name for c in removed)} differs from the original with those "
            f"branches zeroed by {verification.max_abs_diff:.3g} (tolerance {step.tolerance:g}); this is a prunecli "
            "bug: please report it with --debug output"
        )
    entry["removed"] = [candidate.name for candidate in removed]
    removal.commit()


def is_ignored(candidate: BlockCandidate, patterns: list[str]) -> bool:
    """Whether an ``ignore`` glob matches one of the candidate's modules or a module containing one."""
    paths = set(candidate.replacements) | set(candidate.reference)
    names = {".".join(path.split(".")[:depth]) for path in paths for depth in range(1, path.count(".") + 2)}
    return any(fnmatch.fnmatchcase(name, pattern) for name in names for pattern in patterns)


def scoring_data(state: RunState, step: PruneBlocksStep) -> list:
    """The step's scoring batches: ``batches`` seeded batches of the train split (eval if none)."""
    split = state.data.train if state.data.train is not None else state.data.eval
    return scoring_batches(
        split, batch_size=state.pipeline.data.batch_size, count=step.batches, seed=state.seed, device=state.device
    )


def _rows(
    found: list[BlockCandidate], eligible: list[BlockCandidate], *, scores: list[float], chosen: list[int]
) -> list[dict[str, Any]]:
    """One report row per candidate found, in forward order; ignored ones have no score."""
    scored = {id(candidate): index for index, candidate in enumerate(eligible)}
    rows = []
    for candidate in found:
        index = scored.get(id(candidate))
        score = round(float(scores[index]), 6) if index is not None and scores else None
        rows.append({
            "name": candidate.name, "kind": candidate.kind, "modules": candidate.modules, "params": candidate.params,
            "score": score, "removed": index in chosen, "ignored": index is None,
        })  # fmt: skip
    return rows


def _nothing_removable(search: CandidateSearch, step: PruneBlocksStep) -> str:
    if search.candidates:
        return f"nothing removed: all {len(search.candidates)} candidates match ignore"
    why = "; ".join(search.notes[:3]) or "no candidate found"
    hint = "" if "layer" in step.candidates else "; add 'layer' to candidates to consider identity-shaped layers"
    return f"nothing removed: the model has no removable block ({why}){hint}"


def drop_removed_masks(state: RunState, *, present: set[str]) -> None:
    """Forget sparsify masks of weights (parameters, initializers) that left the model with their blocks."""
    if state.sparsity is None:
        return
    for name in [name for name in state.sparsity.masks if name not in present]:
        del state.sparsity.masks[name]

"""The ``prune_blocks`` step on a run: find, score, choose, remove, verify, measure stage ``blocks_pruned``.

``state.blocks`` becomes the report's ``blocks`` entry::

    {"criterion": "loss", "batches": 4, "removed": ["layer1.1 (conv1..bn2)", ...],
     "candidates": [{"name", "kind", "modules", "params", "score", "removed", "ignored"}, ...],
     "verification": {"max_abs_diff", "tolerance", "passed"}, "note": None, "notes": [...]}

``note`` says why nothing was removed, when nothing was; ``notes`` why some residual adds or
branches are no candidates. ``state.replaced_modules`` collects the replacements for
``model.plan.json``; the channel graph is reset, so a later ``score`` traces the smaller model.
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, Any

from prunecli.blocks.candidates import BlockCandidate, CandidateSearch, find_candidates
from prunecli.blocks.scoring import choose, score_candidates, scoring_batches
from prunecli.blocks.surgery import remove_candidates, verify_removal
from prunecli.errors import InputError, VerificationError

if TYPE_CHECKING:
    from prunecli.config.schema import PruneBlocksStep
    from prunecli.pipeline.state import RunState

STAGE = "blocks_pruned"
GRAPH_BATCH = 2  # tracing batch: keeps the batch dimension apart from sizes of 1


def prune_blocks_stage(state: RunState, step: PruneBlocksStep) -> None:
    """Remove the step's lowest-scored candidates from ``state.module``, verify, and measure the stage."""
    from prunecli.pipeline.measure import measure_stage

    if state.module is None:
        raise InputError("prune_blocks needs a PyTorch model; pass the checkpoint (state_dict + model.arch)")
    with state.timed("trace"):
        search = find_candidates(state.module, state.sample[:GRAPH_BATCH], kinds=step.candidates)
    state.blocks = {"criterion": step.criterion, "batches": step.batches, "removed": [], "candidates": [],
                    "verification": None, "note": None, "notes": search.notes}  # fmt: skip
    with state.timed("blocks"):
        _remove(state, step, search)
    measure_stage(state, STAGE)


def _remove(state: RunState, step: PruneBlocksStep, search: CandidateSearch) -> None:
    entry = state.blocks
    eligible = [candidate for candidate in search.candidates if not is_ignored(candidate, step.ignore)]
    entry["candidates"] = _rows(search.candidates, eligible, scores=[], chosen=[])
    if not eligible:
        entry["note"] = _nothing_removable(search, step)
        return
    scores = score_candidates(state.module, eligible, criterion=step.criterion, data=_data(state, step))
    chosen = choose(eligible, scores, count=step.count, ratio=step.ratio)
    entry["candidates"] = _rows(search.candidates, eligible, scores=scores, chosen=chosen)
    if not chosen:
        entry["note"] = f"ratio {step.ratio:g} of {len(eligible)} candidates rounds down to none; nothing removed"
        return
    removed = [eligible[index] for index in chosen]
    pruned, replaced = remove_candidates(state.module, removed)
    verification = verify_removal(
        original=state.module, pruned=pruned, chosen=removed, inputs=state.sample, tolerance=step.tolerance
    )
    entry["verification"] = verification.to_dict()
    if not verification.passed:
        raise VerificationError(
            f"the model without {', '.join(c.name for c in removed)} differs from the original with those "
            f"branches zeroed by {verification.max_abs_diff:.3g} (tolerance {step.tolerance:g}); this is a prunecli "
            "bug: please report it with --debug output"
        )
    entry["removed"] = [candidate.name for candidate in removed]
    state.module, state.graph, state.scores = pruned.to(state.device), None, None
    state.replaced_modules.update(replaced)
    _drop_removed_masks(state)


def is_ignored(candidate: BlockCandidate, patterns: list[str]) -> bool:
    """Whether an ``ignore`` glob matches one of the candidate's modules or a module containing one."""
    paths = set(candidate.replacements) | set(candidate.reference)
    names = {".".join(path.split(".")[:depth]) for path in paths for depth in range(1, path.count(".") + 2)}
    return any(fnmatch.fnmatchcase(name, pattern) for name in names for pattern in patterns)


def _data(state: RunState, step: PruneBlocksStep) -> list:
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


def _drop_removed_masks(state: RunState) -> None:
    """Forget sparsify masks of parameters that left the model with their modules."""
    if state.sparsity is None:
        return
    present = {name for name, _ in state.module.named_parameters()}
    for name in [name for name in state.sparsity.masks if name not in present]:
        del state.sparsity.masks[name]

"""Engine fallbacks: what the engine does instead of failing, counted, and strict mode for developers.

A *fallback* keeps a run going by giving up coverage: an op with no rule keeps its channels
whole, a group whose removal breaks the model's forward stays whole. For a user that is the
right answer; for a developer it can hide a bug as lost coverage (DESIGN.md 3d). So every
fallback is recorded as a ``Fallback`` (kind, where, detail), and the ones that can only mean
a bug in prunecli are *errors* in strict mode: with ``PRUNECLI_STRICT=1`` (the test suite sets
it) they raise ``InternalError`` instead of being recorded.

Kinds (``FALLBACK_KINDS``), and whether strict mode raises:

- ``unsupported_op`` (no): an op with no rule, or an argument pattern its rule declines; its
  tensors stay whole. Lost coverage, not a bug.
- ``opaque_module`` (no): an op inside a module prunecli keeps whole on purpose
  (``nn.MultiheadAttention``).
- ``rule_error`` (yes): a coupling rule raised. Rules must decline patterns explicitly.
- ``layout_mismatch`` (yes): a rule's output layouts disagree with the traced tensor shape.
- ``size_conflict`` (yes): a rule tied two dimensions of different sizes (``SpaceTable.unify``
  fixes both); tied dimensions share positions one to one, so this is a rule's mistake.
- ``surgery_error`` (yes): slicing a group raised, or left a parameter or buffer with a shape
  other than the one the plan implies.
- ``forward_fails`` (no): the sliced tensors are exactly as planned but the model's own code
  fails on the new sizes (``view(-1, 512)``, or a size derived from an attribute the engine
  could not tell apart); the group is left whole with the error as its reason.

Example::

    log = FallbackLog()
    log.record("unsupported_op", "aten::cumsum", "no coupling rule")   # recorded
    log.record("rule_error", "aten::cat (cat_3)", "IndexError: ...")   # raises InternalError when strict
    log.counts()  # non-strict: {"unsupported_op": 1, "rule_error": 1}
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from prunecli.errors import InternalError

STRICT_ENV = "PRUNECLI_STRICT"
BUG_KINDS = frozenset({"rule_error", "layout_mismatch", "size_conflict", "surgery_error"})
FALLBACK_KINDS = frozenset({"unsupported_op", "opaque_module", "forward_fails"}) | BUG_KINDS


def strict_mode() -> bool:
    """Whether engine bugs raise (``PRUNECLI_STRICT`` is 1/true/yes/on); read at call time."""
    return os.environ.get(STRICT_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Fallback:
    """One fallback: its kind (see the module docstring), where it happened (op, node, tensor), and why."""

    kind: str
    where: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.where}: {self.detail}"


@dataclass
class FallbackLog:
    """The fallbacks of one graph build or one surgery, in the order they happened."""

    records: list[Fallback] = field(default_factory=list)

    def record(self, kind: str, where: str, detail: str) -> Fallback:
        """Record a fallback; one of ``BUG_KINDS`` raises ``InternalError`` (one line) in strict mode."""
        if kind not in FALLBACK_KINDS:
            raise InternalError(f"unknown fallback kind '{kind}'; known: {', '.join(sorted(FALLBACK_KINDS))}")
        fallback = Fallback(kind, where, " ".join(detail.split())[:200])
        if kind in BUG_KINDS and strict_mode():
            raise InternalError(f"{fallback} ({STRICT_ENV} is set: this is a prunecli bug, not a fallback)")
        self.records.append(fallback)
        return fallback

    def counts(self) -> dict[str, int]:
        """Number of fallbacks by kind, e.g. ``{"unsupported_op": 3, "forward_fails": 1}``."""
        return dict(Counter(fallback.kind for fallback in self.records))

    def of_kind(self, kind: str) -> list[Fallback]:
        """The records of one kind."""
        return [fallback for fallback in self.records if fallback.kind == kind]

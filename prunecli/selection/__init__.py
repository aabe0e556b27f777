"""Selection: from scores to the channels each group loses (ratio, threshold or target)."""

from prunecli.selection.plan import GroupChoice, PrunePlan, select_channels

__all__ = ["GroupChoice", "PrunePlan", "select_channels"]

"""Selection: from scores to the channels each group loses."""

from prunecli.selection.plan import PrunePlan, select_channels

__all__ = ["PrunePlan", "select_channels"]

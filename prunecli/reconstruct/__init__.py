"""Recovery without gradients: refit pruned layers by least squares to reproduce the original's outputs.

``least_squares`` is the backend-neutral core (normal equations, im2col), ``torch_layers`` applies
it to a pruned torch model, ``stage`` runs it as a pipeline step and ``report`` lays out its entry.
"""

from prunecli.reconstruct.least_squares import LeastSquaresFit, NormalEquations, conv_patches, conv_targets
from prunecli.reconstruct.torch_layers import LayerFit, Reconstruction, reconstruct_layers

__all__ = [
    "LayerFit", "LeastSquaresFit", "NormalEquations", "Reconstruction", "conv_patches", "conv_targets",
    "reconstruct_layers",
]  # fmt: skip

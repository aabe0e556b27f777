"""The least-squares core of reconstruction: backend-neutral, on numpy arrays or torch tensors.

A layer is a linear map from rows of inputs to rows of outputs: a Linear's rows are its input
vectors, a convolution's rows are its input patches (im2col, see ``conv_patches``), one row per
output position, split by group. ``NormalEquations`` adds up, batch after batch, the Gram
matrices of those rows (float64) and ``solve`` refits the weights (and bias) so that the layer's
outputs on the rows reproduce the targets::

    equations = NormalEquations(groups=1, inputs=4, outputs=3, bias=True)
    for x, y in calibration:                       # x: (rows, 4) or (1, rows, 4), y: (rows, 3)
        equations.add(x, y)
    fit = equations.solve(ridge=1e-3, prior=(w0, b0))  # fit.weight (1, 3, 4), fit.bias (1, 3)
    fit.error_after, equations.relative_error(w0, b0)  # ||Y - XW'||^2 / ||Y||^2, after and with w0

``ridge`` is relative: lambda = ridge * the mean diagonal of X^T X (so it does not depend on the
scale of the activations), and it pulls the weights toward ``prior`` (the current, pruned
weights) or toward zero without one; the bias is never penalised. An ONNX back-end feeds the same
arrays from ONNX Runtime activations and initializers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from prunecli.errors import InternalError

Array = Any  # a numpy array or a torch tensor


@dataclass(frozen=True)
class LeastSquaresFit:
    """Refit weights per group, ``(groups, outputs, inputs)``, bias ``(groups, outputs)`` or None, and the fit error.

    ``error_after`` is ``||Y - X W^T - b||^2 / ||Y||^2`` on the rows the equations saw.
    """

    weight: torch.Tensor
    bias: torch.Tensor | None
    error_after: float


class NormalEquations:
    """Running sums of X^T X, X^T Y and Y^T Y (float64) of a grouped linear map, batch by batch.

    ``groups`` independent maps of ``inputs`` -> ``outputs`` each (a grouped convolution's groups;
    1 for a Linear or an ordinary convolution). With ``bias`` a constant column is appended to X.
    """

    def __init__(self, *, groups: int, inputs: int, outputs: int, bias: bool, device: torch.device | str = "cpu"):
        width = inputs + int(bias)
        self.groups, self.inputs, self.outputs, self.bias = groups, inputs, outputs, bias
        self.xtx = torch.zeros(groups, width, width, dtype=torch.float64, device=device)
        self.xty = torch.zeros(groups, width, outputs, dtype=torch.float64, device=device)
        self.yty = torch.zeros(groups, dtype=torch.float64, device=device)
        self.rows = 0

    def add(self, x: Array, y: Array) -> None:
        """Add rows: ``x`` (rows, inputs) or (groups, rows, inputs), ``y`` likewise with ``outputs`` columns."""
        x, y = _grouped(x, device=self.xtx.device), _grouped(y, device=self.xtx.device)
        fits = x.shape[0] == self.groups and x.shape[2] == self.inputs and y.shape[2] == self.outputs
        if x.shape[:2] != y.shape[:2] or not fits:  # the caller's rows are wrong: a prunecli bug
            raise InternalError(
                f"least squares: inputs {tuple(x.shape)} and targets {tuple(y.shape)} do not fit "
                f"{self.groups} group(s) of {self.inputs} -> {self.outputs}; pass one row per output position"
            )
        if self.bias:
            x = torch.cat([x, torch.ones_like(x[..., :1])], dim=2)
        self.xtx += x.transpose(1, 2) @ x
        self.xty += x.transpose(1, 2) @ y
        self.yty += (y * y).sum(dim=(1, 2))
        self.rows += x.shape[1]

    def solve(self, *, ridge: float, prior: tuple[Array, Array | None] | None = None) -> LeastSquaresFit:
        """The weights minimising ``||Y - X W^T - b||^2 + lambda ||W - W_prior||^2`` per group (see module doc)."""
        if self.rows == 0:
            raise InternalError("least squares: solve() before any rows were added")
        penalty = self._penalty(ridge)
        rhs = self.xty.clone()
        if prior is not None:
            rhs[:, : self.inputs] += penalty[:, None, None] * self._stacked(*prior)[:, : self.inputs]
        system = self.xtx.clone()
        diagonal = system.diagonal(dim1=1, dim2=2)
        diagonal[:, : self.inputs] += penalty[:, None]
        stacked = _solve(system, rhs)
        weight, bias = self._split(stacked)
        return LeastSquaresFit(weight=weight, bias=bias, error_after=self._error(stacked))

    def relative_error(self, weight: Array, bias: Array | None = None) -> float:
        """``||Y - X W^T - b||^2 / ||Y||^2`` of given weights on the rows added (``weight`` as in a fit)."""
        return self._error(self._stacked(weight, bias))

    def _penalty(self, ridge: float) -> torch.Tensor:
        """lambda per group: ``ridge`` times the mean diagonal of X^T X over the weight columns (bias excluded)."""
        scale = self.xtx.diagonal(dim1=1, dim2=2)[:, : self.inputs].mean(dim=1)
        return ridge * torch.where(scale > 0, scale, torch.ones_like(scale))

    def _stacked(self, weight: Array, bias: Array | None) -> torch.Tensor:
        """``[W^T; b]`` per group, (groups, inputs (+1), outputs), float64 on the equations' device."""
        weight = torch.as_tensor(weight).to(self.xtx).reshape(self.groups, self.outputs, self.inputs)
        columns = [weight.transpose(1, 2)]
        if self.bias:
            zero = torch.zeros(self.groups, self.outputs, dtype=torch.float64, device=self.xtx.device)
            row = zero if bias is None else torch.as_tensor(bias).to(self.xtx).reshape(self.groups, self.outputs)
            columns.append(row[:, None, :])
        return torch.cat(columns, dim=1)

    def _split(self, stacked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight = stacked[:, : self.inputs].transpose(1, 2).contiguous()
        return weight, stacked[:, self.inputs] if self.bias else None

    def _error(self, stacked: torch.Tensor) -> float:
        """Squared residual from the sums alone: Y^T Y - 2 tr(B^T X^T Y) + tr(B^T X^T X B), over ||Y||^2."""
        cross = (stacked * self.xty).sum(dim=(1, 2))
        residual = self.yty - 2 * cross + (stacked * (self.xtx @ stacked)).sum(dim=(1, 2))
        total = float(self.yty.sum())
        return max(float(residual.sum()), 0.0) / total if total > 0 else 0.0


def conv_patches(
    inputs: Array,
    *,
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
) -> torch.Tensor:
    """im2col of a 2-D convolution's inputs: (groups, N * positions, C/groups * kh * kw), rows like its outputs.

    ``inputs`` is (N, C, H, W); ``padding`` is (top, bottom, left, right) zeros. Columns are ordered
    like ``weight.reshape(out, -1)`` of the group's filters, rows like ``outputs.permute(0, 2, 3, 1)``
    flattened, so that ``patches[g] @ weight[g].reshape(out_g, -1).T`` is group ``g``'s output.
    """
    inputs = torch.as_tensor(inputs)
    top, bottom, left, right = padding
    padded = F.pad(inputs, (left, right, top, bottom))
    columns = F.unfold(padded, tuple(kernel_size), dilation=tuple(dilation), stride=tuple(stride))  # (N, C*k, L)
    batch, width, positions = columns.shape
    per_group = columns.reshape(batch, groups, width // groups, positions)
    return per_group.permute(1, 0, 3, 2).reshape(groups, batch * positions, width // groups)


def conv_targets(outputs: Array, *, groups: int) -> torch.Tensor:
    """A convolution's outputs (N, C_out, H', W') as rows per group: (groups, N * H' * W', C_out / groups)."""
    outputs = torch.as_tensor(outputs)
    batch, channels = outputs.shape[:2]
    rows = outputs.reshape(batch, groups, channels // groups, -1)
    return rows.permute(1, 0, 3, 2).reshape(groups, -1, channels // groups)


def _grouped(array: Array, *, device: torch.device) -> torch.Tensor:
    """float64 (groups, rows, columns); a 2-D array is one group."""
    tensor = torch.as_tensor(array).to(device=device, dtype=torch.float64)
    return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor


def _solve(system: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve each group's system; a singular one (ridge 0, too few rows) gets the minimum-norm solution."""
    solution, info = torch.linalg.solve_ex(system, rhs)
    if bool((info != 0).any()) or not bool(torch.isfinite(solution).all()):
        return torch.linalg.lstsq(system.cpu(), rhs.cpu(), driver="gelsd").solution.to(system.device)
    return solution

"""Executor ops that move, index or size tensors: Shape, Reshape, Transpose, Concat, Split, Slice, Gather, Pad, ..."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from prunecli.onnx_torch.ops import OpNode, ints, onnx_op


def _shape_tensor(values: list[int]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def _axes(node: OpNode, inputs: list, *, index: int, since: int) -> list[int] | None:
    """Axes given as an attribute (opset < ``since``) or as the input ``index`` (opset >= ``since``)."""
    if node.opset >= since:
        return ints(inputs[index]) if len(inputs) > index and inputs[index] is not None else None
    return node.attr("axes")


@onnx_op("Shape")
def shape(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    dims = list(inputs[0].shape)
    start, end = node.attr("start", 0), node.attr("end")
    return _shape_tensor(dims[start:end])


@onnx_op("Size")
def size(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    return torch.tensor(inputs[0].numel(), dtype=torch.int64)


@onnx_op("Reshape")
def reshape(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    x, target = inputs[0], ints(inputs[1])
    if not node.attr("allowzero", 0):  # 0 copies the input's dimension
        target = [x.shape[i] if size == 0 else size for i, size in enumerate(target)]
    return x.reshape(target)


@onnx_op("Flatten")
def flatten(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    x = inputs[0]
    axis = node.attr("axis", 1) % (x.dim() + 1) if x.dim() else 0
    return x.reshape(int(torch.tensor(x.shape[:axis]).prod()), -1)


@onnx_op("Transpose")
def transpose(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    x = inputs[0]
    return x.permute(node.attr("perm", list(range(x.dim()))[::-1]))


@onnx_op("Squeeze")
def squeeze(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    x = inputs[0]
    axes = _axes(node, inputs, index=1, since=13)
    if axes is None:
        return x.squeeze()
    return x.squeeze(tuple(axis % x.dim() for axis in axes))


@onnx_op("Unsqueeze")
def unsqueeze(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    x = inputs[0]
    axes = _axes(node, inputs, index=1, since=13)
    rank = x.dim() + len(axes)
    for axis in sorted(axis % rank for axis in axes):
        x = x.unsqueeze(axis)
    return x


@onnx_op("Concat")
def concat(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    return torch.cat([x for x in inputs if x is not None], dim=node.attr("axis"))


@onnx_op("Split")
def split(node: OpNode, inputs: list, training: bool) -> tuple[torch.Tensor, ...]:
    x, axis = inputs[0], node.attr("axis", 0)
    sizes = _axes(node, inputs, index=1, since=13) if node.opset >= 13 else node.attr("split")
    if sizes is None:
        count = node.attr("num_outputs", len(node.outputs))
        whole = x.shape[axis]
        sizes = [-(-whole // count)] * (count - 1)
        sizes.append(whole - sum(sizes))
    return tuple(torch.split(x, sizes, dim=axis))


@onnx_op("Slice")
def slice_(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    x = inputs[0]
    if node.opset < 10:
        starts, ends, axes, steps = node.attr("starts"), node.attr("ends"), node.attr("axes"), None
    else:
        starts, ends = ints(inputs[1]), ints(inputs[2])
        axes, steps = (ints(inputs[i]) if len(inputs) > i and inputs[i] is not None else None for i in (3, 4))
    axes = axes if axes is not None else list(range(len(starts)))
    steps = steps if steps is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        x = _slice_axis(x, start, end, axis % x.dim(), step)
    return x


def _slice_axis(x: torch.Tensor, start: int, end: int, axis: int, step: int) -> torch.Tensor:
    """``x[start:end:step]`` along ``axis`` with ONNX's clamping (negative steps count backwards)."""
    indices = range(x.shape[axis])[slice(start, end, step)]  # Python's slice clamps as ONNX does
    if step > 0:
        return x[(slice(None),) * axis + (slice(indices.start, indices.stop, step),)]
    index = torch.tensor(list(indices), dtype=torch.int64, device=x.device)
    return x.index_select(axis, index)


@onnx_op("Gather")
def gather(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    x, indices = inputs
    axis = node.attr("axis", 0) % x.dim()
    indices = indices.to(x.device) if x.device != indices.device else indices
    indices = torch.where(indices < 0, indices + x.shape[axis], indices)
    taken = x.index_select(axis, indices.reshape(-1))
    return taken.reshape((*x.shape[:axis], *indices.shape, *x.shape[axis + 1 :]))


@onnx_op("GatherElements")
def gather_elements(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    x, indices = inputs
    axis = node.attr("axis", 0) % x.dim()
    return torch.gather(x, axis, torch.where(indices < 0, indices + x.shape[axis], indices).to(x.device))


@onnx_op("Expand")
def expand(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    x = inputs[0]
    return x.expand(torch.broadcast_shapes(x.shape, tuple(ints(inputs[1]))))


@onnx_op("Tile")
def tile(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    return inputs[0].repeat(ints(inputs[1]))


@onnx_op("Range")
def range_(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    start, limit, delta = (value.reshape(()) for value in inputs)
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device)


@onnx_op("Pad")
def pad(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    x, mode = inputs[0], node.attr("mode", "constant")
    if node.opset < 11:
        pads, value, axes = list(node.attr("pads")), node.attr("value", 0.0), None
    else:
        pads = ints(inputs[1])
        value = inputs[2].reshape(-1)[0].item() if len(inputs) > 2 and inputs[2] is not None else 0.0
        axes = ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else None
    axes = [axis % x.dim() for axis in axes] if axes is not None else list(range(x.dim()))
    begins, ends = dict(zip(axes, pads[: len(axes)])), dict(zip(axes, pads[len(axes) :]))
    flat = [amount for dim in reversed(range(x.dim())) for amount in (begins.get(dim, 0), ends.get(dim, 0))]
    while len(flat) > 2 and flat[-2:] == [0, 0]:  # torch pads the last dims first; leading zeros may go
        flat = flat[:-2]
    if mode == "constant":
        return F.pad(x, flat, value=value)
    torch_mode = {"reflect": "reflect", "edge": "replicate", "wrap": "circular"}.get(mode)
    if torch_mode is None:
        raise node.refuse(f"mode {mode}")
    return F.pad(x, flat, mode=torch_mode)


@onnx_op("Resize")
def resize(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    """Nearest (asymmetric, floor) and (bi/tri)linear (half_pixel or align_corners) resizing of N, C, spatial..."""
    x = inputs[0]
    scales_at, sizes_at = (1, None) if node.opset < 11 else (2, 3)
    sizes = ints(inputs[sizes_at]) if sizes_at is not None and len(inputs) > sizes_at and inputs[sizes_at] is not None \
        and inputs[sizes_at].numel() else None  # fmt: skip
    scales = inputs[scales_at].reshape(-1).tolist() if sizes is None else None
    if (sizes or scales)[:2] not in ([x.shape[0], x.shape[1]], [1.0, 1.0]):
        raise node.refuse("resizing of the batch or channel dimension")
    target = sizes[2:] if sizes is not None else [int(s * f) for s, f in zip(x.shape[2:], scales[2:])]
    mode = node.attr("mode", "nearest")
    transform = node.attr("coordinate_transformation_mode", "half_pixel")
    if mode == "nearest" and transform in ("asymmetric", "tf_half_pixel_for_nn") and \
            node.attr("nearest_mode", "round_prefer_floor") == "floor" or mode == "nearest" and node.opset < 11:
        return F.interpolate(x, size=target, mode="nearest")  # fmt: skip
    if mode == "linear" and transform in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        torch_mode = {3: "linear", 4: "bilinear", 5: "trilinear"}[x.dim()]
        return F.interpolate(x, size=target, mode=torch_mode, align_corners=transform == "align_corners")
    raise node.refuse(f"mode {mode} with coordinate_transformation_mode {transform}")


@onnx_op("CumSum")
def cumulative_sum(node: OpNode, inputs: list, training: bool) -> torch.Tensor:
    x, axis = inputs[0], ints(inputs[1])[0]
    x = x.flip(axis) if node.attr("reverse", 0) else x
    summed = x.cumsum(axis)
    summed = summed - x if node.attr("exclusive", 0) else summed
    return summed.flip(axis) if node.attr("reverse", 0) else summed

"""The surgery invariant for ONNX, checked in ONNX Runtime: pruned outputs == masked original outputs.

The *masked original* is the input graph with every position that pruning removes zeroed in
its initializers: a producer's rows and bias, the BatchNorm scale, bias, mean and variance
of those channels (``(x - 0) / sqrt(0 + eps) * 0 + 0 = 0``), and the consumers' columns. A
removed channel is then zero wherever it is produced and ignored wherever it is read, which
is exactly what the pruned graph computes without it. Divisors, exponents and multipliers are
masked with ones (a zero would divide by zero, or zero what a later op divides by its sum). As
for torch (``prunecli.surgery.verify``), the tolerance scales with the output magnitude.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from prunecli.model_io.onnx_external import model_source
from prunecli.onnx_graph.build import OnnxChannelGraph
from prunecli.onnx_graph.copies import Copy, materialize
from prunecli.onnx_graph.norms import Norm, normalise_over_kept
from prunecli.surgery.verify import Verification

Keep = Mapping[str, Mapping[int, Sequence[int]]]


def masked_model(
    model: onnx.ModelProto,
    keep: Keep,
    *,
    divisors: set[str] = frozenset(),
    copies: Mapping[str, Copy] | None = None,
    norms: Sequence[Norm] = (),
) -> onnx.ModelProto:
    """A copy of ``model`` whose to-be-removed initializer positions are zero (one for ``divisors``).

    Per-reader ``copies`` of shared initializers named by ``keep`` are written out first, so that
    each reader's copy is masked on its own (see ``prunecli.onnx_graph.copies``); the LayerNorm
    nodes of ``norms`` (fused or decomposed) normalise over the kept channels only (``prunecli.onnx_graph.norms``).
    """
    masked = onnx.ModelProto()
    masked.CopyFrom(model)
    materialize(masked, keep, copies or {})
    normalise_over_kept(masked, keep, norms)
    for index, tensor in enumerate(masked.graph.initializer):
        dims = keep.get(tensor.name)
        if not dims or tensor.data_type not in _FLOATS:
            continue
        array = numpy_helper.to_array(tensor).copy()
        for dim, indices in dims.items():
            removed = np.ones(array.shape[int(dim)], dtype=bool)
            removed[np.asarray(indices, dtype=np.int64)] = False
            selector = [slice(None)] * array.ndim
            selector[int(dim)] = removed
            array[tuple(selector)] = 1 if tensor.name in divisors else 0
        masked.graph.initializer[index].CopyFrom(numpy_helper.from_array(array, tensor.name))
    return masked


_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def run_model(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """The outputs of ``model`` on ``feeds`` in ONNX Runtime (CPU, one thread, no graph rewrites)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    with model_source(model) as source:  # a path with external data for a graph over 2 GB
        session = onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        return session.run(None, dict(feeds))


def random_feeds(model: onnx.ModelProto, *, input_shape: Sequence[int] | None, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded standard-normal values for each graph input (symbolic dims: 2, or ``input_shape`` if given)."""
    rng = np.random.default_rng(seed)
    initializers = {tensor.name for tensor in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    feeds = {}
    for value in inputs:
        tensor_type = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 2 for d in tensor_type.shape.dim]
        shape = list(input_shape) if input_shape is not None and len(inputs) == 1 else dims
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def verify_onnx_surgery(
    *,
    original: onnx.ModelProto,
    pruned: onnx.ModelProto,
    graph: OnnxChannelGraph,
    keep: Keep,
    feeds: Mapping[str, np.ndarray],
    tolerance: float,
) -> Verification:
    """Compare the pruned graph's outputs with the masked original's in ONNX Runtime."""
    expected = run_model(masked_model(
        original, keep, divisors=graph.divisors, copies=graph.copies, norms=graph.norms
    ), feeds)
    actual = run_model(pruned, feeds)
    if len(expected) != len(actual) or any(e.shape != a.shape for e, a in zip(expected, actual)):
        return Verification(float("inf"), tolerance, False)
    pairs = [(np.asarray(e, np.float64), np.asarray(a, np.float64)) for e, a in zip(expected, actual) if e.size]
    diff = max((float(np.abs(e - a).max()) for e, a in pairs), default=0.0)
    scale = max((float(np.abs(e).max()) for e, _ in pairs), default=1.0)
    return Verification(diff, tolerance, bool(diff <= tolerance * max(1.0, scale)))

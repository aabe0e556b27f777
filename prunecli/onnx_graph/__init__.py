"""Native ONNX pruning: the ONNX front-end of the channel graph, ONNX surgery, verification in ONNX Runtime.

``build_onnx_graph`` walks an ``onnx.ModelProto`` through per-op coupling rules into the same
``ChannelGraph`` the torch front-end builds (initializer names as tensor names), so criteria
and selection work unchanged; ``prune_onnx_model`` slices the initializers and size constants
and checks pruned == masked original in ONNX Runtime::

    model = onnx.load("digits_cnn.onnx")
    graph = build_onnx_graph(model)
    removed = {group.id: [0, 1] for group in graph.prunable_groups}
    outcome = prune_onnx_model(model, graph, removed, feeds=random_feeds(model, input_shape=None), tolerance=1e-4)
    outcome.verification.passed  # True
"""

from prunecli.onnx_graph.build import OnnxChannelGraph, build_onnx_graph, initializer_arrays
from prunecli.onnx_graph.prune import OnnxPruneOutcome, prune_onnx_model
from prunecli.onnx_graph.verify import random_feeds

__all__ = [
    "OnnxChannelGraph", "OnnxPruneOutcome", "build_onnx_graph", "initializer_arrays", "prune_onnx_model",
    "random_feeds",
]

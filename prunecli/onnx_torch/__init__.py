"""ONNX graphs run as torch modules: training, distillation and data-driven criteria on ONNX inputs.

``OnnxModule`` (``module``) runs an ``onnx.ModelProto`` with torch ops from a table of small op
functions (``ops``, ``ops_nn``, ``ops_shape``); ``write_back`` puts its trained values into the
original graph. ``sites`` points data-driven criteria at graph values; ``stage`` runs finetune
and regularize on the run's current ONNX file. Importing this package imports torch and onnx.
"""

from prunecli.onnx_torch.module import OnnxModule, check_runnable, unsupported_ops, write_back

__all__ = ["OnnxModule", "check_runnable", "unsupported_ops", "write_back"]

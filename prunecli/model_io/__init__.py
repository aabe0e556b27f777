"""Load and save models: PyTorch state_dict + arch, trusted pickle, ``torch.export`` ``.pt2``, ONNX.

``load_model`` turns a pipeline's ``model`` section into a ``LoadedModel``; ``save_model`` writes
the pruned model back in the input's format plus ONNX. Nothing here imports torch or onnx at
import time, so the CLI's ``--help`` stays fast.
"""

from prunecli.model_io.load import load_model
from prunecli.model_io.loaded import LoadedModel
from prunecli.model_io.save import export_onnx, save_model, save_onnx_model

__all__ = ["LoadedModel", "export_onnx", "load_model", "save_model", "save_onnx_model"]

"""The command line: thin Typer commands that parse, call one API function and render.

Nothing heavy (torch, onnx, onnxruntime, pydantic) is imported here or by ``app``: commands
import what they need inside their functions, so ``prunecli --help`` answers at once.
"""

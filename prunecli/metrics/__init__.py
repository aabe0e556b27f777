"""Measurements of a model: parameters and bytes (``size``), MACs (``macs``), latency (``latency``),
accuracy and loss (``accuracy``). Import the submodule you need: they import torch or onnxruntime.
"""

"""Int8 quantization of exported ONNX models (ONNX Runtime)."""

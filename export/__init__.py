"""Model export: PyTorch -> ONNX (with metadata and a parity check), ONNX -> TensorRT engine."""

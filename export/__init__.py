"""ONNX export and TensorRT engines (imported as lift_rt.export)."""

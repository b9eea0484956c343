"""mner.export: staged ONNX export, parity checks, FP16 graphs, TensorRT engines and the bundle writer."""

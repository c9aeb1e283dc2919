"""invsr_export: torch -> ONNX -> precision pass -> TensorRT engines, validated against the reference."""

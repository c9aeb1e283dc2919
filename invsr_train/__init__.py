"""invsr_train: PyTorch side of invsr-trt (noise predictor, SD-Turbo loading, reference pipeline, training)."""

"""invsr_export: torch -> ONNX -> precision pass -> TensorRT engines, validated against the reference.

Modules, one job each:
  wrappers        the four graph contracts (docs/INTERFACES.md) as torch modules + their I/O specs
  onnx_export     TorchScript export, constant folding / cleanup, external data, checks, digests
  precision_fp16  FP32 -> strongly typed FP16 graph (FP32 kept where the numerics need it)
  quantize, qdq   INT8 / FP8 Q/DQ UNet (onnxruntime.quantization + TensorRT-form rewrites)
  calibration     UNet inputs at the sampler's timesteps, from degraded real photos (photos)
  chain           one tile batch through the four graphs on torch or ONNX Runtime
  validate        ORT vs PyTorch: per-component errors, end-to-end PSNR, gates
  tensorrt_build  thin TensorRT builder layer + engine cache
  engine_folder   staging folder + atomic rename, manifest assembly
  exporter, cli   the `invsr-export` job and its command line
"""

"""The benchmarked backends and which (backend, precision) pairs this machine can run."""
from __future__ import annotations

import importlib.util

from invsr_runtime.manifest import BACKENDS as ENGINE_BACKENDS
from invsr_runtime.manifest import PRECISIONS

from .base import STAGES, BoundTile, Runner, RunnerOptions, SkipConfig, TileInputs

#: The PyTorch baselines (no engine folder).
TORCH_BACKENDS = ("torch-eager", "torch-fast")
#: What invsr-bench compares: the PyTorch baselines, then the runtime's engine backends.
BENCH_BACKENDS = TORCH_BACKENDS + ENGINE_BACKENDS

__all__ = ["BENCH_BACKENDS", "ENGINE_BACKENDS", "PRECISIONS", "STAGES", "BoundTile", "Runner", "RunnerOptions", "SkipConfig",
           "TileInputs", "make_runner", "skip_reason"]


def skip_reason(backend: str, precision: str, device: str) -> str | None:
    """Why (backend, precision) cannot run on `device` here, decided before anything is loaded; None if it can."""
    if backend not in BENCH_BACKENDS:
        return f"unknown backend {backend!r}"
    if precision not in PRECISIONS:
        return f"unknown precision {precision!r}"
    if backend in TORCH_BACKENDS:
        if precision in ("int8", "fp8"):
            return f"PyTorch runs the reference in fp32 / fp16; {precision} exists only as quantized engine graphs"
        if precision == "fp16" and device != "cuda":
            return ("fp16 PyTorch on CPU is not a deployment path "
                    "(the authors run fp32 on CPU; fp16 CPU kernels are slow or missing)")
        return None
    if backend == "onnxruntime":
        if importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed"
        return None
    from .tensorrt import tensorrt_skip_reason

    return tensorrt_skip_reason(device)


def make_runner(options: RunnerOptions) -> Runner:
    """The runner class for options.backend."""
    if options.backend == "torch-eager":
        from .torch_eager import TorchEagerRunner

        return TorchEagerRunner(options)
    if options.backend == "torch-fast":
        from .torch_fast import TorchFastRunner

        return TorchFastRunner(options)
    if options.backend == "onnxruntime":
        from .onnxruntime import OnnxRuntimeRunner

        return OnnxRuntimeRunner(options)
    if options.backend == "tensorrt":
        from .tensorrt import TensorRTRunner

        return TensorRTRunner(options)
    raise ValueError(f"unknown backend {options.backend!r}: use one of {', '.join(BENCH_BACKENDS)}")

"""The few CUDA runtime calls the TensorRT backend needs, through cuda-python (imported lazily).

cuda-python 13: `from cuda.bindings import runtime` (12.x: `from cuda import cudart`). Every call
returns (error, *values); `call` turns an error into a BackendError with CUDA's own message.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import BackendError


def import_cudart() -> Any:
    """The cuda-python runtime module, or BackendError saying what to install."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python 12.x
        except ImportError:
            raise BackendError("cuda-python is not installed: pip install 'cuda-python>=13' "
                               "(or invsr-trt[tensorrt])") from None
    return cudart


def call(cudart: Any, result: Any, what: str) -> Any:
    """Check a cuda-python result tuple; return its value(s) (None, one value, or a tuple)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        _, text = cudart.cudaGetErrorString(err)
        message = text.decode() if isinstance(text, bytes) else str(text)
        raise BackendError(f"CUDA error in {what}: {message} ({int(err)})")
    return None if not values else values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class GpuInfo:
    """The running GPU and CUDA runtime."""

    name: str
    compute_capability: str
    device: int


def gpu_info(cudart: Any) -> GpuInfo:
    """The current device, or BackendError when there is no usable GPU."""
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or not count:
        raise BackendError("no CUDA GPU available (the TensorRT backend needs one); "
                           "use --backend onnxruntime with an ONNX engine folder")
    device = call(cudart, cudart.cudaGetDevice(), "cudaGetDevice")
    props = call(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return GpuInfo(name=name.rstrip("\x00").strip(), compute_capability=f"{props.major}.{props.minor}", device=device)


class DeviceBuffer:
    """One device allocation holding a fixed-shape tensor."""

    def __init__(self, cudart: Any, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.cudart = cudart
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self.ptr = int(call(cudart, cudart.cudaMalloc(max(self.nbytes, 1)), "cudaMalloc"))

    def upload(self, host: np.ndarray, stream: Any) -> np.ndarray:
        """Queue a copy of a host array (broadcast to this shape, cast to this dtype) on `stream`.

        Returns the staging array: keep it alive until the stream has been synchronised.
        """
        arr = np.ascontiguousarray(np.broadcast_to(host, self.shape), dtype=self.dtype)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        call(self.cudart, self.cudart.cudaMemcpyAsync(self.ptr, arr.ctypes.data, self.nbytes, kind, stream),
             "cudaMemcpyAsync")
        return arr

    def download(self, stream: Any) -> np.ndarray:
        """Copy the buffer back to a new host array (waits for the stream)."""
        out = np.empty(self.shape, dtype=self.dtype)
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        call(self.cudart, self.cudart.cudaMemcpyAsync(out.ctypes.data, self.ptr, self.nbytes, kind, stream),
             "cudaMemcpyAsync")
        call(self.cudart, self.cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return out

    def free(self) -> None:
        """Release the allocation (idempotent)."""
        if self.ptr:
            self.cudart.cudaFree(self.ptr)
            self.ptr = 0

"""The few CUDA runtime calls the TensorRT backend needs, through cuda-python (imported lazily).

cuda-bindings >= 13.0 (cuda-python 13): `from cuda.bindings import runtime` (the 12.x `cuda.cudart` module is
gone in 13). Every call returns (error, *values); `call` turns an error into a BackendError with CUDA's
own message. Host sides of transfers are pinned (`cudaMallocHost`), allocated once, so that
`cudaMemcpyAsync` really is asynchronous.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import BackendError

#: The oldest cuda-python (cuda-bindings) this project uses: pyproject and every message say the same.
CUDA_BINDINGS_FLOOR = "13.0"
CUDA_INSTALL = f"pip install 'cuda-bindings>={CUDA_BINDINGS_FLOOR}' (or invsr-trt[tensorrt])"


def import_cudart() -> Any:
    """The cuda-python runtime module, or BackendError saying what to install."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        raise BackendError(f"cuda-python >= {CUDA_BINDINGS_FLOOR} is not installed: {CUDA_INSTALL}") from None
    return cudart


def error_text(cudart: Any, err: Any) -> str:
    """CUDA's own description of an error code, e.g. "CUDA driver version is insufficient ... (35)"."""
    try:
        _, text = cudart.cudaGetErrorString(err)
        message = text.decode() if isinstance(text, bytes) else str(text)
    except Exception:  # noqa: BLE001 - an error while describing an error must not hide it
        message = "unknown CUDA error"
    return f"{message} ({int(err)})"


def call(cudart: Any, result: Any, what: str) -> Any:
    """Check a cuda-python result tuple; return its value(s) (None, one value, or a tuple)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendError(f"CUDA error in {what}: {error_text(cudart, err)}")
    return None if not values else values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class GpuInfo:
    """The running GPU and CUDA runtime."""

    name: str
    compute_capability: str
    device: int


def gpu_info(cudart: Any) -> GpuInfo:
    """The current device, or BackendError with CUDA's own reason when there is no usable GPU.

    `cudaFree(0)` creates the CUDA context: a driver too old for this CUDA runtime fails here with one
    line, before TensorRT touches CUDA (where the same failure would crash the interpreter).
    """
    hint = "the TensorRT backend needs a working CUDA GPU; use --backend onnxruntime with an ONNX engine folder"
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0:
        raise BackendError(f"CUDA is not usable: {error_text(cudart, err)}; {hint}")
    if not count:
        raise BackendError(f"no CUDA GPU available; {hint}")
    (err,) = cudart.cudaFree(0)
    if int(err) != 0:
        raise BackendError(f"CUDA could not initialise the GPU: {error_text(cudart, err)}; {hint}")
    device = call(cudart, cudart.cudaGetDevice(), "cudaGetDevice")
    props = call(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return GpuInfo(name=name.rstrip("\x00").strip(), compute_capability=f"{props.major}.{props.minor}", device=device)


class DeviceBuffer:
    """One device allocation holding a fixed-shape tensor, with a pinned host twin for transfers."""

    def __init__(self, cudart: Any, shape: tuple[int, ...], dtype: np.dtype, pinned: bool = False) -> None:
        self.cudart = cudart
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        self.ptr = int(call(cudart, cudart.cudaMalloc(max(self.nbytes, 1)), "cudaMalloc"))
        self.host_ptr = 0
        self.host: np.ndarray | None = None
        if pinned:
            self.host_ptr = int(call(cudart, cudart.cudaMallocHost(max(self.nbytes, 1)), "cudaMallocHost"))
            raw = (ctypes.c_byte * max(self.nbytes, 1)).from_address(self.host_ptr)
            self.host = np.frombuffer(raw, dtype=np.uint8)[: self.nbytes].view(self.dtype).reshape(self.shape)

    def upload(self, host: np.ndarray, stream: Any) -> None:
        """Queue a copy of a host array (broadcast to this shape, cast to this dtype) on `stream`.

        The array goes through the pinned twin: the caller synchronises the stream before the next upload.
        """
        if self.host is None:
            raise BackendError("upload needs a buffer allocated with pinned=True")
        np.copyto(self.host, np.broadcast_to(np.asarray(host), self.shape), casting="unsafe")
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        call(self.cudart, self.cudart.cudaMemcpyAsync(self.ptr, self.host_ptr, self.nbytes, kind, stream),
             "cudaMemcpyAsync")

    def download(self, stream: Any) -> np.ndarray:
        """Copy the buffer back through the pinned twin; waits for the stream; returns a new host array."""
        if self.host is None:
            raise BackendError("download needs a buffer allocated with pinned=True")
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        call(self.cudart, self.cudart.cudaMemcpyAsync(self.host_ptr, self.ptr, self.nbytes, kind, stream),
             "cudaMemcpyAsync")
        call(self.cudart, self.cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return self.host.copy()

    def free(self) -> None:
        """Release both allocations (idempotent)."""
        self.host = None
        if self.host_ptr:
            self.cudart.cudaFreeHost(self.host_ptr)
            self.host_ptr = 0
        if self.ptr:
            self.cudart.cudaFree(self.ptr)
            self.ptr = 0

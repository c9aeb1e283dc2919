"""Which TensorRT Python module is installed, and importing it: one answer for runtime, export and benchmark.

TensorRT ships its Python API under several module names, one per wheel family:
`tensorrt` (the metapackage), `tensorrt_bindings` (`tensorrt-cu13-bindings`), `tensorrt_lean` /
`tensorrt_lean_bindings` (the lean runtime, `tensorrt-lean-cu13-bindings` + `tensorrt-lean-cu13-libs`)
and `tensorrt_dispatch` / `tensorrt_dispatch_bindings`. Only the full ones have the builder; the lean
and dispatch runtimes load version-compatible plans only. The floor is TensorRT 10.1, the first release
with `ICudaEngine.device_memory_size_v2` and `IExecutionContext.set_device_memory(ptr, size)`.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from .base import BackendError

#: Full TensorRT (with the builder) first, then the runtime-only wheels, in order of preference.
FULL_MODULES = ("tensorrt", "tensorrt_bindings")
RUNTIME_MODULES = ("tensorrt_lean", "tensorrt_lean_bindings", "tensorrt_dispatch", "tensorrt_dispatch_bindings")
TENSORRT_MODULES = FULL_MODULES + RUNTIME_MODULES
#: The oldest TensorRT this project runs on (pyproject and README state the same).
TENSORRT_FLOOR = (10, 1)
INSTALL = ("pip install tensorrt-lean-cu13-bindings tensorrt-lean-cu13-libs (TensorRT >= 10.1; the lean "
           "runtime loads --version-compatible engines), or use --backend onnxruntime with an ONNX engine folder")


def find_tensorrt(builder: bool = False) -> str | None:
    """Name of the first installed TensorRT module (only full ones when `builder`), without importing it."""
    for name in FULL_MODULES if builder else TENSORRT_MODULES:
        try:
            if importlib.util.find_spec(name) is not None:
                return name
        except (ImportError, ValueError):  # a broken parent package or a half-removed module
            continue
    return None


def version_tuple(version: str) -> tuple[int, ...]:
    """(major, minor, ...) of a TensorRT version string; non-numeric parts end it."""
    parts = []
    for part in str(version).split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


def import_tensorrt(builder: bool = False) -> Any:
    """The installed TensorRT module (>= 10.1); BackendError with one line saying what to install."""
    name = find_tensorrt(builder)
    if name is None:
        what = "the TensorRT builder (`tensorrt`)" if builder else "TensorRT"
        raise BackendError(f"{what} is not installed: {INSTALL}")
    try:
        trt = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - a wheel whose libraries do not load is "not usable", one line
        raise BackendError(f"TensorRT module `{name}` does not load ({type(exc).__name__}: {exc}); {INSTALL}") from None
    version = str(getattr(trt, "__version__", "0"))
    if version_tuple(version)[:2] < TENSORRT_FLOOR:
        raise BackendError(f"TensorRT {version} is too old: this project needs TensorRT >= "
                           f"{'.'.join(map(str, TENSORRT_FLOOR))}; {INSTALL}")
    return trt

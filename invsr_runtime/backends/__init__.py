"""Backends that run an engine folder's tile chain. Each imports its heavy library only when opened.

`open_backend(folder, manifest, "auto")` picks the backend the folder was built for (the manifest's
`backend`: "onnxruntime" for .onnx graphs, "tensorrt" for .plan engines).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..manifest import BACKENDS, Manifest
from .base import Backend, BackendError

BACKEND_CHOICES = ("auto",) + BACKENDS

__all__ = ["BACKEND_CHOICES", "Backend", "BackendError", "open_backend"]


def open_backend(folder: str | Path, manifest: Manifest, backend: str = "auto", **options: Any) -> Backend:
    """Open `backend` ("auto" | "onnxruntime" | "tensorrt") on an engine folder; BackendError if it cannot run."""
    if backend not in BACKEND_CHOICES:
        raise BackendError(f"unknown backend {backend!r}: use one of {', '.join(BACKEND_CHOICES)}")
    name = manifest.backend if backend == "auto" else backend
    if name != manifest.backend:
        kind = ".plan TensorRT engines" if manifest.backend == "tensorrt" else ".onnx graphs"
        raise BackendError(f"{folder}: this folder holds {kind} (backend {manifest.backend!r}); "
                           f"use --backend {manifest.backend} or auto")
    if name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(folder, manifest, **options)
    if name == "tensorrt":
        from .tensorrt import TensorRTBackend

        return TensorRTBackend(folder, manifest, **options)
    raise BackendError(f"{folder}: unknown backend {name!r} in the manifest; rebuild with `invsr-export`")

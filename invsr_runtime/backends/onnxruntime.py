"""ONNX Runtime backend: the four .onnx graphs as sessions, named numpy arrays in and out.

CPU by default, which works on any machine. When onnxruntime-gpu is installed, `auto` puts the
TensorRT and CUDA execution providers first (ONNX Runtime falls back to the next provider itself
when one cannot start); TensorRT EP engines are cached under `cache_root()/ort-trt`. The
environment variable INVSR_ORT_PROVIDERS (comma-separated provider names) overrides the choice.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..cache import cache_root
from ..manifest import COMPONENTS, Manifest
from .base import GRAPH_IO, ArrayBackend, BackendError

logger = logging.getLogger(__name__)

_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendError(f"onnxruntime is not installed ({exc}); pip install onnxruntime "
                           "(or onnxruntime-gpu)") from None
    return onnxruntime


def _cache_dir(folder: Path) -> Path:
    """A per-engine-folder cache for TensorRT EP engines (never written into the engine folder)."""
    key = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:16]
    return cache_root() / "ort-trt" / key


def choose_providers(available: Sequence[str], folder: Path, requested: Sequence[str] | None = None) -> list:
    """Execution providers in order of preference (with options for TensorRT EP); CPU always last."""
    names = list(requested) if requested else None
    env = os.environ.get("INVSR_ORT_PROVIDERS")
    if names is None and env:
        names = [p.strip() for p in env.split(",") if p.strip()]
    if names is None:
        names = [p for p in _GPU_PROVIDERS if p in available]
    missing = [p for p in names if p not in available]
    if missing:
        raise BackendError(f"ONNX Runtime providers not available here: {', '.join(missing)} "
                           f"(available: {', '.join(available)})")
    providers: list = []
    for name in names:
        if name == "TensorrtExecutionProvider":
            cache = _cache_dir(folder)
            providers.append((name, {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)}))
        elif name != "CPUExecutionProvider":
            providers.append(name)
    return providers + ["CPUExecutionProvider"]


def on_device(providers: list, device: int | None) -> list:
    """Providers with the GPU ones pinned to `device` (`--devices`); BackendError when none can be."""
    if device is None:
        return providers
    pinned = []
    for provider in providers:
        name, options = provider if isinstance(provider, tuple) else (provider, {})
        pinned.append((name, {**options, "device_id": int(device)}) if name in _GPU_PROVIDERS else provider)
    if pinned == providers:
        raise BackendError(f"device {device} asked for, but ONNX Runtime runs on {providers[0]} here: "
                           "install onnxruntime-gpu, or leave out --devices")
    return pinned


class OnnxRuntimeBackend(ArrayBackend):
    """The tile chain on ONNX Runtime sessions, one per graph."""

    name = "onnxruntime"

    def __init__(self, folder: str | Path, manifest: Manifest, providers: Sequence[str] | None = None,
                 device: int | None = None) -> None:
        super().__init__(folder, manifest)
        ort = _import_ort()
        self.providers = on_device(choose_providers(ort.get_available_providers(), self.folder, providers), device)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.sessions = {c: self._open(ort, c, options) for c in COMPONENTS}
        logger.info("onnxruntime sessions on %s", self.sessions["unet"].get_providers())

    def _open(self, ort: Any, component: str, options: Any) -> Any:
        """One session, from the file path (so external weight files are found)."""
        path = self.folder / self.manifest.components[component].file
        if path.suffix != ".onnx":
            raise BackendError(f"{path}: not an ONNX graph; use --backend tensorrt for .plan engines")
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=self.providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BackendError(f"{path}: ONNX Runtime cannot load it ({first}); "
                               "rebuild the folder with `invsr-export --out DIR`") from None
        have = {i.name for i in session.get_inputs()}
        if have != set(GRAPH_IO[component][0]):
            raise BackendError(f"{path}: graph inputs {sorted(have)} differ from the contract "
                               f"{list(GRAPH_IO[component][0])}; rebuild with `invsr-export`")
        return session

    def run_graph(self, component: str, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        output = GRAPH_IO[component][1][0]
        return self.sessions[component].run([output], dict(feeds))[0]

    def close(self) -> None:
        self.sessions = {}

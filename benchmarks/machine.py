"""What a benchmark ran on: CPU, memory, GPU and driver, OS, Python and library versions.

A number without its machine means nothing, so every report carries this description. Nothing here
needs a GPU or network; GPU fields are filled only when PyTorch sees CUDA.
"""
from __future__ import annotations

import logging
import os
import platform
import subprocess
from typing import Any

logger = logging.getLogger(__name__)

#: Distributions whose versions a report lists (missing ones are reported as null).
LIBRARIES = (
    "invsr-trt", "torch", "diffusers", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt",
    "tensorrt-lean-cu13-bindings", "cuda-bindings", "cuda-python", "scikit-image", "matplotlib", "psutil",
)
#: CPU flags that decide which kernels run (shown when present).
_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_bf16", "amx_int8")


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The ISA extensions among `_ISA_FLAGS` this CPU has (Linux only; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [f for f in _ISA_FLAGS if f in have]
    except OSError:
        pass
    return []


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str | None]:
    """Installed version of each distribution (None when not installed)."""
    from invsr_export.engine_folder import package_versions

    return package_versions(names)


def gpu_description() -> dict[str, Any] | None:
    """Name, memory, compute capability, CUDA and driver version of GPU 0 as PyTorch sees it (None without CUDA)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "count": torch.cuda.device_count(),
        "memory_gib": round(props.total_memory / 2**30, 1),
        "compute_capability": f"{props.major}.{props.minor}",
        "cuda_runtime": torch.version.cuda,
        "driver": _nvidia_driver(),
    }


def _nvidia_driver() -> str | None:
    """The NVIDIA driver version from nvidia-smi (None when it is not there)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        )
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def describe() -> dict[str, Any]:
    """The machine description stored in every report."""
    import psutil

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores_logical": psutil.cpu_count(logical=True),
        "cores_physical": psutil.cpu_count(logical=False),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": gpu_description(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "libraries": library_versions(),
        "torch_threads": _torch_threads(),
        "load_average_at_start": [round(x, 2) for x in load] if load else None,
    }


def _torch_threads() -> int | None:
    """PyTorch's intra-op thread count (None without torch)."""
    try:
        import torch
    except ImportError:
        return None
    return torch.get_num_threads()


def short_name(desc: dict[str, Any]) -> str:
    """One line for report titles: GPU name if any, else CPU model and core count."""
    if desc.get("gpu"):
        return f"{desc['gpu']['name']} (+ {desc['cpu']}, {desc['cores_logical']} cores)"
    return f"{desc['cpu']}, {desc['cores_logical']} cores, {desc['ram_gib']} GiB RAM, no GPU"

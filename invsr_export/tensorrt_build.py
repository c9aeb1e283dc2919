"""ONNX -> TensorRT engine (.plan), a thin layer over TensorRT's documented Python API.

One code path for TensorRT >= 10.1 and 11.x: the network is strongly typed (10.x: the STRONGLY_TYPED
creation flag; 11.x: always), so the precision is the ONNX graph's own (FP16 graph, Q/DQ INT8/FP8) and no
builder precision flag or calibrator exists. The ONNX is parsed from its file (external weights load
beside it), one optimization profile pins every input to its fixed shape, the workspace is capped, and the
builder optimization level and a timing cache are options. Every call is one of TensorRT's documented
Python API (the table in tests/test_trt_conformance.py, from NVIDIA/TensorRT's python/src sources) and
every return value that can signal failure is checked. A timing cache TensorRT rejects (another GPU or
version) is replaced by a fresh one with a warning; the plan is written before the cache.

Engines are cached by a key over everything that changes the plan: the ONNX digest (graph + weights),
precision, input shapes, TensorRT version, GPU name and compute capability, and the build options.
`tensorrt` is imported only here and only when asked for: without it, or without a GPU, `probe()` raises
`TensorRTUnavailable` with one line suggesting `--backend onnxruntime`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from invsr_runtime.backends.base import BackendError
from invsr_runtime.backends.trt_import import find_tensorrt, import_tensorrt

from invsr_runtime.tempfiles import atomic_write

logger = logging.getLogger(__name__)

SUGGESTION = "use --backend onnxruntime (or --backend auto)"


class TensorRTUnavailable(RuntimeError):
    """TensorRT or a CUDA GPU is missing here; one line saying which and what to use instead."""


class EngineBuildError(RuntimeError):
    """TensorRT could not parse or build a graph; one line with the first parser/builder error."""


@dataclass(frozen=True)
class TrtEnvironment:
    """What an engine is specific to."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str


@dataclass(frozen=True)
class BuildOptions:
    """Builder settings that are part of the engine cache key."""

    workspace_mib: int = 4096
    optimization_level: int = 3
    timing_cache: str | None = None  # path of a timing cache file to read and update
    version_compatible: bool = False  # plans the lean runtime (and later TensorRT versions) can load


def probe() -> TrtEnvironment:
    """TensorRT version and GPU (name, compute capability), or TensorRTUnavailable."""
    if find_tensorrt(builder=True) is None:
        runtime_only = find_tensorrt()
        if runtime_only is not None:
            raise TensorRTUnavailable(f"only the TensorRT runtime `{runtime_only}` is installed, which cannot build "
                                      f"engines (the builder is the `tensorrt` package); {SUGGESTION}")
        raise TensorRTUnavailable(f"TensorRT is not installed (no `tensorrt` Python module); {SUGGESTION}")
    try:
        trt = import_tensorrt(builder=True)
    except BackendError as exc:  # does not load, or older than 10.1
        raise TensorRTUnavailable(f"{exc}; {SUGGESTION}") from None
    if not hasattr(trt, "Builder"):
        raise TensorRTUnavailable(
            f"this TensorRT is the lean runtime only (no builder, version {getattr(trt, '__version__', '?')}); {SUGGESTION}")
    name, cc = _gpu()
    return TrtEnvironment(str(trt.__version__), name, cc)


def _gpu() -> tuple[str, str]:
    """(name, "major.minor") of CUDA device 0 via cuda-python, else torch; TensorRTUnavailable without one."""
    try:
        from cuda.bindings import runtime

        err, count = runtime.cudaGetDeviceCount()
        if int(err) == 0 and count > 0:
            err, prop = runtime.cudaGetDeviceProperties(0)
            if int(err) == 0:
                name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
                return name.strip("\x00 "), f"{prop.major}.{prop.minor}"
    except Exception:  # no cuda-python, no driver (DynamicLibNotFoundError), ...
        pass
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return torch.cuda.get_device_name(0), f"{major}.{minor}"
    except Exception:
        pass
    raise TensorRTUnavailable(f"no CUDA GPU visible (TensorRT engines are built on the GPU that runs them); {SUGGESTION}")


def engine_cache_key(onnx_digest: str, precision: str, shapes: Mapping[str, Sequence[int]],
                     env: TrtEnvironment, options: BuildOptions) -> str:
    """sha256 over every ingredient of a plan; any change gives another key."""
    payload = {
        "onnx": onnx_digest,
        "precision": precision,
        "shapes": {k: [int(d) for d in v] for k, v in sorted(shapes.items())},
        "env": asdict(env),
        "workspace_mib": options.workspace_mib,
        "optimization_level": options.optimization_level,
        "version_compatible": options.version_compatible,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def build_engine(onnx_path: Path, plan_path: Path, shapes: Mapping[str, Sequence[int]],
                 options: BuildOptions = BuildOptions()) -> Path:
    """Parse `onnx_path`, build a strongly typed engine for the fixed `shapes`, write it to `plan_path`."""
    trt = import_tensorrt(builder=True)
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # 10.x; 11.x is strongly typed anyway
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        first = parser.get_error(0).desc() if parser.num_errors else "unknown error"
        raise EngineBuildError(f"{Path(onnx_path).name}: TensorRT could not parse the graph: {first}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    config.builder_optimization_level = options.optimization_level
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    profile = builder.create_optimization_profile()
    for name, shape in shapes.items():
        profile.set_shape(name, shape, shape, shape)
    if config.add_optimization_profile(profile) < 0:
        raise EngineBuildError(f"{Path(onnx_path).name}: TensorRT rejected the optimization profile {dict(shapes)} "
                               "(an input name or shape that does not match the graph)")
    use_cache = _attach_timing_cache(config, options.timing_cache)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(f"{Path(onnx_path).name}: TensorRT failed to build an engine (see the log above)")
    _atomic_write(Path(plan_path), bytes(plan))  # the plan first: a cache problem never costs the build
    if use_cache:
        _save_timing_cache(config, Path(options.timing_cache))
    return Path(plan_path)


def _attach_timing_cache(config: Any, path: str | None) -> bool:
    """Load (or start) the timing cache file `path` into the builder config; False without one.

    TensorRT refuses a cache from another GPU or version (`set_timing_cache` returns False): warn and go on
    with a fresh cache, which replaces the file after the build.
    """
    if not path:
        return False
    data = Path(path).read_bytes() if Path(path).is_file() else b""
    if config.set_timing_cache(config.create_timing_cache(data), ignore_mismatch=False):
        return True
    logger.warning("%s: TensorRT rejected this timing cache (another GPU or TensorRT version?); "
                   "building with a fresh one", path)
    if config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
        return True
    logger.warning("TensorRT rejected an empty timing cache too; building without one")
    return False


def _save_timing_cache(config: Any, path: Path) -> None:
    """Write the builder's timing cache to `path`; a missing cache or a write error only warns."""
    cache = config.get_timing_cache()
    if cache is None:
        logger.warning("%s: TensorRT returned no timing cache after the build; not saved", path)
        return
    try:
        _atomic_write(path, bytes(cache.serialize()))
    except OSError as exc:
        logger.warning("%s: could not save the timing cache (%s)", path, exc)


def _atomic_write(path: Path, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def cached_engine(onnx_path: Path, onnx_digest: str, plan_path: Path, precision: str,
                  shapes: Mapping[str, Sequence[int]], env: TrtEnvironment, options: BuildOptions,
                  cache_dir: Path | None) -> tuple[Path, str, bool]:
    """The plan for `onnx_path` from the engine cache, building it on a miss: (plan, key, was_cached)."""
    key = engine_cache_key(onnx_digest, precision, shapes, env, options)
    cached = Path(cache_dir) / f"{key}.plan" if cache_dir else None
    if cached is not None and cached.is_file():
        shutil.copyfile(cached, plan_path)
        return Path(plan_path), key, True
    build_engine(onnx_path, plan_path, shapes, options)
    if cached is not None:
        _atomic_write(cached, Path(plan_path).read_bytes())
    return Path(plan_path), key, False

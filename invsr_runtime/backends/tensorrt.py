"""TensorRT backend: .plan engines, device buffers chained stage to stage, one CUDA graph per chain.

Written against the documented TensorRT (10.x STRONGLY_TYPED / 11.x) Python API and cuda-python 13,
kept thin, and imported only when chosen:
- `tensorrt` or the lean runtime (`tensorrt_lean`) deserialises the four engines; one execution
  context each, created with USER_MANAGED device memory and all pointed at one shared scratch
  allocation sized by the largest engine (the stages run one after another on one stream);
- every buffer is allocated once; each stage's output buffer *is* the next stage's input (the
  UNet steps ping-pong between two latent buffers; per-step timestep/sigma buffers are separate, so
  one captured graph serves every schedule with the same number of steps);
- after a warm-up run, encoder -> predictor -> UNet steps -> decoder is captured into one CUDA graph
  per (engine batch, steps) and replayed; inputs are uploaded before and the image downloaded after.
Engines are tied to the TensorRT version and GPU they were built on: a folder from another version
or GPU (per its manifest provenance) is refused with the command that rebuilds it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..manifest import COMPONENTS, Manifest
from ..pnp import chain_feeds
from ..schedule import Schedule
from .base import GRAPH_IO, Backend, BackendError
from .cuda import DeviceBuffer, GpuInfo, call, gpu_info, import_cudart

logger = logging.getLogger(__name__)

MAX_STEPS = 5
_TRT_MODULES = ("tensorrt", "tensorrt_lean", "tensorrt_lean_bindings")
REBUILD = ("rebuild the engines on this machine with `invsr-export --out DIR ...` (TensorRT engines only run "
           "with the TensorRT version and GPU they were built with), or use an ONNX folder with --backend onnxruntime")


def import_tensorrt() -> Any:
    """The TensorRT Python module: the full `tensorrt` or the lean runtime; BackendError if neither."""
    import importlib

    for name in _TRT_MODULES:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise BackendError("TensorRT is not installed: pip install tensorrt-lean-cu13-bindings "
                       "tensorrt-lean-cu13-libs (or use --backend onnxruntime with an ONNX engine folder)")


# ------------------------------------------------------------------------------------ pure helpers
def chain_bindings(steps: int) -> list[tuple[str, dict[str, str]]]:
    """Which buffer each tensor of each stage uses: (component, {tensor name: buffer key}) in run order.

    Stage outputs are the next stage's inputs: latent_lr feeds the predictor; the predictor writes z0;
    UNet step i reads z{i%2} and writes z{(i+1)%2}; the decoder reads the last one.
    """
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be 1..{MAX_STEPS}, got {steps}")
    stages = [
        ("vae_encoder", {"lr": "lr", "noise": "vae_noise", "latent_lr": "latent_lr"}),
        ("predictor", {"lr": "lr", "timestep": "pred_t", "noise": "pred_noise", "latent_lr": "latent_lr",
                       "sigma": "pred_sigma", "latent": "z0"}),
    ]
    for i in range(steps):
        stages.append(("unet", {"latent": f"z{i % 2}", "timestep": f"t{i}", "sigma": f"s{i}",
                                "sigma_next": f"sn{i}", "encoder_hidden_states": "ehs",
                                "latent_next": f"z{(i + 1) % 2}"}))
    stages.append(("vae_decoder", {"latent": f"z{steps % 2}", "image": "image"}))
    return stages


def schedule_uploads(schedule: Schedule, batch: int, prompt_embeds: np.ndarray) -> dict[str, np.ndarray]:
    """Host arrays for the per-call scalar buffers (predictor and per-step timestep / sigmas)."""
    feeds = chain_feeds(schedule, batch, prompt_embeds)
    out = {"pred_t": feeds.predictor["timestep"], "pred_sigma": feeds.predictor["sigma"]}
    for i, step in enumerate(feeds.unet_steps):
        out.update({f"t{i}": step["timestep"], f"s{i}": step["sigma"], f"sn{i}": step["sigma_next"]})
    return out


def _version_tuple(version: str) -> tuple[str, ...]:
    return tuple(str(version).split("."))[:3]


def _flags(provenance: dict) -> str:
    flags = provenance.get("build_flags", "")
    return " ".join(map(str, flags)) if isinstance(flags, (list, tuple)) else str(flags)


def _built_with(provenance: dict) -> tuple[str | None, str | None, str | None]:
    """(tensorrt version, gpu name, compute capability) recorded by invsr-export.

    Read from the top level (`tensorrt_version`, `gpu_name`, `gpu_compute_capability`) or from a nested
    `tensorrt` / `gpu` record, whichever is present.
    """
    nested = {}
    for key in ("tensorrt", "gpu"):
        if isinstance(provenance.get(key), dict):
            nested.update(provenance[key])

    def pick(*keys: str) -> str | None:
        for key in keys:
            for source in (provenance, nested):
                value = source.get(key)
                if value not in (None, "") and not isinstance(value, dict):
                    return str(value)
        return None

    return (pick("tensorrt_version", "tensorrt", "version"), pick("gpu_name", "gpu", "name"),
            pick("gpu_compute_capability", "compute_capability"))


def check_provenance(provenance: dict, trt_version: str, gpu: GpuInfo, folder: Path) -> None:
    """Refuse engines built with another TensorRT version or on another GPU (unless built compatible)."""
    built_trt, built_gpu, built_cc = _built_with(provenance)
    flags = _flags(provenance).lower()
    if built_trt is None:
        raise BackendError(f"{folder}: the manifest does not say which TensorRT built the engines; {REBUILD}")
    if _version_tuple(built_trt) != _version_tuple(trt_version) and "version_compatible" not in flags:
        raise BackendError(f"{folder}: engines built with TensorRT {built_trt}, this is TensorRT {trt_version}; {REBUILD}")
    if "hardware_compatible" in flags or "ampere_plus" in flags:
        return
    if built_cc is not None and str(built_cc) != gpu.compute_capability:
        raise BackendError(f"{folder}: engines built for compute capability {built_cc} ({built_gpu}), this GPU is "
                           f"{gpu.name} ({gpu.compute_capability}); {REBUILD}")
    if built_gpu is not None and built_gpu != gpu.name:
        raise BackendError(f"{folder}: engines built on {built_gpu}, this GPU is {gpu.name}; {REBUILD}")


# ------------------------------------------------------------------------------------------ backend
class TensorRTBackend(Backend):
    """The tile chain on TensorRT engines, captured once per step count as a CUDA graph."""

    name = "tensorrt"

    def __init__(self, folder: str | Path, manifest: Manifest, use_cuda_graph: bool = True) -> None:
        super().__init__(folder, manifest)
        self.trt = import_tensorrt()
        self.cudart = import_cudart()
        self.use_cuda_graph = use_cuda_graph
        self.buffers: dict[str, DeviceBuffer] = {}
        self.graphs: dict[tuple[int, int], tuple[Any, Any]] = {}
        self.scratch = 0
        check_provenance(manifest.provenance, self.trt.__version__, gpu_info(self.cudart), self.folder)
        self.stream = call(self.cudart, self.cudart.cudaStreamCreateWithFlags(self.cudart.cudaStreamNonBlocking),
                           "cudaStreamCreateWithFlags")
        version_compatible = "version_compatible" in _flags(manifest.provenance).lower()
        if not hasattr(self.trt, "Builder") and not version_compatible:
            raise BackendError(f"{self.folder}: the TensorRT lean runtime runs only version-compatible engines; "
                               f"install the full `tensorrt` package, or {REBUILD}")
        self.runtime = self.trt.Runtime(self.trt.Logger(self.trt.Logger.WARNING))
        if version_compatible:
            self.runtime.engine_host_code_allowed = True  # VC plans embed the lean runtime (trusted folder)
        self.engines = {c: self._deserialize(c) for c in COMPONENTS}
        self.contexts = {c: self._context(c) for c in COMPONENTS}
        self._share_scratch()
        self._allocate()
        staged = self.buffers["ehs"].upload(self.prompt_embeds, self.stream)
        self._sync()
        del staged

    # ------------------------------------------------------------------------------------- set-up
    def _deserialize(self, component: str) -> Any:
        path = self.folder / self.manifest.components[component].file
        if path.suffix != ".plan":
            raise BackendError(f"{path}: not a TensorRT engine; use --backend onnxruntime for .onnx graphs")
        engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise BackendError(f"{path}: TensorRT could not load this engine; {REBUILD}")
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        want = set(GRAPH_IO[component][0]) | set(GRAPH_IO[component][1])
        if not want <= names:
            raise BackendError(f"{path}: engine tensors {sorted(names)} lack {sorted(want - names)}; {REBUILD}")
        return engine

    def _context(self, component: str) -> Any:
        strategy = self.trt.ExecutionContextAllocationStrategy.USER_MANAGED
        context = self.engines[component].create_execution_context(strategy)
        if context is None:
            raise BackendError(f"{component}: TensorRT could not create an execution context (out of memory?)")
        return context

    def _share_scratch(self) -> None:
        """One scratch allocation, as large as the largest engine needs, shared by all contexts."""
        def size(engine: Any) -> int:
            return int(getattr(engine, "device_memory_size_v2", None) or engine.device_memory_size)

        nbytes = max(size(e) for e in self.engines.values())
        self.scratch = int(call(self.cudart, self.cudart.cudaMalloc(max(nbytes, 256)), "cudaMalloc"))
        for context in self.contexts.values():
            context.set_device_memory(self.scratch, nbytes)
        logger.info("TensorRT scratch: %.1f MiB shared by %d contexts", nbytes / 2**20, len(self.contexts))

    def _tensor(self, component: str, tensor: str) -> tuple[tuple[int, ...], np.dtype]:
        """Shape (fixed; dynamic dims resolved from the manifest) and numpy dtype of one engine tensor."""
        engine = self.engines[component]
        shape = tuple(engine.get_tensor_shape(tensor))
        if any(d < 0 for d in shape):
            spec = {t.name: t for t in self.manifest.components[component].inputs}.get(tensor)
            if spec is None:
                raise BackendError(f"{component}.{tensor}: dynamic shape {shape} not resolvable; {REBUILD}")
            shape = tuple(spec.shape)
            self.contexts[component].set_input_shape(tensor, shape)
        return shape, np.dtype(self.trt.nptype(engine.get_tensor_dtype(tensor)))

    def _allocate(self) -> None:
        """Every buffer of the longest chain, once: the largest use of each key decides its size."""
        needs: dict[str, tuple[int, tuple[int, ...], np.dtype]] = {}
        for component, binding in chain_bindings(MAX_STEPS):
            for tensor, key in binding.items():
                shape, dtype = self._tensor(component, tensor)
                nbytes = int(np.prod(shape)) * dtype.itemsize
                if key not in needs or nbytes > needs[key][0]:
                    needs[key] = (nbytes, shape, dtype)
        self.buffers = {key: DeviceBuffer(self.cudart, shape, dtype) for key, (_, shape, dtype) in needs.items()}

    # ----------------------------------------------------------------------------------------- run
    def _sync(self) -> None:
        call(self.cudart, self.cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def _enqueue(self, steps: int) -> None:
        """Queue the whole chain on the stream (also what a CUDA graph captures)."""
        for component, binding in chain_bindings(steps):
            context = self.contexts[component]
            for tensor, key in binding.items():
                context.set_tensor_address(tensor, self.buffers[key].ptr)
            if not context.execute_async_v3(self.stream):
                raise BackendError(f"TensorRT failed to enqueue {component}")

    def _capture(self, steps: int) -> tuple[Any, Any]:
        """Warm up, then capture the chain for `steps` into an instantiated CUDA graph."""
        cudart = self.cudart
        self._enqueue(steps)
        self._sync()
        call(cudart, cudart.cudaStreamBeginCapture(
            self.stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture")
        try:
            self._enqueue(steps)
        finally:
            graph = call(cudart, cudart.cudaStreamEndCapture(self.stream), "cudaStreamEndCapture")
        return graph, call(cudart, cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")

    def _launch(self, steps: int) -> None:
        if not self.use_cuda_graph:
            self._enqueue(steps)
            return
        key = (self.batch, steps)
        if key not in self.graphs:
            self.graphs[key] = self._capture(steps)
            logger.info("captured the tile chain (batch %d, %d steps) as a CUDA graph", *key)
        call(self.cudart, self.cudart.cudaGraphLaunch(self.graphs[key][1], self.stream), "cudaGraphLaunch")

    def run_chain(
        self, lr: np.ndarray, vae_noise: np.ndarray, pred_noise: np.ndarray, schedule: Schedule
    ) -> np.ndarray:
        if schedule.steps > MAX_STEPS:
            raise ValueError(f"at most {MAX_STEPS} steps, got {schedule.steps}")
        uploads = dict(schedule_uploads(schedule, self.batch, self.prompt_embeds),
                       lr=lr, vae_noise=vae_noise, pred_noise=pred_noise)
        staged = [self.buffers[k].upload(v, self.stream) for k, v in uploads.items()]
        self._launch(schedule.steps)
        image = self.buffers["image"].download(self.stream)
        del staged
        return image.astype(np.float32, copy=False)

    def close(self) -> None:
        for graph, graph_exec in self.graphs.values():
            self.cudart.cudaGraphExecDestroy(graph_exec)
            self.cudart.cudaGraphDestroy(graph)
        self.graphs = {}
        for buf in self.buffers.values():
            buf.free()
        self.buffers = {}
        self.contexts, self.engines = {}, {}
        if self.scratch:
            self.cudart.cudaFree(self.scratch)
            self.scratch = 0
        if getattr(self, "stream", None) is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


"""TensorRT backend: .plan engines, device buffers chained stage to stage, one CUDA graph per chain.

Written against TensorRT >= 10.1 (10.x STRONGLY_TYPED / 11.x) and cuda-bindings >= 13.0 (cuda-python 13),
checked on CPU against the real lean-runtime and cuda-bindings classes (tests/test_trt_conformance.py),
kept thin, and imported only when chosen:
- any TensorRT module (`trt_import`: full, lean or dispatch) deserialises the four engines;
- one execution context per stage of the chain (encoder, predictor, one per UNet step, one decoder
  per latent parity), all created with USER_MANAGED device memory and pointed at one shared scratch
  allocation sized by the largest engine (the stages run one after another on one stream), so a
  context's tensor addresses are set once and a captured graph enqueues each context once;
- every buffer is allocated once; each stage's output buffer *is* the next stage's input (the
  UNet steps ping-pong between two latent buffers; per-step timestep/sigma buffers are separate, so
  one captured graph serves every schedule with the same number of steps); inputs and the image move
  through pinned host buffers;
- after a warm-up run, encoder -> predictor -> UNet steps -> decoder is captured into one CUDA graph
  per (engine batch, steps) and replayed; if capture fails the chain runs without a graph (one warning).
Engines are tied to the TensorRT version and GPU they were built on: a folder from another version
or GPU (per its manifest provenance) is refused with the command that rebuilds it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..chain_feeds import chain_feeds
from ..manifest import COMPONENTS, Manifest, TensorRTBuild
from ..schedule import MAX_STEPS, Schedule
from .base import GRAPH_IO, Backend, BackendError
from .cuda import DeviceBuffer, GpuInfo, call, error_text, gpu_info, import_cudart
from .trt_import import import_tensorrt, version_tuple

logger = logging.getLogger(__name__)

REBUILD = ("rebuild the engines on this machine with `invsr-export --out DIR ...` (TensorRT engines only run "
           "with the TensorRT version and GPU they were built with), or use an ONNX folder with --backend onnxruntime")


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


def context_key(component: str, binding: dict[str, str]) -> tuple[str, tuple[tuple[str, str], ...]]:
    """One execution context per distinct (engine, buffer binding): per UNet step, per decoder input."""
    return component, tuple(sorted(binding.items()))


def chain_inputs() -> set[str]:
    """Buffer keys the host fills (no stage writes them); with "image", the buffers that need a pinned twin."""
    written = {binding[t] for c, binding in chain_bindings(MAX_STEPS) for t in GRAPH_IO[c][1] if t in binding}
    every = {key for _, binding in chain_bindings(MAX_STEPS) for key in binding.values()}
    return every - written


def schedule_uploads(schedule: Schedule, batch: int, prompt_embeds: np.ndarray) -> dict[str, np.ndarray]:
    """Host arrays for the per-call scalar buffers (predictor and per-step timestep / sigmas)."""
    feeds = chain_feeds(schedule, batch, prompt_embeds)
    out = {"pred_t": feeds.predictor["timestep"], "pred_sigma": feeds.predictor["sigma"]}
    for i, step in enumerate(feeds.unet_steps):
        out.update({f"t{i}": step["timestep"], f"s{i}": step["sigma"], f"sn{i}": step["sigma_next"]})
    return out


def _flags(provenance: dict) -> str:
    flags = provenance.get("build_flags", "")
    return " ".join(map(str, flags)) if isinstance(flags, (list, tuple)) else str(flags)


def check_provenance(provenance: dict, trt_version: str, gpu: GpuInfo, folder: Path) -> None:
    """Refuse engines built with another TensorRT version or on another GPU (unless built compatible)."""
    built = TensorRTBuild.from_provenance(provenance) or TensorRTBuild(None)
    built_trt, built_gpu, built_cc = built.tensorrt_version, built.gpu_name, built.compute_capability
    flags = _flags(provenance).lower()
    if built_trt is None:
        raise BackendError(f"{folder}: the manifest does not say which TensorRT built the engines; {REBUILD}")
    if version_tuple(built_trt)[:3] != version_tuple(trt_version)[:3] and "version_compatible" not in flags:
        raise BackendError(f"{folder}: engines built with TensorRT {built_trt}, this is TensorRT {trt_version}; {REBUILD}")
    if "hardware_compatible" in flags or "ampere_plus" in flags:
        return
    if built_cc is not None and str(built_cc) != gpu.compute_capability:
        raise BackendError(f"{folder}: engines built for compute capability {built_cc} ({built_gpu}), this GPU is "
                           f"{gpu.name} ({gpu.compute_capability}); {REBUILD}")
    if built_gpu is not None and built_gpu != gpu.name:
        raise BackendError(f"{folder}: engines built on {built_gpu}, this GPU is {gpu.name}; {REBUILD}")


# ------------------------------------------------------------------------------------------ backend
def make_logger(trt: Any) -> Any:
    """A TensorRT logger that forwards to `logging` and keeps the errors (read before touching a Runtime)."""
    severity = trt.ILogger.Severity
    levels = {severity.INTERNAL_ERROR: logging.ERROR, severity.ERROR: logging.ERROR,
              severity.WARNING: logging.WARNING, severity.INFO: logging.DEBUG, severity.VERBOSE: logging.DEBUG}

    class ErrorKeepingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, level: Any, msg: str) -> None:
            if level in (severity.INTERNAL_ERROR, severity.ERROR):
                self.errors.append(str(msg))
            logger.log(levels.get(level, logging.DEBUG), "TensorRT: %s", msg)

    return ErrorKeepingLogger()


class TensorRTBackend(Backend):
    """The tile chain on TensorRT engines, captured once per step count as a CUDA graph."""

    name = "tensorrt"

    def __init__(self, folder: str | Path, manifest: Manifest, use_cuda_graph: bool = True,
                 device: int | None = None) -> None:
        super().__init__(folder, manifest)
        self.use_cuda_graph, self.device = use_cuda_graph, device
        self.capture_error: BackendError | None = None
        self.buffers: dict[str, DeviceBuffer] = {}
        self.graphs: dict[tuple[int, int], tuple[Any, Any]] = {}
        self.contexts: dict[tuple, Any] = {}
        self.engines: dict[str, Any] = {}
        self.scratch, self.stream, self.runtime = 0, None, None
        self.trt = import_tensorrt()
        self.cudart = import_cudart()
        self._use_device()
        gpu = gpu_info(self.cudart)  # also makes sure CUDA initialises before TensorRT touches it
        check_provenance(manifest.provenance, self.trt.__version__, gpu, self.folder)
        version_compatible = "version_compatible" in _flags(manifest.provenance).lower()
        if not hasattr(self.trt, "Builder") and not version_compatible:
            raise BackendError(f"{self.folder}: the TensorRT lean runtime runs only version-compatible engines; "
                               f"install the full `tensorrt` package, or {REBUILD}")
        self.stream = call(self.cudart, self.cudart.cudaStreamCreateWithFlags(self.cudart.cudaStreamNonBlocking),
                           "cudaStreamCreateWithFlags")
        self.trt_logger = make_logger(self.trt)
        self.runtime = self._runtime()
        if version_compatible:
            self.runtime.engine_host_code_allowed = True  # VC plans embed the lean runtime (trusted folder)
        self.engines = {c: self._deserialize(c) for c in COMPONENTS}
        self._allocate()
        self._bind_contexts()
        self._share_scratch()
        self.buffers["ehs"].upload(self.prompt_embeds, self.stream)
        self._sync()

    # ------------------------------------------------------------------------------------- set-up
    def _runtime(self) -> Any:
        """trt.Runtime, or one line when TensorRT could not start CUDA (never touch a half-made Runtime)."""
        try:
            runtime = self.trt.Runtime(self.trt_logger)
        except TypeError as exc:  # pybind11: the factory returned nullptr
            raise BackendError(f"TensorRT could not create a runtime ({exc}); {self._trt_error_hint()}") from None
        if self.trt_logger.errors:
            raise BackendError(f"TensorRT could not start: {self.trt_logger.errors[0]}; {self._trt_error_hint()}")
        return runtime

    def _trt_error_hint(self) -> str:
        return ("check that the NVIDIA driver supports the CUDA version of the TensorRT wheel "
                "(tensorrt-*-cu13 needs a CUDA 13 driver), or use --backend onnxruntime")

    def _last_trt_error(self) -> str:
        return f": {self.trt_logger.errors[-1]}" if self.trt_logger.errors else " (see the TensorRT log)"

    def _deserialize(self, component: str) -> Any:
        path = self.folder / self.manifest.components[component].file
        if path.suffix != ".plan":
            raise BackendError(f"{path}: not a TensorRT engine; use --backend onnxruntime for .onnx graphs")
        engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise BackendError(f"{path}: TensorRT could not load this engine{self._last_trt_error()}; {REBUILD}")
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        want = set(GRAPH_IO[component][0]) | set(GRAPH_IO[component][1])
        if not want <= names:
            raise BackendError(f"{path}: engine tensors {sorted(names)} lack {sorted(want - names)}; {REBUILD}")
        return engine

    def _tensor(self, component: str, tensor: str) -> tuple[tuple[int, ...], np.dtype]:
        """Shape (fixed; dynamic dims resolved from the manifest) and numpy dtype of one engine tensor."""
        engine = self.engines[component]
        shape = tuple(engine.get_tensor_shape(tensor))
        if any(d < 0 for d in shape):
            spec = {t.name: t for t in self.manifest.components[component].inputs}.get(tensor)
            if spec is None:
                raise BackendError(f"{component}.{tensor}: dynamic shape {shape} not resolvable; {REBUILD}")
            shape = tuple(spec.shape)
        return shape, np.dtype(self.trt.nptype(engine.get_tensor_dtype(tensor)))

    def _allocate(self) -> None:
        """Every buffer of the longest chain, once: the largest use of each key decides its size.

        Buffers the host fills, and the image, get a pinned host twin (cudaMallocHost) for their copies.
        """
        needs: dict[str, tuple[int, tuple[int, ...], np.dtype]] = {}
        for component, binding in chain_bindings(MAX_STEPS):
            for tensor, key in binding.items():
                shape, dtype = self._tensor(component, tensor)
                nbytes = int(np.prod(shape)) * dtype.itemsize
                if key not in needs or nbytes > needs[key][0]:
                    needs[key] = (nbytes, shape, dtype)
        pinned = chain_inputs() | {"image"}
        self.buffers = {key: DeviceBuffer(self.cudart, shape, dtype, pinned=key in pinned)
                        for key, (_, shape, dtype) in needs.items()}

    def _bind_contexts(self) -> None:
        """One context per stage binding of every chain length, its tensor addresses set once, here."""
        strategy = self.trt.ExecutionContextAllocationStrategy.USER_MANAGED
        for steps in range(1, MAX_STEPS + 1):
            for component, binding in chain_bindings(steps):
                key = context_key(component, binding)
                if key in self.contexts:
                    continue
                engine = self.engines[component]
                context = engine.create_execution_context(strategy)
                if context is None:
                    raise BackendError(f"{component}: TensorRT could not create an execution context"
                                       f"{self._last_trt_error()}")
                for tensor, buf in binding.items():
                    if tensor in GRAPH_IO[component][0] and any(d < 0 for d in engine.get_tensor_shape(tensor)):
                        if not context.set_input_shape(tensor, self.buffers[buf].shape):
                            raise BackendError(f"{component}.{tensor}: TensorRT refused shape "
                                               f"{self.buffers[buf].shape}{self._last_trt_error()}; {REBUILD}")
                    if not context.set_tensor_address(tensor, self.buffers[buf].ptr):
                        raise BackendError(f"{component}.{tensor}: TensorRT refused the buffer address"
                                           f"{self._last_trt_error()}")
                self.contexts[key] = context

    def _share_scratch(self) -> None:
        """One scratch allocation, as large as the largest engine needs, shared by all contexts.

        `device_memory_size_v2` (TensorRT >= 10.1) may legally be 0; the allocation is never empty.
        """
        nbytes = max(max(int(e.device_memory_size_v2) for e in self.engines.values()), 256)
        self.scratch = int(call(self.cudart, self.cudart.cudaMalloc(nbytes), "cudaMalloc"))
        for context in self.contexts.values():
            context.set_device_memory(self.scratch, nbytes)
        logger.info("TensorRT scratch: %.1f MiB shared by %d contexts", nbytes / 2**20, len(self.contexts))

    # ----------------------------------------------------------------------------------------- run
    def _sync(self) -> None:
        call(self.cudart, self.cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def _enqueue(self, steps: int) -> None:
        """Queue the whole chain on the stream (also what a CUDA graph captures): each context once."""
        for component, binding in chain_bindings(steps):
            if not self.contexts[context_key(component, binding)].execute_async_v3(self.stream):
                raise BackendError(f"TensorRT failed to enqueue {component}{self._last_trt_error()}")

    def _capture(self, steps: int) -> tuple[Any, Any]:
        """Capture the chain for `steps` into an instantiated CUDA graph; the first error wins, nothing leaks."""
        cudart = self.cudart
        call(cudart, cudart.cudaStreamBeginCapture(
            self.stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture")
        first: Exception | None = None
        try:
            self._enqueue(steps)
        except Exception as exc:  # noqa: BLE001 - the capture must be ended whatever happened
            first = exc
        err, graph = cudart.cudaStreamEndCapture(self.stream)
        if first is None and int(err) != 0:
            first = BackendError(f"CUDA error in cudaStreamEndCapture: {error_text(cudart, err)}")
        if first is None:
            err, graph_exec = cudart.cudaGraphInstantiate(graph, 0)
            if int(err) == 0:
                return graph, graph_exec
            first = BackendError(f"CUDA error in cudaGraphInstantiate: {error_text(cudart, err)}")
        if _live(graph):
            cudart.cudaGraphDestroy(graph)
        raise first

    def _launch(self, steps: int) -> None:
        """Run the chain: replay its CUDA graph (captured after a warm-up on first use), or enqueue it."""
        key = (self.batch, steps)
        if self.use_cuda_graph and key not in self.graphs:
            self._enqueue(steps)  # warm-up, outside any capture: a failure here is not a capture problem
            self._sync()
            try:
                self.graphs[key] = self._capture(steps)
                logger.info("captured the tile chain (batch %d, %d steps) as a CUDA graph", *key)
            except BackendError as exc:
                self.capture_error, self.use_cuda_graph = exc, False
                logger.warning("CUDA graph capture failed (%s); running the tile chain without CUDA graphs", exc)
        if key in self.graphs:
            call(self.cudart, self.cudart.cudaGraphLaunch(self.graphs[key][1], self.stream), "cudaGraphLaunch")
            return
        try:
            self._enqueue(steps)
        except BackendError as exc:
            if self.capture_error is None:
                raise
            raise BackendError(f"{exc} (CUDA graph capture had failed first: {self.capture_error})") from self.capture_error

    def run_chain(
        self, lr: np.ndarray, vae_noise: np.ndarray, pred_noise: np.ndarray, schedule: Schedule
    ) -> np.ndarray:
        if schedule.steps > MAX_STEPS:
            raise ValueError(f"at most {MAX_STEPS} steps, got {schedule.steps}")
        self._use_device()  # CUDA's current device is per host thread: the scheduler calls from its own
        uploads = dict(schedule_uploads(schedule, self.batch, self.prompt_embeds),
                       lr=lr, vae_noise=vae_noise, pred_noise=pred_noise)
        for key, value in uploads.items():
            self.buffers[key].upload(value, self.stream)
        self._launch(schedule.steps)
        image = self.buffers["image"].download(self.stream)  # synchronises: the pinned inputs are free again
        return image.astype(np.float32, copy=False)

    def _use_device(self) -> None:
        """Make `device` (`--devices`) this thread's current CUDA device."""
        if self.device is not None:
            call(self.cudart, self.cudart.cudaSetDevice(int(self.device)), f"cudaSetDevice({self.device})")

    def close(self) -> None:
        for graph, graph_exec in self.graphs.values():
            self.cudart.cudaGraphExecDestroy(graph_exec)
            self.cudart.cudaGraphDestroy(graph)
        self.graphs = {}
        for buf in self.buffers.values():
            buf.free()
        self.buffers = {}
        self.contexts, self.engines = {}, {}  # contexts before their engines
        self.runtime = None
        if self.scratch:
            self.cudart.cudaFree(self.scratch)
            self.scratch = 0
        if self.stream is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown, or a half-built backend
            pass


def _live(handle: Any) -> bool:
    """Whether a cuda-python handle (graph, graph exec) points at something that needs destroying."""
    if handle is None:
        return False
    try:
        return int(handle) != 0
    except TypeError:
        return True

"""The TensorRT backend's control flow on CPU, with fakes derived from the real TensorRT and CUDA classes.

No GPU here, so the runtime classes are stand-ins built from the real ones (tests/trt_api.py): TensorRT
objects are `create_autospec` mocks of the real `tensorrt_lean_bindings` classes whose methods run a fake
that keeps "device" memory in host arrays and runs each "engine" (the toy .onnx bytes renamed .plan)
with ONNX Runtime; `cuda.bindings.runtime` is the real module with only its functions faked. Every call
must bind to the real signature, every enum and class the backend reads is the real one. Enqueues during
stream capture are recorded so that a graph launch replays them with the tensor addresses bound at
capture time, as CUDA graphs do. What this proves: buffers are chained stage to stage, one scratch
allocation is shared, one context per stage, one graph per (batch, steps) captured after a warm-up and
replayed, pinned host transfers, failures reported in one line, and the result equals the ONNX Runtime
backend's. What it cannot prove: real TensorRT/CUDA (the `gpu` tests in test_trt_gpu.py do).
"""
from __future__ import annotations

import ctypes
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from invsr_runtime import Upscaler
from invsr_runtime.backends import tensorrt as trt_backend

from test_runtime_toyengine import build_toy_engine  # noqa: E402
from trt_api import ConformingModule, autospec_fake  # noqa: E402

ort = pytest.importorskip("onnxruntime")
real_trt = pytest.importorskip("tensorrt_lean_bindings")
real_cudart = pytest.importorskip("cuda.bindings.runtime")
OK = real_cudart.cudaError_t.cudaSuccess


class FakeGraph:
    """A captured CUDA graph: the ops enqueued during capture."""

    def __init__(self, ops: list) -> None:
        self.ops = ops

    def __int__(self) -> int:
        return id(self)


class FakeCudart:
    """The functions of cuda.bindings.runtime the backend calls; device memory = host numpy arrays."""

    def __init__(self) -> None:
        self.blocks: dict[int, np.ndarray] = {}
        self.pinned: set[int] = set()
        self.capture: list | None = None
        self.launches = 0
        self.live_graphs: set[int] = set()
        self.device_count_error = OK
        self.end_capture_error = OK
        self.copies: list[tuple[int, int]] = []

    def cudaGetDeviceCount(self):
        return (self.device_count_error, 0 if self.device_count_error != OK else 1)

    def cudaFree(self, devPtr):
        self.blocks.pop(int(devPtr), None)
        return (OK,)

    def cudaGetDevice(self):
        return OK, 0

    def cudaGetDeviceProperties(self, device):
        return OK, type("Props", (), {"name": b"Fake GPU", "major": 9, "minor": 0})()

    def cudaGetErrorString(self, error):
        return real_cudart.cudaGetErrorString(error)  # a pure table lookup: safe without a GPU

    def cudaMalloc(self, size):
        block = np.zeros(size, np.uint8)
        self.blocks[block.ctypes.data] = block
        return OK, block.ctypes.data

    def cudaMallocHost(self, size):
        err, ptr = self.cudaMalloc(size)
        self.pinned.add(ptr)
        return err, ptr

    def cudaFreeHost(self, ptr):
        self.pinned.discard(ptr)
        return self.cudaFree(ptr)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        self.copies.append((dst, src))
        ctypes.memmove(dst, src, count)
        return (OK,)

    def cudaStreamCreateWithFlags(self, flags):
        return OK, 7

    def cudaStreamSynchronize(self, stream):
        return (OK,)

    def cudaStreamDestroy(self, stream):
        return (OK,)

    def cudaStreamBeginCapture(self, stream, mode):
        assert mode == real_cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self.capture = []
        return (OK,)

    def cudaStreamEndCapture(self, stream):
        ops, self.capture = self.capture, None
        if self.end_capture_error != OK:
            return self.end_capture_error, None
        graph = FakeGraph(ops)
        self.live_graphs.add(id(graph))
        return OK, graph

    def cudaGraphInstantiate(self, graph, flags):
        return OK, FakeGraph(list(graph.ops))

    def cudaGraphLaunch(self, graphExec, stream):
        self.launches += 1
        for op in graphExec.ops:
            op()
        return (OK,)

    def cudaGraphExecDestroy(self, graphExec):
        return (OK,)

    def cudaGraphDestroy(self, graph):
        self.live_graphs.discard(id(graph))
        return (OK,)


def _view(ptr: int, shape, dtype=np.float32) -> np.ndarray:
    count = int(np.prod(shape))
    buf = (ctypes.c_char * (count * np.dtype(dtype).itemsize)).from_address(ptr)
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


class FakeContext:
    """IExecutionContext: runs its engine's ONNX session on the bound "device" arrays."""

    def __init__(self, engine: "FakeEngine", cudart: FakeCudart) -> None:
        self.engine, self.cudart = engine, cudart
        self.addresses: dict[str, int] = {}
        self.device_memory: tuple[int, int] | None = None
        self.direct_runs = 0
        self.enqueues_in_capture = 0

    def set_device_memory(self, memory, size):
        self.device_memory = (memory, size)

    def set_tensor_address(self, name, memory):
        if name in self.engine.refuse_address:
            return False
        self.addresses[name] = memory
        return True

    def set_input_shape(self, name, shape):
        return True

    def execute_async_v3(self, stream_handle):
        assert self.device_memory is not None, "USER_MANAGED context enqueued without device memory"
        if self.cudart.capture is not None and self.engine.fail_in_capture:
            return False
        bound = dict(self.addresses)  # a captured graph keeps the addresses of capture time

        def op():
            sess = self.engine.session
            feeds = {i.name: _view(bound[i.name], i.shape).copy() for i in sess.get_inputs()}
            for meta, value in zip(sess.get_outputs(), sess.run(None, feeds)):
                _view(bound[meta.name], value.shape)[...] = value

        if self.cudart.capture is not None:
            self.enqueues_in_capture += 1
            self.cudart.capture.append(op)
        else:
            self.direct_runs += 1
            op()
        return True


class FakeEngine:
    """ICudaEngine over an ONNX Runtime session."""

    def __init__(self, data: bytes, cudart: FakeCudart, scratch: int) -> None:
        self.session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        self.cudart = cudart
        self.io = {t.name: t.shape for t in self.session.get_inputs() + self.session.get_outputs()}
        self.names = list(self.io)
        self.scratch = scratch
        self.contexts: list[FakeContext] = []
        self.fail_in_capture = False
        self.refuse_address: set[str] = set()
        self.mock = None

    def get_tensor_name(self, index):
        return self.names[index]

    def get_tensor_shape(self, name):
        return tuple(self.io[name])

    def get_tensor_dtype(self, name):
        return real_trt.DataType.FLOAT

    def create_execution_context(self, strategy=real_trt.ExecutionContextAllocationStrategy.STATIC):
        assert strategy == real_trt.ExecutionContextAllocationStrategy.USER_MANAGED
        self.contexts.append(FakeContext(self, self.cudart))
        return autospec_fake(real_trt.IExecutionContext, self.contexts[-1])


class FakeTrt:
    """The TensorRT side of one test: the Runtime factory, the engines it made, failure switches."""

    def __init__(self, cudart: FakeCudart) -> None:
        self.cudart = cudart
        self.engines: dict[str, FakeEngine] = {}
        self.runtimes: list = []
        self.log_on_create: str | None = None
        self.zero_scratch = False

    def runtime(self, logger):
        assert isinstance(logger, real_trt.ILogger), "Runtime(logger) needs a real ILogger"
        if self.log_on_create:
            logger.log(real_trt.ILogger.Severity.ERROR, self.log_on_create)
        outer = self

        class FakeRuntime:
            def deserialize_cuda_engine(self, serialized_engine):
                engine = FakeEngine(bytes(serialized_engine), outer.cudart, 0 if outer.zero_scratch else 1000 + 37 * len(outer.engines))
                outer.engines[engine.session.get_outputs()[0].name] = engine
                engine.mock = autospec_fake(real_trt.ICudaEngine, engine, num_io_tensors=len(engine.names),
                                            device_memory_size_v2=engine.scratch)
                return engine.mock

        runtime = autospec_fake(real_trt.Runtime, FakeRuntime())
        self.runtimes.append(runtime)
        return runtime

    def module(self) -> ConformingModule:
        return ConformingModule(real_trt, Runtime=self.runtime)


@pytest.fixture()
def fakes(monkeypatch):
    cudart = FakeCudart()
    trt = FakeTrt(cudart)
    monkeypatch.setattr(trt_backend, "import_cudart", lambda: ConformingModule(real_cudart, cudart))
    monkeypatch.setattr(trt_backend, "import_tensorrt", trt.module)
    return cudart, trt


def _plan_folder(onnx_folder: Path, plan_folder: Path, provenance: dict) -> Path:
    shutil.copytree(onnx_folder, plan_folder)
    manifest = json.loads((plan_folder / "manifest.json").read_text())
    manifest["backend"] = "tensorrt"
    manifest["provenance"] = provenance
    for comp in manifest["components"].values():
        plan = comp["file"].replace(".onnx", ".plan")
        (plan_folder / comp["file"]).rename(plan_folder / plan)
        comp["file"] = plan
    (plan_folder / "manifest.json").write_text(json.dumps(manifest))
    return plan_folder


PROVENANCE = {"tensorrt": {"tensorrt_version": "11.4.0.106", "gpu_name": "Fake GPU", "compute_capability": "9.0"},
              "build_flags": ["precision=fp32", "strongly_typed", "version_compatible"]}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("trtfake")
    onnx_folder = build_toy_engine(root / "onnx", tile=16, batch=2)
    return onnx_folder, _plan_folder(onnx_folder, root / "plan", PROVENANCE)


IMG = np.random.default_rng(0).random((30, 41, 3), dtype=np.float32)


def test_trt_backend_equals_onnxruntime(fakes, folders):
    cudart, trt = fakes
    onnx_folder, plan_folder = folders
    ours = Upscaler(plan_folder)
    assert ours.backend.name == "tensorrt"
    ref = Upscaler(onnx_folder)
    for steps in (1, 3, 1):
        np.testing.assert_allclose(ours.upscale(IMG, steps=steps, seed=2), ref.upscale(IMG, steps=steps, seed=2), atol=1e-6)
    np.testing.assert_allclose(ours.upscale(IMG, timesteps="250,60,10", seed=2),
                               ref.upscale(IMG, timesteps="250,60,10", seed=2), atol=1e-6)
    backend = ours.backend
    assert sorted(backend.graphs) == [(2, 1), (2, 3)]  # one graph per (batch, steps), reused across schedules
    # 30x41 -> padded 32x48 -> 3 x 5 = 15 tiles of 16 px = 8 engine batches of 2, each one graph launch
    assert cudart.launches == 4 * 8
    unet_runs = [c.direct_runs for c in trt.engines["latent_next"].contexts]
    assert unet_runs == [2, 1, 1, 0, 0]  # only the warm-ups before the two captures ran outside a graph
    ours.close()
    assert backend.buffers == {} and backend.scratch == 0 and cudart.pinned == set()


def test_one_context_per_unet_step_each_enqueued_once_per_graph(fakes, folders):
    """Item 10: no context is enqueued twice in one captured graph, and addresses are set once, at set-up."""
    cudart, trt = fakes
    up = Upscaler(folders[1])
    unet = trt.engines["latent_next"]
    decoder = trt.engines["image"]
    assert len(unet.contexts) == trt_backend.MAX_STEPS and len(decoder.contexts) == 2  # one per latent parity
    before = {id(c): dict(c.addresses) for e in trt.engines.values() for c in e.contexts}
    up.upscale(IMG, steps=5, seed=1)
    assert [c.enqueues_in_capture for c in unet.contexts] == [1, 1, 1, 1, 1]
    assert {id(c): c.addresses for e in trt.engines.values() for c in e.contexts} == before
    latents = [(c.addresses["latent"], c.addresses["latent_next"]) for c in unet.contexts]
    assert all(a != b for a, b in latents) and all(latents[i][1] == latents[i + 1][0] for i in range(4))


def test_trt_contexts_share_one_scratch(fakes, folders):
    _, trt = fakes
    backend = Upscaler(folders[1]).backend
    memories = {ctx.device_memory for e in trt.engines.values() for ctx in e.contexts}
    sizes = [e.scratch for e in trt.engines.values()]
    assert len(backend.contexts) == 9 and len(memories) == 1 and next(iter(memories))[1] == max(sizes)


def test_zero_scratch_engines_open(fakes, folders):
    """Item 1: device_memory_size_v2 == 0 is legal; TensorRT 11 has no device_memory_size to fall back to."""
    _, trt = fakes
    trt.zero_scratch = True
    up = Upscaler(folders[1])
    np.testing.assert_allclose(up.upscale(IMG, seed=2), Upscaler(folders[0]).upscale(IMG, seed=2), atol=1e-6)
    assert up.backend.scratch != 0


def test_transfers_use_pinned_host_buffers_allocated_once(fakes, folders):
    """Item 9: every host<->device copy goes through a cudaMallocHost buffer made at set-up."""
    cudart, _ = fakes
    up = Upscaler(folders[1])
    pinned_at_setup, blocks_at_setup = set(cudart.pinned), len(cudart.blocks)
    cudart.copies.clear()
    up.upscale(IMG, steps=2, seed=0)
    up.upscale(IMG, steps=2, seed=1)
    assert cudart.pinned == pinned_at_setup and len(cudart.blocks) == blocks_at_setup  # nothing allocated per call
    assert cudart.copies and all(src in pinned_at_setup or dst in pinned_at_setup for dst, src in cudart.copies)


def test_set_tensor_address_refusal_is_one_line(fakes, folders):
    """Item 8: set_tensor_address returns False (not an exception) when TensorRT refuses; it is checked."""
    _, trt = fakes
    real_deserialize = trt.runtime

    def refusing(logger):
        runtime = real_deserialize(logger)
        make = runtime.deserialize_cuda_engine.side_effect

        def deserialize(data):
            engine = make(data)
            for fake in trt.engines.values():
                fake.refuse_address = {"sigma"}
            return engine

        runtime.deserialize_cuda_engine.side_effect = deserialize
        return runtime

    trt.runtime = refusing
    with pytest.raises(trt_backend.BackendError, match=r"predictor\.sigma: TensorRT refused the buffer address") as exc:
        Upscaler(folders[1])
    assert "\n" not in str(exc.value)


def test_capture_failure_falls_back_to_eager_with_one_warning(fakes, folders, caplog):
    """Item 4: an enqueue refused during capture -> the chain runs without a graph; no graph leaks."""
    cudart, trt = fakes
    up = Upscaler(folders[1])
    trt.engines["latent_next"].fail_in_capture = True
    cudart.end_capture_error = real_cudart.cudaError_t.cudaErrorStreamCaptureInvalidated  # would mask the first error
    with caplog.at_level(logging.WARNING, logger="invsr_runtime"):
        out = up.upscale(IMG, steps=2, seed=3)
        out2 = up.upscale(IMG, steps=1, seed=3)
    ref = Upscaler(folders[0])
    np.testing.assert_allclose(out, ref.upscale(IMG, steps=2, seed=3), atol=1e-6)
    np.testing.assert_allclose(out2, ref.upscale(IMG, steps=1, seed=3), atol=1e-6)
    warnings = [r for r in caplog.records if "capture failed" in r.getMessage()]
    assert len(warnings) == 1 and "failed to enqueue unet" in warnings[0].getMessage()  # the first error, kept
    assert up.backend.graphs == {} and cudart.live_graphs == set() and cudart.launches == 0


def test_capture_failure_then_eager_failure_keeps_both(fakes, folders):
    cudart, trt = fakes
    up = Upscaler(folders[1])
    trt.engines["latent_next"].fail_in_capture = True
    backend = up.backend
    real_enqueue = backend._enqueue

    def enqueue(steps):
        if backend.capture_error is not None:
            raise trt_backend.BackendError("TensorRT failed to enqueue vae_decoder")
        real_enqueue(steps)

    backend._enqueue = enqueue
    with pytest.raises(trt_backend.BackendError, match="vae_decoder.*capture had failed first.*enqueue unet"):
        up.upscale(IMG, steps=1, seed=0)


def test_cuda_that_cannot_start_is_one_line(fakes, folders):
    """Item 7: CUDA's own reason (driver too old), not "no GPU"; TensorRT is never reached."""
    cudart, trt = fakes
    cudart.device_count_error = real_cudart.cudaError_t.cudaErrorInsufficientDriver
    with pytest.raises(trt_backend.BackendError, match="driver version is insufficient.*\\(35\\)") as exc:
        Upscaler(folders[1])
    assert "\n" not in str(exc.value) and trt.runtimes == []


def test_runtime_whose_cuda_failed_is_one_line_and_untouched(fakes, folders):
    """Item 5: TensorRT logs the CUDA failure while making the Runtime; the half-made Runtime is never read."""
    _, trt = fakes
    trt.log_on_create = "CUDA initialization failure with error: 35"
    with pytest.raises(trt_backend.BackendError, match="TensorRT could not start: CUDA initialization failure") as exc:
        Upscaler(folders[1])
    assert "\n" not in str(exc.value)
    (runtime,) = trt.runtimes
    assert runtime.mock_calls == [] and not isinstance(runtime.engine_host_code_allowed, bool)


def test_lean_runtime_needs_version_compatible_engines(fakes, folders, tmp_path):
    folder = _plan_folder(folders[0], tmp_path / "plain", {**PROVENANCE, "build_flags": ["strongly_typed"]})
    with pytest.raises(trt_backend.BackendError, match="version-compatible"):
        Upscaler(folder)


def test_trt_refuses_other_gpu(fakes, folders, tmp_path):
    folder = _plan_folder(folders[0], tmp_path / "other",
                          {**PROVENANCE, "build_flags": ["strongly_typed"], "tensorrt": {
                              "tensorrt_version": "11.4.0.106", "gpu_name": "NVIDIA A100", "compute_capability": "8.0"}})
    with pytest.raises(trt_backend.BackendError, match="compute capability 8.0"):
        Upscaler(folder)

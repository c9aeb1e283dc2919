"""The TensorRT backend's control flow on CPU, with stand-ins for TensorRT and the CUDA runtime.

No GPU here, so `tensorrt` and `cuda.bindings.runtime` are replaced by fakes that keep "device"
memory in host arrays, run each "engine" (the toy .onnx bytes renamed .plan) with ONNX Runtime,
and record enqueues during stream capture so that a graph launch replays them with the tensor
addresses bound at capture time, as CUDA graphs do. What this proves: buffers are chained stage to
stage, one scratch allocation is shared, one graph per (batch, steps) is captured after a warm-up and
replayed, and the result equals the ONNX Runtime backend's. What it cannot prove: real TensorRT/CUDA.
"""
from __future__ import annotations

import ctypes
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from invsr_runtime import Upscaler
from invsr_runtime.backends import tensorrt as trt_backend

from test_runtime_toyengine import build_toy_engine  # noqa: E402

ort = pytest.importorskip("onnxruntime")


class FakeCudart:
    """Device memory = host numpy arrays addressed by their real pointers."""

    cudaStreamNonBlocking = 1
    cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    cudaStreamCaptureMode = SimpleNamespace(cudaStreamCaptureModeThreadLocal=1)

    def __init__(self) -> None:
        self.blocks: dict[int, np.ndarray] = {}
        self.capture: list | None = None
        self.launches = 0

    def cudaGetDeviceCount(self):
        return 0, 1

    def cudaGetDevice(self):
        return 0, 0

    def cudaGetDeviceProperties(self, device):
        return 0, SimpleNamespace(name=b"Fake GPU", major=9, minor=0)

    def cudaGetErrorString(self, err):
        return 0, b"fake error"

    def cudaMalloc(self, size):
        block = np.zeros(size, np.uint8)
        self.blocks[block.ctypes.data] = block
        return 0, block.ctypes.data

    def cudaFree(self, ptr):
        self.blocks.pop(ptr, None)
        return (0,)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        ctypes.memmove(dst, src, count)
        return (0,)

    def cudaStreamCreateWithFlags(self, flags):
        return 0, 7

    def cudaStreamSynchronize(self, stream):
        return (0,)

    def cudaStreamDestroy(self, stream):
        return (0,)

    def cudaStreamBeginCapture(self, stream, mode):
        self.capture = []
        return (0,)

    def cudaStreamEndCapture(self, stream):
        graph, self.capture = self.capture, None
        return 0, graph

    def cudaGraphInstantiate(self, graph, flags):
        return 0, list(graph)

    def cudaGraphLaunch(self, graph_exec, stream):
        self.launches += 1
        for op in graph_exec:
            op()
        return (0,)

    def cudaGraphExecDestroy(self, graph_exec):
        return (0,)

    def cudaGraphDestroy(self, graph):
        return (0,)


def _view(ptr: int, shape, dtype=np.float32) -> np.ndarray:
    count = int(np.prod(shape))
    buf = (ctypes.c_char * (count * np.dtype(dtype).itemsize)).from_address(ptr)
    return np.frombuffer(buf, dtype=dtype).reshape(shape)


class FakeContext:
    def __init__(self, engine: "FakeEngine", cudart: FakeCudart) -> None:
        self.engine, self.cudart = engine, cudart
        self.addresses: dict[str, int] = {}
        self.device_memory: tuple[int, int] | None = None
        self.direct_runs = 0

    def set_device_memory(self, ptr, size):
        self.device_memory = (ptr, size)

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def set_input_shape(self, name, shape):
        return True

    def execute_async_v3(self, stream):
        bound = dict(self.addresses)  # a captured graph keeps the addresses of capture time

        def op():
            sess = self.engine.session
            feeds = {i.name: _view(bound[i.name], i.shape).copy() for i in sess.get_inputs()}
            for meta, value in zip(sess.get_outputs(), sess.run(None, feeds)):
                _view(bound[meta.name], value.shape)[...] = value

        if self.cudart.capture is not None:
            self.cudart.capture.append(op)
        else:
            self.direct_runs += 1
            op()
        return True


class FakeEngine:
    def __init__(self, data: bytes, cudart: FakeCudart) -> None:
        self.session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        self.cudart = cudart
        self.io = {t.name: t.shape for t in self.session.get_inputs() + self.session.get_outputs()}
        self.names = list(self.io)
        self.device_memory_size_v2 = 1000 + 100 * len(self.names)
        self.contexts: list[FakeContext] = []

    @property
    def num_io_tensors(self):
        return len(self.names)

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_shape(self, name):
        return tuple(self.io[name])

    def get_tensor_dtype(self, name):
        return "float32"

    def create_execution_context(self, strategy):
        assert strategy == "USER_MANAGED"
        self.contexts.append(FakeContext(self, self.cudart))
        return self.contexts[-1]


def fake_trt(cudart: FakeCudart) -> SimpleNamespace:
    class Runtime:
        def __init__(self, logger):
            self.engines: list[FakeEngine] = []

        def deserialize_cuda_engine(self, data):
            self.engines.append(FakeEngine(bytes(data), cudart))
            return self.engines[-1]

    logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None})
    return SimpleNamespace(__version__="11.4.0.106", Runtime=Runtime, Logger=logger, Builder=object,
                           ExecutionContextAllocationStrategy=SimpleNamespace(USER_MANAGED="USER_MANAGED"),
                           nptype=lambda dtype: np.float32)


@pytest.fixture()
def fakes(monkeypatch):
    cudart = FakeCudart()
    monkeypatch.setattr(trt_backend, "import_cudart", lambda: cudart)
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: fake_trt(cudart))
    return cudart


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("trtfake")
    onnx_folder = build_toy_engine(root / "onnx", tile=16, batch=2)
    plan_folder = root / "plan"
    shutil.copytree(onnx_folder, plan_folder)
    manifest = json.loads((plan_folder / "manifest.json").read_text())
    manifest["backend"] = "tensorrt"
    manifest["provenance"] = {"tensorrt_version": "11.4.0.106", "gpu": {"name": "Fake GPU", "compute_capability": "9.0"}}
    for comp in manifest["components"].values():
        plan = comp["file"].replace(".onnx", ".plan")
        (plan_folder / comp["file"]).rename(plan_folder / plan)
        comp["file"] = plan
    (plan_folder / "manifest.json").write_text(json.dumps(manifest))
    return onnx_folder, plan_folder


def test_trt_backend_equals_onnxruntime(fakes, folders):
    onnx_folder, plan_folder = folders
    img = np.random.default_rng(0).random((30, 41, 3), dtype=np.float32)
    ours = Upscaler(plan_folder)
    assert ours.backend.name == "tensorrt"
    ref = Upscaler(onnx_folder)
    for steps in (1, 3, 1):
        np.testing.assert_allclose(ours.upscale(img, steps=steps, seed=2), ref.upscale(img, steps=steps, seed=2), atol=1e-6)
    np.testing.assert_allclose(ours.upscale(img, timesteps="250,60,10", seed=2),
                               ref.upscale(img, timesteps="250,60,10", seed=2), atol=1e-6)
    backend = ours.backend
    assert sorted(backend.graphs) == [(2, 1), (2, 3)]  # one graph per (batch, steps), reused across schedules
    # 30x41 -> padded 32x48 -> 3 x 5 = 15 tiles of 16 px = 8 engine batches of 2, each one graph launch
    assert fakes.launches == 4 * 8
    unet_context = backend.contexts["unet"]
    assert unet_context.direct_runs == 1 + 3  # only the warm-ups before the two captures ran outside a graph
    ours.close()
    assert backend.buffers == {} and backend.scratch == 0


def test_trt_contexts_share_one_scratch(fakes, folders):
    backend = Upscaler(folders[1]).backend
    memories = {ctx.device_memory for ctx in backend.contexts.values()}
    sizes = [e.device_memory_size_v2 for e in backend.engines.values()]
    assert len(memories) == 1 and next(iter(memories))[1] == max(sizes)


def test_lean_runtime_needs_version_compatible_engines(fakes, folders, monkeypatch):
    lean = fake_trt(fakes)
    del lean.Builder
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: lean)
    with pytest.raises(trt_backend.BackendError, match="version-compatible"):
        Upscaler(folders[1])


def test_trt_refuses_other_gpu(fakes, folders, tmp_path):
    folder = tmp_path / "other"
    shutil.copytree(folders[1], folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["provenance"]["gpu"] = {"name": "NVIDIA A100", "compute_capability": "8.0"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(trt_backend.BackendError, match="compute capability 8.0"):
        Upscaler(folder)

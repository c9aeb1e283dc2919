"""The TensorRT path against the real APIs, on CPU: the lean runtime and cuda-bindings classes, the builder table.

Every attribute the runtime reads on a TensorRT or CUDA object, and every call it makes with its arity,
is found in the source (AST) and checked against the real `tensorrt_lean_bindings` (TensorRT 11.x) and
`cuda.bindings.runtime` (cuda-python 13) objects; builder calls against BUILDER_API (tests/trt_api.py,
from NVIDIA/TensorRT's binding sources). The builder's failure returns (a rejected timing cache, an
invalid profile) are exercised with table-checked fakes. tests/test_runtime_trtfake.py runs the backend
itself on fakes derived from the same real classes.
"""
from __future__ import annotations

import ast
import importlib.machinery
import logging
import re
import sys
import types
from pathlib import Path

import pytest

from invsr_export import tensorrt_build
from invsr_runtime.backends import cuda as cuda_mod
from invsr_runtime.backends import trt_import

from trt_api import (BUILDER_API, ConformingModule, TableChecked, autospec_fake, check_call,  # noqa: E402
                     pybind_signatures, real_signatures)

real_trt = pytest.importorskip("tensorrt_lean_bindings")
real_cudart = pytest.importorskip("cuda.bindings.runtime")

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_FILES = ["invsr_runtime/backends/tensorrt.py", "invsr_runtime/backends/cuda.py"]
BUILD_FILE = "invsr_export/tensorrt_build.py"

#: How the code names its TensorRT / CUDA objects (receiver expression -> real object).
RUNTIME_RECEIVERS = {
    "cudart": real_cudart, "self.cudart": real_cudart,
    "self.trt": real_trt, "trt": real_trt,
    "engine": real_trt.ICudaEngine, "e": real_trt.ICudaEngine, "self.engines[": real_trt.ICudaEngine,
    "context": real_trt.IExecutionContext, "self.contexts[": real_trt.IExecutionContext,
    "self.runtime": real_trt.Runtime,
}
BUILD_RECEIVERS = {"builder": "Builder", "config": "IBuilderConfig", "parser": "OnnxParser",
                   "parser.get_error(0)": "ParserError", "profile": "IOptimizationProfile", "cache": "ITimingCache"}


def _resolve(text: str, receivers: dict):
    if text in receivers:
        return receivers[text]
    for prefix, target in receivers.items():
        if prefix.endswith("[") and text.startswith(prefix):
            return target
    head, dot, attr = text.rpartition(".")
    if dot and head:
        base = _resolve(head, receivers)
        if base is not None and not isinstance(base, str) and hasattr(base, attr):
            return getattr(base, attr)
    return None


def _uses(path: str):
    """(receiver text, attribute, call node or None, line) for every attribute read in a source file."""
    tree = ast.parse((ROOT / path).read_text())
    calls = {id(n.func): n for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            yield ast.unparse(node.value), node.attr, calls.get(id(node)), node.lineno


def _placeholders(call: ast.Call) -> tuple[tuple, dict]:
    assert not any(isinstance(a, ast.Starred) for a in call.args), "star-args defeat the arity check"
    return tuple(object() for _ in call.args), {k.arg: object() for k in call.keywords}


@pytest.mark.parametrize("path, receivers", [
    *[(f, RUNTIME_RECEIVERS) for f in RUNTIME_FILES],
    (BUILD_FILE, {"runtime": real_cudart}),  # the builder's GPU probe goes through cuda.bindings.runtime
])
def test_every_runtime_api_use_exists_with_its_arity(path, receivers):
    """Items 1, 8 and the rest: each TensorRT / CUDA member used exists on the real class, calls bind."""
    checked = 0
    for receiver, attr, call, line in _uses(path):
        owner = _resolve(receiver, receivers)
        if owner is None or attr.startswith("_") and attr not in ("__version__", "__init__"):
            continue
        where = f"{path}:{line} {receiver}.{attr}"
        assert hasattr(owner, attr), f"{where}: the real {getattr(owner, '__name__', owner)} has no {attr!r}"
        member = getattr(owner, attr)
        if call is not None and not isinstance(member, type) and callable(member) and attr != "__init__":
            args, kwargs = _placeholders(call)
            check_call(owner, attr, args, kwargs, method=not isinstance(owner, types.ModuleType))
        elif call is not None and isinstance(member, type) and attr != "ILogger":
            args, kwargs = _placeholders(call)
            check_call(member, "__init__", args, kwargs)
        checked += 1
    assert checked >= (2 if path == BUILD_FILE else 10)


def test_backend_uses_only_the_v2_device_memory_api():
    """Item 1: TensorRT 11 has no `device_memory_size`; set_device_memory(ptr, size) exists from 10.1."""
    assert isinstance(real_trt.ICudaEngine.device_memory_size_v2, property)
    assert not hasattr(real_trt.ICudaEngine, "device_memory_size")
    (sig,) = pybind_signatures(real_trt.IExecutionContext.set_device_memory, "set_device_memory")
    assert list(sig.parameters) == ["self", "memory", "size"]
    source = (ROOT / RUNTIME_FILES[0]).read_text()
    assert "device_memory_size_v2" in source and not re.search(r"device_memory_size(?!_v2)", source)


@pytest.mark.parametrize("cls, method, returns", [
    ("IExecutionContext", "set_tensor_address", "bool"), ("IExecutionContext", "execute_async_v3", "bool"),
    ("IExecutionContext", "set_input_shape", "bool"),
])
def test_failure_returns_the_backend_checks_are_real(cls, method, returns):
    """Item 8: these report failure by return value, not by exception, so the backend must check them."""
    doc = getattr(getattr(real_trt, cls), method).__doc__
    assert re.search(rf"{method}\(self: [^)]*\) -> {returns}", doc)
    source = (ROOT / RUNTIME_FILES[0]).read_text()
    assert re.search(rf"if not [\w.\[\](), ]*\.{method}\(", source), f"{method}'s return value is not checked"


def test_builder_api_uses_are_in_the_table():
    """Every builder-side call in tensorrt_build.py is in BUILDER_API, with a binding arity."""
    seen = set()
    for receiver, attr, call, line in _uses(BUILD_FILE):
        if receiver == "trt":
            if attr != "__version__":
                assert attr in BUILDER_API, f"{BUILD_FILE}:{line} trt.{attr} is not in the table"
                if call is not None:
                    TableChecked(attr, types.SimpleNamespace())  # the class exists in the table
                    sig = BUILDER_API[attr]["__init__"]
                    args, kwargs = _placeholders(call)
                    assert len(args) <= len(sig), f"{BUILD_FILE}:{line} trt.{attr}{tuple(sig)} takes {len(args)} args"
            continue
        if receiver.startswith("trt.") and receiver[4:] in BUILDER_API:
            assert BUILDER_API[receiver[4:]].get(attr) == "enum", f"{BUILD_FILE}:{line} {receiver}.{attr}"
            continue
        cls = BUILD_RECEIVERS.get(receiver)
        if cls is None:
            continue
        spec = BUILDER_API[cls].get(attr)
        assert spec is not None, f"{BUILD_FILE}:{line} {cls}.{attr} is not in TensorRT's builder API table"
        if call is not None:
            assert isinstance(spec, list), f"{BUILD_FILE}:{line} {cls}.{attr} is a property, not a method"
            from trt_api import binds, table_signature

            args, kwargs = _placeholders(call)
            assert binds([table_signature(spec)], args, kwargs, method=False), f"{BUILD_FILE}:{line} {cls}.{attr}"
        seen.add((cls, attr))
    assert ("IBuilderConfig", "add_optimization_profile") in seen and ("IBuilderConfig", "set_timing_cache") in seen


def test_builder_table_agrees_with_the_real_classes_it_shares():
    """The lean wheel carries some builder-side classes and enums: the table must match them."""
    for cls, members in BUILDER_API.items():
        real = getattr(real_trt, cls, None)
        if real is None:
            continue
        for name, spec in members.items():
            assert hasattr(real, name), f"the real {cls} has no {name}"
            if isinstance(spec, list) and name != "__init__":
                names = [list(s.parameters)[1:] for s in real_signatures(real, name)]
                assert [p.split("=")[0] for p in spec] in names, f"{cls}.{name}: table {spec}, real {names}"


# ------------------------------------------------------------------------- the harness can fail
def test_fakes_cannot_offer_what_the_real_api_lacks():
    class TooMuch:
        def device_memory_size(self):
            return 0

    with pytest.raises(AssertionError, match="has no such member"):
        autospec_fake(real_trt.ICudaEngine, TooMuch())
    fake = autospec_fake(real_trt.IExecutionContext, types.SimpleNamespace())
    with pytest.raises(AttributeError):
        fake.set_device_memory_size  # noqa: B018 - a name the real class lacks
    with pytest.raises(AssertionError, match="does not accept"):
        check_call(real_trt.IExecutionContext, "set_device_memory", (1,))  # the pre-10.1 one-argument form
    cudart = ConformingModule(real_cudart, types.SimpleNamespace())
    with pytest.raises(AttributeError):
        cudart.cudaMallocPinned  # noqa: B018
    with pytest.raises(AssertionError, match="does not provide"):
        cudart.cudaMalloc(16)  # never reach the real CUDA on CPU


# ------------------------------------------------------------------------- one detection, one floor
def test_benchmark_and_runtime_share_one_tensorrt_detection(monkeypatch):
    """Item 6: with exactly the lean wheels installed, the benchmark must not say TensorRT is missing."""
    from benchmarks.runners import tensorrt as bench_trt

    assert trt_import.find_tensorrt() in trt_import.TENSORRT_MODULES
    assert "tensorrt_lean_bindings" in trt_import.TENSORRT_MODULES
    assert bench_trt.tensorrt_skip_reason("cuda") is None
    assert bench_trt.find_tensorrt is trt_import.find_tensorrt  # the one detection, not a copy
    monkeypatch.setattr(bench_trt, "find_tensorrt", lambda builder=False: None)
    assert "not installed" in bench_trt.tensorrt_skip_reason("cuda")


def test_import_tensorrt_finds_the_lean_bindings_and_checks_the_floor(monkeypatch):
    assert trt_import.import_tensorrt() is sys.modules[trt_import.find_tensorrt()]
    old = types.ModuleType("tensorrt")
    old.__spec__, old.__version__ = importlib.machinery.ModuleSpec("tensorrt", None), "10.0.1.6"
    monkeypatch.setitem(sys.modules, "tensorrt", old)
    with pytest.raises(trt_import.BackendError, match=r"10\.0\.1\.6 is too old.*>= 10\.1"):
        trt_import.import_tensorrt()


def test_one_floor_for_cuda_python_and_tensorrt():
    """Item 7: pyproject and every message ask for the same cuda-bindings and TensorRT floors."""
    text = (ROOT / "pyproject.toml").read_text()
    floor = cuda_mod.CUDA_BINDINGS_FLOOR
    assert re.findall(r'"cuda-bindings>=([\d.]+)"', text) and set(re.findall(r'"cuda-bindings>=([\d.]+)"', text)) == {floor}
    assert "cuda-python>=" not in text
    trt_floor = ".".join(map(str, trt_import.TENSORRT_FLOOR))
    assert set(re.findall(r'"tensorrt-lean-cu13-(?:bindings|libs)>=([\d.]+)"', text)) == {trt_floor}
    for path in ROOT.glob("invsr_*/**/*.py"):
        for m in re.finditer(r"cuda-(?:python|bindings)\W*>=\s*'?\"?\{?([\w.]+)", path.read_text()):
            assert m.group(1) in (floor, "CUDA_BINDINGS_FLOOR"), f"{path}: asks for cuda-python >= {m.group(1)}"
    readme = (ROOT / "README.md").read_text()
    assert f"TensorRT >= {trt_floor}" in readme and f"cuda-bindings >= {floor}" in readme


def test_gpu_info_reports_cudas_own_error():
    """Item 7: an old driver reads as CUDA's message, not "no CUDA GPU available"."""
    class NoDriver:
        def cudaGetDeviceCount(self):
            return real_cudart.cudaError_t.cudaErrorInsufficientDriver, 0

        def cudaGetErrorString(self, error):
            return real_cudart.cudaGetErrorString(error)

    with pytest.raises(cuda_mod.BackendError, match=r"driver version is insufficient for CUDA runtime version \(35\)"):
        cuda_mod.gpu_info(ConformingModule(real_cudart, NoDriver()))


# ------------------------------------------------------------------------- builder failure returns
class _Cache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self):
        return self.data or b"fresh-cache"


class _Config:
    def __init__(self, trt) -> None:
        self.trt, self.builder_optimization_level, self.cache = trt, None, None

    def set_memory_pool_limit(self, pool, pool_size):
        pass

    def set_flag(self, flag):
        pass

    def add_optimization_profile(self, profile):
        return self.trt.profile_index

    def create_timing_cache(self, serialized_timing_cache):
        return TableChecked("ITimingCache", _Cache(bytes(serialized_timing_cache)))

    def set_timing_cache(self, cache, ignore_mismatch):
        if cache._impl.data == b"other-gpu" and not ignore_mismatch:
            return False
        self.cache = cache
        return True

    def get_timing_cache(self):
        return None if self.trt.lose_cache else self.cache


class _FakeBuilderTrt:
    """A `tensorrt` module whose builder objects answer only what BUILDER_API lists."""

    def __init__(self) -> None:
        self.profile_index, self.lose_cache, self.events = 0, False, []
        outer = self

        class Parser:
            num_errors = 0

            def parse_from_file(self, model):
                return True

            def get_error(self, index):
                pass

        class Profile:
            def set_shape(self, input, min, opt, max):
                pass

        class Builder:
            def create_network(self, flags=0):
                return object()

            def create_builder_config(self):
                return TableChecked("IBuilderConfig", _Config(outer))

            def create_optimization_profile(self):
                return TableChecked("IOptimizationProfile", Profile())

            def build_serialized_network(self, network, config):
                return b"PLAN"

        enum = types.SimpleNamespace
        self.module = types.ModuleType("tensorrt")
        self.module.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
        self.module.__dict__.update(
            __version__="11.4.0.106",
            Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda self, min_severity=2: None}),
            Builder=lambda logger: TableChecked("Builder", Builder()),
            OnnxParser=lambda network, logger: TableChecked("OnnxParser", Parser()),
            NetworkDefinitionCreationFlag=enum(STRONGLY_TYPED=0), BuilderFlag=enum(VERSION_COMPATIBLE=1),
            MemoryPoolType=enum(WORKSPACE=0))


@pytest.fixture()
def builder_trt(monkeypatch, tmp_path):
    fake = _FakeBuilderTrt()
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"onnx")
    return fake, onnx_path


def test_rejected_timing_cache_warns_and_builds_with_a_fresh_one(builder_trt, tmp_path, caplog):
    """Item 2: a cache from another device -> warning, fresh cache, plan written, cache replaced."""
    fake, onnx_path = builder_trt
    timing = tmp_path / "timing.cache"
    timing.write_bytes(b"other-gpu")
    with caplog.at_level(logging.WARNING, logger="invsr_export"):
        plan = tensorrt_build.build_engine(onnx_path, tmp_path / "m.plan", {"x": [1, 4]},
                                           tensorrt_build.BuildOptions(timing_cache=str(timing)))
    assert plan.read_bytes() == b"PLAN" and timing.read_bytes() == b"fresh-cache"
    assert any("rejected this timing cache" in r.getMessage() for r in caplog.records)


def test_missing_timing_cache_after_build_keeps_the_plan(builder_trt, tmp_path, caplog):
    fake, onnx_path = builder_trt
    fake.lose_cache = True
    timing = tmp_path / "timing.cache"
    with caplog.at_level(logging.WARNING, logger="invsr_export"):
        plan = tensorrt_build.build_engine(onnx_path, tmp_path / "m.plan", {"x": [1, 4]},
                                           tensorrt_build.BuildOptions(timing_cache=str(timing)))
    assert plan.read_bytes() == b"PLAN" and not timing.exists()
    assert any("no timing cache" in r.getMessage() for r in caplog.records)


def test_invalid_optimization_profile_is_an_error(builder_trt, tmp_path):
    """Item 8: add_optimization_profile returns -1 for an invalid profile (no exception)."""
    fake, onnx_path = builder_trt
    fake.profile_index = -1
    with pytest.raises(tensorrt_build.EngineBuildError, match="rejected the optimization profile"):
        tensorrt_build.build_engine(onnx_path, tmp_path / "m.plan", {"x": [1, 4]})
    assert not (tmp_path / "m.plan").exists()

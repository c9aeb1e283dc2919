"""The TensorRT layer: cache keys, backend choice, clean absence; a real build only with TensorRT + a GPU.

What TensorRT would consume (op set, static shapes, Q/DQ form) is checked on the exported graphs in
test_export_folders.py, which runs everywhere.
"""
from __future__ import annotations

import dataclasses
import importlib.machinery
import sys
import types

import pytest

from invsr_export import exporter, tensorrt_build
from invsr_export.tensorrt_build import BuildOptions, TensorRTUnavailable, TrtEnvironment, engine_cache_key
from invsr_runtime.backends.trt_import import find_tensorrt
from invsr_runtime.manifest import TensorRTBuild

from trt_graph import tensorrt_graph_problems  # noqa: E402

ENV = TrtEnvironment("10.13.0", "NVIDIA H200", "9.0")
SHAPES = {"latent": [1, 4, 64, 64], "timestep": [1]}


def _trt_usable() -> bool:
    try:
        tensorrt_build.probe()
    except TensorRTUnavailable:
        return False
    return True


def test_cache_key_changes_with_every_ingredient():
    base = engine_cache_key("a" * 64, "fp16", SHAPES, ENV, BuildOptions())
    assert base == engine_cache_key("a" * 64, "fp16", dict(reversed(list(SHAPES.items()))), ENV, BuildOptions())
    variants = [
        engine_cache_key("b" * 64, "fp16", SHAPES, ENV, BuildOptions()),
        engine_cache_key("a" * 64, "int8", SHAPES, ENV, BuildOptions()),
        engine_cache_key("a" * 64, "fp16", {**SHAPES, "latent": [2, 4, 64, 64]}, ENV, BuildOptions()),
        engine_cache_key("a" * 64, "fp16", SHAPES, dataclasses.replace(ENV, tensorrt_version="11.0.0"), BuildOptions()),
        engine_cache_key("a" * 64, "fp16", SHAPES, dataclasses.replace(ENV, gpu_name="NVIDIA A100"), BuildOptions()),
        engine_cache_key("a" * 64, "fp16", SHAPES, dataclasses.replace(ENV, compute_capability="8.0"), BuildOptions()),
        engine_cache_key("a" * 64, "fp16", SHAPES, ENV, BuildOptions(optimization_level=5)),
        engine_cache_key("a" * 64, "fp16", SHAPES, ENV, BuildOptions(workspace_mib=1024)),
        engine_cache_key("a" * 64, "fp16", SHAPES, ENV, BuildOptions(version_compatible=True)),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_engine_cache_hit_and_miss(tmp_path, monkeypatch):
    builds = []

    def fake_build(onnx_path, plan_path, shapes, options):
        builds.append(onnx_path)
        plan_path.write_bytes(b"plan for " + str(onnx_path).encode())
        return plan_path

    monkeypatch.setattr(tensorrt_build, "build_engine", fake_build)
    cache = tmp_path / "cache"
    args = ("fp16", SHAPES, ENV, BuildOptions(), cache)
    _, key1, hit1 = tensorrt_build.cached_engine(tmp_path / "u.onnx", "d1", tmp_path / "a.plan", *args)
    _, key2, hit2 = tensorrt_build.cached_engine(tmp_path / "u.onnx", "d1", tmp_path / "b.plan", *args)
    _, key3, hit3 = tensorrt_build.cached_engine(tmp_path / "u.onnx", "d2", tmp_path / "c.plan", *args)
    assert (hit1, hit2, hit3) == (False, True, False) and key1 == key2 != key3 and len(builds) == 2
    assert (tmp_path / "b.plan").read_bytes() == (tmp_path / "a.plan").read_bytes()
    assert (cache / f"{key1}.plan").is_file()


@pytest.mark.skipif(_trt_usable(), reason="TensorRT and a GPU are present here")
def test_probe_without_tensorrt_says_what_to_do():
    with pytest.raises(TensorRTUnavailable, match="--backend onnxruntime") as exc:
        tensorrt_build.probe()
    assert "\n" not in str(exc.value)


def _module(name: str, **attrs) -> types.ModuleType:
    """A stand-in module importlib can find (find_spec reads __spec__)."""
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attrs)
    return module


def test_lean_runtime_is_not_enough(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", _module("tensorrt", __version__="10.13.0"))
    with pytest.raises(TensorRTUnavailable, match="lean runtime"):
        tensorrt_build.probe()


@pytest.mark.skipif(find_tensorrt(builder=True) is not None or find_tensorrt() is None,
                    reason="needs exactly a runtime-only TensorRT wheel (the test extra's lean wheels)")
def test_probe_names_the_runtime_only_wheel():
    with pytest.raises(TensorRTUnavailable, match=f"only the TensorRT runtime `{find_tensorrt()}`"):
        tensorrt_build.probe()


def test_tensorrt_older_than_10_1_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", _module("tensorrt", __version__="10.0.1.6", Builder=object))
    with pytest.raises(TensorRTUnavailable, match=r"TensorRT 10\.0\.1\.6 is too old.*>= 10\.1"):
        tensorrt_build.probe()


def test_auto_backend_falls_back_to_onnxruntime(monkeypatch):
    def missing():
        raise TensorRTUnavailable("TensorRT is not installed; use --backend onnxruntime")

    monkeypatch.setattr(tensorrt_build, "probe", missing)
    backend, env, reason = exporter.resolve_backend("auto")
    assert (backend, env) == ("onnxruntime", None) and "not installed" in reason
    with pytest.raises(TensorRTUnavailable):
        exporter.resolve_backend("tensorrt")
    monkeypatch.setattr(tensorrt_build, "probe", lambda: ENV)
    assert exporter.resolve_backend("auto")[0] == "tensorrt"
    assert exporter.resolve_backend("onnxruntime")[0] == "onnxruntime"


@pytest.mark.gpu
@pytest.mark.skipif(not _trt_usable(), reason="needs the TensorRT builder and a CUDA GPU")
def test_build_a_real_engine(tmp_path):
    import torch
    from torch import nn

    from invsr_export.onnx_export import export_module
    from invsr_export.precision_fp16 import convert_fp16

    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 4, 3, padding=1)).eval()
    fp32 = export_module(model, [torch.randn(1, 4, 16, 16)], ["latent"], ["out"], tmp_path / "m.onnx")
    fp16 = convert_fp16(fp32, tmp_path / "m16.onnx")
    timing = tmp_path / "timing.cache"
    plan = tensorrt_build.build_engine(fp16, tmp_path / "m.plan", {"latent": [1, 4, 16, 16]},
                                       BuildOptions(workspace_mib=256, optimization_level=1, timing_cache=str(timing)))
    assert plan.stat().st_size > 0 and timing.stat().st_size > 0


def test_tensorrt_folder_with_a_stand_in_builder(tmp_path, monkeypatch):
    """The --backend tensorrt path end to end, with TensorRT's build replaced: plans, manifest, cache."""
    import torch

    from invsr_export.cli import main
    from invsr_runtime.manifest import COMPONENTS, load_manifest

    import onnx

    built, options_seen, domains, problems, shapes_seen = [], [], set(), {}, {}

    def fake_build(onnx_path, plan_path, shapes, options):
        built.append((onnx_path.name, dict(shapes)))
        model = onnx.load(str(onnx_path), load_external_data=False)
        domains.update(n.domain for n in model.graph.node)
        problems[onnx_path.name] = tensorrt_graph_problems(model)
        shapes_seen[onnx_path.name] = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
                                       for v in model.graph.input}
        options_seen.append(options)
        plan_path.write_bytes(b"PLAN" + onnx_path.read_bytes()[:64])
        return plan_path

    monkeypatch.setattr(tensorrt_build, "probe", lambda: ENV)
    monkeypatch.setattr(tensorrt_build, "build_engine", fake_build)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = ["--backend", "tensorrt", "--precision", "fp16", "--base", "synthetic:tiny", "--predictor",
                "synthetic", "--no-validate", "--engine-cache", str(tmp_path / "cache")]
        assert main(["--out", str(tmp_path / "a"), *args]) == 0
        assert main(["--out", str(tmp_path / "b"), *args]) == 0
    finally:
        torch.set_num_threads(threads)
    assert len(built) == 4  # the second export found every engine in the cache
    assert domains <= {"", "ai.onnx"}  # no ONNX Runtime rewrite (com.microsoft op) reaches TensorRT
    # the exact fp16 graphs handed to the builder: standard domains, static shapes, float32 I/O, strongly
    # typed, ops in the ONNX-TensorRT parser's list; the profile pins each input to the graph's own shape
    assert problems == {name: [] for name, _ in built}
    assert all(shapes_seen[name] == {k: list(v) for k, v in shapes.items()} for name, shapes in built)
    assert dict(built)["unet.onnx"]["encoder_hidden_states"] == [1, 77, 32]
    manifest = load_manifest(tmp_path / "b")
    assert manifest.backend == "tensorrt"
    assert {c.file for c in manifest.components.values()} == {f"{n}.plan" for n in COMPONENTS}
    assert not list((tmp_path / "b").glob("*.onnx*"))
    prov = manifest.provenance
    # one TensorRT record, read by the one reader the backend uses; no top-level copies beside it
    assert TensorRTBuild.from_provenance(prov) == TensorRTBuild("10.13.0", "NVIDIA H200", "9.0")
    assert not {"tensorrt_version", "gpu_name", "gpu_compute_capability", "compute_capability"} & set(prov)
    assert "strongly_typed" in prov["build_flags"] and "version_compatible" not in prov["build_flags"]
    assert prov["graph_rewrites"] == []
    assert all(e["cached"] for e in prov["tensorrt"]["engines"].values())

    # --version-compatible (for the lean runtime) reaches the builder, the cache key and the manifest.
    torch.set_num_threads(1)
    try:
        assert main(["--out", str(tmp_path / "vc"), *args, "--version-compatible"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert len(built) == 8 and all(o.version_compatible for o in options_seen[4:])
    assert "version_compatible" in load_manifest(tmp_path / "vc").provenance["build_flags"]


def test_tensorrt_graph_check_can_fail():
    """The structural check finds each kind of problem (so its empty answer above means something)."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    t = helper.make_tensor_value_info("t", TensorProto.INT64, [1])
    h = helper.make_tensor_value_info("h", TensorProto.FLOAT16, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    nodes = [helper.make_node("Add", ["x", "h"], ["a"]),
             helper.make_node("Gelu", ["a"], ["g"], domain="com.microsoft"),
             helper.make_node("Identity", ["g"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "bad", [x, t, h], [y]),
                              opset_imports=[helper.make_opsetid("", 19), helper.make_opsetid("com.microsoft", 1)])
    text = "\n".join(tensorrt_graph_problems(model))
    for words in ("com.microsoft", "dynamic shape", "INT64, not float32", "mixed input types", "FLOAT16, not float32"):
        assert words in text

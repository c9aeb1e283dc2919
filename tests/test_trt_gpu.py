"""The TensorRT path on a real GPU: engines build, CUDA graph replay equals eager, the lean runtime loads VC plans.

Marked `gpu` and skipped unless the TensorRT builder and a CUDA GPU are both present (`probe()`): our
machines and CI have neither, so what these prove on CPU is only that they skip cleanly. On a GPU
machine with TensorRT: `pytest -m gpu tests/test_trt_gpu.py`.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from invsr_export import tensorrt_build
from invsr_export.tensorrt_build import BuildOptions, TensorRTUnavailable
from invsr_runtime.folder_guard import sha256_file
from invsr_runtime.manifest import TensorRTBuild

from test_runtime_toyengine import build_toy_engine  # noqa: E402


def _environment():
    try:
        return tensorrt_build.probe()
    except TensorRTUnavailable:
        return None


ENV = _environment()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(ENV is None, reason="needs the TensorRT builder and a CUDA GPU")]
SMALL = BuildOptions(workspace_mib=256, optimization_level=1)


def _tiny_onnx(tmp_path: Path, precision: str) -> Path:
    import torch
    from torch import nn

    from invsr_export.onnx_export import export_module
    from invsr_export.precision_fp16 import convert_fp16
    from invsr_export.quantize import quantize_unet

    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 8, 3, padding=1), nn.SiLU(),
                          nn.Conv2d(8, 4, 3, padding=1)).eval()
    fp32 = export_module(model, [torch.randn(1, 4, 16, 16)], ["latent"], ["out"], tmp_path / "m.onnx")
    if precision == "fp16":
        return convert_fp16(fp32, tmp_path / "m16.onnx")
    feeds = [{"latent": np.random.default_rng(i).standard_normal((1, 4, 16, 16)).astype(np.float32)} for i in range(4)]
    out = tmp_path / f"m_{precision}.onnx"
    quantize_unet(fp32, out, precision, feeds)
    return out


@pytest.mark.parametrize("precision", ["fp16", "int8", "fp8"])
def test_tiny_engines_build(tmp_path, precision):
    from invsr_runtime.backends.trt_import import import_tensorrt

    trt = import_tensorrt(builder=True)
    if precision == "fp8" and tuple(int(x) for x in ENV.compute_capability.split(".")) < (8, 9):
        pytest.skip("FP8 needs compute capability >= 8.9")
    plan = tensorrt_build.build_engine(_tiny_onnx(tmp_path, precision), tmp_path / "m.plan",
                                       {"latent": [1, 4, 16, 16]}, SMALL)
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
    assert engine is not None and engine.num_io_tensors == 2


def _plan_folder(root: Path, version_compatible: bool) -> tuple[Path, Path]:
    """The toy engine folder as ONNX, and built into TensorRT plans with the manifest invsr-export writes."""
    onnx_folder = build_toy_engine(root / "onnx", tile=16, batch=2)
    plans = root / ("vc" if version_compatible else "plan")
    shutil.copytree(onnx_folder, plans)
    manifest = json.loads((plans / "manifest.json").read_text())
    options = BuildOptions(workspace_mib=256, optimization_level=1, version_compatible=version_compatible)
    for comp in manifest["components"].values():
        shapes = {t["name"]: t["shape"] for t in comp["inputs"]}
        tensorrt_build.build_engine(plans / comp["file"], plans / comp["file"].replace(".onnx", ".plan"), shapes, options)
        (plans / comp["file"]).unlink()
        comp["file"] = comp["file"].replace(".onnx", ".plan")
        comp["sha256"] = sha256_file(plans / comp["file"])  # the runtime verifies every file it opens
    flags = ["precision=fp32", "strongly_typed"] + (["version_compatible"] if version_compatible else [])
    built = TensorRTBuild(ENV.tensorrt_version, ENV.gpu_name, ENV.compute_capability)
    manifest.update(backend="tensorrt", provenance={TensorRTBuild.KEY: built.to_dict(), "build_flags": flags})
    (plans / "manifest.json").write_text(json.dumps(manifest))
    return onnx_folder, plans


def _inputs(seed: int):
    rng = np.random.default_rng(seed)
    return (rng.random((2, 3, 16, 16), dtype=np.float32), rng.standard_normal((2, 4, 8, 8), dtype=np.float32),
            rng.standard_normal((2, 4, 8, 8), dtype=np.float32))


def test_graph_replay_equals_eager_for_1_to_5_steps(tmp_path):
    from invsr_runtime.backends import open_backend
    from invsr_runtime.manifest import load_manifest

    onnx_folder, plans = _plan_folder(tmp_path, version_compatible=False)
    manifest = load_manifest(plans)
    graph = open_backend(plans, manifest, "tensorrt")
    eager = open_backend(plans, manifest, "tensorrt", use_cuda_graph=False)
    reference = open_backend(onnx_folder, load_manifest(onnx_folder), "onnxruntime")
    from invsr_runtime.upscaler import schedule_for

    for steps in (1, 2, 3, 4, 5, 2, 1):  # revisit captured step counts: replays must not drift
        schedule = schedule_for(manifest, steps=steps)
        lr, vae_noise, pred_noise = _inputs(steps)
        replayed = graph.run_chain(lr, vae_noise, pred_noise, schedule)
        np.testing.assert_array_equal(replayed, eager.run_chain(lr, vae_noise, pred_noise, schedule))
        np.testing.assert_allclose(replayed, reference.run_chain(lr, vae_noise, pred_noise, schedule), atol=2e-2)
    assert sorted(graph.graphs) == [(2, s) for s in range(1, 6)] and graph.capture_error is None
    for backend in (graph, eager, reference):
        backend.close()


def test_version_compatible_plan_loads_in_the_lean_runtime(tmp_path, monkeypatch):
    lean = pytest.importorskip("tensorrt_lean_bindings")
    from invsr_runtime.backends import open_backend
    from invsr_runtime.backends import tensorrt as trt_backend
    from invsr_runtime.manifest import load_manifest
    from invsr_runtime.upscaler import schedule_for

    _, plans = _plan_folder(tmp_path, version_compatible=True)
    manifest = load_manifest(plans)
    full = open_backend(plans, manifest, "tensorrt")
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda: lean)
    lean_backend = open_backend(plans, manifest, "tensorrt")
    assert not hasattr(lean_backend.trt, "Builder")
    schedule = schedule_for(manifest, steps=2)
    args = _inputs(0)
    np.testing.assert_array_equal(lean_backend.run_chain(*args, schedule), full.run_chain(*args, schedule))
    lean_backend.close()
    full.close()

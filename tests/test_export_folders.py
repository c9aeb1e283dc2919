"""End to end: `invsr-export` on synthetic:tiny for every precision, then checks of what it wrote.

One export per precision (module fixture, the expensive part); the tests then read the folders: the
manifest is complete and loadable by the runtime, the graphs are static, really fp16 / really Q/DQ,
consumable by TensorRT (op set, Q/DQ form), run in ONNX Runtime and meet their validation gates.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from diffusers.models.attention_processor import Attention

from invsr_export.cli import main
from invsr_export.phase_upsample import splittable
from invsr_export.precision_fp16 import FP32_OPS, fp16_weight_fraction
from invsr_export.qdq import check_qdq
from invsr_export.quantize import EXCLUDES
from invsr_export.validate import GATES_DB
from invsr_runtime.folder_guard import sha256_file
from invsr_runtime.manifest import COMPONENTS, PRECISIONS, load_manifest

from test_runtime_toyengine import build_toy_engine  # noqa: E402  (tests/ is on sys.path)

TILE = 32
#: Op types TensorRT's ONNX parser supports that these graphs may use (checked against the parser's
#: operator table, docs/operators.md of onnx-tensorrt, for opset 19).
TRT_OPS = {
    "Add", "Cast", "Clip", "Concat", "Conv", "Cos", "DequantizeLinear", "Div", "Erf", "Exp", "Expand", "Gather",
    "Gemm", "Identity", "InstanceNormalization", "LayerNormalization", "MatMul", "Mul", "Pad", "QuantizeLinear",
    "Reshape", "Resize", "Sigmoid", "Sin", "Slice", "Softmax", "Split", "Sqrt", "Sub", "Transpose", "Unsqueeze",
    "Squeeze", "Where", "ReduceMean", "Pow", "Tanh", "Neg", "Equal", "Flatten", "ConstantOfShape", "Shape",
}
#: What invsr_export.graph_rewrites adds to ONNX Runtime folders (domain, op): fused attention, phase split.
ORT_REWRITE_OPS = {("com.microsoft", "MultiHeadAttention"), ("", "DepthToSpace")}
#: What each quantized folder quantizes (--quantize): int8 everything, fp8 the default (the UNet).
QUANTIZED = {"int8": COMPONENTS, "fp8": ("unet",)}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """One tiny export per precision; fp32 goes over an existing folder with --force."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("engines")
    out = {}
    try:
        for precision in PRECISIONS:
            folder = root / precision
            extra = ["--quantize", ",".join(QUANTIZED[precision])] if precision == "int8" else []
            if precision == "fp32":  # over an earlier engine folder
                build_toy_engine(folder)
                extra = ["--force"]
            code = main(["--out", str(folder), "--precision", precision, "--backend", "onnxruntime",
                         "--base", "synthetic:tiny", "--predictor", "synthetic", "--calib-tiles", "6",
                         "--validate-tiles", "2", "--validate-steps", "1,2", *extra])
            assert code == 0, precision
            out[precision] = folder
    finally:
        torch.set_num_threads(threads)
    return out


def _load(folder: Path, name: str) -> onnx.ModelProto:
    return onnx.load(str(folder / f"{name}.onnx"))


def test_fp32_force_replaced_the_old_folder(folders):
    assert load_manifest(folders["fp32"]).provenance["base"] != "toy"
    assert not [p for p in folders["fp32"].parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("precision", PRECISIONS)
def test_manifest_is_complete(folders, precision):
    folder = folders[precision]
    manifest = load_manifest(folder)
    assert (manifest.backend, manifest.precision, manifest.tile, manifest.batch) == ("onnxruntime", precision, TILE, 1)
    assert len(manifest.alphas_cumprod) == 1000 and manifest.scaling_factor == pytest.approx(0.18215)
    assert manifest.default_timesteps["5"] == [250, 200, 150, 100, 50] and manifest.prompt.startswith("Cinematic")
    embeds = np.load(folder / manifest.prompt_embeds)
    assert embeds.dtype == np.float32 and embeds.shape == (1, 77, 32)
    prov = manifest.provenance
    for key in ("base", "predictor", "predictor_sha256", "onnx_sha256", "tools", "opset", "created"):
        assert prov[key], key
    assert prov["graph_rewrites"] == ["fused_attention", "phase_split_upsample"]
    assert set(prov["onnx_sha256"]) == set(COMPONENTS)
    assert manifest.prompt_embeds_sha256 == sha256_file(folder / manifest.prompt_embeds)
    for name, spec in manifest.components.items():
        assert spec.file == f"{name}.onnx" and spec.sha256 == sha256_file(folder / spec.file)
        assert all(t.dtype == "float32" for t in spec.inputs + spec.outputs)
    raw = json.loads((folder / "manifest.json").read_text())
    assert raw["validation"]["passed"] is True


@pytest.mark.parametrize("precision", PRECISIONS)
def test_validation_meets_the_gate(folders, precision):
    v = load_manifest(folders[precision]).validation
    assert v["gate_db"] == GATES_DB[precision] and v["min_psnr_db"] >= GATES_DB[precision]
    assert set(v["psnr_db"]) == {"1", "2"} and set(v["components"]) == set(COMPONENTS)
    # end-to-end drift of each quantized component alone, per step count (quantizing one costs less than all)
    assert set(v["drift_db"]) == set(QUANTIZED.get(precision, ()))
    for drift in v["drift_db"].values():
        assert set(drift) == {"1", "2"} and min(drift.values()) >= v["min_psnr_db"] - 0.5
    if precision == "fp32":
        assert v["min_psnr_db"] >= 50 and all(e["max_rel"] < 1e-5 for e in v["components"].values())


@pytest.mark.parametrize("precision", PRECISIONS)
def test_graphs_are_static_and_plain_but_for_the_ort_rewrites(folders, precision, tiny_base, tiny_predictor):
    """Standard TensorRT-parsable ops plus exactly the ONNX Runtime rewrites (TensorRT folders get none:
    test_export_tensorrt checks the graphs its builder receives)."""
    models = {"vae_encoder": tiny_base.vae.encoder, "predictor": tiny_predictor, "unet": tiny_base.unet,
              "vae_decoder": tiny_base.vae.decoder}
    for name in COMPONENTS:
        layers = list(models[name].modules())
        rewritten = {"MultiHeadAttention": sum(isinstance(m, Attention) for m in layers),
                     "DepthToSpace": sum(map(splittable, layers))}
        model = _load(folders[precision], name)
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 19
        ops = Counter((n.domain if n.domain != "ai.onnx" else "", n.op_type) for n in model.graph.node)
        plain = {op for (domain, op) in ops if (domain, op) not in ORT_REWRITE_OPS}
        assert plain <= TRT_OPS and all(d == "" for d, op in ops if op in plain), (name, plain - TRT_OPS)
        for op, count in rewritten.items():  # one fused node per attention layer and per 2x upsample conv
            assert sum(n for (_, o), n in ops.items() if o == op) == count, (name, op)
        assert not ops[("", "Softmax")]  # every attention is fused
        for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
            assert all(d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim), (name, vi.name)
        for vi in list(model.graph.input) + list(model.graph.output):
            assert vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.parametrize("precision", ["fp16", "int8", "fp8"])
def test_fp16_graphs_are_really_fp16(folders, precision):
    """Every graph not quantized is fp16 (a quantized one has ONNX Runtime's fp32 body here)."""
    for name in set(COMPONENTS) - set(QUANTIZED.get(precision, ())):
        model = _load(folders[precision], name)
        assert fp16_weight_fraction(model) > 0.9, name
        types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.value_info}
        types.update({i.name: i.type.tensor_type.elem_type for i in model.graph.input})
        for node in model.graph.node:
            if node.op_type in FP32_OPS:  # normalisation statistics stay fp32
                assert types[node.input[0]] == onnx.TensorProto.FLOAT, node.name
            if node.op_type in ("Sin", "Cos"):  # the timestep sinusoid stays fp32
                assert types[node.input[0]] == onnx.TensorProto.FLOAT, node.name
            if node.op_type == "MultiHeadAttention":  # the predictor's softmax is fp32, the others' fp16
                want = onnx.TensorProto.FLOAT if name == "predictor" else onnx.TensorProto.FLOAT16
                assert types[node.input[0]] == want, node.name
        fp16 = sum(t == onnx.TensorProto.FLOAT16 for t in types.values())
        assert fp16 > 0.5 * len(types), name


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_quantized_graphs_have_ort_style_qdq(folders, precision):
    """Q/DQ exactly in the --quantize components, in ONNX Runtime's form (GEMM outputs quantized too, so ORT
    fuses integer kernels), on an fp32 body; the exclusions stay unquantized. TensorRT's form: test_export_trt_graphs."""
    zp_type = onnx.TensorProto.INT8 if precision == "int8" else onnx.TensorProto.FLOAT8E4M3FN
    for name in COMPONENTS:
        model = _load(folders[precision], name)
        if name not in QUANTIZED[precision]:
            assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node), name
            continue
        report = check_qdq(model, form="onnxruntime")
        assert not report.problems, (name, report.problems[:3])
        assert report.zero_point_types == {zp_type}
        assert report.quantized_gemms > 0 and report.weight_dq == report.quantized_gemms, name
        assert report.gemm_output_q == report.quantized_gemms, name
        assert fp16_weight_fraction(model) == 0.0, name  # fp32 body: fp32 scales, no fp16 weight
        producer = {o: n for n in model.graph.node for o in n.output}
        for node in model.graph.node:
            if node.op_type in ("Conv", "MatMul", "Gemm") and any(p in node.name for p in EXCLUDES[name]):
                assert getattr(producer.get(node.input[1]), "op_type", "") != "DequantizeLinear", node.name
    assert check_qdq(_load(folders[precision], "unet")).quantized_gemms >= 100  # every transformer/resnet GEMM


def test_quantized_unet_is_smaller_than_fp16(folders):
    """Weights stored as 1 byte: below fp16 even with the fp32 body (fp32 exclusions and biases) of ORT's form."""
    size = lambda p: (folders[p] / "unet.onnx").stat().st_size  # noqa: E731
    assert max(size("int8"), size("fp8")) < min(size("fp16"), 0.5 * size("fp32"))


def test_graphs_run_in_onnxruntime_with_named_io(folders):
    import onnxruntime as ort

    manifest = load_manifest(folders["int8"])
    for name, spec in manifest.components.items():
        sess = ort.InferenceSession(str(folders["int8"] / spec.file), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == [t.name for t in spec.inputs]
        feeds = {t.name: np.full(t.shape, 0.5, dtype=np.float32) for t in spec.inputs}
        out = sess.run(None, feeds)[0]
        assert list(out.shape) == spec.outputs[0].shape and np.isfinite(out).all()


def test_precision_ladder_is_ordered(folders):
    psnr = {p: load_manifest(folders[p]).validation["min_psnr_db"] for p in PRECISIONS}
    assert psnr["fp32"] > psnr["fp16"] > psnr["int8"] > 0 and psnr["fp16"] > psnr["fp8"]


def test_op_mix_per_precision(folders):
    counts = {p: Counter(n.op_type for n in _load(folders[p], "unet").graph.node) for p in PRECISIONS}
    assert counts["fp32"]["Cast"] == 0 and counts["fp16"]["Cast"] > 0
    assert counts["fp16"]["QuantizeLinear"] == 0 and counts["int8"]["DequantizeLinear"] > 0

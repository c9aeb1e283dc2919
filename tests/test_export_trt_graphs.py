"""The int8 and fp8 graphs exactly as handed to the TensorRT builder (issue 11 item 11), checked on the CPU.

`invsr-export --backend tensorrt` runs for real on synthetic:tiny with only TensorRT's build replaced by a
stand-in that keeps each ONNX graph it is given. Those graphs must be what TensorRT 11's strongly typed
builder takes: standard ONNX domains, static shapes, float32 I/O, Q/DQ in TensorRT's form (zero point 0,
per-channel weight scales on the output-channel axis, scalar activation scales, FP8 E4M3FN at opset >= 19,
no QuantizeLinear after a Conv/MatMul/Gemm), no mixed-type arithmetic, and Q/DQ exactly in the
components asked for with --quantize.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper

from invsr_export import tensorrt_build
from invsr_export.cli import main
from invsr_export.qdq import check_qdq
from invsr_export.quantize import EXCLUDES
from invsr_export.tensorrt_build import TrtEnvironment
from invsr_runtime.manifest import COMPONENTS

ENV = TrtEnvironment("10.13.0", "NVIDIA H200", "9.0")
#: What each export quantizes: int8 every component, fp8 the default (the UNet).
QUANTIZED = {"int8": COMPONENTS, "fp8": ("unet",)}
#: Ops whose float inputs must all have one type (TensorRT's strongly typed networks do not convert).
SAME_TYPE_OPS = {"Add", "Sub", "Mul", "Div", "Pow", "MatMul", "Gemm", "Conv", "Concat", "Sum", "Max", "Min",
                 "Equal", "InstanceNormalization", "LayerNormalization"}
FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16}


@pytest.fixture(scope="module")
def trt_graphs(tmp_path_factory) -> dict[str, dict[str, onnx.ModelProto]]:
    """precision -> component -> the ONNX model the (stand-in) TensorRT builder received."""
    received: dict[str, onnx.ModelProto] = {}

    def fake_build(onnx_path, plan_path, shapes, options):
        received[Path(onnx_path).stem] = onnx.load(str(onnx_path))
        plan_path.write_bytes(b"PLAN")
        return plan_path

    root = tmp_path_factory.mktemp("trt")
    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tensorrt_build, "probe", lambda: ENV)
        mp.setattr(tensorrt_build, "build_engine", fake_build)
        try:
            for precision, components in QUANTIZED.items():
                received.clear()
                extra = ["--quantize", ",".join(components)] if precision == "int8" else []
                code = main(["--out", str(root / precision), "--precision", precision, "--backend", "tensorrt",
                             "--base", "synthetic:tiny", "--predictor", "synthetic", "--calib-tiles", "2",
                             "--no-validate", "--engine-cache", str(root / f"cache-{precision}"), *extra])
                assert code == 0, precision
                out[precision] = dict(received)
        finally:
            torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("precision", sorted(QUANTIZED))
def test_standard_static_float32_io(trt_graphs, precision):
    assert set(trt_graphs[precision]) == set(COMPONENTS)
    for name, model in trt_graphs[precision].items():
        assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}, name
        assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}, name
        assert max(o.version for o in model.opset_import) >= 19, name
        for vi in list(model.graph.input) + list(model.graph.output):
            assert vi.type.tensor_type.elem_type == TensorProto.FLOAT, (name, vi.name)
        for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
            assert all(d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim), (name, vi.name)


@pytest.mark.parametrize("precision", sorted(QUANTIZED))
def test_qdq_in_tensorrt_form_exactly_where_asked(trt_graphs, precision):
    zp_type = TensorProto.INT8 if precision == "int8" else TensorProto.FLOAT8E4M3FN
    for name, model in trt_graphs[precision].items():
        qdq_nodes = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
        if name not in QUANTIZED[precision]:
            assert not qdq_nodes, name
            continue
        report = check_qdq(model, form="tensorrt")
        assert not report.problems, (name, report.problems[:3])
        assert report.gemm_output_q == 0 and report.activation_q > 0, name  # no Q after a weighted op
        assert report.quantized_gemms > 0 and report.weight_dq == report.quantized_gemms, name
        assert report.zero_point_types == {zp_type}, name
        inits = {t.name: t for t in model.graph.initializer}
        for node in qdq_nodes:
            scale = inits[node.input[1]]
            assert scale.data_type == TensorProto.FLOAT16, node.name  # the fp16 body's scales
            if node.op_type == "QuantizeLinear":  # activations: one scalar scale
                assert len(scale.dims) == 0 or int(np.prod(scale.dims)) == 1, node.name
            assert not np.any(numpy_helper.to_array(inits[node.input[2]]).astype(np.float32)), node.name
        producer = {o: n for n in model.graph.node for o in n.output}
        for node in model.graph.node:  # the exclusions (first/last convs, time embedding, ...) stay unquantized
            if node.op_type in ("Conv", "MatMul", "Gemm") and any(p in node.name for p in EXCLUDES[name]):
                assert getattr(producer.get(node.input[1]), "op_type", "") != "DequantizeLinear", node.name


@pytest.mark.parametrize("precision", sorted(QUANTIZED))
def test_strongly_typed(trt_graphs, precision):
    """ONNX's strict type inference accepts every graph, and no op mixes float types (no implicit casts)."""
    for name, model in trt_graphs[precision].items():
        onnx.checker.check_model(model, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        types = {t.name: t.data_type for t in inferred.graph.initializer}
        for vi in list(inferred.graph.input) + list(inferred.graph.output) + list(inferred.graph.value_info):
            types[vi.name] = vi.type.tensor_type.elem_type
        for node in inferred.graph.node:
            floats = {types[i] for i in node.input if i and types.get(i) in FLOATS}
            if node.op_type in SAME_TYPE_OPS:
                assert len(floats) <= 1, (name, node.name, floats)
            if node.op_type == "QuantizeLinear":  # input and scale share the float type
                assert types[node.input[0]] == types[node.input[1]], (name, node.name)
            if node.op_type == "DequantizeLinear":  # the output is the scale's type
                assert types[node.output[0]] == types[node.input[1]], (name, node.name)


def test_fp8_is_e4m3fn_at_opset_19_or_later(trt_graphs):
    unet = trt_graphs["fp8"]["unet"]
    assert max(o.version for o in unet.opset_import if o.domain in ("", "ai.onnx")) >= 19
    weights = [t for t in unet.graph.initializer if t.data_type == TensorProto.FLOAT8E4M3FN and t.dims]
    assert weights and not [t for t in unet.graph.initializer if t.data_type == TensorProto.INT8]

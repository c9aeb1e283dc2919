"""Small rewrites and checks of Q/DQ graphs: FP8 rescaling, FP16-safe scales, weight folding, TensorRT form.

onnxruntime's quantizer writes ``w -> QuantizeLinear -> DequantizeLinear -> Conv`` pairs with float32
scales. These functions turn that into what TensorRT's strongly typed builder wants: FP8 zero points and
scales when asked, scales representable in FP16 (the body becomes FP16), and weights stored already
quantized (INT8 / FP8 initializer -> DequantizeLinear -> GEMM).
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

logger = logging.getLogger(__name__)

FP8_MAX, INT8_MAX = 448.0, 127.0
FP16_TINY = float(np.finfo(np.float16).tiny)
GEMM_OPS = ("Conv", "MatMul", "Gemm")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def _initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def _replace_initializer(model: onnx.ModelProto, name: str, array: np.ndarray, dtype: int | None = None) -> None:
    """Swap the initializer `name` for `array` (stored as `dtype` when given, e.g. FLOAT8E4M3FN)."""
    inits = _initializers(model)
    old = inits[name]
    if dtype is None:
        new = numpy_helper.from_array(array, name)
    else:
        new = onnx.helper.make_tensor(name, dtype, array.shape, array.tobytes(), raw=True)
    model.graph.initializer.remove(old)
    model.graph.initializer.append(new)


def _qdq_params(model: onnx.ModelProto) -> tuple[set[str], set[str]]:
    """Names of every scale and zero-point initializer used by a Q or DQ node."""
    scales, zps = set(), set()
    for node in model.graph.node:
        if node.op_type in QDQ_OPS:
            scales.add(node.input[1])
            if len(node.input) > 2 and node.input[2]:
                zps.add(node.input[2])
    return scales, zps


def retype_fp8(model: onnx.ModelProto) -> int:
    """Symmetric INT8 Q/DQ (scale = amax/127) -> FP8 E4M3FN (scale = amax/448, zero point fp8 0)."""
    import ml_dtypes

    inits = _initializers(model)
    scales, zps = _qdq_params(model)
    for name in scales:
        s = numpy_helper.to_array(inits[name]).astype(np.float32)
        _replace_initializer(model, name, s * np.float32(INT8_MAX / FP8_MAX))
    for name in zps:
        zero = np.zeros(numpy_helper.to_array(inits[name]).shape, dtype=ml_dtypes.float8_e4m3fn)
        _replace_initializer(model, name, zero, TensorProto.FLOAT8E4M3FN)
    return len(scales)


def round_scales_fp16(model: onnx.ModelProto) -> int:
    """Round every Q/DQ scale to an FP16 normal number (the body turns FP16), so the weight
    quantization below uses exactly the scale the FP16 graph will hold. Returns how many were clamped."""
    inits = _initializers(model)
    clamped = 0
    for name in _qdq_params(model)[0]:
        s = numpy_helper.to_array(inits[name]).astype(np.float32)
        clamped += int((s < FP16_TINY).sum())
        _replace_initializer(model, name, np.maximum(s, FP16_TINY).astype(np.float16).astype(np.float32))
    if clamped:
        logger.warning("%d quantization scales were below FP16's smallest normal and were raised to it", clamped)
    return clamped


def _quantize_array(w: np.ndarray, scale: np.ndarray, axis: int, zp_type: int) -> np.ndarray:
    """ONNX QuantizeLinear on a numpy array: round half to even and saturate (INT8), saturating cast (FP8)."""
    shape = [1] * w.ndim
    if scale.ndim:
        shape[axis] = scale.size
    x = w.astype(np.float32) / scale.reshape(shape).astype(np.float32)
    if zp_type == TensorProto.FLOAT8E4M3FN:
        import ml_dtypes

        return np.clip(x, -FP8_MAX, FP8_MAX).astype(ml_dtypes.float8_e4m3fn)
    return np.clip(np.rint(x), -128, 127).astype(np.int8)


def fold_weight_quantizers(model: onnx.ModelProto) -> int:
    """QuantizeLinear(constant weight) -> its quantized initializer, feeding the DequantizeLinear directly."""
    inits = _initializers(model)
    consumers = Counter(i for n in model.graph.node for i in n.input)
    folded = []
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in inits:
            continue
        w = numpy_helper.to_array(inits[node.input[0]])
        scale = numpy_helper.to_array(inits[node.input[1]])
        zp = inits[node.input[2]]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        q = _quantize_array(w, scale, axis if axis >= 0 else axis + w.ndim, zp.data_type)
        qname = node.output[0]
        model.graph.initializer.append(onnx.helper.make_tensor(qname, zp.data_type, q.shape, q.tobytes(), raw=True))
        folded.append(node)
        if consumers[node.input[0]] == 1:
            model.graph.initializer.remove(inits[node.input[0]])
    for node in folded:
        model.graph.node.remove(node)
    return len(folded)


@dataclass
class QdqReport:
    """What :func:`check_qdq` found; `problems` empty means the TensorRT form holds."""

    quantized_gemms: int = 0
    weight_dq: int = 0
    activation_q: int = 0
    gemm_output_q: int = 0
    zero_point_types: set[int] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


def check_qdq(model: onnx.ModelProto, form: str = "tensorrt") -> QdqReport:
    """Check the Q/DQ form: zero points all 0, weight DQ per output channel and feeding a Conv/MatMul/Gemm,
    activation Q per tensor; in TensorRT form also no QuantizeLinear reading a Conv/MatMul/Gemm output
    (TensorRT: never quantize the outputs of weighted ops). ONNX Runtime's form quantizes those outputs."""
    inits = _initializers(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    report = QdqReport()
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        zp = inits.get(node.input[2]) if len(node.input) > 2 else None
        if zp is not None:
            report.zero_point_types.add(zp.data_type)
            if np.any(numpy_helper.to_array(zp).astype(np.float32) != 0):
                report.problems.append(f"{node.name}: non-zero zero point")
        scale = numpy_helper.to_array(inits[node.input[1]]) if node.input[1] in inits else None
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            _check_weight_dq(node, scale, inits, consumers, report)
        elif node.op_type == "QuantizeLinear":
            report.activation_q += 1
            if scale is None or scale.size != 1:
                report.problems.append(f"{node.name}: activation scale is not per-tensor")
            source = producer.get(node.input[0])
            while source is not None and source.op_type == "Cast":  # an fp16 body may cast in between
                source = producer.get(source.input[0])
            if source is not None and source.op_type in GEMM_OPS:
                report.gemm_output_q += 1
                if form == "tensorrt":
                    report.problems.append(f"{node.name}: quantizes the output of {source.op_type} {source.name}")
    report.quantized_gemms = sum(
        1 for n in model.graph.node if n.op_type in GEMM_OPS and len(n.input) > 1
        and getattr(producer.get(n.input[1]), "op_type", None) == "DequantizeLinear")
    return report


def _check_weight_dq(node, scale, inits, consumers, report: QdqReport) -> None:
    """One weight DequantizeLinear: per-channel along the GEMM's output-channel axis, feeding a GEMM."""
    report.weight_dq += 1
    users = consumers.get(node.output[0], [])
    if not users or any(u.op_type not in GEMM_OPS or u.input[1] != node.output[0] for u in users):
        report.problems.append(f"{node.name}: weight DequantizeLinear does not feed a Conv/MatMul/Gemm weight")
        return
    w = inits[node.input[0]]
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
    user = users[0]
    trans_b = next((a.i for a in user.attribute if a.name == "transB"), 0)
    want = {"Conv": 0, "MatMul": len(w.dims) - 1, "Gemm": 0 if trans_b else 1}[user.op_type]
    if scale is None or scale.size != w.dims[want] or axis % len(w.dims) != want:
        report.problems.append(f"{node.name}: weight scale is not per output channel (axis {axis}, want {want})")

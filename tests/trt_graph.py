"""What a graph must look like for TensorRT's ONNX parser: a structural check shared by the export tests.

`tensorrt_graph_problems(model)` lists what TensorRT >= 10.1 would refuse or run in the wrong precision:
non-standard op domains (ONNX Runtime's com.microsoft ops), an opset outside the parser's range, dynamic
shapes (engines are built for one fixed shape), non-float32 I/O (the runtime's contract), mixed-type
arithmetic (TensorRT 11 networks are strongly typed: no implicit casts), and ops outside the parser's
support list. The Q/DQ form of int8 / fp8 graphs is checked by the quantization tests.
"""
from __future__ import annotations

import onnx
from onnx import TensorProto, shape_inference

#: ONNX ops the ONNX-TensorRT parser supports ("Y" rows of docs/operators.md, onnx/onnx-tensorrt at the
#: "ONNX-TensorRT 10.1 GA release" commit 96e781103cfc4adf4a6bb557e94bac8e693f6f4c), which also states
#: "TensorRT 10.0 supports operators in the inclusive range of opset 9 to opset 20".
TRT_SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike Ceil
Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements
GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
GroupNormalization GRU HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf
IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot
Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round
ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax
Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose
Trilu Unsqueeze Upsample Where Xor
""".split())
OPSET_RANGE = (9, 20)
#: Resize modes the parser imports (onnxOpImporters.cpp maps nearest, linear and cubic; no antialias).
RESIZE_MODES = {b"nearest", b"linear", b"cubic"}
#: Ops whose floating inputs must share one type in a strongly typed network.
SAME_TYPE_OPS = {"Add", "Sub", "Mul", "Div", "Pow", "MatMul", "Gemm", "Conv", "ConvTranspose", "Max", "Min",
                 "Sum", "Mean", "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Concat",
                 "InstanceNormalization", "GroupNormalization", "LayerNormalization", "BatchNormalization"}
FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.input) + list(g.output) + list(g.value_info)}
    types.update({t.name: t.data_type for t in g.initializer})
    for node in g.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def tensorrt_graph_problems(model: onnx.ModelProto) -> list[str]:
    """Everything in `model` TensorRT's parser would refuse or type differently; [] when it is fine."""
    problems = []
    g = model.graph
    for imp in model.opset_import:
        if imp.domain not in ("", "ai.onnx"):
            problems.append(f"opset domain {imp.domain!r}")
        elif not OPSET_RANGE[0] <= imp.version <= OPSET_RANGE[1]:
            problems.append(f"opset {imp.version} outside TensorRT's {OPSET_RANGE}")
    for v in list(g.input) + list(g.output):
        tt = v.type.tensor_type
        if tt.elem_type != TensorProto.FLOAT:
            problems.append(f"{v.name}: I/O type {TensorProto.DataType.Name(tt.elem_type)}, not float32")
        if any(not d.HasField("dim_value") or d.dim_value <= 0 for d in tt.shape.dim):
            problems.append(f"{v.name}: dynamic shape {[d.dim_param or d.dim_value for d in tt.shape.dim]}")
    types = _types(model)
    for node in g.node:
        where = f"{node.name or node.op_type} ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: domain {node.domain!r}")
        elif node.op_type not in TRT_SUPPORTED_OPS:
            problems.append(f"{where}: not in the ONNX-TensorRT parser's support list")
        if node.op_type == "Resize":
            attrs = {a.name: a for a in node.attribute}
            mode = attrs["mode"].s if "mode" in attrs else b"nearest"
            if mode not in RESIZE_MODES or ("antialias" in attrs and attrs["antialias"].i):
                problems.append(f"{where}: Resize mode {mode!r} / antialias unsupported")
        if node.op_type in SAME_TYPE_OPS:
            kinds = {types.get(i) for i in node.input if i and types.get(i) in FLOATS}
            if len(kinds) > 1:
                names = sorted(TensorProto.DataType.Name(k) for k in kinds)
                problems.append(f"{where}: mixed input types {names} (strongly typed: no implicit casts)")
    return problems

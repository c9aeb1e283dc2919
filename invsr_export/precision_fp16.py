"""FP32 graph -> strongly typed FP16 graph (TensorRT 11 style: the precision lives in the graph).

The conversion is onnxruntime's own ``convert_float_to_float16`` (it ships inside the onnxruntime wheel)
with ``keep_io_types=True`` (the graph boundary stays float32, as the contract says) and a block list
of what must stay FP32 for the numerics:

* normalisation statistics (InstanceNormalization - GroupNorm's export form -, LayerNormalization,
  GroupNormalization);
* the wrappers' own arithmetic (node names without a model scope, e.g. ``/Mul``): bicubic x4, the
  posterior / predictor samples, the input scaling and the Euler update (INVSR.md: "do this update in fp32");
* the sinusoidal timestep embedding (``/time_proj/``): 199 * freq in FP16 would be off by ~0.1 rad;
* optionally Softmax, or the fused MultiHeadAttention that contains it (the noise predictor computes
  its softmax in fp32 in the reference).

The library joins every blocked region to the FP16 rest with Casts, including FP32 -> FP16 -> FP32
round trips between two blocked nodes (and on the graph inputs): those would round sigma and the
timestep to FP16, so :func:`drop_cast_round_trips` short-circuits them afterwards.
"""
from __future__ import annotations

import logging
import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterable

import onnx
from onnx import TensorProto
from onnx.external_data_helper import load_external_data_for_model

from .onnx_export import check_graph, optimize_file, save_proto

logger = logging.getLogger(__name__)

#: Op types whose statistics stay FP32.
FP32_OPS = ("InstanceNormalization", "LayerNormalization", "GroupNormalization")
#: Wrapper-level nodes: named by the TorchScript exporter without a module scope ("/Mul", "/Resize_1").
_WRAPPER_NODE = re.compile(r"/[A-Za-z]+(_\d+)?")
_TIME_PROJ = "/time_proj/"
#: Per-sample scalar graph inputs (see docs/INTERFACES.md): never rounded to FP16.
SCALAR_INPUTS = ("timestep", "sigma", "sigma_next")
#: Ops that compute a softmax: the plain op and ONNX Runtime's fused attention (see fused_attention.py).
_SOFTMAX_OPS = ("Softmax", "MultiHeadAttention")
#: Conv/MatMul/Gemm weight inputs (index 1) checked by :func:`fp16_weight_fraction`.
_GEMM_OPS = ("Conv", "MatMul", "Gemm")


def fp32_node_names(model: onnx.ModelProto, fp32_softmax: bool = False) -> list[str]:
    """Names of the nodes the FP16 pass must leave in FP32 (see the module docstring)."""
    keep = set(_scalar_only_nodes(model))
    for node in model.graph.node:
        if (_WRAPPER_NODE.fullmatch(node.name) or _TIME_PROJ in node.name
                or (fp32_softmax and node.op_type in _SOFTMAX_OPS)):
            keep.add(node.name)
    return sorted(keep)


def _scalar_only_nodes(model: onnx.ModelProto) -> list[str]:
    """Nodes computed from the per-sample scalar inputs (timestep, sigma...) and constants only.

    That is the timestep's reshape/expand and sinusoid, up to (not including) the first weighted op:
    keeping them FP32 means the timestep is never rounded to FP16 on its way to the embedding.
    """
    derived = {i.name for i in model.graph.input if i.name in SCALAR_INPUTS}
    constants = {t.name for t in model.graph.initializer}
    names = []
    for node in model.graph.node:  # topological order
        inputs = [i for i in node.input if i and i not in constants]
        if inputs and all(i in derived for i in inputs) and node.op_type not in _GEMM_OPS:
            derived.update(node.output)
            names.append(node.name)
    return names


def convert_fp16(src: Path, dst: Path, fp32_softmax: bool = False) -> Path:
    """Write the FP16 version of the FP32 graph `src` to `dst` (float32 I/O), cleaned and checked."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    src, dst = Path(src), Path(dst)
    with tempfile.TemporaryDirectory(prefix=f".{dst.stem}.fp16.", dir=dst.parent) as tmp:
        inferred = Path(tmp) / "inferred.onnx"
        onnx.shape_inference.infer_shapes_path(str(src), str(inferred))  # path form: works above 2 GB
        model = onnx.load(str(inferred), load_external_data=False)
        load_external_data_for_model(model, str(src.parent))  # weights live beside `src`, not in tmp
        keep = fp32_node_names(model, fp32_softmax)
        model = convert_float_to_float16(
            model, keep_io_types=True, disable_shape_infer=True,
            op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(FP32_OPS), node_block_list=keep,
        )
        removed = drop_cast_round_trips(model)
        logger.debug("%s: %d nodes kept fp32, %d cast round trips removed", dst.stem, len(keep), removed)
        staged = save_proto(model, Path(tmp) / "fp16.onnx")
        del model
        optimize_file(staged, dst)
    check_graph(dst)
    return dst


def _dtype_of(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every typed tensor name (inputs, outputs, value_info, initializers)."""
    types = {t.name: t.data_type for t in model.graph.initializer}
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        types[vi.name] = vi.type.tensor_type.elem_type
    return types


def drop_cast_round_trips(model: onnx.ModelProto) -> int:
    """Cast(to=FLOAT)(Cast(to=FLOAT16)(x: float32)) -> Identity(x); returns how many were rewired.

    Such pairs only lose precision. The inner Cast is removed once nothing else reads it.
    """
    types = _dtype_of(model)
    producer = {out: n for n in model.graph.node for out in n.output}
    rewired = 0
    for node in model.graph.node:
        if not _is_cast(node, TensorProto.FLOAT):
            continue
        inner = producer.get(node.input[0])
        if inner is None or not _is_cast(inner, TensorProto.FLOAT16):
            continue
        if types.get(inner.input[0]) != TensorProto.FLOAT:
            continue
        node.op_type = "Identity"
        del node.attribute[:]
        node.input[0] = inner.input[0]
        rewired += 1
    _remove_dead_nodes(model)
    return rewired


def _is_cast(node: onnx.NodeProto, to: int) -> bool:
    return node.op_type == "Cast" and any(a.name == "to" and a.i == to for a in node.attribute)


def _remove_dead_nodes(model: onnx.ModelProto) -> None:
    """Drop nodes none of whose outputs is read by another node or by the graph outputs."""
    while True:
        used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
        dead = [n for n in model.graph.node if not any(o in used for o in n.output)]
        if not dead:
            return
        for n in dead:
            model.graph.node.remove(n)


def fp16_weight_fraction(model: onnx.ModelProto, op_types: Iterable[str] = _GEMM_OPS) -> float:
    """Fraction of Conv/MatMul/Gemm nodes whose weight (input 1) is an FP16 tensor: the "really fp16" check.

    The weight may be an initializer, or the output of a DequantizeLinear (int8/fp8 graphs) whose
    scale is FP16.
    """
    types = _dtype_of(model)
    producer = {out: n for n in model.graph.node for out in n.output}
    counts: Counter[bool] = Counter()
    for node in model.graph.node:
        if node.op_type not in op_types or len(node.input) < 2:
            continue
        weight = node.input[1]
        dq = producer.get(weight)
        if dq is not None and dq.op_type == "DequantizeLinear":
            weight = dq.input[1]
        counts[types.get(weight) == TensorProto.FLOAT16] += 1
    total = sum(counts.values())
    return counts[True] / total if total else 0.0

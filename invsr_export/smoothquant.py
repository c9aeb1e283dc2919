"""SmoothQuant on the ONNX graph, from streaming calibration statistics (INT8, NVIDIA's recipe for this UNet).

Per-tensor INT8 activations suffer from a few channels with large values. SmoothQuant moves that range
into the weights: for a MatMul ``Y = X W`` (W constant, [K, N]) with per-channel activation maxima a_k and
weight maxima w_k = max_n |W[k, n]|, s_k = a_k^alpha / w_k^(1 - alpha); then ``Y = (X / s) (s W)`` exactly.
``s W`` is folded into the weight initializer and ``X / s`` is one Mul (a per-channel constant) in front of
the MatMuls that read X (TensorRT fuses it into the following QuantizeLinear). Consumers of one tensor
(a block's q/k/v projections) share one s, computed over all their weights. Only constant-weight MatMuls
chosen for quantization are smoothed; Conv inputs are left alone.

The per-channel maxima come from `calib_stats.collect` (one forward pass per calibration input), then the
smoothed graph is calibrated again as usual. The result is exact in fp32 (checked by the tests); whether it
helps INT8 is measured (docs in README and the quant note).
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from . import calib_stats
from .onnx_export import save_proto

logger = logging.getLogger(__name__)

DEFAULT_ALPHA = 0.5
_S_RANGE = (1e-5, 1e5)


def smoothable(model: onnx.ModelProto, selected: Iterable[str]) -> dict[str, list[onnx.NodeProto]]:
    """activation tensor -> the selected MatMul nodes with a constant 2-D weight that read it."""
    inits = {t.name: t for t in model.graph.initializer}
    chosen = set(selected)
    groups: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if (node.name in chosen and node.op_type == "MatMul" and node.input[1] in inits
                and len(inits[node.input[1]].dims) == 2 and node.input[0] not in inits):
            groups.setdefault(node.input[0], []).append(node)
    return groups


def smoothing_scales(act_amax: np.ndarray, weights: Sequence[np.ndarray], alpha: float) -> np.ndarray:
    """s_k = a_k^alpha / w_k^(1-alpha), w_k over every weight's row k; 1 where a channel never fired."""
    w = np.max([np.abs(x).max(axis=1) for x in weights], axis=0).astype(np.float64)
    a = act_amax.astype(np.float64)
    s = np.where((a > 0) & (w > 0), a ** alpha / np.maximum(w, 1e-12) ** (1.0 - alpha), 1.0)
    return np.clip(s, *_S_RANGE).astype(np.float32)


def smooth_graph(src: Path, dst: Path, selected: Sequence[str], feeds: Iterable[Mapping[str, np.ndarray]],
                 alpha: float = DEFAULT_ALPHA) -> dict:
    """Write the smoothed FP32 graph of `src` to `dst`; returns what was done, for the manifest."""
    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src), load_external_data=False)
    groups = smoothable(model, selected)
    del model
    stats = calib_stats.collect(src, groups, feeds, histogram=False, channel_axes={t: -1 for t in groups})
    model = onnx.load(str(src))
    groups = smoothable(model, selected)  # the same tensors, as nodes of the model being rewritten
    inits = {t.name: t for t in model.graph.initializer}
    uses = Counter(i for n in model.graph.node for i in n.input)
    before: dict[str, onnx.NodeProto] = {}  # first consumer's name -> the Mul to put in front of it
    for tensor, nodes in groups.items():
        weights = [numpy_helper.to_array(inits[n.input[1]]) for n in nodes]
        shared = [n.input[1] for n in nodes if uses[n.input[1]] > 1]
        if shared:
            raise ValueError(f"weight {shared[0]} is shared with another node: cannot smooth it alone")
        s = smoothing_scales(stats.tensors[tensor].channel_amax, weights, alpha)
        inverse = numpy_helper.from_array((1.0 / s).astype(np.float32), f"{tensor}_smooth_inv")
        model.graph.initializer.append(inverse)
        smoothed = f"{tensor}_smoothed"
        before[nodes[0].name] = onnx.helper.make_node("Mul", [tensor, inverse.name], [smoothed],
                                                      name=f"{nodes[0].name}_smooth")
        for node, w in zip(nodes, weights):
            inits[node.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(w.dtype), node.input[1]))
            node.input[0] = smoothed
    ordered = []
    for node in model.graph.node:  # each Mul right before the first MatMul that reads it (topological)
        if node.name in before:
            ordered.append(before[node.name])
        ordered.append(node)
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    save_proto(model, dst)
    del model
    return {"method": "SmoothQuant (per-channel scales folded into MatMul weights)", "alpha": alpha,
            "smoothed_tensors": len(groups), "smoothed_matmuls": sum(len(n) for n in groups.values())}

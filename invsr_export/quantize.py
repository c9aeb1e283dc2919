"""FP32 graph -> explicit Q/DQ INT8 or FP8 graph (what TensorRT 11 builds from, or ONNX Runtime runs).

Library: onnxruntime.quantization (``quantize_static``, QDQ format), because it ships with the
onnxruntime we already depend on and writes standard QuantizeLinear/DequantizeLinear that both ONNX
Runtime and TensorRT's ONNX parser read. Its calibrators keep every intermediate tensor of every
calibration input in memory, so calibration is ours (`calib_stats`: streaming, merged statistics) and
reaches ``quantize_static`` as its calibration cache. NVIDIA ModelOpt is CUDA-first and not needed.

NVIDIA's recipe, as ORT options:
* only weighted GEMMs are quantized: Conv, and MatMul/Gemm with a constant weight (attention's
  activation x activation matmuls stay unquantized); left out by name per component (`EXCLUDES`): time
  embedding, time_emb_proj, first/last convs, shortcut convs, the VAE's quant convs, the predictor's
  query/key projections (its attention score path); norms are never quantized;
* symmetric everywhere (zero point 0), weights per output channel (Conv axis 0, MatMul axis 1),
  activations per tensor; biases stay float (TensorRT fuses them);
* INT8 activations: percentile calibration (optionally after SmoothQuant, `smoothquant`);
  FP8 (E4M3): max calibration, scale = amax / 448 (ORT only offers a std-matching calibration for FP8,
  so the graph is written as max-calibrated INT8 and retyped: scale_fp8 = scale_int8 * 127 / 448);
* weights are quantized offline (the weight QuantizeLinear is folded): INT8/FP8 initializer ->
  DequantizeLinear -> GEMM.

Two forms (`FORMS`), one per backend:
* ``tensorrt``: only GEMM *inputs* are quantized (TensorRT's guidance: never the outputs of Conv /
  MatMul / Gemm), on an FP16 body (scales FP16, each DequantizeLinear feeds its GEMM in FP16);
* ``onnxruntime``: ONNX Runtime's own QDQ form, GEMM outputs quantized too, on an FP32 body, so ORT's
  CPU graph optimizer fuses DQ -> Conv/MatMul -> Q into its integer kernels (QLinearConv, QLinearMatMul).
"""
from __future__ import annotations

import contextlib
import io
import logging
import re
import tempfile
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx.external_data_helper import load_external_data_for_model

from invsr_runtime.manifest import BACKENDS

from . import calib_stats, qdq
from .onnx_export import EXTERNAL_DATA_THRESHOLD, graph_files, save_proto
from .precision_fp16 import convert_fp16

logger = logging.getLogger(__name__)

#: Node-name fragments left out of quantization in every component (NVIDIA's UNet recipe).
COMMON_EXCLUDES = ("time_embedding", "time_emb_proj", "time_proj", "conv_in", "conv_out", "conv_shortcut",
                   "add_embedding")
#: Per component: the VAE's 1x1 quant convs sit at the latent boundary; the predictor's query/key
#: projections feed its softmax over 16,384 tokens (kept fp32 in the reference), so they stay unquantized.
EXCLUDES = {
    "unet": COMMON_EXCLUDES,
    "vae_encoder": COMMON_EXCLUDES + ("quant_conv",),
    "vae_decoder": COMMON_EXCLUDES + ("quant_conv",),
    "predictor": COMMON_EXCLUDES + ("to_q", "to_k"),
}
#: Kept for callers that only quantize the UNet.
EXCLUDE_PATTERNS = EXCLUDES["unet"]
QUANT_OPS = ("Conv", "MatMul", "Gemm")
DEFAULT_PERCENTILE = 99.99
#: Q/DQ form per backend (see the module docstring): one per runtime backend.
FORMS = BACKENDS


class QuantizeError(RuntimeError):
    """Quantization failed; one line."""


def nodes_to_quantize(model: onnx.ModelProto, exclude: Iterable[str] = EXCLUDE_PATTERNS) -> list[str]:
    """Conv / MatMul / Gemm nodes with a constant weight, minus the excluded name patterns."""
    constants = {t.name for t in model.graph.initializer}
    pattern = re.compile("|".join(re.escape(p) for p in exclude)) if exclude else None
    names = []
    for node in model.graph.node:
        if node.op_type not in QUANT_OPS or len(node.input) < 2 or node.input[1] not in constants:
            continue
        if pattern is not None and pattern.search(node.name):
            continue
        names.append(node.name)
    return names


def calibrated_tensors(model: onnx.ModelProto, selected: Iterable[str], form: str) -> list[str]:
    """The activations whose ranges the quantizer needs: the selected GEMMs' inputs (+ outputs in ORT form)."""
    constants = {t.name for t in model.graph.initializer}
    chosen = set(selected)
    names = set()
    for node in model.graph.node:
        if node.name in chosen:
            names.update(i for i in node.input[:1] if i and i not in constants)
            if form == "onnxruntime":
                names.add(node.output[0])
    return sorted(names)


@contextlib.contextmanager
def _quiet():
    """onnxruntime's quantizer prints progress to stdout and warns on the root logger: keep both out
    of the CLI's output (the text goes to this module's debug log instead)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        root.setLevel(level)
        logger.debug("onnxruntime.quantization said: %s", buffer.getvalue().strip())


def quantize_qdq(src: Path, dst: Path, precision: str, feeds: Iterable[Mapping[str, np.ndarray]],
                 percentile: float = DEFAULT_PERCENTILE, form: str = "tensorrt",
                 exclude: Sequence[str] = EXCLUDE_PATTERNS) -> dict:
    """Write the Q/DQ (FP32 body) graph of `src` to `dst`; returns what was done, for the manifest.

    `feeds` is consumed once, one calibration input at a time (a generator keeps memory flat).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data

    if precision not in ("int8", "fp8"):
        raise QuantizeError(f"precision {precision!r} is not a quantized precision (int8 or fp8)")
    if form not in FORMS:
        raise QuantizeError(f"unknown Q/DQ form {form!r}: choose one of {', '.join(FORMS)}")
    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src), load_external_data=False)
    selected = nodes_to_quantize(model, exclude)
    if not selected:
        raise QuantizeError(f"{src.name}: nothing to quantize (no Conv/MatMul with constant weights)")
    tensors = calibrated_tensors(model, selected, form)
    del model
    method = "percentile" if precision == "int8" else "max"
    stats = calib_stats.collect(src, tensors, feeds, histogram=(method == "percentile"))
    if not stats.samples:
        raise QuantizeError(f"{src.name}: no calibration inputs")
    large = sum(p.stat().st_size for p in graph_files(src)) > EXTERNAL_DATA_THRESHOLD
    with tempfile.TemporaryDirectory(prefix=f".{dst.stem}.calib.", dir=dst.parent) as tmp, _quiet():
        cache = Path(tmp) / "ranges.json"
        save_tensors_data(stats.ranges(method, percentile), cache)
        quantize_static(
            str(src), str(dst), None, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANT_OPS), nodes_to_quantize=selected, per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.Percentile if method == "percentile" else CalibrationMethod.MinMax,
            use_external_data_format=large, calibration_cache_path=str(cache),
            extra_options={
                "ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                "AddQDQPairToWeight": True, "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
                "OpTypesToExcludeOutputQuantization": list(QUANT_OPS) if form == "tensorrt" else [],
            },
        )
    return {
        "library": "onnxruntime.quantization.quantize_static (QDQ), streaming calibration (invsr_export.calib_stats)",
        "precision": precision,
        "form": form,
        "calibration": method,
        "percentile": percentile if method == "percentile" else None,
        "quantized_nodes": len(selected),
        "calibrated_tensors": len(tensors),
        "excluded_patterns": list(exclude),
        "calibration_samples": stats.samples,
    }


def quantize_graph(src: Path, dst: Path, precision: str, feeds: Iterable[Mapping[str, np.ndarray]],
                   percentile: float = DEFAULT_PERCENTILE, form: str = "tensorrt",
                   exclude: Sequence[str] = EXCLUDE_PATTERNS, fp32_softmax: bool = False,
                   smoothquant: float | None = None) -> dict:
    """FP32 graph `src` -> INT8/FP8 Q/DQ graph at `dst` in `form`; returns the manifest notes.

    TensorRT form: FP16 body (like the fp16 export); ONNX Runtime form: FP32 body (ORT's integer kernels).
    `smoothquant` (INT8 only): SmoothQuant with that alpha first (a second pass over the feeds).
    """
    src, dst = Path(src), Path(dst)
    with tempfile.TemporaryDirectory(prefix=f".{dst.stem}.{precision}.", dir=dst.parent) as tmp:
        smooth_notes = None
        if smoothquant is not None and precision == "int8":
            from .smoothquant import smooth_graph

            feeds = list(feeds)
            selected = nodes_to_quantize(onnx.load(str(src), load_external_data=False), exclude)
            smoothed = Path(tmp) / "smoothed.onnx"
            smooth_notes = smooth_graph(src, smoothed, selected, feeds, smoothquant)
            src = smoothed
        staged = Path(tmp) / "qdq.onnx"
        notes = quantize_qdq(src, staged, precision, feeds, percentile, form, exclude)
        notes["smoothquant"] = smooth_notes
        model = onnx.load(str(staged), load_external_data=False)
        load_external_data_for_model(model, tmp)
        if precision == "fp8":
            qdq.retype_fp8(model)
        if form == "tensorrt":
            notes["scales_clamped_to_fp16"] = qdq.round_scales_fp16(model)
        notes["weights_folded"] = qdq.fold_weight_quantizers(model)
        folded = save_proto(model, Path(tmp) / "folded.onnx")
        del model
        if form == "tensorrt":
            convert_fp16(folded, dst, fp32_softmax=fp32_softmax)
        else:
            _finish_fp32(folded, dst)
    report = qdq.check_qdq(onnx.load(str(dst), load_external_data=True), form=form)
    if report.problems:
        raise QuantizeError(f"{dst.name}: Q/DQ graph not in {form} form: {report.problems[0]}")
    notes["quantized_gemms"] = report.quantized_gemms
    notes["body"] = "fp16" if form == "tensorrt" else "fp32"
    return notes


def quantize_unet(src: Path, dst: Path, precision: str, feeds: Iterable[Mapping[str, np.ndarray]],
                  percentile: float = DEFAULT_PERCENTILE, form: str = "tensorrt") -> dict:
    """The UNet with NVIDIA's exclusions (see :func:`quantize_graph`)."""
    return quantize_graph(src, dst, precision, feeds, percentile, form, EXCLUDES["unet"])


def _finish_fp32(src: Path, dst: Path) -> Path:
    """Clean (constant folding, dead nodes) and check an FP32-body Q/DQ graph, as the fp16 pass does."""
    from .onnx_export import check_graph, optimize_file

    optimize_file(src, dst)
    check_graph(dst)
    return dst

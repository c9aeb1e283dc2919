"""FP32 UNet graph -> explicit Q/DQ INT8 or FP8 graph on an FP16 body (what TensorRT 11 builds from).

Library: onnxruntime.quantization (``quantize_static``, QDQ format), because it ships with the
onnxruntime we already depend on, runs its calibration on the CPU, and writes standard
QuantizeLinear/DequantizeLinear that both ONNX Runtime and TensorRT's ONNX parser read. NVIDIA ModelOpt
would add SmoothQuant, but it is a CUDA-first package and not needed for an explicit-Q/DQ graph.

NVIDIA's recipe, as ORT options:
* only weighted GEMMs are quantized: Conv, and MatMul/Gemm with a constant weight (attention's
  activation x activation matmuls stay FP16); left out by name: time embedding, time_emb_proj,
  conv_in, conv_out, shortcut convs (norms are never quantized);
* symmetric everywhere (zero point 0), weights per output channel (Conv axis 0, MatMul axis 1),
  activations per tensor; biases stay float (TensorRT fuses them);
* INT8 activations: percentile calibration (SmoothQuant is not used: it needs neural-compressor);
  FP8 (E4M3): max calibration. ORT only offers a std-matching "Distribution" calibration for FP8, so FP8
  is derived from a max-calibrated INT8 pass by rescaling: scale_fp8 = amax / 448 = scale_int8 * 127 / 448.
* weights are quantized offline (the weight QuantizeLinear is folded), so every weight is an INT8/FP8
  initializer feeding a DequantizeLinear that feeds the Conv/MatMul;
* the body is then converted to FP16 like the fp16 export (scales become FP16, so each DequantizeLinear
  outputs FP16 straight into its GEMM).
"""
from __future__ import annotations

import logging
import contextlib
import io
import re
import tempfile
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx.external_data_helper import load_external_data_for_model
from onnxruntime.quantization import CalibrationDataReader

from . import qdq
from .onnx_export import EXTERNAL_DATA_THRESHOLD, graph_files, save_proto
from .precision_fp16 import convert_fp16

logger = logging.getLogger(__name__)

#: Node-name fragments NVIDIA's recipe leaves out of quantization.
EXCLUDE_PATTERNS = ("time_embedding", "time_emb_proj", "time_proj", "conv_in", "conv_out", "conv_shortcut",
                    "add_embedding")
QUANT_OPS = ("Conv", "MatMul", "Gemm")
DEFAULT_PERCENTILE = 99.99


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


class FeedReader(CalibrationDataReader):
    """onnxruntime CalibrationDataReader over a list of recorded feed dicts."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
        self._feeds = list(feeds)
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= len(self._feeds):
            return None
        self._next += 1
        return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self._feeds[self._next - 1].items()}

    def rewind(self) -> None:
        self._next = 0


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


def quantize_qdq(src: Path, dst: Path, precision: str, feeds: Sequence[Mapping[str, np.ndarray]],
                 percentile: float = DEFAULT_PERCENTILE) -> dict:
    """Write the Q/DQ (FP32 body) graph of `src` to `dst`; returns what was done, for the manifest."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if precision not in ("int8", "fp8"):
        raise QuantizeError(f"precision {precision!r} is not a quantized precision (int8 or fp8)")
    model = onnx.load(str(src), load_external_data=False)
    selected = nodes_to_quantize(model)
    if not selected:
        raise QuantizeError(f"{Path(src).name}: nothing to quantize (no Conv/MatMul with constant weights)")
    large = sum(p.stat().st_size for p in graph_files(Path(src))) > EXTERNAL_DATA_THRESHOLD
    method = CalibrationMethod.Percentile if precision == "int8" else CalibrationMethod.MinMax
    with _quiet():
        quantize_static(
            str(src), str(dst), FeedReader(feeds), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANT_OPS), nodes_to_quantize=selected, per_channel=True,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, calibrate_method=method,
            use_external_data_format=large,
            extra_options={
                "ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                "AddQDQPairToWeight": True, "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},
                "CalibPercentile": percentile,
            },
        )
    return {
        "library": "onnxruntime.quantization.quantize_static (QDQ)",
        "precision": precision,
        "calibration": "percentile" if precision == "int8" else "max",
        "percentile": percentile if precision == "int8" else None,
        "quantized_nodes": len(selected),
        "excluded_patterns": list(EXCLUDE_PATTERNS),
        "calibration_samples": len(feeds),
    }


def quantize_unet(src: Path, dst: Path, precision: str, feeds: Sequence[Mapping[str, np.ndarray]],
                  percentile: float = DEFAULT_PERCENTILE) -> dict:
    """FP32 UNet graph `src` -> INT8/FP8 Q/DQ graph on an FP16 body at `dst`; returns the manifest notes."""
    src, dst = Path(src), Path(dst)
    with tempfile.TemporaryDirectory(prefix=f".{dst.stem}.{precision}.", dir=dst.parent) as tmp:
        staged = Path(tmp) / "qdq.onnx"
        notes = quantize_qdq(src, staged, precision, feeds, percentile)
        model = onnx.load(str(staged), load_external_data=False)
        load_external_data_for_model(model, tmp)
        if precision == "fp8":
            qdq.retype_fp8(model)
        notes["scales_clamped_to_fp16"] = qdq.round_scales_fp16(model)
        notes["weights_folded"] = qdq.fold_weight_quantizers(model)
        folded = save_proto(model, Path(tmp) / "folded.onnx")
        del model
        convert_fp16(folded, dst)
    report = qdq.check_qdq(onnx.load(str(dst), load_external_data=True))
    if report.problems:
        raise QuantizeError(f"{dst.name}: Q/DQ graph not in TensorRT form: {report.problems[0]}")
    notes["quantized_gemms"] = report.quantized_gemms
    return notes

"""Streaming calibration statistics: one forward pass at a time, merged, in memory independent of the set.

onnxruntime's calibrators keep every intermediate tensor of every calibration input until the end; at
full size that is tens of GB (issue 17). Here the graph runs once per calibration input and only the
statistics survive each run:

* running max of |x| per tensor (FP8 / max calibration), optionally per channel (SmoothQuant);
* a histogram of |x| per tensor on bins of width 2^k starting at 0 (INT8 percentile calibration).
  When a larger value arrives the bin width doubles and neighbouring bins are summed: bins nest, so
  the merged histogram is *exactly* the one computed over all inputs at once with the final width.

The ranges come out as onnxruntime's own ``TensorsData`` so ``quantize_static`` consumes them as a
calibration cache (``calibration_cache_path``) without running its own calibrator.
"""
from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np
import onnx

logger = logging.getLogger(__name__)

HIST_BINS = 2048


@dataclass
class AbsHistogram:
    """Histogram of |x| over HIST_BINS bins [i*w, (i+1)*w), w a power of two; exactly mergeable."""

    bins: int = HIST_BINS
    counts: np.ndarray | None = None
    width: float = 0.0
    amax: float = 0.0

    def add(self, x: np.ndarray) -> None:
        a = np.abs(np.asarray(x, dtype=np.float32).ravel())
        a = a[np.isfinite(a)]
        if a.size == 0:
            return
        amax = float(a.max())
        self.amax = max(self.amax, amax)
        if self.counts is None:
            self.counts = np.zeros(self.bins, dtype=np.int64)
            self.width = _pow2_width(amax, self.bins)
        while self.amax >= self.bins * self.width:  # grow: sum bin pairs (exact, bins nest)
            self.counts = np.concatenate([self.counts.reshape(-1, 2).sum(axis=1),
                                          np.zeros(self.bins // 2, dtype=np.int64)])
            self.width *= 2.0
        index = np.floor(a * np.float32(1.0 / self.width)).astype(np.int64)  # exact: width is 2^k
        self.counts += np.bincount(index, minlength=self.bins)[:self.bins]

    def percentile(self, p: float) -> float:
        """Smallest bin edge with at least p% of the values below it (clipped to the max seen)."""
        if self.counts is None:
            return 0.0
        cumulative = np.cumsum(self.counts)
        i = int(np.searchsorted(cumulative, cumulative[-1] * (p / 100.0)))
        return min((i + 1) * self.width, self.amax)


def _pow2_width(amax: float, bins: int) -> float:
    """Smallest power of two w with amax < bins * w (a tiny one when amax is 0)."""
    if amax <= 0.0:
        return 2.0 ** -60
    mantissa, exponent = np.frexp(amax / bins)  # amax / bins = m * 2^e, 0.5 <= m < 1
    return float(np.ldexp(1.0, int(exponent)))


@dataclass
class TensorStats:
    """Merged statistics of one tensor."""

    amax: float = 0.0
    histogram: AbsHistogram | None = None
    channel_amax: np.ndarray | None = None  # per channel of `channel_axis`, for SmoothQuant

    def add(self, x: np.ndarray, channel_axis: int | None) -> None:
        self.amax = max(self.amax, float(np.nanmax(np.abs(x))) if x.size else 0.0)
        if self.histogram is not None:
            self.histogram.add(x)
        if channel_axis is not None:
            axes = tuple(i for i in range(x.ndim) if i != channel_axis % x.ndim)
            c = np.abs(x).max(axis=axes).astype(np.float32)
            self.channel_amax = c if self.channel_amax is None else np.maximum(self.channel_amax, c)


@dataclass
class StreamingStats:
    """Statistics of named tensors of one graph, merged over calibration inputs."""

    tensors: dict[str, TensorStats] = field(default_factory=dict)
    samples: int = 0

    def ranges(self, method: str, percentile: float = 99.99):
        """onnxruntime ``TensorsData`` (symmetric ranges) for ``method`` "max" or "percentile"."""
        from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData

        data = {}
        for name, s in self.tensors.items():
            t = s.amax if method == "max" else s.histogram.percentile(percentile)
            data[name] = TensorData(lowest=np.float32(-t), highest=np.float32(t))
        kind = CalibrationMethod.MinMax if method == "max" else CalibrationMethod.Percentile
        return TensorsData(kind, data)


@contextlib.contextmanager
def augmented_session(model_path: Path, tensors: Iterable[str]) -> Iterator[object]:
    """A CPU session of `model_path` that also outputs `tensors` (the weights are not copied: the
    augmented graph is written beside the original, so its external data resolves)."""
    import onnxruntime as ort

    model_path = Path(model_path)
    model = onnx.load(str(model_path), load_external_data=False)
    known = {vi.name: vi for vi in list(model.graph.value_info) + list(model.graph.input)}
    outputs = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in outputs:
            elem = known[name].type.tensor_type.elem_type if name in known else onnx.TensorProto.FLOAT
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.enable_cpu_mem_arena = False
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    with tempfile.NamedTemporaryFile(prefix=f".{model_path.stem}.calib.", suffix=".onnx",
                                     dir=model_path.parent) as tmp:
        onnx.save(model, tmp.name)
        del model
        yield ort.InferenceSession(tmp.name, options, providers=["CPUExecutionProvider"])


def collect(model_path: Path, tensors: Iterable[str], feeds: Iterable[Mapping[str, np.ndarray]],
            histogram: bool = True, channel_axes: Mapping[str, int] | None = None) -> StreamingStats:
    """Run `model_path` once per feed dict and merge the statistics of `tensors` after each run.

    Peak memory: the session plus one run's outputs plus the statistics, whatever the number of feeds.
    `channel_axes` asks for per-channel maxima of some tensors (axis per tensor).
    """
    names = sorted(set(tensors))
    channel_axes = dict(channel_axes or {})
    stats = StreamingStats({n: TensorStats(histogram=AbsHistogram() if histogram else None) for n in names})
    with augmented_session(model_path, names) as session:
        inputs = {i.name for i in session.get_inputs()}
        for feed in feeds:
            values = session.run(names, {k: np.ascontiguousarray(v, dtype=np.float32)
                                         for k, v in feed.items() if k in inputs})
            for name, value in zip(names, values):
                stats.tensors[name].add(value, channel_axes.get(name))
            del values
            stats.samples += 1
            if stats.samples % 16 == 0:  # progress on long (full-size) calibrations
                logger.info("%s: statistics over %d calibration inputs", Path(model_path).stem, stats.samples)
    logger.debug("%s: statistics of %d tensors over %d inputs", Path(model_path).name, len(names), stats.samples)
    return stats

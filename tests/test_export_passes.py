"""The export passes on small hand-made torch modules: ONNX export + cleanup, fp16, Q/DQ rewrites, external data."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from invsr_export import onnx_export
from invsr_export.onnx_export import ExportError, check_graph, export_module, graph_files, onnx_digest
from invsr_export.precision_fp16 import convert_fp16, drop_cast_round_trips, fp16_weight_fraction
from invsr_export import calib_stats, quantize
from invsr_export.qdq import FP8_MAX, INT8_MAX, check_qdq
from invsr_export.quantize import FORMS, nodes_to_quantize, quantize_unet


class TinyUNetLike(nn.Module):
    """Names like the SD UNet's, so the exclusion patterns have something to bite on."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(4, 16, 3, padding=1)
        self.time_embedding = nn.Linear(8, 16)
        self.norm = nn.GroupNorm(4, 16)
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1)
        self.proj = nn.Linear(16, 16)
        self.conv_shortcut = nn.Conv2d(16, 16, 1)
        self.conv_out = nn.Conv2d(16, 4, 3, padding=1)


class StepGraph(nn.Module):
    """latent, timestep, sigma -> latent - sigma * eps, with a sinusoidal timestep embedding."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.unet = TinyUNetLike()

    def forward(self, latent, timestep, sigma):
        u = self.unet
        freqs = torch.exp(-torch.arange(4, dtype=torch.float32) * 0.5)
        arg = timestep.float()[:, None] * freqs[None]
        temb = u.time_embedding(torch.cat([torch.cos(arg), torch.sin(arg)], dim=1))
        h = u.conv_in(latent) + temb[:, :, None, None]
        h = u.conv1(torch.nn.functional.silu(u.norm(h)))
        b, c, hh, ww = h.shape
        h = h + u.proj(h.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, hh, ww)
        eps = u.conv_out(u.conv_shortcut(h))
        return latent - sigma.reshape(-1, 1, 1, 1) * eps


NAMES = (["latent", "timestep", "sigma"], ["latent_next"])


def _args(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 4, 8, 8, generator=g), torch.tensor([199.0]), torch.tensor([0.5693])]


def _feeds(seed: int) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in zip(NAMES[0], _args(seed))}


@pytest.fixture(scope="module")
def fp32_graph(tmp_path_factory):
    path = tmp_path_factory.mktemp("g") / "step.onnx"
    return export_module(StepGraph().eval(), _args(), *NAMES, path)


def _run(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_export_is_clean_static_and_exact(fp32_graph):
    model = onnx.load(str(fp32_graph))
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"Constant", "Identity", "Shape", "ConstantOfShape"}
    with torch.no_grad():
        want = StepGraph().eval()(*_args(1)).numpy()
    assert np.abs(_run(fp32_graph, _feeds(1)) - want).max() < 1e-5


def test_old_opset_is_refused(tmp_path):
    with pytest.raises(ExportError, match="opset"):
        export_module(StepGraph().eval(), _args(), *NAMES, tmp_path / "x.onnx", opset=17)


def test_fp16_pass(fp32_graph, tmp_path):
    dst = convert_fp16(fp32_graph, tmp_path / "step16.onnx")
    model = onnx.load(str(dst))
    assert fp16_weight_fraction(model) == 1.0
    assert all(i.type.tensor_type.elem_type == TensorProto.FLOAT for i in list(model.graph.input) + list(model.graph.output))
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(model.graph.value_info) + list(model.graph.input)}
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type in ("Sin", "Cos", "InstanceNormalization"):
            assert types[node.input[0]] == TensorProto.FLOAT, node.name
        if node.op_type in ("Sin", "Cos"):  # the timestep path is fp32 from the graph input on: no Cast
            assert producer[node.input[0]].op_type != "Cast", node.name
    # the final update (latent - sigma * eps) is fp32 and reads sigma without an fp16 round trip
    out = producer[model.graph.output[0].name]
    assert out.op_type == "Sub" and types[out.input[0]] == TensorProto.FLOAT
    ref = _run(fp32_graph, _feeds(2))
    assert np.abs(_run(dst, _feeds(2)) - ref).max() < 1e-2 * np.abs(ref).max()


def test_drop_cast_round_trips():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    nodes = [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16, name="down"),
             helper.make_node("Cast", ["h"], ["y"], to=TensorProto.FLOAT, name="up")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]))
    assert drop_cast_round_trips(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Identity"] and model.graph.node[0].input[0] == "x"


def test_nodes_to_quantize_follow_nvidia_exclusions(fp32_graph):
    names = nodes_to_quantize(onnx.load(str(fp32_graph)))
    assert any("conv1" in n for n in names) and any("proj" in n for n in names)
    assert not any(p in n for n in names for p in ("conv_in", "conv_out", "conv_shortcut", "time_embedding"))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_quantize_unet(fp32_graph, tmp_path, precision, form):
    feeds = [_feeds(s) for s in range(8)]
    dst = tmp_path / f"step.{precision}.onnx"
    notes = quantize_unet(fp32_graph, dst, precision, iter(feeds), form=form)  # a one-pass iterator is enough
    model = onnx.load(str(dst))
    report = check_qdq(model, form=form)
    assert not report.problems and report.quantized_gemms == 2 == notes["quantized_gemms"]
    # TensorRT form: only GEMM inputs carry Q; ONNX Runtime's form also quantizes both GEMM outputs
    assert report.gemm_output_q == (0 if form == "tensorrt" else 2)
    assert notes["calibration_samples"] == 8
    want = TensorProto.INT8 if precision == "int8" else TensorProto.FLOAT8E4M3FN
    assert report.zero_point_types == {want}
    inits = {t.name: t for t in model.graph.initializer}
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    conv_dq = next(n for n in weight_dq if "conv1" in n.input[0])
    assert inits[conv_dq.input[0]].data_type == want  # weights stored quantized
    scale = numpy_helper.to_array(inits[conv_dq.input[1]]).astype(np.float32)
    body = TensorProto.FLOAT16 if form == "tensorrt" else TensorProto.FLOAT
    assert inits[conv_dq.input[1]].data_type == body
    w = StepGraph().unet.conv1.weight.detach().numpy()
    amax = np.abs(w).reshape(w.shape[0], -1).max(axis=1)
    limit = INT8_MAX if precision == "int8" else FP8_MAX
    np.testing.assert_allclose(scale, amax / limit, rtol=2e-3)
    ref = _run(fp32_graph, _feeds(20))
    err = np.abs(_run(dst, _feeds(20)) - ref).max() / np.abs(ref).max()
    assert err < (0.05 if precision == "int8" else 0.15)


def test_trt_check_rejects_a_quantized_gemm_output(fp32_graph, tmp_path):
    """ONNX Runtime's form (Q after Conv/MatMul) passes its own check and fails TensorRT's."""
    dst = tmp_path / "ort.onnx"
    quantize_unet(fp32_graph, dst, "int8", [_feeds(s) for s in range(2)], form="onnxruntime")
    model = onnx.load(str(dst))
    assert not check_qdq(model, form="onnxruntime").problems
    problems = check_qdq(model, form="tensorrt").problems
    assert len(problems) == 2 and all("quantizes the output of" in p for p in problems)


def _ort_max_ranges(model_path, tensors, feeds, tmp_path):
    """The all-in-memory reference: onnxruntime's own MinMax calibrator, every feed's outputs held at once."""
    from onnxruntime.quantization.calibrate import CalibrationDataReader, MinMaxCalibrater

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    calibrator = MinMaxCalibrater(model_path, ["Conv", "MatMul", "Gemm"],
                                  str(tmp_path / "aug.onnx"), symmetric=True)
    calibrator.augment_graph()
    calibrator.create_inference_session()
    calibrator.collect_data(Reader())
    ranges = calibrator.compute_data()
    return {t: float(np.max(ranges[t].range_value[1])) for t in tensors}


def test_streaming_statistics_equal_the_all_in_memory_ones(fp32_graph, tmp_path):
    """Same scales from one-feed-at-a-time statistics as from every intermediate tensor held at once."""
    feeds = [_feeds(s) for s in range(6)]
    model = onnx.load(str(fp32_graph))
    tensors = quantize.calibrated_tensors(model, quantize.nodes_to_quantize(model), "onnxruntime")
    stats = calib_stats.collect(fp32_graph, tensors, iter(feeds))  # one forward pass per feed, merged
    assert stats.samples == 6
    # max (fp8): identical to onnxruntime's calibrator holding every intermediate output at once
    ort_max = _ort_max_ranges(fp32_graph, tensors, feeds, tmp_path)
    assert {t: stats.tensors[t].amax for t in tensors} == ort_max
    # percentile (int8): the merged histogram is the one built from all values at once, bin for bin
    whole = {t: calib_stats.AbsHistogram() for t in tensors}
    per_feed = {t: [] for t in tensors}
    with calib_stats.augmented_session(fp32_graph, tensors) as session:
        for f in feeds:
            for t, v in zip(tensors, session.run(tensors, f)):
                per_feed[t].append(v)
    for t in tensors:
        values = np.concatenate([v.ravel() for v in per_feed[t]])
        whole[t].add(values)
        merged = stats.tensors[t].histogram
        assert merged.width == whole[t].width and np.array_equal(merged.counts, whole[t].counts), t
        exact = np.percentile(np.abs(values), 99.0, method="inverted_cdf")  # the bin holding it ends above
        assert 0.0 <= merged.percentile(99.0) - exact <= merged.width, t
    a = stats.ranges("percentile", 99.99)
    b = {t: whole[t].percentile(99.99) for t in tensors}
    assert {t: float(a[t].range_value[1]) for t in tensors} == pytest.approx(b, rel=1e-7)


def test_abs_histogram_merges_exactly_across_growing_ranges():
    rng = np.random.default_rng(0)
    parts = [rng.normal(0, s, 5000).astype(np.float32) for s in (0.01, 1.0, 0.1, 30.0)]  # range grows twice
    merged, whole = calib_stats.AbsHistogram(), calib_stats.AbsHistogram()
    for p in parts:
        merged.add(p)
    whole.add(np.concatenate(parts))
    assert merged.width == whole.width and np.array_equal(merged.counts, whole.counts)
    assert merged.counts.sum() == 20000 and merged.amax == np.abs(np.concatenate(parts)).max()
    assert merged.amax < merged.bins * merged.width <= 2 * merged.amax  # the width fits the range


def test_external_data_round_trip(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)
    path = export_module(StepGraph().eval(), _args(), *NAMES, tmp_path / "big.onnx")
    assert [p.name for p in graph_files(path)] == ["big.onnx", "big.onnx.data"]
    check_graph(path)
    assert np.isfinite(_run(path, _feeds(3))).all()  # ORT loads the weights from beside the file
    before = onnx_digest(path)
    data = (tmp_path / "big.onnx.data").read_bytes()
    (tmp_path / "big.onnx.data").write_bytes(data[:-4] + b"\0\0\0\1")
    assert onnx_digest(path) != before  # the digest covers the weights


def test_dynamic_dims_are_refused(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 19)])
    onnx.save(model, str(tmp_path / "dyn.onnx"))
    with pytest.raises(ExportError, match="dynamic"):
        check_graph(tmp_path / "dyn.onnx")


def test_smoothquant_is_exact_in_fp32_and_flattens_the_activation(fp32_graph, tmp_path):
    """X W == (X / s)(s W): the smoothed graph computes the same; the MatMul's input range is evened out."""
    from invsr_export.smoothquant import smooth_graph

    feeds = [_feeds(s) for s in range(4)]
    model = onnx.load(str(fp32_graph))
    selected = nodes_to_quantize(model)
    dst = tmp_path / "smoothed.onnx"
    notes = smooth_graph(fp32_graph, dst, selected, iter(feeds), alpha=0.5)
    assert notes["smoothed_matmuls"] == 1  # `proj`; convs are left alone
    onnx.checker.check_model(onnx.load(str(dst)), full_check=True)
    ref = _run(fp32_graph, _feeds(9))
    np.testing.assert_allclose(_run(dst, _feeds(9)), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    # the MatMul's input channels now span a smaller range (max / min of the per-channel maxima)
    name = next(n for n in selected if "proj" in n)
    inputs = {path: next(n for n in onnx.load(str(path)).graph.node if n.name == name).input[0]
              for path in (fp32_graph, dst)}
    spread = {}
    for path, tensor in inputs.items():
        amax = calib_stats.collect(path, [tensor], iter(feeds), histogram=False,
                                   channel_axes={tensor: -1}).tensors[tensor].channel_amax
        spread[path] = float(amax.max() / amax.min())
    assert spread[dst] < spread[fp32_graph]

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
from invsr_export.qdq import FP8_MAX, INT8_MAX, check_qdq
from invsr_export.quantize import nodes_to_quantize, quantize_unet


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


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_quantize_unet(fp32_graph, tmp_path, precision):
    feeds = [_feeds(s) for s in range(8)]
    notes = quantize_unet(fp32_graph, tmp_path / f"step.{precision}.onnx", precision, feeds)
    model = onnx.load(str(tmp_path / f"step.{precision}.onnx"))
    report = check_qdq(model)
    assert not report.problems and report.quantized_gemms == 2 == notes["quantized_gemms"]
    want = TensorProto.INT8 if precision == "int8" else TensorProto.FLOAT8E4M3FN
    assert report.zero_point_types == {want}
    inits = {t.name: t for t in model.graph.initializer}
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    conv_dq = next(n for n in weight_dq if "conv1" in n.input[0])
    assert inits[conv_dq.input[0]].data_type == want  # weights stored quantized
    scale = numpy_helper.to_array(inits[conv_dq.input[1]]).astype(np.float32)
    assert scale.dtype == np.float32 and inits[conv_dq.input[1]].data_type == TensorProto.FLOAT16
    w = StepGraph().unet.conv1.weight.detach().numpy()
    amax = np.abs(w).reshape(w.shape[0], -1).max(axis=1)
    limit = INT8_MAX if precision == "int8" else FP8_MAX
    np.testing.assert_allclose(scale, amax / limit, rtol=2e-3)
    ref = _run(fp32_graph, _feeds(20))
    err = np.abs(_run(tmp_path / f"step.{precision}.onnx", _feeds(20)) - ref).max() / np.abs(ref).max()
    assert err < (0.05 if precision == "int8" else 0.15)


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

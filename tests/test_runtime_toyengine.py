"""A toy engine folder: four tiny hand-built ONNX graphs with the contract's I/O (docs/INTERFACES.md).

Fast enough (milliseconds per tile) for format / error / CLI tests. `toy_chain` is the same arithmetic
in numpy, so tests can check what the runtime feeds each graph. Also imported by other
tests/test_runtime_*.py modules.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from invsr_runtime.folder_guard import sha256_file  # noqa: E402
from invsr_runtime.manifest import ComponentSpec, Manifest, TensorSpec  # noqa: E402
from invsr_runtime.schedule import DEFAULT_TIMESTEPS, alphas_cumprod  # noqa: E402

EMBED_DIM = 8
_RNG = np.random.default_rng(1234)
W_ENC = (_RNG.standard_normal((4, 3, 2, 2)) * 0.3).astype(np.float32)
W_PRED = (_RNG.standard_normal((4, 3, 2, 2)) * 0.3).astype(np.float32)
W_DEC = (_RNG.standard_normal((3, 4, 1, 1)) * 0.5).astype(np.float32)


def _io(name: str, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _save(path: Path, nodes, inputs, outputs, inits) -> None:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _graphs(folder: Path, b: int, t: int) -> dict[str, tuple[list, list]]:
    """Write the four graphs; return {name: (inputs, outputs)} as (name, shape) lists."""
    n = t // 2
    col = _const("col", np.array([b, 1, 1, 1], dtype=np.int64))
    enc_in, enc_out = [("lr", [b, 3, t, t]), ("noise", [b, 4, n, n])], [("latent_lr", [b, 4, n, n])]
    _save(folder / "vae_encoder.onnx", [
        helper.make_node("Conv", ["lr", "w"], ["c"], strides=[2, 2]),
        helper.make_node("Mul", ["noise", "k"], ["kn"]),
        helper.make_node("Add", ["c", "kn"], ["latent_lr"]),
    ], [_io(*x) for x in enc_in], [_io(*x) for x in enc_out],
        [_const("w", W_ENC), _const("k", np.float32(0.1))])
    pred_in = [("lr", [b, 3, t, t]), ("timestep", [b]), ("noise", [b, 4, n, n]), ("latent_lr", [b, 4, n, n]), ("sigma", [b])]
    _save(folder / "predictor.onnx", [
        helper.make_node("Conv", ["lr", "w"], ["c"], strides=[2, 2]),
        helper.make_node("Mul", ["noise", "half"], ["hn"]),
        helper.make_node("Reshape", ["timestep", "col"], ["t4"]),
        helper.make_node("Mul", ["t4", "milli"], ["tm"]),
        helper.make_node("Add", ["c", "hn"], ["e0"]),
        helper.make_node("Add", ["e0", "tm"], ["eps"]),
        helper.make_node("Reshape", ["sigma", "col"], ["s4"]),
        helper.make_node("Mul", ["s4", "eps"], ["se"]),
        helper.make_node("Add", ["latent_lr", "se"], ["latent"]),
    ], [_io(*x) for x in pred_in], [_io("latent", [b, 4, n, n])],
        [_const("w", W_PRED), _const("half", np.float32(0.5)), _const("milli", np.float32(1e-3)), col])
    unet_in = [("latent", [b, 4, n, n]), ("timestep", [b]), ("sigma", [b]), ("sigma_next", [b]),
               ("encoder_hidden_states", [b, 77, EMBED_DIM])]
    _save(folder / "unet.onnx", [
        helper.make_node("Reshape", ["sigma", "col"], ["s4"]),
        helper.make_node("Reshape", ["sigma_next", "col"], ["sn4"]),
        helper.make_node("Reshape", ["timestep", "col"], ["t4"]),
        helper.make_node("Mul", ["s4", "s4"], ["s2"]),
        helper.make_node("Add", ["s2", "one"], ["s21"]),
        helper.make_node("Sqrt", ["s21"], ["den"]),
        helper.make_node("Div", ["latent", "den"], ["zin"]),
        helper.make_node("ReduceMean", ["encoder_hidden_states"], ["em"], axes=[1, 2], keepdims=0),
        helper.make_node("Reshape", ["em", "col"], ["e4"]),
        helper.make_node("Mul", ["t4", "milli"], ["tm"]),
        helper.make_node("Add", ["zin", "e4"], ["a1"]),
        helper.make_node("Add", ["a1", "tm"], ["a2"]),
        helper.make_node("Tanh", ["a2"], ["eps"]),
        helper.make_node("Sub", ["sn4", "s4"], ["ds"]),
        helper.make_node("Mul", ["ds", "eps"], ["upd"]),
        helper.make_node("Add", ["latent", "upd"], ["latent_next"]),
    ], [_io(*x) for x in unet_in], [_io("latent_next", [b, 4, n, n])],
        [_const("one", np.float32(1.0)), _const("milli", np.float32(1e-3)), col])
    _save(folder / "vae_decoder.onnx", [
        helper.make_node("Conv", ["latent", "w"], ["c"]),
        helper.make_node("Resize", ["c", "", "scales"], ["up"], mode="nearest"),
        helper.make_node("Sigmoid", ["up"], ["image"]),
    ], [_io("latent", [b, 4, n, n])], [_io("image", [b, 3, 4 * t, 4 * t])],
        [_const("w", W_DEC), _const("scales", np.array([1, 1, 8, 8], dtype=np.float32))])
    return {"vae_encoder": (enc_in, enc_out), "predictor": (pred_in, [("latent", [b, 4, n, n])]),
            "unet": (unet_in, [("latent_next", [b, 4, n, n])]),
            "vae_decoder": ([("latent", [b, 4, n, n])], [("image", [b, 3, 4 * t, 4 * t])])}


def build_toy_engine(folder: Path, tile: int = 16, batch: int = 2) -> Path:
    """Write a complete toy engine folder (manifest, prompt embedding, four .onnx graphs)."""
    folder.mkdir(parents=True, exist_ok=True)
    io = _graphs(folder, batch, tile)
    components = {
        name: ComponentSpec(file=f"{name}.onnx", inputs=[TensorSpec(n, s) for n, s in ins],
                            outputs=[TensorSpec(n, s) for n, s in outs], sha256=sha256_file(folder / f"{name}.onnx"))
        for name, (ins, outs) in io.items()
    }
    np.save(folder / "prompt_embeds.npy", np.linspace(-0.2, 0.3, 77 * EMBED_DIM, dtype=np.float32).reshape(1, 77, EMBED_DIM))
    Manifest(backend="onnxruntime", precision="fp32", tile=tile, batch=batch, components=components,
             alphas_cumprod=alphas_cumprod().tolist(),
             default_timesteps={str(k): list(v) for k, v in DEFAULT_TIMESTEPS.items()},
             prompt="toy", prompt_embeds_sha256=sha256_file(folder / "prompt_embeds.npy"),
             provenance={"base": "toy"}).save(folder)
    return folder


def _conv2(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """2x2 stride-2 convolution, NCHW."""
    b, c, h, ww = x.shape
    patches = x.reshape(b, c, h // 2, 2, ww // 2, 2)
    return np.einsum("bciyjx,ocyx->boij", patches, w)


def toy_chain(lr: np.ndarray, vae_noise: np.ndarray, pred_noise: np.ndarray, schedule, embeds: np.ndarray) -> np.ndarray:
    """The toy graphs' chain in numpy (float64), for checking the runtime's feeds."""
    lr = lr.astype(np.float64)
    z_lr = _conv2(lr, W_ENC) + 0.1 * vae_noise
    t0 = schedule.net_timesteps[0]
    z = z_lr + schedule.sigmas[0] * (_conv2(lr, W_PRED) + 0.5 * pred_noise + t0 * 1e-3)
    for t, s, sn in zip(schedule.net_timesteps, schedule.sigmas, schedule.sigmas_next):
        eps = np.tanh(z / np.sqrt(s * s + 1) + embeds.mean() + t * 1e-3)
        z = z + (sn - s) * eps
    c = np.einsum("bcij,oc->boij", z, W_DEC[:, :, 0, 0])
    up = c.repeat(8, axis=2).repeat(8, axis=3)
    return 1.0 / (1.0 + np.exp(-up))


def test_toy_engine_loads(tmp_path):
    from invsr_runtime.manifest import load_manifest

    folder = build_toy_engine(tmp_path / "toy")
    manifest = load_manifest(folder)
    assert manifest.batch == 2 and manifest.tile == 16 and manifest.latent_tile == 8

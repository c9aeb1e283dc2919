"""Tests for invsr_train.models.noise_predictor.

The network is built from diffusers blocks; these tests pin it to the official checkpoint's key list and
to an independent, hand-written functional forward pass (asymmetric downsample padding, cos-first
timestep sinusoid, resnet/attention order, clamp), so a library change or a wiring mistake fails here.
Only tiny configs run forward; the full-size model is built on the meta device.
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from invsr_train.models.noise_predictor import (
    CheckpointError,
    NoisePredictor,
    NoisePredictorConfig,
    sample_from_moments,
)

RELEASED_PARAMS = 33_837_576


# ------------------------------------------------------------------------------------------ helpers
def _shared_dir() -> Path:
    env = os.environ.get("INVSR_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


def _reference_keys() -> list[tuple[str, tuple[int, ...]]]:
    tsv = _shared_dir() / "reference" / "noise_predictor_keys.tsv"
    if not tsv.is_file():
        pytest.skip(f"reference key list not found at {tsv} (set INVSR_SHARED to the shared/ folder)")
    rows = []
    for line in tsv.read_text().splitlines():
        if not line.strip():
            continue
        key, shape = line.split("\t")
        rows.append((key.strip(), tuple(int(s) for s in shape.strip("() ").split(",") if s.strip())))
    return rows


def _randomize(model: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Give every parameter (norm weights and biases included) random values so nothing is trivially 1/0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith(".weight"):  # GroupNorm scales: around 1
                p.copy_(1.0 + scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype) / max(1.0, math.sqrt(p[0].numel()) / 3))
    return model


def _tiny(seed: int = 0) -> NoisePredictor:
    torch.manual_seed(seed)
    return _randomize(NoisePredictor(NoisePredictorConfig.tiny()), seed).eval()


def _multihead_config() -> NoisePredictorConfig:
    """Small but structurally rich: 2 layers per block, several heads, 8 groups."""
    return NoisePredictorConfig(
        block_channels=(32, 64), layers_per_block=2, head_dim=16, norm_groups=8, time_proj_dim=32, time_embed_dim=48
    )


def _sinusoid_by_hand(t: float, dim: int) -> list[float]:
    """cos half first, frequencies exp(-ln(10000) * i / (dim/2)), no shift: computed with math, not torch."""
    half = dim // 2
    freqs = [math.exp(-math.log(10000.0) * i / half) for i in range(half)]
    return [math.cos(t * f) for f in freqs] + [math.sin(t * f) for f in freqs]


def _reference_forward(
    sd: dict[str, torch.Tensor], cfg: NoisePredictorConfig, lr01: torch.Tensor, t: torch.Tensor, symmetric_pad: bool = False
) -> torch.Tensor:
    """Independent functional implementation of the spec in shared/INVSR.md (reads weights by key)."""

    def w(key: str) -> torch.Tensor:
        return sd["encoder." + key]

    def gn(x: torch.Tensor, key: str) -> torch.Tensor:
        return F.group_norm(x, cfg.norm_groups, w(key + ".weight"), w(key + ".bias"), cfg.norm_eps)

    def lin(x: torch.Tensor, key: str) -> torch.Tensor:
        return F.linear(x, w(key + ".weight"), w(key + ".bias"))

    def conv(x: torch.Tensor, key: str, **kw) -> torch.Tensor:
        return F.conv2d(x, w(key + ".weight"), w(key + ".bias"), **kw)

    half = cfg.time_proj_dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) / half)
    args = t.to(torch.float64)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1).to(lr01.dtype)
    temb = lin(F.silu(lin(emb, "time_embedding.linear_1")), "time_embedding.linear_2")

    def resnet(x: torch.Tensor, key: str) -> torch.Tensor:
        h = conv(F.silu(gn(x, key + ".norm1")), key + ".conv1", padding=1)
        h = h + lin(F.silu(temb), key + ".time_emb_proj")[:, :, None, None]
        h = conv(F.silu(gn(h, key + ".norm2")), key + ".conv2", padding=1)
        shortcut = conv(x, key + ".conv_shortcut") if "encoder." + key + ".conv_shortcut.weight" in sd else x
        return shortcut + h

    def attention(x: torch.Tensor, key: str) -> torch.Tensor:
        b, c, hh, ww = x.shape
        heads = max(1, c // cfg.head_dim)
        d = c // heads
        h = gn(x, key + ".group_norm").reshape(b, c, hh * ww).transpose(1, 2)

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.reshape(b, hh * ww, heads, d).transpose(1, 2)

        q, k, v = (split(lin(h, f"{key}.{n}")) for n in ("to_q", "to_k", "to_v"))
        probs = torch.softmax((q @ k.transpose(-1, -2)).float() / math.sqrt(d), dim=-1).to(v.dtype)
        o = (probs @ v).transpose(1, 2).reshape(b, hh * ww, c)
        o = lin(o, key + ".to_out.0").transpose(1, 2).reshape(b, c, hh, ww)
        return x + o

    x = conv(lr01 * 2 - 1, "conv_in", padding=1)
    n_blocks = len(cfg.block_channels)
    for i in range(n_blocks):
        for j in range(cfg.layers_per_block):
            x = resnet(x, f"down_blocks.{i}.resnets.{j}")
            x = attention(x, f"down_blocks.{i}.attentions.{j}")
        if i < n_blocks - 1:
            key = f"down_blocks.{i}.downsamplers.0.conv"
            if symmetric_pad:
                x = conv(x, key, stride=2, padding=1)
            else:
                x = conv(F.pad(x, (0, 1, 0, 1)), key, stride=2, padding=0)
    x = resnet(x, "mid_block.resnets.0")
    x = attention(x, "mid_block.attentions.0")
    x = resnet(x, "mid_block.resnets.1")
    x = conv(F.silu(gn(x, "conv_norm_out")), "conv_out", padding=1)
    mean, logvar = x.chunk(2, dim=1)
    return torch.cat([mean, logvar.clamp(*cfg.logvar_clamp)], dim=1)


# ------------------------------------------------------------------------------------------ structure
def test_state_dict_matches_official_keys_order_and_shapes() -> None:
    ref = _reference_keys()
    assert len(ref) == 164
    with torch.device("meta"):
        model = NoisePredictor()
    sd = model.state_dict()
    assert list(sd) == [k for k, _ in ref]
    for key, shape in ref:
        assert tuple(sd[key].shape) == shape, key
    assert sum(p.numel() for p in model.parameters()) == RELEASED_PARAMS
    assert sum(math.prod(s) for _, s in ref) == RELEASED_PARAMS
    assert len(list(model.buffers())) == 0  # nothing but the checkpoint's tensors


def test_released_param_count_without_reference_file() -> None:
    with torch.device("meta"):
        model = NoisePredictor(NoisePredictorConfig())
    assert sum(p.numel() for p in model.parameters()) == RELEASED_PARAMS
    assert all(k.startswith("encoder.") for k in model.state_dict())


def test_config_defaults_dict_roundtrip_and_validation() -> None:
    cfg = NoisePredictorConfig()
    assert (cfg.block_channels, cfg.layers_per_block, cfg.head_dim, cfg.norm_groups) == ((256, 512), 3, 64, 32)
    assert (cfg.norm_eps, cfg.time_proj_dim, cfg.time_embed_dim, cfg.logvar_clamp) == (1e-6, 256, 512, (-30.0, 20.0))
    assert cfg.heads(256) == 4 and cfg.heads(512) == 8 and cfg.downscale == 2
    for c in (cfg, NoisePredictorConfig.tiny(), _multihead_config()):
        d = json.loads(json.dumps(c.to_dict()))
        assert NoisePredictorConfig.from_dict(d) == c
    assert NoisePredictorConfig.from_dict({**cfg.to_dict(), "future_field": 1}) == cfg
    with pytest.raises(ValueError):
        NoisePredictorConfig(block_channels=(30, 64))  # not divisible by 32 groups
    with pytest.raises(ValueError):
        NoisePredictorConfig(out_channels=7)
    with pytest.raises(ValueError):
        NoisePredictorConfig(logvar_clamp=(5.0, -5.0))


def test_config_inferred_from_shapes() -> None:
    with torch.device("meta"):
        full = NoisePredictor().state_dict()
        custom_cfg = NoisePredictorConfig(
            in_channels=4, out_channels=6, block_channels=(32, 64, 96), layers_per_block=2, time_proj_dim=16, time_embed_dim=40
        )
        custom = NoisePredictor(custom_cfg).state_dict()
    assert NoisePredictorConfig.from_state_dict_shapes(full) == NoisePredictorConfig()
    assert NoisePredictorConfig.from_state_dict_shapes(custom) == custom_cfg
    # wrapper prefixes and a missing "encoder." prefix do not matter
    stripped = {"module." + k[len("encoder.") :]: v for k, v in custom.items()}
    assert NoisePredictorConfig.from_state_dict_shapes(stripped) == custom_cfg
    assert NoisePredictorConfig.from_state_dict_shapes(NoisePredictor(NoisePredictorConfig.tiny()).state_dict()) == NoisePredictorConfig.tiny()


# ------------------------------------------------------------------------------------------ forward
def test_output_shape_odd_half_sizes_and_logvar_clamp() -> None:
    model = _tiny()
    lr = torch.rand(2, 3, 18, 30)
    with torch.no_grad():
        out = model(lr, 199)
    assert out.shape == (2, 8, 9, 15) and out.dtype == torch.float32
    # Force the log-variance far out of range in both directions; the mean must stay unclamped.
    with torch.no_grad():
        model.encoder.conv_out.bias[:4] = 1000.0
        model.encoder.conv_out.bias[4:6] = 1000.0
        model.encoder.conv_out.bias[6:] = -1000.0
        out = model(lr, 199)
    assert (out[:, :4] > 100).all()
    assert torch.equal(out[:, 4:6], torch.full_like(out[:, 4:6], 20.0))
    assert torch.equal(out[:, 6:], torch.full_like(out[:, 6:], -30.0))
    with pytest.raises(ValueError):
        model(torch.rand(1, 3, 17, 30), 199)
    with pytest.raises(ValueError):
        model(torch.rand(1, 4, 18, 30), 199)


@pytest.mark.parametrize("cfg_name", ["tiny", "multihead"])
def test_forward_matches_independent_functional_reference(cfg_name: str) -> None:
    cfg = NoisePredictorConfig.tiny() if cfg_name == "tiny" else _multihead_config()
    torch.manual_seed(1)
    model = _randomize(NoisePredictor(cfg), seed=3).double().eval()
    sd = model.state_dict()
    lr = torch.rand(2, 3, 10, 14, dtype=torch.float64)
    t = torch.tensor([199, 49])
    with torch.no_grad():
        got = model(lr, t)
        want = _reference_forward(sd, cfg, lr, t)
        wrong_pad = _reference_forward(sd, cfg, lr, t, symmetric_pad=True)
    assert got.shape == want.shape == (2, 8, 5, 7)
    # Not bit-exact only because the model's sinusoid is fp32 by design (the reference's is fp64);
    # any wiring error (order, padding, shortcut, heads, clamp) is orders of magnitude larger.
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # the reference is sensitive to the padding convention, so the match above pins it
    assert (got - wrong_pad).abs().max() > 1e-3


def test_downsampler_uses_asymmetric_right_bottom_padding() -> None:
    model = _tiny()
    down = model.encoder.down_blocks[0].downsamplers[0]
    assert model.encoder.down_blocks[1].downsamplers is None  # released design: no second downsample
    conv = down.conv
    assert conv.stride == (2, 2) and conv.padding == (0, 0) and conv.kernel_size == (3, 3)
    x = torch.randn(2, 32, 12, 18)
    with torch.no_grad():
        got = down(x)
        manual = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, conv.bias, stride=2, padding=0)
        symmetric = F.conv2d(x, conv.weight, conv.bias, stride=2, padding=1)
    assert got.shape == symmetric.shape == (2, 32, 6, 9)  # same shape: only the values betray the padding
    torch.testing.assert_close(got, manual, rtol=0, atol=0)
    assert (got - symmetric).abs().max() > 1e-2
    # Location check with an impulse: output (0, 0) sees input rows/cols 0..2, so an impulse at (2, 2) reaches
    # it with the kernel's bottom-right tap; under symmetric padding it would not reach (0, 0) at all.
    imp = torch.zeros(1, 32, 8, 8)
    imp[0, :, 2, 2] = 1.0
    with torch.no_grad():
        resp = down(imp) - conv.bias[None, :, None, None]
    torch.testing.assert_close(resp[0, :, 0, 0], conv.weight[:, :, 2, 2].sum(dim=1), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ timestep
def test_sinusoid_is_cos_first_and_matches_hand_computation() -> None:
    model = _tiny()
    dim = model.config.time_proj_dim
    for t in (199.0, 0.0, 49.0):
        got = model.encoder.time_proj(torch.tensor([t]))[0].double()
        want = torch.tensor(_sinusoid_by_hand(t, dim), dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    # t = 0: cos half is all ones, sin half all zeros (fails if the halves were swapped)
    zero = model.encoder.time_proj(torch.tensor([0.0]))[0]
    assert torch.equal(zero[: dim // 2], torch.ones(dim // 2)) and torch.equal(zero[dim // 2 :], torch.zeros(dim // 2))
    # released size too
    with torch.device("meta"):
        full = NoisePredictor()
    assert full.encoder.time_proj.num_channels == 256
    big = type(model.encoder.time_proj)(256, flip_sin_to_cos=full.encoder.time_proj.flip_sin_to_cos,
                                        downscale_freq_shift=full.encoder.time_proj.downscale_freq_shift)
    torch.testing.assert_close(big(torch.tensor([199.0]))[0].double(), torch.tensor(_sinusoid_by_hand(199.0, 256), dtype=torch.float64), rtol=0, atol=1e-4)


def test_timestep_off_by_one_is_visible_and_forms_agree() -> None:
    model = _tiny()
    with torch.no_grad():
        e199 = model.embed_timestep(199, 1)
        e200 = model.embed_timestep(200, 1)
        assert (e199 - e200).abs().max() > 1e-3
        lr = torch.rand(3, 3, 8, 12)
        ref = model(lr, 199)
        assert (ref - model(lr, 200)).abs().max() > 1e-4
        for t in (torch.tensor(199), torch.tensor([199]), torch.tensor([199, 199, 199]), torch.tensor(199.0), 199):
            torch.testing.assert_close(model(lr, t), ref, rtol=0, atol=0)
        # per-sample timesteps are applied per sample
        mixed = model(lr, torch.tensor([199, 200, 199]))
        torch.testing.assert_close(mixed[1], model(lr[1:2], 200)[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mixed[0], ref[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        model(lr, torch.tensor([199, 200]))


def test_timestep_stays_float32_in_half_model() -> None:
    model = _tiny().half()
    seen: list[torch.dtype] = []
    model.encoder.time_proj.register_forward_hook(lambda m, inp, out: seen.extend([inp[0].dtype, out.dtype]))
    with torch.no_grad():
        out = model(torch.rand(1, 3, 8, 8, dtype=torch.float16), torch.tensor(2049, dtype=torch.int64))
    assert seen == [torch.float32, torch.float32]
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_classic_attention_processor_gives_same_result() -> None:
    from diffusers.models.attention_processor import AttnProcessor

    model = _tiny()
    lr = torch.rand(1, 3, 8, 10)
    with torch.no_grad():
        a = model(lr, 99)
        model.set_attention_processor(AttnProcessor())
        b = model(lr, 99)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------ sampling
def test_sample_from_moments_arithmetic() -> None:
    mean = torch.tensor([1.5, -2.0, 0.0, 3.0]).reshape(1, 4, 1, 1)
    logvar = torch.tensor([math.log(4.0), 0.0, -30.0, 20.0]).reshape(1, 4, 1, 1)
    noise = torch.tensor([0.5, -1.0, 2.0, 1e-4]).reshape(1, 4, 1, 1)
    got = sample_from_moments(torch.cat([mean, logvar], dim=1), noise)
    want = torch.tensor([1.5 + 2.0 * 0.5, -2.0 - 1.0, 2.0 * math.exp(-15.0), 3.0 + math.exp(10.0) * 1e-4]).reshape(1, 4, 1, 1)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-12)
    m = torch.randn(2, 8, 3, 5)
    n = torch.randn(2, 4, 3, 5)
    torch.testing.assert_close(sample_from_moments(m, n), m[:, :4] + torch.exp(0.5 * m[:, 4:]) * n)
    # zero noise returns the mean exactly: no hidden RNG
    torch.testing.assert_close(sample_from_moments(m, torch.zeros_like(n)), m[:, :4], rtol=0, atol=0)
    with pytest.raises(ValueError):
        sample_from_moments(m, torch.randn(2, 8, 3, 5))


# ------------------------------------------------------------------------------------------ checkpoints
def _outputs(model: NoisePredictor) -> torch.Tensor:
    torch.manual_seed(123)
    lr = torch.rand(1, 3, 8, 10)
    with torch.no_grad():
        return model(lr, 149)


def test_checkpoint_roundtrip_writes_official_format(tmp_path: Path) -> None:
    model = _tiny()
    path = model.save_checkpoint(tmp_path / "sub" / "np.pth")
    assert path == tmp_path / "sub" / "np.pth"
    assert sorted(p.name for p in path.parent.iterdir()) == ["np.json", "np.pth"]  # no temp files left
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(raw, dict) and "state_dict" not in raw
    assert list(raw) == list(model.state_dict())
    assert all(k.startswith("encoder.") and v.dtype == torch.float32 for k, v in raw.items())
    meta = json.loads((tmp_path / "sub" / "np.json").read_text())
    assert NoisePredictorConfig.from_dict(meta["noise_predictor_config"]) == model.config

    loaded = NoisePredictor.from_checkpoint(path)
    assert loaded.config == model.config and not loaded.training
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    torch.testing.assert_close(_outputs(loaded), _outputs(model), rtol=0, atol=0)


def test_json_config_is_used_when_shapes_cannot_tell(tmp_path: Path) -> None:
    cfg = _multihead_config()  # head_dim=16, norm_groups=8: not inferable from shapes
    torch.manual_seed(0)
    model = _randomize(NoisePredictor(cfg)).eval()
    path = model.save_checkpoint(tmp_path / "mh.pth")
    loaded = NoisePredictor.from_checkpoint(path)
    assert loaded.config == cfg
    torch.testing.assert_close(_outputs(loaded), _outputs(model), rtol=0, atol=0)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module."])
@pytest.mark.parametrize("wrapped", [False, True])
@pytest.mark.parametrize("with_json", [False, True])
def test_checkpoint_prefixes_and_wrapper(tmp_path: Path, prefix: str, wrapped: bool, with_json: bool) -> None:
    model = _tiny()
    path = tmp_path / "np.pth"
    if with_json:
        model.save_checkpoint(path)
    sd = OrderedDict((prefix + k, v) for k, v in model.state_dict().items())
    torch.save({"state_dict": sd, "step": 5} if wrapped else sd, path)
    assert (tmp_path / "np.json").exists() == with_json
    loaded = NoisePredictor.from_checkpoint(path)
    assert loaded.config == NoisePredictorConfig.tiny()
    torch.testing.assert_close(_outputs(loaded), _outputs(model), rtol=0, atol=0)


def test_tiny_checkpoint_without_json_loads_via_shape_inference(tmp_path: Path) -> None:
    model = _tiny()
    path = model.save_checkpoint(tmp_path / "np.pth")
    (tmp_path / "np.json").unlink()
    loaded = NoisePredictor.from_checkpoint(str(path))
    assert loaded.config == NoisePredictorConfig.tiny()
    torch.testing.assert_close(_outputs(loaded), _outputs(model), rtol=0, atol=0)


def test_half_precision_checkpoint_loads_as_float32(tmp_path: Path) -> None:
    model = _tiny()
    path = tmp_path / "np.pth"
    torch.save({k: v.half() for k, v in model.state_dict().items()}, path)
    loaded = NoisePredictor.from_checkpoint(path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())


def _assert_one_line(err: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)


def test_checkpoint_missing_key(tmp_path: Path) -> None:
    model = _tiny()
    path = model.save_checkpoint(tmp_path / "np.pth")
    sd = model.state_dict()
    del sd["encoder.down_blocks.1.attentions.0.to_k.bias"]
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as err:
        NoisePredictor.from_checkpoint(path)
    _assert_one_line(err, str(path), "missing", "encoder.down_blocks.1.attentions.0.to_k.bias", "(64,)")
    assert isinstance(err.value, ValueError)


def test_checkpoint_wrong_shape_and_unexpected_key(tmp_path: Path) -> None:
    model = _tiny()
    path = model.save_checkpoint(tmp_path / "np.pth")
    sd = model.state_dict()
    sd["encoder.mid_block.attentions.0.to_q.weight"] = torch.zeros(64, 32)
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as err:
        NoisePredictor.from_checkpoint(path)
    _assert_one_line(err, str(path), "encoder.mid_block.attentions.0.to_q.weight", "expected (64, 64)", "found (64, 32)")

    sd = model.state_dict()
    sd["encoder.extra.weight"] = torch.zeros(3)
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as err:
        NoisePredictor.from_checkpoint(path)
    _assert_one_line(err, str(path), "unexpected", "encoder.extra.weight")


def test_full_size_config_rejected_against_tiny_weights(tmp_path: Path) -> None:
    """A JSON saying 'released config' next to tiny weights: the first key in order is reported."""
    model = _tiny()
    path = model.save_checkpoint(tmp_path / "np.pth")
    (tmp_path / "np.json").write_text(json.dumps({"noise_predictor_config": NoisePredictorConfig().to_dict()}))
    with pytest.raises(CheckpointError) as err:
        NoisePredictor.from_checkpoint(path)
    _assert_one_line(err, "encoder.time_embedding.linear_1.weight", "expected (512, 256)", "found (64, 32)")


@pytest.mark.parametrize("content", ["empty", "garbage", "truncated", "text"])
def test_corrupt_files_are_not_checkpoints(tmp_path: Path, content: str) -> None:
    path = tmp_path / "np.pth"
    if content == "empty":
        path.write_bytes(b"")
    elif content == "garbage":
        path.write_bytes(bytes(range(256)) * 8)
    elif content == "text":
        path.write_text("this is not a checkpoint\n")
    else:
        _tiny().save_checkpoint(path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        NoisePredictor.from_checkpoint(path)
    _assert_one_line(err, str(path), "not a PyTorch checkpoint")


def test_other_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        NoisePredictor.from_checkpoint(tmp_path / "absent.pth")
    _assert_one_line(err, "absent.pth")
    path = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError) as err:
        NoisePredictor.from_checkpoint(path)
    _assert_one_line(err, str(path))
    # a broken JSON beside a good checkpoint
    good = _tiny().save_checkpoint(tmp_path / "good.pth")
    (tmp_path / "good.json").write_text("{not json")
    with pytest.raises(CheckpointError) as err:
        NoisePredictor.from_checkpoint(good)
    _assert_one_line(err, "good.json")


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _tiny()
    path = model.save_checkpoint(tmp_path / "np.pth")
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        _tiny(seed=1).save_checkpoint(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["np.json", "np.pth"]

"""The ONNX Runtime graph rewrites: same numbers as the PyTorch layers they replace, fewer ops or MACs,
and the reference modules are left exactly as they were."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from diffusers.models.upsampling import Upsample2D

from invsr_export import graph_rewrites
from invsr_export.fused_attention import FusedAttentionProcessor, fused_attention
from invsr_export.onnx_export import export_module
from invsr_export.phase_upsample import PhaseSplitUpsample, phase_kernels, phase_split_upsamplers, splittable


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-12)


# ---------------------------------------------------------------- phase-split upsample
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("size", [(5, 7), (8, 8), (1, 1)])
def test_phase_split_equals_nearest_upsample_then_conv(one_thread, bias, size):
    torch.manual_seed(0)
    up = Upsample2D(6, use_conv=True, out_channels=5).eval()
    if not bias:
        up.conv.bias = None
    x = torch.randn(2, 6, *size)
    with torch.no_grad():
        want, got = up(x), PhaseSplitUpsample(up.conv)(x)
    assert got.shape == want.shape == (2, 5, 2 * size[0], 2 * size[1])
    assert _rel_err(got, want) < 1e-6


def test_phase_kernels_sum_the_taps_each_phase_reads():
    w = torch.arange(9.0).reshape(1, 1, 3, 3)  # rows [0 1 2] [3 4 5] [6 7 8]
    k = phase_kernels(w)[:, 0, 0]
    # phase (0, 0): rows (r0, r1+r2), columns (c0, c1+c2)
    assert k[0].tolist() == [[0.0, 1 + 2], [3 + 6, (4 + 5) + (7 + 8)]]
    # phase (1, 1): rows (r0+r1, r2), columns (c0+c1, c2)
    assert k[3].tolist() == [[0 + 1 + 3 + 4, 2 + 5], [6 + 7, 8.0]]
    assert k.sum(dim=(-1, -2)).tolist() == [w.sum().item()] * 4  # every phase sees every tap once


def test_only_plain_nearest_3x3_upsamplers_are_split():
    assert splittable(Upsample2D(4, use_conv=True))
    assert splittable(Upsample2D(4, use_conv=True, name="Conv2d_0"))
    assert not splittable(Upsample2D(4, use_conv=False))
    assert not splittable(Upsample2D(4, use_conv_transpose=True))
    assert not splittable(Upsample2D(4, use_conv=True, kernel_size=5, padding=2))
    assert not splittable(Upsample2D(4, use_conv=True, norm_type="ln_norm", eps=1e-5, elementwise_affine=True))
    assert not splittable(Upsample2D(4, use_conv=True, interpolate=False))
    with pytest.raises(ValueError, match="only doubles"):
        PhaseSplitUpsample(Upsample2D(4, use_conv=True).conv)(torch.zeros(1, 4, 3, 3), output_size=(7, 7))


def test_decoder_is_unchanged_outside_the_context(one_thread, tiny_base):
    decoder = tiny_base.vae.decoder
    originals = [m for m in decoder.modules() if isinstance(m, Upsample2D)]
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = decoder(z)
        with phase_split_upsamplers(decoder) as swapped:
            assert swapped == len(originals) > 0
            assert not any(isinstance(m, Upsample2D) for m in decoder.modules())
            got = decoder(z)
    assert _rel_err(got, want) < 1e-5
    assert [m for m in decoder.modules() if isinstance(m, Upsample2D)] == originals


def test_layers_are_restored_after_an_error(tiny_base):
    decoder = tiny_base.vae.decoder
    before = list(decoder.modules())
    with pytest.raises(RuntimeError, match="boom"), phase_split_upsamplers(decoder):
        raise RuntimeError("boom")
    assert list(decoder.modules()) == before


# ---------------------------------------------------------------- fused attention
def _attention(channels: int = 32, heads: int = 2, cross_dim: int | None = None, groups: int | None = 8):
    torch.manual_seed(2)
    return Attention(query_dim=channels, heads=heads, dim_head=channels // heads, cross_attention_dim=cross_dim,
                     norm_num_groups=groups, residual_connection=groups is not None, bias=True,
                     rescale_output_factor=2.0 if groups else 1.0).eval()


@pytest.mark.parametrize("processor", [AttnProcessor2_0(), AttnProcessor()])
def test_fused_processor_equals_the_stock_ones(one_thread, processor):
    image_attn = _attention()  # VAE / predictor style: GroupNorm, image input, residual, rescale
    cross_attn = _attention(cross_dim=12, groups=None)  # UNet cross-attention on token input
    x, tokens, context = torch.randn(2, 32, 5, 6), torch.randn(2, 7, 32), torch.randn(2, 9, 12)
    with torch.no_grad():
        for attn, args in ((image_attn, (x,)), (cross_attn, (tokens, context))):
            attn.set_processor(processor)
            want = attn(*args)
            attn.set_processor(FusedAttentionProcessor(processor))
            assert _rel_err(attn(*args), want) < 1e-5


def test_masked_attention_goes_to_the_replaced_processor():
    calls = []

    def fallback(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        calls.append(attention_mask)
        return hidden_states

    attn = _attention(groups=None)
    attn.set_processor(FusedAttentionProcessor(fallback))
    mask = torch.ones(1, 4)
    attn(torch.randn(1, 4, 32), attention_mask=mask)
    assert len(calls) == 1 and calls[0] is mask


def test_only_stock_processors_are_swapped_and_all_are_restored(tiny_base):
    unet = tiny_base.unet
    layers = [m for m in unet.modules() if isinstance(m, Attention)]
    custom = object()
    original = layers[0].processor
    layers[0].processor = custom  # a user's own processor is left alone
    try:
        before = [m.processor for m in layers]
        with fused_attention(unet) as swapped:
            assert swapped == len(layers) - 1
            assert layers[0].processor is custom
            assert all(isinstance(m.processor, FusedAttentionProcessor) for m in layers[1:])
        assert [m.processor for m in layers] == before
    finally:
        layers[0].processor = original


@pytest.mark.parametrize("cross", [False, True])
def test_attention_exports_as_one_onnxruntime_node(one_thread, tmp_path, cross):
    import onnxruntime as ort

    attn = _attention(cross_dim=12, groups=None) if cross else _attention()

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = attn

        def forward(self, x, context):
            return self.attn(x, context if cross else None)

    x = torch.randn(1, 7, 32) if cross else torch.randn(1, 32, 4, 5)
    context = torch.randn(1, 9, 12)
    with fused_attention(attn) as swapped:
        assert swapped == 1
        path = export_module(Block(), (x, context), ["x", "context"], ["y"], tmp_path / "a.onnx")
    model = onnx.load(str(path))
    ops = [(n.domain, n.op_type) for n in model.graph.node]
    assert ops.count(("com.microsoft", "MultiHeadAttention")) == 1
    assert not any(op == "Softmax" for _, op in ops)  # no score tensor is built outside the fused node
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: {"x": x, "context": context}[i.name].numpy() for i in sess.get_inputs()}
    with torch.no_grad():
        want = Block()(x, context).numpy()
    np.testing.assert_allclose(sess.run(None, feeds)[0], want, rtol=0, atol=2e-5 * np.abs(want).max())


# ---------------------------------------------------------------- per backend
def test_rewrites_per_backend_and_unknown_names():
    assert graph_rewrites.rewrites_for("onnxruntime") == ("fused_attention", "phase_split_upsample")
    assert graph_rewrites.rewrites_for("tensorrt") == ()  # TensorRT cannot parse com.microsoft ops
    with pytest.raises(ValueError, match="unknown graph rewrite"), graph_rewrites.applied(torch.nn.Identity(), ["x"]):
        pass

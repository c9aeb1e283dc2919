"""Attention exported as one ONNX Runtime ``MultiHeadAttention`` node (com.microsoft) instead of
MatMul -> Softmax -> MatMul.

Why: the noise predictor attends over every pixel of the LR tile (16,384 tokens for a 128 tile). Spelled
out in standard ops, ONNX Runtime materialises a [heads, 16384, 16384] fp32 score tensor (4.3 GB per
layer) and spends most of the predictor's time streaming it through memory. Its CPU
``MultiHeadAttention`` kernel runs a blocked (flash) attention that never builds the score matrix: on the
development machine one predictor layer went from 2.0 s to 1.7 s, and the ONNX Runtime benchmark worker's
peak memory from 17.3 to 8.7 GiB.

Only for graphs run by ONNX Runtime: TensorRT's parser does not know com.microsoft ops (it fuses the
standard pattern itself). While exporting, :func:`fused_attention` swaps the processor of every diffusers
``Attention`` that uses a stock processor and puts the originals back afterwards, so the PyTorch reference
the graphs are validated against is never changed.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from torch import Tensor, nn

#: Processors whose computation :class:`FusedAttentionProcessor` reproduces exactly.
_STOCK_PROCESSORS = (AttnProcessor, AttnProcessor2_0)


class _MultiHeadAttention(torch.autograd.Function):
    """softmax(q k^T * scale) v over ``heads`` heads; [B, Sq, C] x [B, Skv, C] x [B, Skv, Cv] -> [B, Sq, Cv].

    Runs as SDPA in PyTorch; exports as a single com.microsoft ``MultiHeadAttention`` node.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, heads: int, scale: float,
                shape: tuple[int, ...]) -> Tensor:  # noqa: D102
        split = lambda x: x.unflatten(-1, (heads, -1)).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(split(q), split(k), split(v), scale=scale)
        return out.transpose(1, 2).flatten(2)

    @staticmethod
    def symbolic(g, q, k, v, heads: int, scale: float, shape: tuple[int, ...]):  # noqa: D102
        out = g.op("com.microsoft::MultiHeadAttention", q, k, v, num_heads_i=heads, scale_f=scale)
        # ONNX shape inference does not know the op: state the (static) shape, that of the query
        out.setType(q.type().with_sizes(list(shape)))
        return out


class FusedAttentionProcessor:
    """diffusers attention processor equal to the stock ones, whose core exports as one fused node.

    Supports what the InvSR graphs use: self- and cross-attention, GroupNorm before the projections,
    4-D (image) inputs, residual and output rescale. Anything else (masks, spatial norm, q/k norms,
    cross norms) goes to the processor it replaced.
    """

    def __init__(self, fallback) -> None:
        self.fallback = fallback

    def __call__(self, attn: Attention, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, **kwargs) -> Tensor:
        if (attention_mask is not None or attn.spatial_norm is not None or attn.norm_q is not None
                or attn.norm_k is not None or (encoder_hidden_states is not None and attn.norm_cross)):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        residual = hidden_states
        image_shape = hidden_states.shape if hidden_states.ndim == 4 else None
        if image_shape is not None:
            hidden_states = hidden_states.flatten(2).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        out = _MultiHeadAttention.apply(query, key, value, attn.heads, self._scale(attn, key.shape[-1]),
                                        tuple(query.shape[:-1]) + (value.shape[-1],))
        out = attn.to_out[1](attn.to_out[0](out.to(query.dtype)))
        if image_shape is not None:
            out = out.transpose(1, 2).reshape(image_shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor

    def _scale(self, attn: Attention, inner_dim: int) -> float:
        """The score scale of the replaced processor: SDPA's 1/sqrt(head_dim), or AttnProcessor's attn.scale."""
        if isinstance(self.fallback, AttnProcessor):
            return float(attn.scale)
        return 1.0 / math.sqrt(inner_dim // attn.heads)


@contextlib.contextmanager
def fused_attention(module: nn.Module) -> Iterator[int]:
    """Within the block, every stock-processor ``Attention`` in `module` uses :class:`FusedAttentionProcessor`.

    Yields how many layers were swapped; restores the original processors on exit (also on errors).
    """
    swapped: list[tuple[Attention, object]] = []
    try:
        for layer in module.modules():
            if isinstance(layer, Attention) and isinstance(layer.processor, _STOCK_PROCESSORS):
                swapped.append((layer, layer.processor))
                layer.processor = FusedAttentionProcessor(layer.processor)
        yield len(swapped)
    finally:
        for layer, original in swapped:
            layer.processor = original

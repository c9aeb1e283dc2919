"""Nearest 2x upsample + 3x3 conv, exported as four 2x2 convs on the small input + a pixel shuffle.

After a nearest 2x upsample every 2x2 block of the input to the 3x3 conv repeats one pixel, so each of
the four output phases (even/odd row x even/odd column) is a 2x2 conv of the *un-upsampled* input whose
taps are sums of the 3x3 taps (row phase 0 reads rows i-1, i with weights w0, w1+w2; row phase 1 reads
rows i, i+1 with w0+w1, w2; the same for columns). Same result up to fp32 rounding, with 16 instead of
36 multiply-adds per input pixel and channel pair. SD-Turbo's VAE decoder spends 348 of its 1,257 GMAC
per 128 tile in such convs (and the UNet 34 of 402): on the development CPU a 256-channel 256 -> 512
upsample conv went from 1.55 s to 0.93 s under ONNX Runtime.

:func:`phase_split_upsamplers` swaps diffusers' ``Upsample2D`` layers for :class:`PhaseSplitUpsample`
while exporting and puts them back afterwards, so the PyTorch reference is never changed.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from diffusers.models.upsampling import Upsample2D
from torch import Tensor, nn

#: (left, right, top, bottom) zero padding of each phase (row p, column q), in pixel-shuffle order.
_PHASE_PADS = ((1, 0, 1, 0), (0, 1, 1, 0), (1, 0, 0, 1), (0, 1, 0, 1))


def _fold_last_axis(w: Tensor, phase: int) -> Tensor:
    """3 taps along the last axis -> the 2 taps that phase `phase` applies to the un-upsampled input."""
    if phase == 0:
        return torch.stack([w[..., 0], w[..., 1] + w[..., 2]], dim=-1)
    return torch.stack([w[..., 0] + w[..., 1], w[..., 2]], dim=-1)


def phase_kernels(weight: Tensor) -> Tensor:
    """[Co, Ci, 3, 3] conv weight -> [4, Co, Ci, 2, 2]: the 2x2 kernel of each output phase (p, q)."""
    kernels = []
    for p in (0, 1):
        rows = _fold_last_axis(weight.transpose(-1, -2), p).transpose(-1, -2)
        kernels.extend(_fold_last_axis(rows, q) for q in (0, 1))
    return torch.stack(kernels)


class PhaseSplitUpsample(nn.Module):
    """Drop-in for an ``Upsample2D`` (nearest 2x, 3x3 conv, padding 1): same output, 2.25x fewer MACs."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        with torch.no_grad():
            self.register_buffer("kernels", phase_kernels(conv.weight.detach()), persistent=False)
            bias = conv.bias.detach().clone() if conv.bias is not None else None
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: Tensor, output_size: tuple[int, int] | None = None, *args, **kwargs) -> Tensor:
        if output_size is not None and tuple(output_size) != (2 * x.shape[-2], 2 * x.shape[-1]):
            raise ValueError(f"PhaseSplitUpsample only doubles the size, asked for {tuple(output_size)}")
        phases = [F.conv2d(F.pad(x, pad), k, self.bias) for pad, k in zip(_PHASE_PADS, self.kernels)]
        return F.pixel_shuffle(torch.stack(phases, dim=2).flatten(1, 2), 2)


def _conv_of(layer: Upsample2D) -> nn.Module | None:
    """The conv of an ``Upsample2D`` (diffusers names it ``conv`` or, in old checkpoints, ``Conv2d_0``)."""
    return getattr(layer, "conv" if layer.name == "conv" else "Conv2d_0", None)


def splittable(layer: nn.Module) -> bool:
    """True for an ``Upsample2D`` that is exactly nearest 2x + a plain 3x3, padding-1 conv."""
    if not isinstance(layer, Upsample2D) or not layer.use_conv or layer.use_conv_transpose:
        return False
    conv = _conv_of(layer)
    return (layer.interpolate and layer.norm is None and isinstance(conv, nn.Conv2d)
            and conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros")


@contextlib.contextmanager
def phase_split_upsamplers(module: nn.Module) -> Iterator[int]:
    """Within the block, every splittable ``Upsample2D`` in `module` is a :class:`PhaseSplitUpsample`.

    Yields how many layers were swapped; puts the originals back on exit (also on errors).
    """
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for name, layer in list(module.named_modules()):
            if splittable(layer):
                parent_name, _, child = name.rpartition(".")
                parent = module.get_submodule(parent_name)
                conv = _conv_of(layer)
                swapped.append((parent, child, layer))
                setattr(parent, child, PhaseSplitUpsample(conv).to(conv.weight.device))
        yield len(swapped)
    finally:
        for parent, child, layer in reversed(swapped):
            setattr(parent, child, layer)

"""The degradation's image operations on batches: per-image blur kernels, resampling, Gaussian / Poisson noise.

Each takes N x C x H x W float images in [0, 1] on any device; noise fields are drawn from the given
generator (on its own device) and moved to the image's device.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from invsr_train.kernels import pad_kernel

from .config import RESIZE_MODES
from .sampling import NoiseParams

def _pad(x: Tensor, p: int) -> Tensor:
    """Reflect-pad by p on all sides; replicate when the image is too small to reflect."""
    if p == 0:
        return x
    mode = "reflect" if p < x.shape[-2] and p < x.shape[-1] else "replicate"
    return F.pad(x, (p, p, p, p), mode=mode)


def blur(x: Tensor, kernels: Sequence[Tensor]) -> Tensor:
    """Filter each image of x (N x C x H x W) with its own 2-D kernel, in one grouped conv2d.

    Kernels (odd, square, any mix of sizes) are zero-padded to the largest; every channel of image i uses
    kernel i. Borders are reflect-padded, so the output has the input's size.
    """
    n, c, h, w = x.shape
    if len(kernels) != n:
        raise ValueError(f"{len(kernels)} kernels for {n} images")
    size = max(int(k.shape[-1]) for k in kernels)
    weight = torch.stack([pad_kernel(k.to(torch.float64), size) for k in kernels])  # n x K x K
    weight = weight.to(device=x.device, dtype=x.dtype)
    weight = weight[:, None].expand(n, c, size, size).reshape(n * c, 1, size, size)
    out = F.conv2d(_pad(x, size // 2).reshape(1, n * c, h + size - 1, w + size - 1), weight, groups=n * c)
    return out.reshape(n, c, h, w)


def resize(x: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """Resample x to ``size`` with ``mode`` (area/bilinear/bicubic, no antialias), clamped to [0, 1]."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}")
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    kwargs = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(x, size=size, mode=mode, **kwargs).clamp_(0.0, 1.0)


def _luma(x: Tensor) -> Tensor:
    """BT.601 luma of an N x 3 x H x W image, N x 1 x H x W."""
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def add_gaussian_noise(x: Tensor, sigma: float, gray: bool, gen: torch.Generator) -> Tensor:
    """x + N(0, (sigma/255)^2), one field shared by all channels when ``gray``; clamped to [0, 1]."""
    n, c, h, w = x.shape
    noise = torch.randn((n, 1 if gray else c, h, w), generator=gen, device=gen.device, dtype=torch.float32)
    noise = noise.to(device=x.device, dtype=x.dtype) * (sigma / 255.0)
    return (x + noise).clamp_(0.0, 1.0)


def add_poisson_noise(x: Tensor, scale: float, gray: bool, gen: torch.Generator) -> Tensor:
    """x + scale * (Poisson(255 x)/255 - x): shot noise at 8-bit photon counts; grey uses the luma.

    The noise field (not the image) is scaled, so ``scale`` sets the noise strength; clamped to [0, 1].
    """
    src = _luma(x) if gray else x
    rate = (src.clamp(0.0, 1.0) * 255.0).to(device=gen.device, dtype=torch.float32)
    counts = torch.poisson(rate, generator=gen)
    noise = ((counts - rate) / 255.0).to(device=x.device, dtype=x.dtype)
    return (x + scale * noise).clamp_(0.0, 1.0)


def add_noise(x: Tensor, params: NoiseParams, gen: torch.Generator) -> Tensor:
    """Apply one :class:`NoiseParams` draw to x (whole tensor, one draw of the noise field)."""
    if params.gaussian:
        return add_gaussian_noise(x, params.sigma, params.gray, gen)
    return add_poisson_noise(x, params.poisson_scale, params.gray, gen)

"""Baseline JPEG compression as a torch round trip (encode + decode), batched, on the data's device.

IJG tables scaled by quality, JFIF YCbCr, 4:2:0 chroma by 2x2 averaging, 8x8 orthonormal DCT, rounding
quantisation, triangle ("fancy") chroma upsampling on decode, 8-bit samples throughout; it tracks
Pillow/libjpeg closely (see tests/test_degradations.py). Entropy coding is lossless, so it is skipped.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# Baseline quantisation tables of the JPEG standard (ITU-T T.81 Annex K), natural (row-major) order.
_LUMA_QTABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_CHROMA_QTABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
)


def jpeg_quant_tables(quality: Tensor) -> tuple[Tensor, Tensor]:
    """Luma and chroma tables (N x 8 x 8, float) for integer qualities (N,), IJG scaling, baseline (<= 255)."""
    q = quality.to(torch.int64).clamp(1, 100)
    s = torch.where(q < 50, torch.div(5000, q, rounding_mode="floor"), 200 - 2 * q).view(-1, 1, 1)

    def scaled(base: tuple[tuple[int, ...], ...]) -> Tensor:
        b = torch.tensor(base, dtype=torch.int64, device=q.device)
        return torch.div(b * s + 50, 100, rounding_mode="floor").clamp(1, 255).to(torch.float32)

    return scaled(_LUMA_QTABLE), scaled(_CHROMA_QTABLE)


def _dct_matrix(device: torch.device, dtype: torch.dtype) -> Tensor:
    """Orthonormal 8-point DCT-II matrix D (rows = frequencies): coefficients = D @ block @ D^T."""
    k = torch.arange(8, dtype=torch.float64).view(8, 1)
    n = torch.arange(8, dtype=torch.float64).view(1, 8)
    d = torch.cos((2 * n + 1) * k * math.pi / 16) * math.sqrt(2 / 8)
    d[0] = math.sqrt(1 / 8)
    return d.to(device=device, dtype=dtype)


def _jpeg_plane(plane: Tensor, qtable: Tensor) -> Tensor:
    """Encode+decode 8-bit planes (N x C x H x W, H and W multiples of 8) with per-image tables (N x 8 x 8)."""
    n, c, h, w = plane.shape
    d = _dct_matrix(plane.device, plane.dtype)
    blocks = plane.reshape(n, c, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5) - 128.0
    coef = d @ blocks @ d.T
    q = qtable.to(plane.dtype).view(n, 1, 1, 1, 8, 8)
    coef = torch.round(coef / q) * q
    rec = (d.T @ coef @ d + 128.0).round_().clamp_(0.0, 255.0)
    return rec.permute(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)


def _rgb_to_ycbcr(rgb: Tensor) -> Tensor:
    """JFIF full-range RGB -> YCbCr on the 0-255 scale (N x 3 x H x W)."""
    m = torch.tensor(
        [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
        device=rgb.device,
        dtype=rgb.dtype,
    )
    off = torch.tensor([0.0, 128.0, 128.0], device=rgb.device, dtype=rgb.dtype).view(1, 3, 1, 1)
    return torch.einsum("ij,njhw->nihw", m, rgb) + off


def _ycbcr_to_rgb(ycc: Tensor) -> Tensor:
    """JFIF full-range YCbCr -> RGB on the 0-255 scale (N x 3 x H x W)."""
    y, cb, cr = ycc[:, 0:1], ycc[:, 1:2] - 128.0, ycc[:, 2:3] - 128.0
    r = y + 1.402 * cr
    g = y - 0.344136 * cb - 0.714136 * cr
    b = y + 1.772 * cb
    return torch.cat([r, g, b], dim=1)


def jpeg_compress(x: Tensor, quality: Tensor | Sequence[int] | int) -> Tensor:
    """Baseline JPEG round trip in torch (on x's device) with per-image integer quality in 1..100.

    x is N x 3 x H x W in [0, 1]; returns the decoded image, same shape, 8-bit values / 255. Steps: 8-bit
    RGB -> YCbCr (JFIF), edge-replicate to a multiple of 16, chroma 2x2 average (4:2:0), per-block 8x8
    DCT, quantise by the IJG-scaled standard tables, dequantise, inverse DCT, triangle upsampling of the
    chroma, back to RGB, crop. Entropy coding is lossless and therefore skipped.
    """
    n, c, h, w = x.shape
    if c != 3:
        raise ValueError(f"jpeg_compress expects RGB (3 channels), got {c}")
    q = torch.as_tensor(quality, dtype=torch.int64).reshape(-1)
    if q.numel() == 1:
        q = q.expand(n)
    if q.numel() != n:
        raise ValueError(f"{q.numel()} qualities for {n} images")
    luma_q, chroma_q = jpeg_quant_tables(q.to(x.device))
    work = x.float()
    img = (work.clamp(0.0, 1.0) * 255.0).round()
    img = F.pad(img, (0, (-w) % 16, 0, (-h) % 16), mode="replicate")
    ycc = _rgb_to_ycbcr(img).round_().clamp_(0.0, 255.0)
    y = _jpeg_plane(ycc[:, :1], luma_q)
    chroma = F.avg_pool2d(ycc[:, 1:], 2).round_()
    chroma = _jpeg_plane(chroma, chroma_q)
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False).round_()
    rgb = _ycbcr_to_rgb(torch.cat([y, chroma], dim=1)).round_().clamp_(0.0, 255.0)
    return (rgb[:, :, :h, :w] / 255.0).to(x.dtype)

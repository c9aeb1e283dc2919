"""Optional colour correction of the super-resolved image against the LR image (numpy only).

The reference is the LR image upsampled with antialiased bicubic (from the un-padded LR, so it lines
up with the output). `wavelet` keeps the output's high frequencies and the reference's low frequencies
(5 levels of a dilated 3x3 [1,2,1] blur); `ycbcr` keeps the output's luma and the reference's chroma.
"""
from __future__ import annotations

import numpy as np

from .resize import bicubic_resize

COLOR_FIXES = ("none", "wavelet", "ycbcr")
WAVELET_LEVELS = 5

# BT.601 full range, offsets of 0.5 on Cb/Cr for values in [0, 1].
_RGB_TO_YCBCR = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=np.float64
)
_YCBCR_TO_RGB = np.linalg.inv(_RGB_TO_YCBCR)
_CHROMA_OFFSET = np.array([0.0, 0.5, 0.5])


def color_reference(lr_hwc: np.ndarray, scale: int = 4) -> np.ndarray:
    """The colour reference: the un-padded LR image upsampled x`scale` with antialiased bicubic."""
    h, w = lr_hwc.shape[:2]
    return bicubic_resize(lr_hwc, h * scale, w * scale, antialias=True)


def _blur(img: np.ndarray, dilation: int) -> np.ndarray:
    """3x3 [1,2,1]x[1,2,1]/16 blur with the given dilation and replicate padding, per channel."""
    d = dilation
    padded = np.pad(img, ((d, d), (d, d), (0, 0)), mode="edge")
    h, w = img.shape[:2]
    taps = (1.0, 2.0, 1.0)
    out = np.zeros_like(img)
    for i, wy in enumerate(taps):
        for j, wx in enumerate(taps):
            out += (wy * wx / 16.0) * padded[i * d:i * d + h, j * d:j * d + w]
    return out


def wavelet_decompose(img_hwc: np.ndarray, levels: int = WAVELET_LEVELS) -> tuple[np.ndarray, np.ndarray]:
    """Split an image into (high, low) bands, float64: low_i = blur(low_{i-1}, dilation 2**i).

    high is the sum of the per-level differences low_{i-1} - low_i, so high + low == image.
    """
    low = np.asarray(img_hwc, dtype=np.float64)
    high = np.zeros_like(low)
    for i in range(levels):
        blurred = _blur(low, 2**i)
        high += low - blurred
        low = blurred
    return high, low


def _wavelet_fix(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Output's high frequencies plus the reference's low frequencies."""
    high, _ = wavelet_decompose(out)
    _, low = wavelet_decompose(ref)
    return high + low


def _ycbcr_fix(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Luma of the output with the chroma of the reference (RGB channels; extra channels from out)."""
    y = out[..., :3].astype(np.float64) @ _RGB_TO_YCBCR.T + _CHROMA_OFFSET
    c = ref[..., :3].astype(np.float64) @ _RGB_TO_YCBCR.T + _CHROMA_OFFSET
    mixed = np.concatenate([y[..., :1], c[..., 1:]], axis=-1)
    rgb = (mixed - _CHROMA_OFFSET) @ _YCBCR_TO_RGB.T
    return np.concatenate([rgb, out[..., 3:].astype(np.float64)], axis=-1)


def apply_color_fix(out_hwc: np.ndarray, reference_hwc: np.ndarray, method: str) -> np.ndarray:
    """Correct the colours of `out_hwc` towards `reference_hwc` with `method`; float32, clipped to [0, 1].

    "none" returns the image unchanged. Grayscale (C=1): wavelet works per channel, ycbcr is a no-op.
    """
    if method not in COLOR_FIXES:
        raise ValueError(f"unknown colour fix {method!r}: use one of {', '.join(COLOR_FIXES)}")
    if method == "none" or (method == "ycbcr" and out_hwc.ndim == 3 and out_hwc.shape[2] < 3):
        return out_hwc
    if out_hwc.ndim != 3 or out_hwc.shape != reference_hwc.shape:
        raise ValueError(f"output {out_hwc.shape} and reference {reference_hwc.shape} must be HWC of the same "
                         "shape: build the reference with color_reference(lr, scale)")
    fixed = _wavelet_fix(out_hwc, reference_hwc) if method == "wavelet" else _ycbcr_fix(out_hwc, reference_hwc)
    return np.clip(fixed, 0.0, 1.0).astype(np.float32)

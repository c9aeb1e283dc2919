"""Quality drift of a configuration: its output vs the fp32 PyTorch reference on the same photo tile and noise.

The input is a real photo (scikit-image's astronaut, shipped inside its wheel) reduced x4 by our own
code and cropped to one LR tile; the noise comes from ``invsr_runtime.noise.tile_noise``, so every
backend sees exactly the same inputs. PSNR is infinite for identical outputs (stored as "inf" in JSON).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Sample photo used for drift (its LR version is 128 x 128: exactly one full-size tile).
PHOTO = "astronaut"


def photo_tile(tile: int, name: str = PHOTO) -> np.ndarray:
    """A `tile` x `tile` LR crop (HWC float32 in [0, 1]) from the centre of the photo's x4-reduced version."""
    from invsr_train.samples import sample_lr

    lr = sample_lr(name)
    if lr.shape[0] < tile or lr.shape[1] < tile:
        from invsr_runtime.resize import bicubic_resize

        lr = bicubic_resize(lr, max(tile, lr.shape[0]), max(tile, lr.shape[1]), antialias=False).clip(0, 1)
    top, left = (lr.shape[0] - tile) // 2, (lr.shape[1] - tile) // 2
    return np.ascontiguousarray(lr[top:top + tile, left:left + tile], dtype=np.float32)


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR in dB of `test` against `reference`, both in [0, 1] (inf when identical)."""
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(test, dtype=np.float64)
    if ref.shape != out.shape:
        raise ValueError(f"shape mismatch: {ref.shape} vs {out.shape}")
    mse = float(np.mean((ref - out) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def ssim(reference: np.ndarray, test: np.ndarray) -> float:
    """SSIM (skimage, HWC colour, data range 1) of `test` against `reference`."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(
        np.asarray(reference, dtype=np.float64), np.asarray(test, dtype=np.float64),
        channel_axis=2, data_range=1.0,
    ))


def drift(reference: np.ndarray, test: np.ndarray) -> dict[str, Any]:
    """PSNR (dB, "inf" when identical), SSIM and max absolute difference of HWC images in [0, 1]."""
    value = psnr(reference, test)
    return {
        "psnr_db": "inf" if math.isinf(value) else value,
        "ssim": ssim(reference, test),
        "max_abs_diff": float(np.max(np.abs(np.asarray(reference, np.float64) - np.asarray(test, np.float64)))),
    }


def psnr_value(record: dict[str, Any]) -> float:
    """A drift record's PSNR as a float (inf for "inf")."""
    value = record.get("psnr_db")
    return math.inf if value == "inf" else float(value)

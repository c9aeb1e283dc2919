"""Real photos without downloads: the sample images inside scikit-image's wheel, degraded to LR here."""
from __future__ import annotations

import numpy as np

from invsr_runtime.resize import bicubic_resize

#: Colour photos shipped with scikit-image (no network needed).
SAMPLE_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


def sample_photo(name: str = "astronaut") -> np.ndarray:
    """A scikit-image sample photo as RGB HWC float32 in [0, 1]."""
    import skimage.data

    if name not in SAMPLE_NAMES:
        raise ValueError(f"unknown sample {name!r}: choose one of {', '.join(SAMPLE_NAMES)}")
    img = np.asarray(getattr(skimage.data, name)())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return (img[..., :3].astype(np.float32) / 255.0).clip(0.0, 1.0)


def downscale(hr: np.ndarray, factor: int = 4) -> np.ndarray:
    """Bicubic (antialiased) x1/factor: the simplest LR from an HR photo, for demos and parity tests."""
    h, w = hr.shape[0] // factor, hr.shape[1] // factor
    return bicubic_resize(hr, max(h, 1), max(w, 1), antialias=True).clip(0.0, 1.0)


def sample_lr(name: str = "astronaut", factor: int = 4) -> np.ndarray:
    """The LR version (1/factor size) of a sample photo, RGB HWC float32 in [0, 1]."""
    return downscale(sample_photo(name), factor)

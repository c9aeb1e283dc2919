"""LR tiles from real photos, made by our own degradation: the inputs of calibration and validation.

Photos are scikit-image's sample images (they ship inside its wheel, so nothing is downloaded) or the
images of a user folder (``--calib-images``). Each photo is degraded to LR by invsr_train's
Real-ESRGAN-style second-order degradation (the distribution the predictor was trained on), then
T x T tiles are cut at random positions (reflect-padded when the LR image is smaller than a tile, down
to a 1x1 LR image). Photos smaller than the scale (4 px) on a side have no LR image and are skipped with
a warning.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class PhotoError(ValueError):
    """No usable photo (empty folder, unreadable file); one line naming the folder or file."""


def load_photos(folder: Path | None = None) -> list[tuple[str, np.ndarray]]:
    """(name, RGB HWC float32 [0,1]) for every image of `folder`, or scikit-image's sample photos."""
    if folder is None:
        from invsr_train.samples import SAMPLE_NAMES, sample_photo

        return [(name, sample_photo(name)) for name in SAMPLE_NAMES]
    from invsr_runtime.imageio import ImageReadError, load_rgb

    folder = Path(folder)
    if not folder.is_dir():
        raise PhotoError(f"{folder}: not a folder of calibration images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PhotoError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) to calibrate on")
    try:
        return [(p.name, load_rgb(p)) for p in files]
    except ImageReadError as exc:
        raise PhotoError(str(exc)) from None


def usable_photos(photos: list[tuple[str, np.ndarray]], scale: int = 4) -> list[tuple[str, np.ndarray]]:
    """The photos with at least `scale` pixels on each side (smaller ones have no LR image: skipped with
    a warning); PhotoError when none is left."""
    usable = []
    for name, hr in photos:
        if min(hr.shape[:2]) < scale:
            logger.warning("%s: %dx%d is smaller than %d px on a side: skipped for calibration",
                           name, hr.shape[1], hr.shape[0], scale)
        else:
            usable.append((name, hr))
    if not usable:
        raise PhotoError(f"no calibration photo is at least {scale}x{scale} px")
    return usable


def degrade_photo(hr: np.ndarray, seed: int, scale: int = 4) -> np.ndarray:
    """One HR photo (HWC [0,1]) -> its LR version (HWC, 1/scale size) by invsr_train's degradation."""
    import torch

    from invsr_train.degradations import degrade

    h, w = (hr.shape[0] // scale) * scale, (hr.shape[1] // scale) * scale
    x = torch.from_numpy(np.ascontiguousarray(hr[:h, :w].transpose(2, 0, 1)))[None].float()
    lr = degrade(x, torch.Generator().manual_seed(seed), scale=scale)
    return lr[0].numpy().transpose(1, 2, 0)


def _random_tile(lr: np.ndarray, tile: int, rng: np.random.Generator) -> np.ndarray:
    """A T x T crop (CHW) at a random position; reflect-pads a too-small image first (numpy reflects
    repeatedly, and a 1-pixel side is repeated)."""
    ph, pw = max(0, tile - lr.shape[0]), max(0, tile - lr.shape[1])
    lr = np.pad(lr, ((0, ph), (0, pw), (0, 0)), mode="reflect")
    y = int(rng.integers(0, lr.shape[0] - tile + 1))
    x = int(rng.integers(0, lr.shape[1] - tile + 1))
    return lr[y:y + tile, x:x + tile].transpose(2, 0, 1)


def photo_lr_tiles(tile: int, count: int, folder: Path | None = None, seed: int = 0) -> np.ndarray:
    """`count` LR tiles [count, 3, T, T] float32 in [0,1], cycling over the (degraded) photos."""
    photos = usable_photos(load_photos(folder), scale=4)
    rng = np.random.default_rng(seed)
    lrs = [degrade_photo(hr, seed * 1000 + i) for i, (_, hr) in enumerate(photos)]
    tiles = [_random_tile(lrs[k % len(lrs)], tile, rng) for k in range(count)]
    logger.debug("%d LR tiles of %d px from %d photos", count, tile, len(photos))
    return np.ascontiguousarray(np.stack(tiles), dtype=np.float32)

"""Validation: held-out photos through the reference pipeline with the EMA predictor -> PSNR / SSIM + PNGs.

What: :func:`prepare_val_images` cuts a centre crop of each held-out HR photo and degrades it once,
with a generator seeded per image, so every validation sees the same LR inputs;
:func:`validate` upscales them with :class:`invsr_train.pipeline.ReferencePipeline` (fixed noise seed)
and scores the result against the HR crop: PSNR and SSIM on the Y channel (ITU-R BT.601, the SR
convention of the paper's tables) plus RGB PSNR. The first ``sample_count`` results are saved as
``OUT/samples/step_XXXXXXXX_<name>.png``: LR (nearest x4) | output | HR, side by side.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from invsr_runtime.imageio import ImageReadError, read_picture, save_rgb

from .data import center_crop
from .degradations import DegradationConfig, degrade
from .models.base import BaseModels
from .models.noise_predictor import NoisePredictor
from .pipeline import ReferencePipeline

logger = logging.getLogger(__name__)

__all__ = ["ValImage", "prepare_val_images", "psnr", "ssim_y", "validate"]

SCALE = 4
_Y = np.array([65.481, 128.553, 24.966], dtype=np.float64) / 255.0  # BT.601 luma of RGB in [0, 1]


@dataclass(frozen=True)
class ValImage:
    """One validation pair: HR crop and its degraded LR, HWC float32 in [0, 1]."""

    name: str
    hr: np.ndarray
    lr: np.ndarray


def prepare_val_images(
    paths: Sequence[Path], count: int, crop: int, config: DegradationConfig, seed: int
) -> list[ValImage]:
    """Up to ``count`` readable held-out images, centre-cropped and degraded deterministically."""
    out: list[ValImage] = []
    for i, path in enumerate(paths):
        if len(out) >= count:
            break
        try:
            hr = center_crop(read_picture(path).rgb, crop)
        except (ImageReadError, OSError, ValueError) as e:
            logger.warning("skipping validation image %s (%s)", path, type(e).__name__)
            continue
        gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
        lr = degrade(torch.from_numpy(hr).permute(2, 0, 1)[None], gen, config, scale=SCALE)
        out.append(ValImage(path.stem, hr, lr[0].permute(1, 2, 0).numpy()))
    return out


def _y(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) @ _Y + 16.0 / 255.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two images in [0, 1] (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def ssim_y(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of the BT.601 luma of two RGB images in [0, 1] (Gaussian window, sigma 1.5)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(_y(a), _y(b), data_range=1.0, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))


def _side_by_side(lr: np.ndarray, sr: np.ndarray, hr: np.ndarray) -> np.ndarray:
    """LR (nearest x4) | SR | HR, one row."""
    up = np.repeat(np.repeat(lr, SCALE, axis=0), SCALE, axis=1)[: hr.shape[0], : hr.shape[1]]
    return np.concatenate([up, sr, hr], axis=1)


def validate(
    base: BaseModels,
    predictor: NoisePredictor,
    images: Sequence[ValImage],
    steps: int = 1,
    sample_dir: Path | None = None,
    step: int = 0,
    sample_count: int = 0,
) -> tuple[dict[str, float], list[np.ndarray]]:
    """Mean metrics over ``images`` and the side-by-side sample images that were saved."""
    pipe = ReferencePipeline(base, predictor)
    scores: dict[str, list[float]] = {"psnr_y": [], "ssim_y": [], "psnr_rgb": []}
    samples = []
    for i, item in enumerate(images):
        sr = pipe.upscale(item.lr, steps=steps, seed=0)
        scores["psnr_y"].append(psnr(_y(sr), _y(item.hr)))
        scores["ssim_y"].append(ssim_y(sr, item.hr))
        scores["psnr_rgb"].append(psnr(sr, item.hr))
        if i < sample_count and sample_dir is not None:
            grid = _side_by_side(item.lr, sr, item.hr)
            sample_dir.mkdir(parents=True, exist_ok=True)
            save_rgb(grid, sample_dir / f"step_{step:08d}_{item.name}.png")
            samples.append(grid)
    metrics = {k: float(np.mean(v)) for k, v in scores.items() if v}
    return metrics, samples

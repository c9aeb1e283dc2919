"""Calibration data for the Q/DQ graphs: their real inputs at the timesteps the sampler uses.

NVIDIA calibrates the SD UNet at the timesteps of the deployed sampler. Here: LR tiles cut from real
photos degraded by our own degradation (`photos.photo_lr_tiles`), run through the fp32 torch graphs
(encoder -> predictor -> UNet steps, and the decoder only when it is quantized) with seeded noise; every
call's feeds of the components to quantize are kept. Batches cycle through the default schedules for
1..5 steps, so every default timestep (250, 200, 150, 100, 50) and the latents each step really sees are
covered. The feeds are small (a full-size UNet feed is 0.4 MB); the statistics over them are collected
one feed at a time (`calib_stats`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from invsr_runtime.noise import tile_noise
from invsr_runtime.schedule import DEFAULT_TIMESTEPS, make_schedule

from .chain import Record, flush_denormals, run_chain, torch_runner
from .photos import photo_lr_tiles

logger = logging.getLogger(__name__)

DEFAULT_CALIB_TILES = 32
#: Seed of the calibration tiles and noise (validation uses another one, so it sees unseen tiles).
CALIB_SEED = 1234


def calibration_feeds(
    wrappers: Mapping[str, object],
    prompt_embeds: np.ndarray,
    alphas_cumprod: np.ndarray,
    tile: int,
    batch: int,
    tiles: int = DEFAULT_CALIB_TILES,
    images: Path | None = None,
    seed: int = CALIB_SEED,
    components: Sequence[str] = ("unet",),
) -> Record:
    """component -> the feeds (batch `batch`) it saw while sampling `tiles` photo tiles, for `components`.

    The UNet sees about 3 feeds per batch, every other component one.
    """
    n = max(batch, -(-tiles // batch) * batch)
    lr = photo_lr_tiles(tile, n, images, seed=seed)
    latent = tile * 4 // 8
    run = torch_runner(wrappers)
    record: Record = {}
    with flush_denormals():
        for k, start in enumerate(range(0, n, batch)):
            noises = [tile_noise(seed, i, (latent, latent)) for i in range(start, start + batch)]
            schedule = make_schedule(DEFAULT_TIMESTEPS[k % len(DEFAULT_TIMESTEPS) + 1], alphas_cumprod)
            run_chain(run, lr[start:start + batch], np.stack([v for v, _ in noises]),
                      np.stack([p for _, p in noises]), schedule, prompt_embeds, record=record,
                      decode="vae_decoder" in components)
            if (k + 1) % max(1, n // batch // 8) == 0:  # progress: about 8 lines per calibration
                logger.info("calibration: %d/%d photo tiles through the fp32 chain", start + batch, n)
    feeds = {name: record[name] for name in components}
    logger.info("calibration: %s from %d photo tiles",
                ", ".join(f"{len(f)} {name} inputs" for name, f in feeds.items()), n)
    return feeds

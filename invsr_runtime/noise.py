"""Seeded noise for one tile (numpy only).

Every exported graph takes its noise as input, so any two backends fed the same seed see the same
noise. Each tile gets its own generator, seeded by (seed, tile_index), so the noise of a tile does
not depend on batching or on the order in which tiles are processed.
"""
from __future__ import annotations

import numpy as np


def tile_noise(
    seed: int, tile_index: int, latent_hw: tuple[int, int], channels: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """(vae_noise, predictor_noise), each float32 [channels, h, w] of standard normal noise.

    Drawn from np.random.default_rng((seed, tile_index)): the VAE posterior noise first, then the
    noise predictor's sample noise.
    """
    if seed < 0 or tile_index < 0:
        raise ValueError(f"seed and tile_index must be >= 0, got seed={seed} tile_index={tile_index}")
    h, w = latent_hw
    rng = np.random.default_rng((int(seed), int(tile_index)))
    shape = (int(channels), int(h), int(w))
    vae_noise = rng.standard_normal(shape, dtype=np.float32)
    predictor_noise = rng.standard_normal(shape, dtype=np.float32)
    return vae_noise, predictor_noise

"""The PnP loop: an RGB image -> tiles -> engine batches through a `TileChain` (a backend) -> blended image.

Per tile (docs/INTERFACES.md, "The exported graphs"): vae_encoder -> predictor (sigma[0], t[0]-1)
-> unet once per step (sigma[i], sigma_next[i]) -> vae_decoder. All sampler arithmetic lives in the
graphs; this module only decides which tiles go together, feeds them their seeded noise and blends
the outputs. Memory is bounded by one round of `tile_batch` tiles plus the blended output.

Batching: the engines have a fixed batch B (`TileChain.fixed_batch`; a chain without one, such as the
PyTorch reference, gets a shorter last batch instead of padding). `tile_batch` (tiles cut, run and blended per round) is
rounded up to a multiple of B; a partial last engine batch is padded by repeating its last tile (the
repeats are computed and thrown away). Noise comes from `tile_noise(seed, tile_index, (L, L))`, so the
result does not depend on B or `tile_batch`: same seed, same image.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Iterator, Sequence

import numpy as np

from .colorfix import COLOR_FIXES, apply_color_fix, color_reference
from .noise import tile_latent, tile_noise
from .schedule import Schedule
from .tile_chain import TileChain
from .tiling import TileBlender, TilePlan, extract_tiles, pad_image, plan_tiles

logger = logging.getLogger(__name__)

#: on_tiles(done, total): progress callback, called after each engine batch.
ProgressFn = Callable[[int, int], None]


def round_tile_batch(tile_batch: int | None, engine_batch: int) -> int:
    """Tiles per round: `tile_batch` rounded up to a multiple of the engine batch (default: one engine batch)."""
    if tile_batch is None:
        return engine_batch
    if tile_batch < 1:
        raise ValueError(f"tile_batch must be >= 1, got {tile_batch}")
    rounded = math.ceil(tile_batch / engine_batch) * engine_batch
    if rounded != tile_batch:
        logger.info("tile batch %d rounded up to %d (a multiple of the engine batch %d)",
                    tile_batch, rounded, engine_batch)
    return rounded


def engine_batches(indices: Sequence[int], batch: int, pad: bool = True) -> Iterator[tuple[list[int], int]]:
    """Split tile indices into engine batches of `batch`: (indices, real count).

    With `pad` (engines of a fixed batch) a partial last batch is padded by repeating its last index.
    """
    for start in range(0, len(indices), batch):
        chunk = list(indices[start:start + batch])
        yield (chunk + [chunk[-1]] * (batch - len(chunk)) if pad else chunk), len(chunk)


def _noise(seed: int, indices: Sequence[int], latent: int) -> tuple[np.ndarray, np.ndarray]:
    """Stacked (vae_noise, predictor_noise) [N,4,L,L] for the given tile indices."""
    pairs = [tile_noise(seed, i, (latent, latent)) for i in indices]
    return np.stack([v for v, _ in pairs]), np.stack([p for _, p in pairs])


def _run_round(
    chain: TileChain, padded: np.ndarray, plan: TilePlan, indices: Sequence[int],
    schedule: Schedule, seed: int, blender: TileBlender, on_batch: Callable[[int], None],
) -> None:
    """Cut, run and blend one round of tiles, one engine batch at a time."""
    tiles = extract_tiles(padded, plan, indices).transpose(0, 3, 1, 2)
    position = {index: k for k, index in enumerate(indices)}
    latent = tile_latent(plan.tile, plan.scale)
    for chunk, real in engine_batches(indices, chain.batch, pad=chain.fixed_batch):
        lr = np.ascontiguousarray(tiles[[position[i] for i in chunk]], dtype=np.float32)
        vae_noise, pred_noise = _noise(seed, chunk, latent)
        out = chain.run_chain(lr, vae_noise, pred_noise, schedule)
        for index, tile_out in zip(chunk[:real], out[:real]):
            blender.add(index, np.asarray(tile_out, dtype=np.float32).transpose(1, 2, 0))
        on_batch(real)


def upscale_rgb(
    chain: TileChain,
    image: np.ndarray,
    schedule: Schedule,
    color_fix: str = "none",
    seed: int = 0,
    tile_batch: int | None = None,
    on_tiles: ProgressFn | None = None,
) -> np.ndarray:
    """RGB HxWx3 float32 in [0, 1] (any size) -> (scale*H)x(scale*W)x3 float32 in [0, 1] through `chain`."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image of shape HxWx3, got {image.shape}")
    if color_fix not in COLOR_FIXES:
        raise ValueError(f"unknown colour fix {color_fix!r}: use one of {', '.join(COLOR_FIXES)}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    image = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    plan = plan_tiles(image.shape[0], image.shape[1], tile=chain.tile, scale=chain.scale)
    padded = pad_image(image, plan)
    blender = TileBlender(plan, channels=3)
    per_round = round_tile_batch(tile_batch, chain.batch)
    total, done = plan.num_tiles, 0

    def on_batch(real: int) -> None:
        nonlocal done
        done += real
        if on_tiles is not None:
            on_tiles(done, total)

    for start in range(0, total, per_round):
        indices = list(range(start, min(start + per_round, total)))
        _run_round(chain, padded, plan, indices, schedule, seed, blender, on_batch)
    result = blender.result()
    if color_fix != "none":
        result = apply_color_fix(result, color_reference(image, scale=chain.scale), color_fix)
    return np.clip(result, 0.0, 1.0).astype(np.float32)

"""The reference PyTorch InvSR pipeline: the golden model every export and backend is checked against.

It follows INVSR.md step by step (bicubic x4 without antialias, VAE posterior sample, noise-predictor
sample, deterministic Euler/DDIM update in fp32, decode, clamp). All randomness is explicit: the two
noises of a tile are arguments; `upscale` draws them per tile from `invsr_runtime.noise.tile_noise`, the
same generator the runtime uses, so both produce the same image for the same seed.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from invsr_runtime.pnp import upscale_rgb
from invsr_runtime.schedule import Schedule, make_schedule, resolve_timesteps
from invsr_runtime.tile_chain import TileChain

from .models.base import BaseModels
from .models.noise_predictor import NoisePredictor, sample_from_moments

logger = logging.getLogger(__name__)

SCALE = 4


class ReferencePipeline:
    """InvSR x4 super-resolution in PyTorch, fp32 on CPU and fp16 on CUDA (predictor under autocast)."""

    def __init__(self, base: BaseModels, predictor: NoisePredictor) -> None:
        self.base = base
        self.predictor = predictor.eval()
        self.device = next(base.unet.parameters()).device
        self.dtype = next(base.unet.parameters()).dtype
        self.predictor.to(self.device)
        self.scaling_factor = float(base.scaling_factor)

    # ----------------------------------------------------------------------------------------- stages
    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda" and self.dtype == torch.float16:
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def encode(self, lr01: torch.Tensor, vae_noise: torch.Tensor) -> torch.Tensor:
        """LR tile in [0,1] -> scaled latent sample z_lr (fp32): bicubic x4 (no antialias), VAE posterior sample."""
        up = F.interpolate(lr01.float(), scale_factor=SCALE, mode="bicubic", align_corners=False)
        x = (up * 2.0 - 1.0).to(self.device, self.dtype)
        dist = self.base.vae.encode(x).latent_dist
        z = dist.mean.float() + dist.std.float() * vae_noise.to(self.device, torch.float32)
        return z * self.scaling_factor

    @torch.no_grad()
    def predict_noise(self, lr01: torch.Tensor, net_t: int, noise: torch.Tensor) -> torch.Tensor:
        """The noise predictor's sample at network timestep `net_t` (fp32)."""
        with self._autocast():
            moments = self.predictor(lr01.to(self.device, torch.float32), net_t)
        return sample_from_moments(moments.float(), noise.to(self.device, torch.float32))

    @torch.no_grad()
    def unet_eps(self, z: torch.Tensor, sigma: float, net_t: int) -> torch.Tensor:
        """SD-Turbo's epsilon for latent z at noise level sigma (input scaled by 1/sqrt(sigma^2+1))."""
        z_in = (z / np.sqrt(sigma**2 + 1.0)).to(self.dtype)
        t = torch.full((z.shape[0],), net_t, device=self.device, dtype=torch.long)
        emb = self.base.prompt_embeds.to(self.device, self.dtype).expand(z.shape[0], -1, -1)
        return self.base.unet(z_in, t, encoder_hidden_states=emb).sample.float()

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latent -> image in [0,1] (fp32)."""
        x = self.base.vae.decode((z / self.scaling_factor).to(self.dtype)).sample.float()
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)

    @torch.no_grad()
    def upscale_tiles(
        self,
        lr_tiles01: torch.Tensor,
        schedule: Schedule,
        vae_noise: torch.Tensor,
        pred_noise: torch.Tensor,
    ) -> torch.Tensor:
        """One batch of LR tiles [B,3,T,T] in [0,1] -> HR tiles [B,3,4T,4T] in [0,1]."""
        z_lr = self.encode(lr_tiles01, vae_noise)
        eps_np = self.predict_noise(lr_tiles01, schedule.net_timesteps[0], pred_noise)
        z = z_lr + float(schedule.sigmas[0]) * eps_np
        for net_t, sigma, sigma_next in zip(schedule.net_timesteps, schedule.sigmas, schedule.sigmas_next):
            eps = self.unet_eps(z, float(sigma), int(net_t))
            x0 = z - float(sigma) * eps
            z = x0 + float(sigma_next) * eps
        return self.decode(z)

    # ------------------------------------------------------------------------------------ whole images
    def schedule(self, steps: int | None = None, timesteps: Sequence[int] | str | None = None) -> Schedule:
        """The validated schedule for `steps` / custom `timesteps` (1 step if neither) on this base's alphas_cumprod."""
        if steps is None and timesteps is None:
            steps = 1
        return make_schedule(resolve_timesteps(steps, timesteps), self.base.alphas_cumprod)

    def upscale(
        self,
        image: np.ndarray,
        steps: int | None = None,
        timesteps: Sequence[int] | str | None = None,
        color_fix: str = "none",
        seed: int = 0,
        tile_batch: int = 8,
        tile: int | None = None,
        on_tile: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """RGB image HWC float32 in [0,1], any size -> 4h x 4w HWC float32 in [0,1].

        The tiling, noise and blending loop is the runtime's own (`invsr_runtime.pnp.upscale_rgb`), so
        the reference and every backend cut, seed and blend tiles identically.
        """
        schedule = self.schedule(steps, timesteps)
        chain = ReferenceChain(self, tile or self.base.tile, tile_batch)
        return upscale_rgb(chain, image, schedule, color_fix=color_fix, seed=seed, tile_batch=tile_batch,
                           on_tiles=on_tile)


class ReferenceChain(TileChain):
    """The reference pipeline as a `TileChain` of variable batch: the last batch is not padded."""

    def __init__(self, pipe: ReferencePipeline, tile: int, batch: int) -> None:
        if batch < 1:
            raise ValueError(f"tile_batch must be >= 1, got {batch}")
        self.pipe, self._tile, self._batch = pipe, tile, batch

    @property
    def tile(self) -> int:
        return self._tile

    @property
    def scale(self) -> int:
        return SCALE

    @property
    def batch(self) -> int:
        return self._batch

    @property
    def fixed_batch(self) -> bool:
        return False

    def run_chain(self, lr: np.ndarray, vae_noise: np.ndarray, pred_noise: np.ndarray, schedule: Schedule) -> np.ndarray:
        """One batch of LR tiles [B,3,T,T] + noises [B,4,L,L] (numpy) -> HR tiles [B,3,4T,4T] float32."""
        out = self.pipe.upscale_tiles(torch.from_numpy(lr), schedule, torch.from_numpy(vae_noise),
                                      torch.from_numpy(pred_noise))
        return out.cpu().numpy()

    def close(self) -> None:
        """Nothing to release: the models belong to the pipeline."""

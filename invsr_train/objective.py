"""The InvSR training forward pass: from an HR/LR pair to the predicted clean latent x0.

What (INVSR.md, "Training"): per sample a paper timestep t from the configured set;
``z_lr`` = scaled VAE posterior sample of the bicubic-x4 (no antialias) LR, as the reference pipeline
encodes; ``z_t = z_lr + sigma_t * sample(predictor(LR, t - 1))``; one frozen SD-Turbo UNet step
``x0 = z_t - sigma_t * eps(z_t / sqrt(sigma_t^2 + 1), t - 1)``. The target is the scaled VAE latent of
the HR crop. Gradients reach only the predictor, *through* the frozen UNet (no ``no_grad`` around it).
All noise comes from the caller's ``torch.Generator``, so a step is reproducible.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from invsr_runtime.schedule import sigma as sigma_of

from .models.base import BaseModels
from .models.noise_predictor import sample_from_moments

__all__ = ["InvSRObjective"]

SCALE = 4


class InvSRObjective:
    """Frozen-base half of a training step (encode, timesteps, one UNet step), holding the sigma table."""

    def __init__(self, base: BaseModels, timesteps: Sequence[int], hr_latent: str = "sample") -> None:
        self.base = base
        self.timesteps = torch.tensor(list(timesteps), dtype=torch.long)
        self.sigmas = torch.tensor([sigma_of(int(t), base.alphas_cumprod) for t in timesteps], dtype=torch.float64)
        self.hr_sample = hr_latent == "sample"

    @property
    def device(self) -> torch.device:
        return self.base.device

    def _randn(self, shape: Sequence[int], gen: torch.Generator) -> Tensor:
        return torch.randn(tuple(shape), generator=gen, device=gen.device).to(self.device)

    @torch.no_grad()
    def encode(self, img01: Tensor, gen: torch.Generator, sample: bool = True) -> Tensor:
        """Image in [0, 1] -> scaled latent (fp32): VAE posterior sample (or mean) * scaling factor."""
        x = (img01.to(self.device, torch.float32) * 2.0 - 1.0).to(self.base.dtype)
        dist = self.base.vae.encode(x).latent_dist
        z = dist.mean.float()
        if sample:
            z = z + dist.std.float() * self._randn(z.shape, gen)
        return z * float(self.base.scaling_factor)

    def encode_hr(self, hr01: Tensor, gen: torch.Generator) -> Tensor:
        """Target latent of the HR crop."""
        return self.encode(hr01, gen, sample=self.hr_sample)

    def encode_lr(self, lr01: Tensor, gen: torch.Generator) -> Tensor:
        """z_lr of the reference pipeline: bicubic x4 (a = -0.75, no antialias) then a posterior sample."""
        up = F.interpolate(lr01.float(), scale_factor=SCALE, mode="bicubic", align_corners=False)
        return self.encode(up, gen, sample=True)

    def sample_timesteps(self, batch: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """Per-sample paper timesteps ``[B]`` (long) and their sigmas ``[B]`` (fp32), on the base's device."""
        idx = torch.randint(len(self.timesteps), (batch,), generator=gen, device=gen.device).cpu()
        return self.timesteps[idx].to(self.device), self.sigmas[idx].float().to(self.device)

    def predict_x0(
        self, predictor: nn.Module, lr01: Tensor, z_lr: Tensor, t: Tensor, sigma: Tensor, gen: torch.Generator
    ) -> Tensor:
        """x0 after the predictor's noise and one UNet step; differentiable w.r.t. the predictor (fp32 out)."""
        net_t = t - 1
        moments = predictor(lr01, net_t)
        noise = self._randn((moments.shape[0], moments.shape[1] // 2, *moments.shape[2:]), gen)
        eps_np = sample_from_moments(moments.float(), noise)
        s = sigma.view(-1, 1, 1, 1)
        z_t = z_lr + s * eps_np
        z_in = (z_t / torch.sqrt(s**2 + 1.0)).to(self.base.dtype)
        emb = self.base.prompt_embeds.expand(z_t.shape[0], -1, -1)
        eps = self.base.unet(z_in, net_t, encoder_hidden_states=emb).sample.float()
        return z_t - s * eps


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers (step, rank, micro-batch, ...): independent streams per tuple."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)

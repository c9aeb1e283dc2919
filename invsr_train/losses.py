"""Loss terms of the InvSR objective, all on latents: L2, hinge GAN (generator and discriminator).

What: small pure functions over tensors and lists of discriminator logits (one map per scale). The
latent LPIPS lives in :mod:`invsr_train.lpips_latent`; how the terms are weighted and when the GAN
term switches on is the trainer's business (:mod:`invsr_train.trainer`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["clamp_for_disc", "d_hinge_loss", "g_hinge_loss", "l2_loss", "logit_mean"]


def l2_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error in fp32 (averaged over every element)."""
    return F.mse_loss(pred.float(), target.float())


def clamp_for_disc(z: Tensor, limit: float) -> Tensor:
    """Latents as the discriminator sees them: clamped to [-limit, limit] (InvSR uses 10)."""
    return z.clamp(-limit, limit)


def _mean_over_scales(values: Sequence[Tensor]) -> Tensor:
    return torch.stack([v.float() for v in values]).mean()


def d_hinge_loss(real_logits: Sequence[Tensor], fake_logits: Sequence[Tensor]) -> Tensor:
    """Discriminator hinge loss ``relu(1 - D(real)) + relu(1 + D(fake))``, averaged per scale then over scales."""
    real = _mean_over_scales([F.relu(1.0 - r.float()).mean() for r in real_logits])
    fake = _mean_over_scales([F.relu(1.0 + f.float()).mean() for f in fake_logits])
    return real + fake


def g_hinge_loss(fake_logits: Sequence[Tensor]) -> Tensor:
    """Generator hinge loss ``-D(fake)``, averaged per scale then over scales."""
    return -_mean_over_scales([f.float().mean() for f in fake_logits])


def logit_mean(logits: Sequence[Tensor]) -> Tensor:
    """Mean logit over scales (detached, on the logits' device), for the log: how sure the discriminator is."""
    return _mean_over_scales([x.detach().float().mean() for x in logits])

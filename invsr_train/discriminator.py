"""A UNet-style, multi-scale, timestep-conditioned discriminator on SD latents.

What: :class:`LatentDiscriminator` takes a latent ``[B, 4, h, w]``, the network timestep ``[B]`` and
optionally a conditioning vector (the fixed prompt's embedding, mean-pooled over tokens) and returns a
list of patch-logit maps, one per scale: the bottleneck, then every decoder level up to full latent
resolution. The hinge loss (:mod:`invsr_train.losses`) averages over the scales.

Why this shape: InvSR's discriminator is a UNet over latents conditioned on text and t (the released
config: widths 128/256/512). A UNet sees both global structure (bottleneck logits) and local texture
(per-pixel logits after the skip connections); the timestep conditioning lets one network judge
predictions made from different noise levels. The design here is our own, small and plain
(GroupNorm + SiLU residual blocks with an additive time embedding, no attention): it only has to give
the generator a useful adversarial signal, and no released weights need to fit it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LatentDiscriminator", "timestep_embedding"]


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding ``[B, dim]`` of (possibly fractional) timesteps, cos half first."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float().reshape(-1, 1) * freqs.reshape(1, -1)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, + Linear(SiLU(emb)), GroupNorm-SiLU-conv, with a 1x1 shortcut when widths differ."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None].to(h.dtype)
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


def _head(channels: int, groups: int) -> nn.Module:
    """GroupNorm-SiLU-1x1 conv to one logit per position."""
    return nn.Sequential(nn.GroupNorm(groups, channels), nn.SiLU(), nn.Conv2d(channels, 1, 1))


class LatentDiscriminator(nn.Module):
    """UNet discriminator: ``forward(z, t, cond=None) -> [logits_bottleneck, ..., logits_full_res]``.

    ``channels`` are the widths of the levels (each but the last followed by a stride-2 conv);
    ``cond_dim`` enables a conditioning vector ``[B, cond_dim]`` (or token embeddings ``[B, L, cond_dim]``,
    mean-pooled) added to the time embedding.
    """

    def __init__(
        self,
        in_channels: int = 4,
        channels: Sequence[int] = (128, 256, 512),
        time_dim: int = 256,
        norm_groups: int = 32,
        cond_dim: int | None = None,
    ) -> None:
        super().__init__()
        chans = [int(c) for c in channels]
        emb_dim = max(2 * chans[0], time_dim)
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.cond_proj = nn.Linear(cond_dim, emb_dim) if cond_dim else None
        self.conv_in = nn.Conv2d(in_channels, chans[0], 3, padding=1)
        self.down = nn.ModuleList(
            _ResBlock(chans[max(i - 1, 0)], c, emb_dim, norm_groups) for i, c in enumerate(chans)
        )
        self.downsample = nn.ModuleList(nn.Conv2d(c, c, 3, stride=2, padding=1) for c in chans[:-1])
        self.mid = _ResBlock(chans[-1], chans[-1], emb_dim, norm_groups)
        levels = list(reversed(range(len(chans) - 1)))
        self.up = nn.ModuleList(_ResBlock(chans[i + 1] + chans[i], chans[i], emb_dim, norm_groups) for i in levels)
        self.heads = nn.ModuleList([_head(chans[-1], norm_groups)] + [_head(chans[i], norm_groups) for i in levels])

    def embed(self, t: Tensor, batch: int, cond: Tensor | None) -> Tensor:
        """Time (+ condition) embedding ``[B, emb_dim]``."""
        t = torch.as_tensor(t, device=self.conv_in.weight.device).reshape(-1).expand(batch)
        emb = self.time_mlp(timestep_embedding(t, self.time_dim).to(self.conv_in.weight.dtype))
        if self.cond_proj is not None and cond is not None:
            if cond.ndim == 3:
                cond = cond.float().mean(dim=1)
            emb = emb + self.cond_proj(cond.to(emb.dtype)).expand(batch, -1)
        return emb

    def forward(self, z: Tensor, t: Tensor, cond: Tensor | None = None) -> list[Tensor]:
        emb = self.embed(t, z.shape[0], cond)
        h = self.conv_in(z)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid(h, emb)
        outs = [self.heads[0](h)]
        for j, block in enumerate(self.up):
            skip = skips[len(skips) - 2 - j]
            h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), emb)
            outs.append(self.heads[j + 1](h))
        return outs

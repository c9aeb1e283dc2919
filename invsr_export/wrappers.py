"""The four exported graphs as torch modules: each implements one row of docs/INTERFACES.md exactly.

Every piece of sampler arithmetic lives inside a graph (bicubic x4, posterior sample, predictor sample,
input scaling, Euler update, decode mapping), so a backend only moves named arrays between graphs.
The wrapped model always sits in a child module named after it (``vae``, ``predictor``, ``unet``):
ONNX node names then start with ``/vae/``, ``/predictor/`` or ``/unet/``, and everything else is the
wrapper's own fp32 arithmetic, which the fp16 pass keeps in fp32 by that prefix.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from invsr_runtime.manifest import COMPONENTS, TensorSpec

SCALE = 4
LATENT_CHANNELS = 4
#: Child-module name of the wrapped network in each graph (the ONNX node-name prefix of its nodes).
MODEL_SCOPES = {"vae_encoder": "vae", "predictor": "predictor", "unet": "unet", "vae_decoder": "vae"}


def _per_sample(x: Tensor) -> Tensor:
    """[B] -> [B,1,1,1] in float32, for broadcasting a per-sample scalar over a latent."""
    return x.to(torch.float32).reshape(-1, 1, 1, 1)


class VaeEncoderGraph(nn.Module):
    """lr [B,3,T,T] in [0,1], noise [B,4,L,L] -> latent_lr = scaling * (mean + std * noise).

    Bicubic x4 (a=-0.75, no antialias) and the posterior sample run in fp32 at wrapper level.
    """

    def __init__(self, vae: nn.Module, scaling_factor: float) -> None:
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(scaling_factor)

    def forward(self, lr: Tensor, noise: Tensor) -> Tensor:
        up = F.interpolate(lr.to(torch.float32), scale_factor=SCALE, mode="bicubic", align_corners=False)
        dtype = next(self.vae.parameters()).dtype
        dist = self.vae.encode((up * 2.0 - 1.0).to(dtype)).latent_dist
        z = dist.mean.to(torch.float32) + dist.std.to(torch.float32) * noise
        return z * self.scaling_factor


class PredictorGraph(nn.Module):
    """lr, timestep [B] (network t-1), noise, latent_lr, sigma [B] -> latent = latent_lr + sigma * sample."""

    def __init__(self, predictor: nn.Module) -> None:
        super().__init__()
        self.predictor = predictor

    def forward(self, lr: Tensor, timestep: Tensor, noise: Tensor, latent_lr: Tensor, sigma: Tensor) -> Tensor:
        moments = self.predictor(lr, timestep.to(torch.float32)).to(torch.float32)
        mean, logvar = moments.chunk(2, dim=1)
        sample = mean + torch.exp(0.5 * logvar) * noise
        return latent_lr + _per_sample(sigma) * sample


class UNetGraph(nn.Module):
    """One Euler/DDIM step: eps = UNet(latent / sqrt(sigma^2+1), t, ehs); latent - sigma*eps + sigma_next*eps.

    The timestep stays float32 (cast here, so an fp16 export cannot round it) and the update is fp32.
    """

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self, latent: Tensor, timestep: Tensor, sigma: Tensor, sigma_next: Tensor, encoder_hidden_states: Tensor
    ) -> Tensor:
        s = _per_sample(sigma)
        dtype = next(self.unet.parameters()).dtype
        z_in = (latent / torch.sqrt(s * s + 1.0)).to(dtype)
        eps = self.unet(
            z_in, timestep.to(torch.float32), encoder_hidden_states=encoder_hidden_states.to(dtype)
        ).sample.to(torch.float32)
        x0 = latent - s * eps
        return x0 + _per_sample(sigma_next) * eps


class VaeDecoderGraph(nn.Module):
    """latent [B,4,L,L] -> image [B,3,4T,4T] = clamp((decode(latent / scaling) + 1) / 2, 0, 1)."""

    def __init__(self, vae: nn.Module, scaling_factor: float) -> None:
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(scaling_factor)

    def forward(self, latent: Tensor) -> Tensor:
        dtype = next(self.vae.parameters()).dtype
        x = self.vae.decode((latent / self.scaling_factor).to(dtype)).sample.to(torch.float32)
        return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


@dataclass(frozen=True)
class GraphSpec:
    """Interface of one graph: ordered inputs and outputs with fixed shapes (all float32 at the boundary)."""

    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


def graph_specs(batch: int, tile: int, embed_dim: int, embed_len: int = 77) -> dict[str, GraphSpec]:
    """The four graphs' fixed-shape interfaces for (batch B, LR tile T), as in docs/INTERFACES.md."""
    b, t, lat, c = batch, tile, tile * SCALE // 8, LATENT_CHANNELS
    img, lat4 = [b, 3, t, t], [b, c, lat, lat]
    ts = lambda name, shape: TensorSpec(name, list(shape))  # noqa: E731
    return {
        "vae_encoder": GraphSpec("vae_encoder", [ts("lr", img), ts("noise", lat4)], [ts("latent_lr", lat4)]),
        "predictor": GraphSpec(
            "predictor",
            [ts("lr", img), ts("timestep", [b]), ts("noise", lat4), ts("latent_lr", lat4), ts("sigma", [b])],
            [ts("latent", lat4)],
        ),
        "unet": GraphSpec(
            "unet",
            [ts("latent", lat4), ts("timestep", [b]), ts("sigma", [b]), ts("sigma_next", [b]),
             ts("encoder_hidden_states", [b, embed_len, embed_dim])],
            [ts("latent_next", lat4)],
        ),
        "vae_decoder": GraphSpec("vae_decoder", [ts("latent", lat4)], [ts("image", [b, 3, t * SCALE, t * SCALE])]),
    }


def build_wrappers(base, predictor: nn.Module) -> dict[str, nn.Module]:
    """The four graph modules for a loaded base (invsr_train BaseModels) and noise predictor, in eval mode."""
    mods: dict[str, nn.Module] = {
        "vae_encoder": VaeEncoderGraph(base.vae, base.scaling_factor),
        "predictor": PredictorGraph(predictor),
        "unet": UNetGraph(base.unet),
        "vae_decoder": VaeDecoderGraph(base.vae, base.scaling_factor),
    }
    assert tuple(mods) == COMPONENTS
    return {k: m.eval() for k, m in mods.items()}

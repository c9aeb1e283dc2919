"""Latent LPIPS: a perceptual distance computed directly on 4-channel SD latents.

What: :class:`LatentLPIPS` = VGG16 convolution stack with a 4 -> 64 first conv, features tapped after
relu1_2, relu2_2, relu3_3, relu4_3, relu5_3, each unit-normalised over channels, squared difference,
weighted by a learned non-negative 1x1 "linear head" (``lin0`` .. ``lin4``), averaged over space and
summed over taps. :func:`build_latent_lpips` loads the weights from a file or falls back to a seeded
random init (with a warning: the term is then a fixed random-feature distance, not a perceptual one).

Why: InvSR trains with a latent LPIPS (VGG16 with a 4-channel first conv, weight 2.0) whose released
weights ship as ``vgg16_sdturbo_lpips.pth``. We cannot see that file, so the module uses the layout of
the LPIPS family of checkpoints - ``net.slice{1..5}.{i}.weight|bias`` with torchvision's VGG16
``features`` indices i (conv at 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28) and
``lin{0..4}.model.1.weight`` of shape [1, C, 1, 1] - and, since an 8x-downsampled latent is too small
for VGG's five poolings, keeps only the max-pool before slice 5 by default (``keep_pools=(23,)``;
``(4, 9, 16, 23)`` is the image-LPIPS layout). A file with other key names still loads when its
thirteen 3x3 convs and five 1x1 heads can be matched in order by shape.
"""
from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .models.noise_predictor import strip_key_prefixes

logger = logging.getLogger(__name__)

__all__ = ["LPIPSWeightsError", "LatentLPIPS", "build_latent_lpips", "VGG16_LAYOUT"]

#: (features index, in, out) of VGG16's convs; max-pools sit at 4, 9, 16, 23 (and 30, unused).
VGG16_LAYOUT: tuple[tuple[int, int, int], ...] = (
    (0, 3, 64), (2, 64, 64),
    (5, 64, 128), (7, 128, 128),
    (10, 128, 256), (12, 256, 256), (14, 256, 256),
    (17, 256, 512), (19, 512, 512), (21, 512, 512),
    (24, 512, 512), (26, 512, 512), (28, 512, 512),
)
#: First and last features index of each slice (taps after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
_SLICES = ((0, 3), (4, 8), (9, 15), (16, 22), (23, 29))
_POOLS = (4, 9, 16, 23)
TAP_CHANNELS = (64, 128, 256, 512, 512)
_PREFIXES = ("module.", "_orig_mod.", "llpips.", "lpips.", "perceptual.")
_EPS = 1e-10


class LPIPSWeightsError(ValueError):
    """A latent-LPIPS weight file cannot be used (one line naming the file and the problem)."""


class _LinHead(nn.Module):
    """Dropout (inactive in eval) + 1x1 conv to one channel, no bias: LPIPS's per-tap weighting."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class _VGGSlices(nn.Module):
    """VGG16 features as five slices; submodule names are the torchvision indices (checkpoint keys)."""

    def __init__(self, in_channels: int, keep_pools: Sequence[int]) -> None:
        super().__init__()
        convs = {i: (cin, cout) for i, cin, cout in VGG16_LAYOUT}
        for n, (lo, hi) in enumerate(_SLICES, start=1):
            seq = nn.Sequential()
            for i in range(lo, hi + 1):
                if i in convs:
                    cin, cout = convs[i]
                    seq.add_module(str(i), nn.Conv2d(in_channels if i == 0 else cin, cout, 3, padding=1))
                elif i - 1 in convs:
                    seq.add_module(str(i), nn.ReLU(inplace=False))
                elif i in _POOLS and i in keep_pools:
                    seq.add_module(str(i), nn.MaxPool2d(kernel_size=2, stride=2))
            setattr(self, f"slice{n}", seq)

    def forward(self, x: Tensor) -> list[Tensor]:
        taps = []
        for n in range(1, len(_SLICES) + 1):
            x = getattr(self, f"slice{n}")(x)
            taps.append(x)
        return taps


class LatentLPIPS(nn.Module):
    """Frozen latent LPIPS. ``forward(a, b) -> [B]`` distances between latents ``[B, 4, h, w]``.

    Always computed in fp32 (unit-normalising 512-channel features in fp16 is fragile). Gradients
    flow to the inputs; the module's own parameters never train.
    """

    def __init__(self, in_channels: int = 4, keep_pools: Sequence[int] = (23,)) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.keep_pools = tuple(keep_pools)
        self.net = _VGGSlices(in_channels, self.keep_pools)
        for k, c in enumerate(TAP_CHANNELS):
            setattr(self, f"lin{k}", _LinHead(c))
        # Optional input standardisation (LPIPS's "scaling layer"); identity unless a file provides it.
        self.register_buffer("shift", torch.zeros(1, in_channels, 1, 1))
        self.register_buffer("scale", torch.ones(1, in_channels, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LatentLPIPS:
        """Stays in eval mode (dropout off) whatever the trainer asks."""
        return super().train(False)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        device_type = a.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            fa = self.net((a.float() - self.shift) / self.scale)
            fb = self.net((b.float() - self.shift) / self.scale)
            total = a.new_zeros(a.shape[0], dtype=torch.float32)
            for k, (x, y) in enumerate(zip(fa, fb)):
                x = x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + _EPS)
                y = y / (y.pow(2).sum(dim=1, keepdim=True).sqrt() + _EPS)
                total = total + getattr(self, f"lin{k}")((x - y).pow(2)).mean(dim=(1, 2, 3))
        return total

    # ------------------------------------------------------------------ weights
    def conv_keys(self) -> list[str]:
        """Names of the 13 conv weights in network order."""
        return [k for k, v in self.state_dict().items() if k.startswith("net.") and k.endswith(".weight")]

    def lin_keys(self) -> list[str]:
        """Names of the 5 head weights in tap order."""
        return [f"lin{k}.model.1.weight" for k in range(len(TAP_CHANNELS))]

    def random_init(self, seed: int = 0) -> None:
        """Deterministic stand-in weights: seeded Kaiming-uniform convs, positive random heads."""
        gen = torch.Generator().manual_seed(seed)
        for name, p in self.named_parameters():
            if name.startswith("net.") and name.endswith(".weight"):
                bound = (6.0 / (p.shape[1] * p.shape[2] * p.shape[3])) ** 0.5
                p.data.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * bound)
            elif name.endswith(".bias"):
                p.data.zero_()
            else:  # heads: non-negative, ~1/C so every tap weighs about the same
                p.data.copy_(torch.rand(p.shape, generator=gen) * (2.0 / p.shape[1]))


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------
def build_latent_lpips(path: str | Path | None, seed: int = 0, keep_pools: Sequence[int] = (23,)) -> LatentLPIPS:
    """The frozen latent LPIPS: weights from ``path``, or a seeded random init with a warning."""
    model = LatentLPIPS(keep_pools=keep_pools)
    if path is None:
        model.random_init(seed)
        logger.warning(
            "no latent LPIPS weights given (loss.lpips_path): using a seeded random VGG16, so the LPIPS term "
            "is not perceptually meaningful; pass vgg16_sdturbo_lpips.pth or set loss.lpips_weight: 0"
        )
        return model
    load_lpips_weights(model, Path(path))
    return model


def load_lpips_weights(model: LatentLPIPS, path: Path) -> None:
    """Fill ``model`` from a checkpoint file (exact key names, else by order and shape)."""
    if not path.is_file():
        raise LPIPSWeightsError(f"{path}: no such latent LPIPS weight file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise LPIPSWeightsError(f"{path}: not a PyTorch checkpoint ({type(e).__name__})") from e
    sd = _flatten(obj)
    expected = model.state_dict()
    mapped = _by_name(sd, expected) or _by_shape(sd, model)
    if mapped is None:
        raise LPIPSWeightsError(
            f"{path}: could not find a 4-channel VGG16 (13 convs) + 5 linear heads in this file "
            f"({len(sd)} tensors; expected keys like net.slice1.0.weight, lin0.model.1.weight)"
        )
    for key in ("shift", "scale"):  # optional input standardisation, only when it fits 4 channels
        v = _find_suffix(sd, f"scaling_layer.{key}")
        if v is not None and v.numel() == model.in_channels:
            mapped[key] = v.reshape(expected[key].shape)
    missing = set(expected) - set(mapped)
    for key in missing:  # only the shift/scale buffers can be missing here
        mapped[key] = expected[key]
    model.load_state_dict(mapped, strict=True)
    heads = torch.cat([mapped[k].flatten() for k in model.lin_keys()])
    if (heads < 0).any():
        logger.warning("%s: some LPIPS head weights are negative (LPIPS clamps them to >= 0 when training)", path)
    logger.info("loaded latent LPIPS weights from %s", path)


def _flatten(obj: Any) -> dict[str, Tensor]:
    """A flat ``{key: tensor}`` from a state_dict, possibly wrapped (state_dict / model / net) and prefixed."""
    while isinstance(obj, Mapping) and len(obj) <= 4:
        inner = next((obj[k] for k in ("state_dict", "model", "net", "lpips") if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        return {}
    out: dict[str, Tensor] = {}
    for k, v in obj.items():
        if not isinstance(v, Tensor):
            continue
        out[strip_key_prefixes(str(k), _PREFIXES)] = v.float()
    return out


def _find_suffix(sd: Mapping[str, Tensor], suffix: str) -> Tensor | None:
    return next((v for k, v in sd.items() if k.endswith(suffix)), None)


def _by_name(sd: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
    """Exact key match for every weight and bias (shapes checked)."""
    out: dict[str, Tensor] = OrderedDict()
    for k, ref in expected.items():
        if k in ("shift", "scale"):
            continue
        v = sd.get(k)
        if v is None or v.shape != ref.shape:
            return None
        out[k] = v
    return out


def _natural(key: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _by_shape(sd: Mapping[str, Tensor], model: LatentLPIPS) -> dict[str, Tensor] | None:
    """Match convs (k x 3 x 3) and heads (1 x C x 1 x 1) in natural key order by shape."""
    keys = sorted(sd, key=_natural)
    convs = [k for k in keys if sd[k].ndim == 4 and sd[k].shape[-2:] == (3, 3)]
    heads = [k for k in keys if sd[k].ndim == 4 and sd[k].shape[0] == 1 and sd[k].shape[-2:] == (1, 1)
             and sd[k].shape[1] in TAP_CHANNELS]  # not the 3/4-channel shift/scale of a scaling layer
    expected = model.state_dict()
    conv_keys, lin_keys = model.conv_keys(), model.lin_keys()
    if len(convs) != len(conv_keys) or len(heads) != len(lin_keys):
        return None
    out: dict[str, Tensor] = OrderedDict()
    for src, dst in zip(convs, conv_keys):
        bias_src, bias_dst = src[: -len("weight")] + "bias", dst[: -len("weight")] + "bias"
        if sd[src].shape != expected[dst].shape or bias_src not in sd or sd[bias_src].shape != expected[bias_dst].shape:
            return None
        out[dst], out[bias_dst] = sd[src], sd[bias_src]
    for src, dst in zip(heads, lin_keys):
        if sd[src].shape != expected[dst].shape:
            return None
        out[dst] = sd[src]
    logger.info("latent LPIPS weights matched by order and shape (key names differ from net.slice*/lin*)")
    return out

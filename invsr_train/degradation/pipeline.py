"""The two-stage degradation itself: draw each stage's parameters, run them on a ragged batch, quantise.

`degrade(hr, generator)` / `degrade_with_params` / `Degrader`: see `invsr_train.degradations` for the
pipeline and its design choices. Samples of equal size (and equal parameters where it matters) are
processed together, so per-sample resize scales cost one batched call per group.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from invsr_train.kernels import KernelSpec

from .config import DegradationConfig
from .jpeg import jpeg_compress
from .ops import add_noise, blur, resize
from .sampling import (
    FINAL_SLOTS,
    STAGE_SLOTS,
    FinalParams,
    NoiseParams,
    ResizeParams,
    SampleParams,
    StageParams,
    sample_final,
    sample_stage,
    uniforms,
)

log = logging.getLogger("invsr_train.degradations")

def _grouped(
    xs: list[Tensor], indices: Sequence[int], key: Callable[[int], Any], fn: Callable[[Tensor, list[int]], Tensor]
) -> list[Tensor]:
    """Apply ``fn`` to the samples ``indices`` of the ragged batch xs, stacking those whose shapes (and
    ``key``) agree so each group is one batched call; other samples pass through unchanged."""
    groups: dict[Any, list[int]] = {}
    for i in indices:
        groups.setdefault((tuple(xs[i].shape), key(i)), []).append(i)
    out = list(xs)
    for members in groups.values():
        y = fn(torch.cat([xs[i] for i in members]), members)
        for j, i in enumerate(members):
            out[i] = y[j : j + 1]
    return out


def _blur_list(xs: list[Tensor], specs: Sequence[KernelSpec | None]) -> list[Tensor]:
    """Blur each sample with its kernel (None: untouched), grouped by image size."""
    kernels = {i: s.build() for i, s in enumerate(specs) if s is not None}
    return _grouped(xs, list(kernels), lambda i: None, lambda x, m: blur(x, [kernels[i] for i in m]))


def _resize_list(xs: list[Tensor], params: Sequence[ResizeParams]) -> list[Tensor]:
    """Resize each sample to its size with its mode, grouped by (size, mode)."""
    return _grouped(
        xs, range(len(xs)), lambda i: params[i], lambda x, m: resize(x, params[m[0]].size, params[m[0]].mode)
    )


def _noise_list(xs: list[Tensor], params: Sequence[NoiseParams | None], gen: torch.Generator) -> list[Tensor]:
    """Add each sample's noise; fields are drawn one sample at a time in batch order (reproducible)."""
    return [x if p is None else add_noise(x, p, gen) for x, p in zip(xs, params)]


def _jpeg_list(xs: list[Tensor], qualities: Sequence[int | None]) -> list[Tensor]:
    """JPEG each sample at its quality (None: untouched), grouped by image size."""
    idx = [i for i, q in enumerate(qualities) if q is not None]
    return _grouped(xs, idx, lambda i: None, lambda x, m: jpeg_compress(x, [qualities[i] for i in m]))


def _run_stage(xs: list[Tensor], params: Sequence[StageParams | None], gen: torch.Generator) -> list[Tensor]:
    """blur -> resize -> noise -> JPEG for the samples whose params are not None."""
    active = [i for i, p in enumerate(params) if p is not None]
    sub = [xs[i] for i in active]
    ps = [params[i] for i in active]
    sub = _blur_list(sub, [p.kernel for p in ps])
    sub = _resize_list(sub, [p.resize for p in ps])
    sub = _noise_list(sub, [p.noise for p in ps], gen)
    sub = _jpeg_list(sub, [p.jpeg_quality for p in ps])
    out = list(xs)
    for i, y in zip(active, sub):
        out[i] = y
    return out


def _run_final(xs: list[Tensor], params: Sequence[FinalParams]) -> list[Tensor]:
    """Per sample either [resize, sinc, JPEG] or [JPEG, resize, sinc]."""
    n = len(xs)
    xs = _jpeg_list(xs, [None if p.resize_first else p.jpeg_quality for p in params])
    xs = _resize_list(xs, [p.resize for p in params])
    xs = _blur_list(xs, [p.sinc for p in params])
    xs = _jpeg_list(xs, [p.jpeg_quality if p.resize_first else None for p in params])
    assert len(xs) == n
    return xs


def _shared(draws: list[StageParams], shared_resize: bool) -> list[StageParams]:
    """With ``shared_resize``, give every sample sample 0's resize draw."""
    if not shared_resize or not draws:
        return draws
    return [dataclasses.replace(p, resize=draws[0].resize) for p in draws]


def as_generator(generator: torch.Generator | int) -> torch.Generator:
    """A generator from an int seed (CPU), or the given generator unchanged."""
    if isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return torch.Generator(device="cpu").manual_seed(generator)
    raise TypeError(f"generator must be a torch.Generator or an int seed, got {type(generator).__name__}")


def _check_input(hr: Tensor, scale: int) -> None:
    """B x 3 x H x W floating batch with H, W divisible by ``scale``."""
    if hr.ndim != 4 or hr.shape[1] != 3:
        raise ValueError(f"expected a B x 3 x H x W batch, got shape {tuple(hr.shape)}")
    if not hr.is_floating_point():
        raise ValueError(f"expected a float tensor in [0, 1], got {hr.dtype}")
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive int, got {scale!r}")
    if hr.shape[2] % scale or hr.shape[3] % scale:
        raise ValueError(f"H x W = {hr.shape[2]} x {hr.shape[3]} is not divisible by scale {scale}")


@torch.no_grad()
def degrade_with_params(
    hr: Tensor,
    generator: torch.Generator | int,
    config: DegradationConfig | None = None,
    scale: int = 4,
) -> tuple[Tensor, list[SampleParams]]:
    """:func:`degrade`, also returning the parameters drawn for each sample."""
    cfg = DegradationConfig() if config is None else config
    _check_input(hr, scale)
    gen = as_generator(generator)
    b, _, h, w = hr.shape
    lr_size = (h // scale, w // scale)
    xs = list(hr.float().clamp(0.0, 1.0).split(1))

    first = [sample_stage(u, cfg.first, (h, w)) for u in uniforms(gen, b, STAGE_SLOTS)]
    first = _shared(first, cfg.shared_resize)
    xs = _run_stage(xs, first, gen)

    on = [u[0] < cfg.second_stage_prob for u in uniforms(gen, b, 1)]
    second_all = [sample_stage(u, cfg.second, lr_size) for u in uniforms(gen, b, STAGE_SLOTS)]
    second_all = _shared(second_all, cfg.shared_resize)
    second = [p if flag else None for p, flag in zip(second_all, on)]
    xs = _run_stage(xs, second, gen)

    final = [sample_final(u, cfg.final, lr_size) for u in uniforms(gen, b, FINAL_SLOTS)]
    xs = _run_final(xs, final)

    lr = torch.cat(xs).mul_(255.0).round_().clamp_(0.0, 255.0).div_(255.0)
    params = [SampleParams(f, s, fi) for f, s, fi in zip(first, second, final)]
    if log.isEnabledFor(logging.DEBUG):
        for i, p in enumerate(params):
            log.debug("degradation sample %d: %s", i, p)
    return lr, params


def degrade(
    hr: Tensor,
    generator: torch.Generator | int,
    config: DegradationConfig | None = None,
    scale: int = 4,
) -> Tensor:
    """Degrade an HR batch (B x 3 x H x W in [0, 1], any device) to LR (B x 3 x H/scale x W/scale).

    All randomness comes from ``generator`` (a ``torch.Generator`` on the CPU or hr's device, or an int
    seed): the same generator state gives the same output. Every sample draws its own parameters. The
    result is float32 on hr's device, in [0, 1], quantised to 8 bits (round(x * 255) / 255).
    """
    return degrade_with_params(hr, generator, config, scale)[0]


class Degrader(nn.Module):
    """Module wrapper of :func:`degrade` holding a :class:`DegradationConfig` (no parameters, no state)."""

    def __init__(self, config: DegradationConfig | None = None, scale: int = 4) -> None:
        super().__init__()
        self.config = DegradationConfig() if config is None else config
        self.scale = scale

    def forward(self, hr: Tensor, generator: torch.Generator | int, scale: int | None = None) -> Tensor:
        """Same as ``degrade(hr, generator, self.config, scale or self.scale)``."""
        return degrade(hr, generator, self.config, self.scale if scale is None else scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"

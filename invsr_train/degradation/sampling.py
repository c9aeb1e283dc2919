"""Drawing one sample's degradation parameters from blocks of uniforms.

Every scalar parameter of a stage comes from a fixed row of uniforms (`STAGE_SLOTS` per sample per stage,
`FINAL_SLOTS` for the final stage), so the random stream's layout never depends on which branches are
taken: the same generator state gives the same parameters.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from invsr_train.kernels import KernelSpec

from .config import FinalStageConfig, StageConfig

@dataclass(frozen=True)
class ResizeParams:
    """Target size (h, w) and interpolation mode of one resize."""

    size: tuple[int, int]
    mode: str


@dataclass(frozen=True)
class NoiseParams:
    """One additive noise draw: Gaussian with ``sigma`` (0-255 scale) or Poisson with ``scale``."""

    gaussian: bool
    sigma: float
    poisson_scale: float
    gray: bool


@dataclass(frozen=True)
class StageParams:
    """Parameters of one stage for one sample; ``None`` means the step is skipped."""

    kernel: KernelSpec | None
    resize: ResizeParams
    noise: NoiseParams | None
    jpeg_quality: int | None


@dataclass(frozen=True)
class FinalParams:
    """Parameters of the final stage for one sample."""

    resize: ResizeParams
    sinc: KernelSpec | None
    jpeg_quality: int | None
    resize_first: bool


@dataclass(frozen=True)
class SampleParams:
    """Everything drawn for one sample (for logging and debugging)."""

    first: StageParams
    second: StageParams | None
    final: FinalParams


STAGE_SLOTS = 20  # uniforms per sample per stage (fixed so the stream layout never depends on branches)
FINAL_SLOTS = 7


def _lerp(u: float, rng: Sequence[float]) -> float:
    """Map u in [0, 1) to the interval rng."""
    return rng[0] + (rng[1] - rng[0]) * u


def _pick(u: float, probs: Sequence[float]) -> int:
    """Index drawn from a categorical distribution with uniform u (zero-probability entries never win)."""
    acc = 0.0
    last = max(i for i, p in enumerate(probs) if p > 0)
    for i, p in enumerate(probs):
        acc += p
        if p > 0 and u < acc:
            return i
    return last


def _pick_int(u: float, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi]."""
    n = int(hi) - int(lo) + 1
    return int(lo) + min(int(u * n), n - 1)


def _pick_odd(u: float, lo: int, hi: int) -> int:
    """Uniform odd integer in [lo, hi]."""
    odds = [s for s in range(int(lo), int(hi) + 1) if s % 2]
    return odds[min(int(u * len(odds)), len(odds) - 1)]


def _beta(u_branch: float, u: float, rng: Sequence[float]) -> float:
    """Shape exponent: halves [lo, 1] / [1, hi] equally likely when the range straddles 1."""
    lo, hi = rng
    if lo < 1.0 < hi:
        return _lerp(u, (lo, 1.0)) if u_branch < 0.5 else _lerp(u, (1.0, hi))
    return _lerp(u, rng)


def _sample_kernel(u: Sequence[float], cfg: StageConfig) -> KernelSpec:
    """A blur kernel from slots u[1:10] (sinc-or-not, type, size, sigmas, angle, beta, cut-off)."""
    size = _pick_odd(u[3], *cfg.kernel_size_range)
    if u[1] < cfg.sinc_prob:
        omega_rng = cfg.sinc_omega_range_small if size < cfg.sinc_large_size else cfg.sinc_omega_range_large
        return KernelSpec("sinc", size, omega_c=_lerp(u[9], omega_rng))
    names = list(cfg.kernel_type_probs)
    kind = names[_pick(u[2], [cfg.kernel_type_probs[n] for n in names])]
    sx = _lerp(u[4], cfg.sigma_range)
    iso = kind.endswith("iso") and not kind.endswith("aniso")
    sy = sx if iso else _lerp(u[5], cfg.sigma_range)
    theta = 0.0 if iso else _lerp(u[6], (-math.pi, math.pi))
    beta = 1.0
    if kind.startswith("generalized"):
        beta = _beta(u[7], u[8], cfg.generalized_beta_range)
    elif kind.startswith("plateau"):
        beta = _beta(u[7], u[8], cfg.plateau_beta_range)
    return KernelSpec(kind, size, sigma_x=sx, sigma_y=sy, theta=theta, beta=beta)


def _sample_resize(u: Sequence[float], cfg: StageConfig, base: tuple[int, int]) -> ResizeParams:
    """Resize from slots u[10:13]: direction (up/down/keep), scale relative to ``base``, mode."""
    direction = _pick(u[10], cfg.resize_probs)
    lo, hi = cfg.resize_range
    scale = (_lerp(u[11], (1.0, hi)), _lerp(u[11], (lo, 1.0)), 1.0)[direction]
    size = (max(1, round(base[0] * scale)), max(1, round(base[1] * scale)))
    mode = cfg.resize_modes[_pick_int(u[12], 0, len(cfg.resize_modes) - 1)]
    return ResizeParams(size, mode)


def _sample_noise(u: Sequence[float], cfg: StageConfig) -> NoiseParams | None:
    """Noise from slots u[13:18]: on/off, Gaussian-or-Poisson, sigma, Poisson scale, grey."""
    if u[13] >= cfg.noise_prob:
        return None
    return NoiseParams(
        gaussian=u[14] < cfg.gaussian_noise_prob,
        sigma=_lerp(u[15], cfg.noise_sigma_range),
        poisson_scale=_lerp(u[16], cfg.poisson_scale_range),
        gray=u[17] < cfg.gray_noise_prob,
    )


def sample_stage(u: Sequence[float], cfg: StageConfig, resize_base: tuple[int, int]) -> StageParams:
    """All parameters of one stage for one sample from its row of ``STAGE_SLOTS`` uniforms."""
    return StageParams(
        kernel=_sample_kernel(u, cfg) if u[0] < cfg.blur_prob else None,
        resize=_sample_resize(u, cfg, resize_base),
        noise=_sample_noise(u, cfg),
        jpeg_quality=_pick_int(u[19], *cfg.jpeg_quality_range) if u[18] < cfg.jpeg_prob else None,
    )


def sample_final(u: Sequence[float], cfg: FinalStageConfig, lr_size: tuple[int, int]) -> FinalParams:
    """Final-stage parameters for one sample from its row of ``FINAL_SLOTS`` uniforms."""
    sinc = None
    if u[0] < cfg.sinc_prob:
        size = _pick_odd(u[1], *cfg.sinc_kernel_size_range)
        sinc = KernelSpec("sinc", size, omega_c=_lerp(u[2], cfg.sinc_omega_range))
    mode = cfg.resize_modes[_pick_int(u[3], 0, len(cfg.resize_modes) - 1)]
    quality = _pick_int(u[5], *cfg.jpeg_quality_range) if u[4] < cfg.jpeg_prob else None
    return FinalParams(ResizeParams(lr_size, mode), sinc, quality, resize_first=u[6] < cfg.resize_first_prob)


def uniforms(gen: torch.Generator, rows: int, cols: int) -> list[list[float]]:
    """One block of U[0, 1) draws from ``gen`` (on its own device), as nested Python lists."""
    u = torch.rand((rows, cols), generator=gen, device=gen.device, dtype=torch.float64)
    return u.cpu().tolist()

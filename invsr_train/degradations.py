"""Second-order (Real-ESRGAN-style, widened) degradation that makes training LR images from HR crops.

What: ``degrade(hr, generator)`` maps a batch of HR images (B x 3 x H x W, float in [0, 1], any device) to
LR images (B x 3 x H/scale x W/scale, float32 in [0, 1], quantised to 8 bits). Pipeline, per sample:

1. first stage: blur -> resize (up/down/keep) -> noise (Gaussian or Poisson, colour or grey) -> JPEG;
2. second stage, with probability ``second_stage_prob``: the same steps with milder ranges;
3. final stage: [resize to H/scale x W/scale, then sinc filter (p 0.8)] and JPEG, in random order;
4. round to 8 bits.

Why this shape: InvSR's released weights were trained on LR made this way (see INVSR.md, "Training"), so
fine-tuning or re-training must see the same distribution of blur, resampling, noise and compression.

Design choices (documented, all configurable in :class:`DegradationConfig`):

* Everything is torch, so it runs on the data's device. JPEG is a torch re-implementation of baseline
  JPEG (IJG tables scaled by quality, JFIF YCbCr, 4:2:0 chroma by 2x2 averaging, 8x8 orthonormal DCT,
  rounding quantisation, triangle ("fancy") chroma upsampling on decode, 8-bit samples throughout); it
  tracks Pillow/libjpeg closely (see the tests) without leaving the device.
* Randomness: every scalar parameter comes from one block of uniforms per stage (B x slots, drawn from the
  given ``torch.Generator``), noise fields are drawn per sample in batch order from the same generator.
  Same generator state -> same output (bit-identical on CPU). The generator may live on the CPU or on the
  data's device; noise is drawn on the generator's device and moved.
* Parameters are per sample (kernel, resize scale and mode, noise, JPEG quality, stage-2 on/off, final
  order). Because per-sample resize scales give per-sample intermediate sizes, the batch is carried as a
  list and samples of equal size are processed together (grouped conv, batched JPEG); with
  ``shared_resize=True`` one resize draw is used for the whole batch (as in Real-ESRGAN), which keeps the
  batch one tensor and is faster on a GPU.
* Kernel-type probabilities: iso 0.45, aniso 0.25, generalized iso 0.12, generalized aniso 0.03, plateau
  iso 0.12, plateau aniso 0.03 (Real-ESRGAN's table); a sinc kernel replaces the drawn one with p 0.1. Sinc
  cut-off in [pi/3, pi] for kernels smaller than 13, [pi/5, pi] otherwise; final-stage sinc [pi/3, pi].
* Generalized/plateau beta: when the range straddles 1 it is drawn from [lo, 1] or [1, hi] with p 1/2
  each (heavy- and light-tailed shapes equally likely), otherwise uniformly in the range.
* Second-stage resize is relative to the *final LR size* (scale in [0.3, 1.2] of H/scale), so "keep" still
  resamples to the LR size; second-stage up/down/keep p 0.3/0.4/0.3 (INVSR.md gives none; Real-ESRGAN's).
  First-stage resize is relative to the HR size. Sizes are rounded, at least 1 pixel.
* Resampling is ``F.interpolate`` (area / bilinear / bicubic, no antialias, uniform choice) followed by a
  clamp to [0, 1]; noise results are clamped too. Blur pads by reflection (replicate when the image is
  smaller than the kernel radius). Poisson noise counts photons as ``x * 255`` (8-bit source images).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from invsr_train.kernels import KERNEL_TYPES, KernelSpec, pad_kernel

log = logging.getLogger(__name__)

RESIZE_MODES: tuple[str, ...] = ("area", "bilinear", "bicubic")

#: Real-ESRGAN's kernel-type table (see module docstring).
DEFAULT_KERNEL_TYPE_PROBS: dict[str, float] = {
    "iso": 0.45,
    "aniso": 0.25,
    "generalized_iso": 0.12,
    "generalized_aniso": 0.03,
    "plateau_iso": 0.12,
    "plateau_aniso": 0.03,
}

_C = TypeVar("_C", bound="_ConfigBase")


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


def _is_number(v: Any) -> bool:
    """A real number (bools excluded: ``true`` in YAML is not a probability)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_range(name: str, rng: Sequence[float], lo: float | None = None, hi: float | None = None) -> None:
    """A (min, max) pair of numbers with min <= max, optionally within [lo, hi]."""
    if not isinstance(rng, (tuple, list)) or len(rng) != 2 or not all(_is_number(v) for v in rng):
        raise ValueError(f"{name} must be a (min, max) pair, got {rng!r}")
    a, b = rng
    if not a <= b:
        raise ValueError(f"{name}: min {a} > max {b}")
    if (lo is not None and a < lo) or (hi is not None and b > hi):
        raise ValueError(f"{name} {rng!r} must lie within [{lo}, {hi}]")


def _check_prob(name: str, p: float) -> None:
    """A probability in [0, 1]."""
    if not _is_number(p) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")


def _check_probs(name: str, probs: Sequence[float]) -> None:
    """A categorical distribution: non-negative, summing to 1."""
    if not all(_is_number(p) for p in probs) or any(p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
        raise ValueError(f"{name} must be non-negative and sum to 1, got {probs!r}")


def _check_int_range(name: str, rng: Sequence[int], lo: int, hi: int) -> None:
    """An integer (min, max) pair within [lo, hi]."""
    _check_range(name, rng, lo, hi)
    if any(int(v) != v for v in rng):
        raise ValueError(f"{name} must hold integers, got {rng!r}")


def _check_modes(name: str, modes: Sequence[str]) -> None:
    """A non-empty list of known resize modes."""
    if not isinstance(modes, (tuple, list)) or not modes or any(m not in RESIZE_MODES for m in modes):
        raise ValueError(f"{name} must be a non-empty subset of {RESIZE_MODES}, got {modes!r}")


class _ConfigBase:
    """``from_dict``/``to_dict`` for the (nested, frozen) config dataclasses below."""

    @classmethod
    def from_dict(cls: type[_C], d: Mapping[str, Any], base: _C | None = None, _path: str = "") -> _C:
        """Build from a plain dict (e.g. parsed YAML), on top of ``base`` (default: the class defaults).

        Nested sections are dicts and override only the keys they name. Lists become tuples. Any key
        that is not a field raises ``ValueError`` naming it (with its dotted path), so typos never pass
        silently.
        """
        if not isinstance(d, Mapping):
            where = _path.rstrip(".") or "<root>"
            raise ValueError(f"degradation config section {where!r} must be a mapping, got {type(d).__name__}")
        obj = cls() if base is None else base
        names = {f.name for f in dataclasses.fields(obj)}  # type: ignore[arg-type]
        updates: dict[str, Any] = {}
        for key, value in d.items():
            path = f"{_path}{key}"
            if key not in names:
                raise ValueError(f"unknown degradation config key {path!r} (known: {', '.join(sorted(names))})")
            current = getattr(obj, key)
            if isinstance(current, _ConfigBase):
                updates[key] = type(current).from_dict(value, base=current, _path=f"{path}.")
            elif isinstance(current, Mapping):
                if not isinstance(value, Mapping):
                    raise ValueError(f"degradation config key {path!r} must be a mapping")
                updates[key] = dict(value)
            elif isinstance(value, list):
                updates[key] = tuple(value)
            else:
                updates[key] = value
        return dataclasses.replace(obj, **updates)  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), the inverse of :meth:`from_dict`."""

        def plain(v: Any) -> Any:
            if isinstance(v, _ConfigBase):
                return v.to_dict()
            if isinstance(v, Mapping):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, (tuple, list)):
                return [plain(x) for x in v]
            return v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class StageConfig(_ConfigBase):
    """One blur -> resize -> noise -> JPEG stage. Defaults are the first stage's (INVSR.md)."""

    blur_prob: float = 1.0
    kernel_size_range: tuple[int, int] = (3, 19)  # odd sizes only are drawn
    kernel_type_probs: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_KERNEL_TYPE_PROBS))
    sigma_range: tuple[float, float] = (0.2, 3.0)
    generalized_beta_range: tuple[float, float] = (0.5, 4.0)
    plateau_beta_range: tuple[float, float] = (1.0, 2.0)
    sinc_prob: float = 0.1
    sinc_omega_range_small: tuple[float, float] = (math.pi / 3, math.pi)  # kernel size < sinc_large_size
    sinc_omega_range_large: tuple[float, float] = (math.pi / 5, math.pi)
    sinc_large_size: int = 13
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple[float, float] = (0.15, 1.5)
    resize_modes: tuple[str, ...] = RESIZE_MODES
    noise_prob: float = 1.0
    gaussian_noise_prob: float = 0.5  # else Poisson
    noise_sigma_range: tuple[float, float] = (1.0, 30.0)  # on the 0-255 scale
    poisson_scale_range: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_prob: float = 1.0
    jpeg_quality_range: tuple[int, int] = (30, 95)

    def __post_init__(self) -> None:
        for name in ("blur_prob", "sinc_prob", "noise_prob", "gaussian_noise_prob", "gray_noise_prob", "jpeg_prob"):
            _check_prob(name, getattr(self, name))
        _check_int_range("kernel_size_range", self.kernel_size_range, 1, 255)
        lo, hi = self.kernel_size_range
        if not any(s % 2 for s in range(int(lo), int(hi) + 1)):
            raise ValueError(f"kernel_size_range {self.kernel_size_range!r} contains no odd size")
        unknown = set(self.kernel_type_probs) - set(KERNEL_TYPES)
        if unknown:
            raise ValueError(f"unknown kernel type(s) {sorted(unknown)} in kernel_type_probs: use {KERNEL_TYPES}")
        _check_probs("kernel_type_probs", list(self.kernel_type_probs.values()))
        _check_range("sigma_range", self.sigma_range, 1e-6)
        _check_range("generalized_beta_range", self.generalized_beta_range, 1e-6)
        _check_range("plateau_beta_range", self.plateau_beta_range, 1e-6)
        _check_range("sinc_omega_range_small", self.sinc_omega_range_small, 1e-6, math.pi + 1e-9)
        _check_range("sinc_omega_range_large", self.sinc_omega_range_large, 1e-6, math.pi + 1e-9)
        if len(self.resize_probs) != 3:
            raise ValueError(f"resize_probs must be (up, down, keep), got {self.resize_probs!r}")
        _check_probs("resize_probs", self.resize_probs)
        _check_range("resize_range", self.resize_range, 1e-3)
        if not self.resize_range[0] <= 1.0 <= self.resize_range[1]:
            raise ValueError(f"resize_range {self.resize_range!r} must contain 1 (down below, up above)")
        _check_modes("resize_modes", self.resize_modes)
        _check_range("noise_sigma_range", self.noise_sigma_range, 0.0)
        _check_range("poisson_scale_range", self.poisson_scale_range, 0.0)
        _check_int_range("jpeg_quality_range", self.jpeg_quality_range, 1, 100)


def default_first_stage() -> StageConfig:
    """First-stage parameters of INVSR.md."""
    return StageConfig()


def default_second_stage() -> StageConfig:
    """Second-stage parameters of INVSR.md (resize up/down/keep p 0.3/0.4/0.3 as in Real-ESRGAN)."""
    return StageConfig(
        blur_prob=0.8,
        kernel_size_range=(3, 13),
        sigma_range=(0.2, 1.5),
        resize_probs=(0.3, 0.4, 0.3),
        resize_range=(0.3, 1.2),
        noise_sigma_range=(1.0, 25.0),
        poisson_scale_range=(0.05, 2.5),
    )


@dataclass(frozen=True)
class FinalStageConfig(_ConfigBase):
    """Final stage: resize to the LR size + sinc, and JPEG, in random order."""

    sinc_prob: float = 0.8
    sinc_kernel_size_range: tuple[int, int] = (3, 19)
    sinc_omega_range: tuple[float, float] = (math.pi / 3, math.pi)
    resize_modes: tuple[str, ...] = RESIZE_MODES
    jpeg_prob: float = 1.0
    jpeg_quality_range: tuple[int, int] = (30, 95)
    resize_first_prob: float = 0.5  # else JPEG first

    def __post_init__(self) -> None:
        for name in ("sinc_prob", "jpeg_prob", "resize_first_prob"):
            _check_prob(name, getattr(self, name))
        _check_int_range("sinc_kernel_size_range", self.sinc_kernel_size_range, 1, 255)
        _check_range("sinc_omega_range", self.sinc_omega_range, 1e-6, math.pi + 1e-9)
        _check_modes("resize_modes", self.resize_modes)
        _check_int_range("jpeg_quality_range", self.jpeg_quality_range, 1, 100)


@dataclass(frozen=True)
class DegradationConfig(_ConfigBase):
    """Every parameter of the degradation, defaults = INVSR.md's training recipe.

    Load from YAML with ``DegradationConfig.from_dict(yaml.safe_load(...))``; sections ``first``,
    ``second`` and ``final`` are nested dicts overriding only the keys they name.
    """

    first: StageConfig = field(default_factory=default_first_stage)
    second_stage_prob: float = 0.5
    second: StageConfig = field(default_factory=default_second_stage)
    final: FinalStageConfig = field(default_factory=FinalStageConfig)
    shared_resize: bool = False  # one resize draw per batch (faster on GPU) instead of per sample

    def __post_init__(self) -> None:
        _check_prob("second_stage_prob", self.second_stage_prob)
        if not isinstance(self.shared_resize, bool):
            raise ValueError(f"shared_resize must be a bool, got {self.shared_resize!r}")
        for name, typ in (("first", StageConfig), ("second", StageConfig), ("final", FinalStageConfig)):
            if not isinstance(getattr(self, name), typ):
                raise ValueError(f"{name} must be a {typ.__name__}")


# --------------------------------------------------------------------------------------------------
# Drawn parameters
# --------------------------------------------------------------------------------------------------


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


_STAGE_SLOTS = 20  # uniforms per sample per stage (fixed so the stream layout never depends on branches)
_FINAL_SLOTS = 7


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


def _sample_stage(u: Sequence[float], cfg: StageConfig, resize_base: tuple[int, int]) -> StageParams:
    """All parameters of one stage for one sample from its row of ``_STAGE_SLOTS`` uniforms."""
    return StageParams(
        kernel=_sample_kernel(u, cfg) if u[0] < cfg.blur_prob else None,
        resize=_sample_resize(u, cfg, resize_base),
        noise=_sample_noise(u, cfg),
        jpeg_quality=_pick_int(u[19], *cfg.jpeg_quality_range) if u[18] < cfg.jpeg_prob else None,
    )


def _sample_final(u: Sequence[float], cfg: FinalStageConfig, lr_size: tuple[int, int]) -> FinalParams:
    """Final-stage parameters for one sample from its row of ``_FINAL_SLOTS`` uniforms."""
    sinc = None
    if u[0] < cfg.sinc_prob:
        size = _pick_odd(u[1], *cfg.sinc_kernel_size_range)
        sinc = KernelSpec("sinc", size, omega_c=_lerp(u[2], cfg.sinc_omega_range))
    mode = cfg.resize_modes[_pick_int(u[3], 0, len(cfg.resize_modes) - 1)]
    quality = _pick_int(u[5], *cfg.jpeg_quality_range) if u[4] < cfg.jpeg_prob else None
    return FinalParams(ResizeParams(lr_size, mode), sinc, quality, resize_first=u[6] < cfg.resize_first_prob)


def _uniforms(gen: torch.Generator, rows: int, cols: int) -> list[list[float]]:
    """One block of U[0, 1) draws from ``gen`` (on its own device), as nested Python lists."""
    u = torch.rand((rows, cols), generator=gen, device=gen.device, dtype=torch.float64)
    return u.cpu().tolist()


# --------------------------------------------------------------------------------------------------
# Operations (batched, per-sample parameters)
# --------------------------------------------------------------------------------------------------


def _pad(x: Tensor, p: int) -> Tensor:
    """Reflect-pad by p on all sides; replicate when the image is too small to reflect."""
    if p == 0:
        return x
    mode = "reflect" if p < x.shape[-2] and p < x.shape[-1] else "replicate"
    return F.pad(x, (p, p, p, p), mode=mode)


def blur(x: Tensor, kernels: Sequence[Tensor]) -> Tensor:
    """Filter each image of x (N x C x H x W) with its own 2-D kernel, in one grouped conv2d.

    Kernels (odd, square, any mix of sizes) are zero-padded to the largest; every channel of image i uses
    kernel i. Borders are reflect-padded, so the output has the input's size.
    """
    n, c, h, w = x.shape
    if len(kernels) != n:
        raise ValueError(f"{len(kernels)} kernels for {n} images")
    size = max(int(k.shape[-1]) for k in kernels)
    weight = torch.stack([pad_kernel(k.to(torch.float64), size) for k in kernels])  # n x K x K
    weight = weight.to(device=x.device, dtype=x.dtype)
    weight = weight[:, None].expand(n, c, size, size).reshape(n * c, 1, size, size)
    out = F.conv2d(_pad(x, size // 2).reshape(1, n * c, h + size - 1, w + size - 1), weight, groups=n * c)
    return out.reshape(n, c, h, w)


def resize(x: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    """Resample x to ``size`` with ``mode`` (area/bilinear/bicubic, no antialias), clamped to [0, 1]."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}")
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    kwargs = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(x, size=size, mode=mode, **kwargs).clamp_(0.0, 1.0)


def _luma(x: Tensor) -> Tensor:
    """BT.601 luma of an N x 3 x H x W image, N x 1 x H x W."""
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def add_gaussian_noise(x: Tensor, sigma: float, gray: bool, gen: torch.Generator) -> Tensor:
    """x + N(0, (sigma/255)^2), one field shared by all channels when ``gray``; clamped to [0, 1]."""
    n, c, h, w = x.shape
    noise = torch.randn((n, 1 if gray else c, h, w), generator=gen, device=gen.device, dtype=torch.float32)
    noise = noise.to(device=x.device, dtype=x.dtype) * (sigma / 255.0)
    return (x + noise).clamp_(0.0, 1.0)


def add_poisson_noise(x: Tensor, scale: float, gray: bool, gen: torch.Generator) -> Tensor:
    """x + scale * (Poisson(255 x)/255 - x): shot noise at 8-bit photon counts; grey uses the luma.

    The noise field (not the image) is scaled, so ``scale`` sets the noise strength; clamped to [0, 1].
    """
    src = _luma(x) if gray else x
    rate = (src.clamp(0.0, 1.0) * 255.0).to(device=gen.device, dtype=torch.float32)
    counts = torch.poisson(rate, generator=gen)
    noise = ((counts - rate) / 255.0).to(device=x.device, dtype=x.dtype)
    return (x + scale * noise).clamp_(0.0, 1.0)


def add_noise(x: Tensor, params: NoiseParams, gen: torch.Generator) -> Tensor:
    """Apply one :class:`NoiseParams` draw to x (whole tensor, one draw of the noise field)."""
    if params.gaussian:
        return add_gaussian_noise(x, params.sigma, params.gray, gen)
    return add_poisson_noise(x, params.poisson_scale, params.gray, gen)


# ---- JPEG -----------------------------------------------------------------------------------------

# Baseline quantisation tables of the JPEG standard (ITU-T T.81 Annex K), natural (row-major) order.
_LUMA_QTABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_CHROMA_QTABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
)


def jpeg_quant_tables(quality: Tensor) -> tuple[Tensor, Tensor]:
    """Luma and chroma tables (N x 8 x 8, float) for integer qualities (N,), IJG scaling, baseline (<= 255)."""
    q = quality.to(torch.int64).clamp(1, 100)
    s = torch.where(q < 50, torch.div(5000, q, rounding_mode="floor"), 200 - 2 * q).view(-1, 1, 1)

    def scaled(base: tuple[tuple[int, ...], ...]) -> Tensor:
        b = torch.tensor(base, dtype=torch.int64, device=q.device)
        return torch.div(b * s + 50, 100, rounding_mode="floor").clamp(1, 255).to(torch.float32)

    return scaled(_LUMA_QTABLE), scaled(_CHROMA_QTABLE)


def _dct_matrix(device: torch.device, dtype: torch.dtype) -> Tensor:
    """Orthonormal 8-point DCT-II matrix D (rows = frequencies): coefficients = D @ block @ D^T."""
    k = torch.arange(8, dtype=torch.float64).view(8, 1)
    n = torch.arange(8, dtype=torch.float64).view(1, 8)
    d = torch.cos((2 * n + 1) * k * math.pi / 16) * math.sqrt(2 / 8)
    d[0] = math.sqrt(1 / 8)
    return d.to(device=device, dtype=dtype)


def _jpeg_plane(plane: Tensor, qtable: Tensor) -> Tensor:
    """Encode+decode 8-bit planes (N x C x H x W, H and W multiples of 8) with per-image tables (N x 8 x 8)."""
    n, c, h, w = plane.shape
    d = _dct_matrix(plane.device, plane.dtype)
    blocks = plane.reshape(n, c, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5) - 128.0
    coef = d @ blocks @ d.T
    q = qtable.to(plane.dtype).view(n, 1, 1, 1, 8, 8)
    coef = torch.round(coef / q) * q
    rec = (d.T @ coef @ d + 128.0).round_().clamp_(0.0, 255.0)
    return rec.permute(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)


def _rgb_to_ycbcr(rgb: Tensor) -> Tensor:
    """JFIF full-range RGB -> YCbCr on the 0-255 scale (N x 3 x H x W)."""
    m = torch.tensor(
        [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
        device=rgb.device,
        dtype=rgb.dtype,
    )
    off = torch.tensor([0.0, 128.0, 128.0], device=rgb.device, dtype=rgb.dtype).view(1, 3, 1, 1)
    return torch.einsum("ij,njhw->nihw", m, rgb) + off


def _ycbcr_to_rgb(ycc: Tensor) -> Tensor:
    """JFIF full-range YCbCr -> RGB on the 0-255 scale (N x 3 x H x W)."""
    y, cb, cr = ycc[:, 0:1], ycc[:, 1:2] - 128.0, ycc[:, 2:3] - 128.0
    r = y + 1.402 * cr
    g = y - 0.344136 * cb - 0.714136 * cr
    b = y + 1.772 * cb
    return torch.cat([r, g, b], dim=1)


def jpeg_compress(x: Tensor, quality: Tensor | Sequence[int] | int) -> Tensor:
    """Baseline JPEG round trip in torch (on x's device) with per-image integer quality in 1..100.

    x is N x 3 x H x W in [0, 1]; returns the decoded image, same shape, 8-bit values / 255. Steps: 8-bit
    RGB -> YCbCr (JFIF), edge-replicate to a multiple of 16, chroma 2x2 average (4:2:0), per-block 8x8
    DCT, quantise by the IJG-scaled standard tables, dequantise, inverse DCT, triangle upsampling of the
    chroma, back to RGB, crop. Entropy coding is lossless and therefore skipped.
    """
    n, c, h, w = x.shape
    if c != 3:
        raise ValueError(f"jpeg_compress expects RGB (3 channels), got {c}")
    q = torch.as_tensor(quality, dtype=torch.int64).reshape(-1)
    if q.numel() == 1:
        q = q.expand(n)
    if q.numel() != n:
        raise ValueError(f"{q.numel()} qualities for {n} images")
    luma_q, chroma_q = jpeg_quant_tables(q.to(x.device))
    work = x.float()
    img = (work.clamp(0.0, 1.0) * 255.0).round()
    img = F.pad(img, (0, (-w) % 16, 0, (-h) % 16), mode="replicate")
    ycc = _rgb_to_ycbcr(img).round_().clamp_(0.0, 255.0)
    y = _jpeg_plane(ycc[:, :1], luma_q)
    chroma = F.avg_pool2d(ycc[:, 1:], 2).round_()
    chroma = _jpeg_plane(chroma, chroma_q)
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False).round_()
    rgb = _ycbcr_to_rgb(torch.cat([y, chroma], dim=1)).round_().clamp_(0.0, 255.0)
    return (rgb[:, :, :h, :w] / 255.0).to(x.dtype)


# --------------------------------------------------------------------------------------------------
# Pipeline
# --------------------------------------------------------------------------------------------------


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

    first = [_sample_stage(u, cfg.first, (h, w)) for u in _uniforms(gen, b, _STAGE_SLOTS)]
    first = _shared(first, cfg.shared_resize)
    xs = _run_stage(xs, first, gen)

    on = [u[0] < cfg.second_stage_prob for u in _uniforms(gen, b, 1)]
    second_all = [_sample_stage(u, cfg.second, lr_size) for u in _uniforms(gen, b, _STAGE_SLOTS)]
    second_all = _shared(second_all, cfg.shared_resize)
    second = [p if flag else None for p, flag in zip(second_all, on)]
    xs = _run_stage(xs, second, gen)

    final = [_sample_final(u, cfg.final, lr_size) for u in _uniforms(gen, b, _FINAL_SLOTS)]
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

"""The degradation's configuration: every range and probability, checked when built, loadable from YAML.

Defaults are INVSR.md's training recipe (first stage, milder second stage, final resize + sinc + JPEG);
the design choices behind them are listed in `invsr_train.degradations`.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from invsr_train.kernels import KERNEL_TYPES

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

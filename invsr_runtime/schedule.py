"""The InvSR sampling schedule: alphas_cumprod of SD-Turbo's scheduler, sigmas, timesteps.

One source of truth for the runtime, the exporter and the PyTorch reference (numpy only).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

#: SD-Turbo's scheduler config (EulerDiscreteScheduler): only these fields matter to InvSR.
SD_TURBO_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
}


def alphas_cumprod(
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
    num_train_timesteps: int = 1000,
    beta_schedule: str = "scaled_linear",
) -> np.ndarray:
    """Cumulative product of (1 - beta) over the training timesteps, float64, shape [num_train_timesteps]."""
    if beta_schedule == "scaled_linear":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=np.float64) ** 2
    elif beta_schedule == "linear":
        betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)
    else:
        raise ValueError(f"unsupported beta_schedule {beta_schedule!r}: use 'scaled_linear' or 'linear'")
    return np.cumprod(1.0 - betas)


#: Paper timesteps used for 1..5 sampling steps (InvSR's released defaults).
DEFAULT_TIMESTEPS: dict[int, tuple[int, ...]] = {
    1: (200,),
    2: (200, 100),
    3: (200, 100, 50),
    4: (200, 150, 100, 50),
    5: (250, 200, 150, 100, 50),
}

#: Largest paper timestep allowed: the paper keeps SNR > 1.44, i.e. t <= 250.
MAX_TIMESTEP = 250
#: Most sampling steps InvSR supports (1 to 5, chosen at run time).
MAX_STEPS = max(DEFAULT_TIMESTEPS)


class ScheduleError(ValueError):
    """A requested number of steps or list of timesteps is not a valid InvSR schedule."""


def _parse_timesteps(timesteps: Sequence[int] | str) -> tuple[int, ...]:
    """Turn "200,100" or a sequence into a tuple of ints, refusing non-integers."""
    items = [s.strip() for s in timesteps.split(",")] if isinstance(timesteps, str) else list(timesteps)
    values = []
    for item in items:
        try:
            value = int(item)
        except (TypeError, ValueError):
            raise ScheduleError(f"timestep {item!r} is not an integer: pass e.g. '200,100'") from None
        if isinstance(item, (float, np.floating)) and value != item:
            raise ScheduleError(f"timestep {item!r} is not an integer: pass whole numbers such as 200")
        values.append(value)
    return tuple(values)


def resolve_timesteps(
    steps: int | None = None, timesteps: Sequence[int] | str | None = None
) -> tuple[int, ...]:
    """Return the validated paper timesteps for a run.

    Only `steps` -> the defaults for that count; `timesteps` (sequence or "200,100") -> those,
    checked strictly decreasing, each in 1..250, at most 5 of them; both -> their count must equal `steps`.
    Neither -> the 1-step default.
    """
    valid_count = isinstance(steps, (int, np.integer)) and not isinstance(steps, bool) and 1 <= steps <= MAX_STEPS
    if steps is not None and not valid_count:
        raise ScheduleError(f"steps must be 1..{MAX_STEPS}, got {steps}")
    if timesteps is None:
        return DEFAULT_TIMESTEPS[int(steps) if steps is not None else 1]
    ts = _parse_timesteps(timesteps)
    if not ts:
        raise ScheduleError("timesteps is empty: pass 1 to 5 values such as '200,100'")
    if steps is not None and len(ts) != steps:
        raise ScheduleError(f"got {len(ts)} timesteps {ts} for steps={steps}: pass exactly {steps} values")
    if len(ts) > MAX_STEPS:
        raise ScheduleError(f"got {len(ts)} timesteps {ts}: InvSR samples in 1 to {MAX_STEPS} steps")
    for t in ts:
        if not 1 <= t <= MAX_TIMESTEP:
            raise ScheduleError(f"timestep {t} is out of range: each must be in 1..{MAX_TIMESTEP} (0 is invalid)")
    if any(a <= b for a, b in zip(ts, ts[1:])):
        raise ScheduleError(f"timesteps {ts} must be strictly decreasing, e.g. '200,100'")
    return ts


def sigma(t: int, alphas_cumprod: np.ndarray) -> float:
    """Noise level of paper timestep t: sqrt((1 - abar) / abar) with abar = alphas_cumprod[t - 1]."""
    if not 1 <= t <= len(alphas_cumprod):
        raise ScheduleError(f"timestep {t} is outside 1..{len(alphas_cumprod)}: use a paper timestep such as 200")
    abar = float(alphas_cumprod[t - 1])
    return float(np.sqrt((1.0 - abar) / abar))


@dataclass(frozen=True)
class Schedule:
    """Everything the sampler needs per step: paper and network timesteps, current and next sigma."""

    timesteps: tuple[int, ...]
    net_timesteps: tuple[int, ...]
    sigmas: np.ndarray
    sigmas_next: np.ndarray

    @property
    def steps(self) -> int:
        """Number of sampling steps."""
        return len(self.timesteps)


def make_schedule(timesteps: Sequence[int] | str, alphas_cumprod: np.ndarray) -> Schedule:
    """Build the Schedule for validated paper timesteps (the last step's next sigma is 0)."""
    ts = resolve_timesteps(timesteps=timesteps)
    sigmas = np.array([sigma(t, alphas_cumprod) for t in ts], dtype=np.float64)
    sigmas_next = np.append(sigmas[1:], 0.0).astype(np.float64)
    return Schedule(
        timesteps=ts,
        net_timesteps=tuple(t - 1 for t in ts),
        sigmas=sigmas,
        sigmas_next=sigmas_next,
    )

"""`ServeConfig`: everything the service needs, one checked value (the CLI, tests and Ray build it)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from invsr_runtime.budget import DEFAULT_MAX_PIXELS


class ConfigError(ValueError):
    """A service setting that cannot work (one line: which, and what is allowed)."""


@dataclass(frozen=True)
class ServeConfig:
    """Service settings. Limits bound memory and time: body bytes, pixels per image and in flight,
    queued requests, seconds per request."""

    engine_dir: Path
    backend: str = "auto"
    devices: tuple[int, ...] = ()
    max_batch_wait_ms: float = 5.0
    max_pixels: int = 2048 * 2048
    max_body_mb: float = 50.0
    max_queue: int = 64
    max_inflight_pixels: int = DEFAULT_MAX_PIXELS
    request_timeout: float = 120.0
    api_key: str | None = field(default=None, repr=False)
    cors: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "engine_dir", Path(self.engine_dir))
        object.__setattr__(self, "devices", tuple(int(d) for d in self.devices))
        for name in ("max_pixels", "max_queue", "max_inflight_pixels"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("max_body_mb", "request_timeout"):
            value = float(getattr(self, name))
            if not value > 0 or value != value or value == float("inf"):
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive number, got {value}")
        if not 0 <= float(self.max_batch_wait_ms) <= 1000:
            raise ConfigError(f"--max-batch-wait-ms must be 0..1000, got {self.max_batch_wait_ms}")
        if self.max_inflight_pixels < self.max_pixels:
            object.__setattr__(self, "max_inflight_pixels", self.max_pixels)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)


def api_key_from_env(name: str | None) -> str | None:
    """The API key held by environment variable `name` (None: no key); ConfigError if it is unset or empty."""
    if not name:
        return None
    value = os.environ.get(name, "")
    if not value.strip():
        raise ConfigError(f"--api-key-env {name}: the environment variable is unset or empty; export it first")
    return value.strip()

"""`RunOptions`: how to upscale a set of images, as one checked value instead of an argparse.Namespace.

`invsr-run` builds it from its flags; the HTTP service and the Ray jobs construct it directly. It is checked
when made (no file access): a bad value raises `RunOptionError` naming the option, which the CLI turns
into `--option ...` and a service into a 4xx answer.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from .backends import BACKEND_CHOICES
from .budget import DEFAULT_MAX_PIXELS
from .colorfix import COLOR_FIXES
from .imageio import OUTPUT_FORMATS
from .schedule import MAX_STEPS
from .upscaler import check_int


class RunOptionError(ValueError):
    """One option has a value that cannot work: `option` is its name, the message says why."""

    def __init__(self, option: str, detail: str) -> None:
        super().__init__(f"{option} {detail}")
        self.option, self.detail = option, detail


@dataclass(frozen=True)
class RunOptions:
    """Everything one run needs besides the images: engine folder, output, schedule, noise, batching, format."""

    engine_dir: Path
    out: Path
    inputs: tuple[Path | str, ...] = ()  # URIs (s3://, file://) stay strings: only Ray jobs read them
    steps: int | None = None
    timesteps: str | tuple[int, ...] | None = None
    color_fix: str = "none"
    seed: int = 0
    tile_batch: int | None = None
    backend: str = "auto"
    format: str = "png"
    overwrite: bool = False
    recursive: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    devices: str | tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.devices, str):
            object.__setattr__(self, "devices", parse_devices(self.devices))
        object.__setattr__(self, "engine_dir", Path(self.engine_dir))
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "inputs", tuple(p if "://" in str(p) else Path(p) for p in self.inputs))
        self._check()

    def _check(self) -> None:
        """RunOptionError for the first value that cannot work."""
        for name, minimum, optional in (("steps", None, True), ("seed", 0, False), ("tile_batch", 1, True),
                                        ("max_pixels", 0, False)):
            try:  # the API's own check: TypeError for a non-int (str, float, bool, None), ValueError when too small
                check_int(name, getattr(self, name), minimum, optional)
            except (TypeError, ValueError) as exc:
                detail = str(exc).removeprefix(f"{name} ")
                raise RunOptionError(name, detail + (" (0: no limit)" if name == "max_pixels" else "")) from None
        if self.devices is not None and (not self.devices or len(set(self.devices)) != len(self.devices)
                                         or any(isinstance(d, bool) or not isinstance(d, int) or d < 0
                                                for d in self.devices)):
            raise RunOptionError("devices", f"must be distinct GPU ids >= 0 such as 0,1, got {self.devices!r}")
        if self.steps is not None and not 1 <= self.steps <= MAX_STEPS:
            raise RunOptionError("steps", f"must be 1..{MAX_STEPS}, got {self.steps}")
        for name, value, choices in (("color_fix", self.color_fix, COLOR_FIXES),
                                     ("backend", self.backend, BACKEND_CHOICES),
                                     ("format", self.format, tuple(OUTPUT_FORMATS))):
            if value not in choices:
                raise RunOptionError(name, f"must be one of {', '.join(choices)}, got {value!r}")

    @staticmethod
    def from_mapping(values: Mapping[str, Any]) -> "RunOptions":
        """From a mapping of field names (argparse's vars(), a JSON body); an unknown name is refused."""
        known = {f.name for f in fields(RunOptions)}
        for key in values:
            if key not in known:
                raise RunOptionError(key, f"is not an option: use {', '.join(sorted(known))}")
        return RunOptions(**values)


def parse_devices(text: str) -> tuple[int, ...]:
    """ "0,1" -> (0, 1); RunOptionError naming --devices for anything else."""
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise RunOptionError("devices", f"must be comma-separated GPU ids such as 0,1, got {text!r}") from None


def option_flag(option: str) -> str:
    """The CLI spelling of an option name: tile_batch -> --tile-batch."""
    return "--" + option.replace("_", "-")


"""HTTP <-> runtime: query parameters to checked values, request bodies to frames, frames to response bytes.

Pure transforms (no state, no I/O besides the bytes given): the same encoder as `invsr-run` writes files
with, so the service's answer is byte for byte the file `invsr-run` would write for the same image,
parameters and seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from PIL import Image

from invsr_runtime.colorfix import COLOR_FIXES
from invsr_runtime.imageio import OUTPUT_FORMATS, Frames, Picture, encode_picture, frames_to_bytes, read_frames
from invsr_runtime.schedule import MAX_STEPS

MEDIA_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}
#: Status per ImageReadError kind: too big 413, not an image 415, anything else about the bytes 422.
READ_ERROR_STATUS = {"too_large": 413, "unsupported": 415, "empty": 422, "invalid": 422, "corrupt": 422,
                     "missing": 422}
_PARAMS = ("steps", "timesteps", "color_fix", "seed", "format")


class ParamError(ValueError):
    """A query parameter that cannot work (the message names it and what is allowed): HTTP 400."""


@dataclass(frozen=True)
class UpscaleParams:
    """What a client may choose per request (the defaults are invsr-run's)."""

    steps: int | None = None
    timesteps: str | None = None
    color_fix: str = "none"
    seed: int = 0
    format: str = "png"


def _int(name: str, text: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ParamError(f"{name} must be an integer {low}..{high}, got {text!r}") from None
    if not low <= value <= high:
        raise ParamError(f"{name} must be {low}..{high}, got {value}")
    return value


def parse_params(query: Mapping[str, str]) -> UpscaleParams:
    """UpscaleParams from a query string's values; ParamError for an unknown name or a bad value."""
    for key in query:
        if key not in _PARAMS:
            raise ParamError(f"unknown parameter {key!r}: use {', '.join(_PARAMS)}")
    steps = _int("steps", query["steps"], 1, MAX_STEPS) if "steps" in query else None
    seed = _int("seed", query["seed"], 0, 2**63 - 1) if "seed" in query else 0
    color_fix = query.get("color_fix", "none")
    if color_fix not in COLOR_FIXES:
        raise ParamError(f"color_fix must be one of {', '.join(COLOR_FIXES)}, got {color_fix!r}")
    fmt = query.get("format", "png")
    if fmt not in OUTPUT_FORMATS:
        raise ParamError(f"format must be one of {', '.join(OUTPUT_FORMATS)}, got {fmt!r}")
    timesteps = query.get("timesteps") or None
    return UpscaleParams(steps=steps, timesteps=timesteps, color_fix=color_fix, seed=seed, format=fmt)


def decode_image(data: bytes, max_pixels: int, scale: int, name: str = "image") -> Frames:
    """Every frame of the uploaded image. The pixel limit is checked from the header, before decoding,
    and Pillow's decompression-bomb guard stays on. ImageReadError (with its `kind`) otherwise."""
    return read_frames(data, max_pixels=max_pixels, scale=scale, name=name)


def encode_image(outputs: list[Picture], frames: Frames, fmt: str) -> tuple[bytes, list[str]]:
    """The upscaled frames as one file's bytes in `fmt`, plus the notes worth a warning header."""
    notes: list[str] = []
    encoded: list[Image.Image] = []
    for pic in outputs:
        image, frame_notes = encode_picture(pic, fmt)
        encoded.append(image)
        notes += [n for n in frame_notes if n not in notes]
    data, more = frames_to_bytes(encoded, fmt, frames.durations, frames.loop)
    return data, notes + more

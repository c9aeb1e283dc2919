"""How much memory upscaling one image takes, and the pixel limit that keeps a run from exhausting it.

The tiles themselves are small; what grows with the image is the x4 output: the blender keeps a float64
RGB sum and a float64 weight per output pixel, normalising makes a float64 and a float32 copy, and the
result is clipped and converted to 8/16-bit once more before encoding. `upscale_memory_bytes` adds
those up (measured against tracemalloc in tests/test_inputs_hardening.py); `check_image_size` refuses an
image over `max_pixels` before any of it is allocated, with one line naming the estimate and the knob.
"""
from __future__ import annotations

#: Default limit on input pixels per image: 4096 x 4096, whose x4 upscale needs about 21 GiB.
DEFAULT_MAX_PIXELS = 4096 * 4096

# Bytes per *output* pixel at the peak: blender sum (3 x f64) + weight (f64) + normalised f64 copy
# (3 x f64) + float32 result (3 x f32) + clipped float32 copy (3 x f32).
_OUT_BYTES = 3 * 8 + 8 + 3 * 8 + 3 * 4 + 3 * 4
# Bytes per *input* pixel: decoded float32 RGB, its clipped copy and the padded copy (3 x f32 each).
_IN_BYTES = 3 * 3 * 4
# Per output pixel of every frame kept for writing (8-bit RGBA at most).
_KEPT_FRAME_BYTES = 4


class ImageTooLarge(ValueError):
    """An image over the pixel limit (one line: size, limit, memory estimate, how to raise the limit)."""


def upscale_memory_bytes(height: int, width: int, scale: int = 4, frames: int = 1) -> int:
    """Estimated peak bytes to upscale an image of `frames` frames of height x width by `scale`."""
    lr = height * width
    hr = lr * scale * scale
    kept = (frames - 1) * hr * _KEPT_FRAME_BYTES
    return lr * _IN_BYTES + hr * _OUT_BYTES + kept


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def check_image_size(height: int, width: int, max_pixels: int | None, scale: int = 4, frames: int = 1,
                     flag: str = "--max-pixels") -> None:
    """Raise ImageTooLarge when the image needs more memory than a still of `max_pixels` pixels would
    (for a still: when height x width > max_pixels). None or 0: no limit."""
    if not max_pixels:
        return
    need = upscale_memory_bytes(height, width, scale, frames)
    allowed = upscale_memory_bytes(1, max_pixels, scale)
    if need <= allowed:
        return
    what = f"{width}x{height}" + (f" x {frames} frames" if frames > 1 else "")
    raise ImageTooLarge(
        f"{what} is over the limit of {max_pixels:,} pixels ({flag}): upscaling it needs about "
        f"{_gib(need)} of memory (the limit allows {_gib(allowed)}); raise {flag} to try anyway")

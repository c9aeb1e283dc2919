"""How much memory upscaling one image takes, and the pixel limit that keeps a run from exhausting it.

The blend streams (`invsr_runtime.blend`): what grows with the image is the x4 output in its final
8-bit form, the decoded input and the scheduler's padded copy of it; one tile-height float32 band
(the blender's ring) grows with the width only, and the tile batches in flight are a constant.
`upscale_memory_bytes` adds those up (measured against tracemalloc in tests/test_inputs_hardening.py);
`check_image_size` refuses an image over `max_pixels` before any of it is allocated, with one line
naming the estimate and the knob.
"""
from __future__ import annotations

#: Default limit on input pixels per image: 4096 x 4096, whose x4 upscale needs about 1.4 GiB.
DEFAULT_MAX_PIXELS = 4096 * 4096

# Bytes per *output* pixel at the peak: the 8-bit RGB result, assembled in place.
_OUT_BYTES = 3
# Bytes per *input* pixel: decoded float32 RGB and the scheduler's padded planar copy (3 x f32 each).
_IN_BYTES = 2 * 3 * 4
# Engine batches whose float32 output tiles are alive at once, typically (the tile scheduler allows at
# most its output_slots, devices + 3, which a device faster than the host fills).
_BATCHES_IN_FLIGHT = 3
# Per output pixel of every frame kept for writing (8-bit RGBA at most).
_KEPT_FRAME_BYTES = 4


class ImageTooLarge(ValueError):
    """An image over the pixel limit (one line: size, limit, memory estimate, how to raise the limit)."""


def upscale_memory_bytes(height: int, width: int, scale: int = 4, frames: int = 1, tile: int = 128,
                         batch: int = 8) -> int:
    """Estimated peak bytes to upscale an image of `frames` frames of height x width by `scale`
    (engines of `tile` LR pixels and `batch` tiles per call)."""
    out_tile = tile * scale
    ring = 3 * 4 * out_tile * (max(width, tile) + 16) * scale
    tiles = _BATCHES_IN_FLIGHT * batch * 3 * 4 * out_tile * out_tile
    return _pixel_bytes(height, width, scale, frames) + ring + tiles


def _pixel_bytes(height: int, width: int, scale: int, frames: int) -> int:
    """The part of the estimate that grows with the pixel count (what the limit compares)."""
    lr = height * width
    hr = lr * scale * scale
    return lr * _IN_BYTES + hr * _OUT_BYTES + (frames - 1) * hr * _KEPT_FRAME_BYTES


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def check_image_size(height: int, width: int, max_pixels: int | None, scale: int = 4, frames: int = 1,
                     flag: str = "--max-pixels") -> None:
    """Raise ImageTooLarge when the image needs more memory than a still of `max_pixels` pixels would
    (for a still: when height x width > max_pixels). None or 0: no limit."""
    if not max_pixels:
        return
    if _pixel_bytes(height, width, scale, frames) <= _pixel_bytes(1, max_pixels, scale, 1):
        return
    need = upscale_memory_bytes(height, width, scale, frames)
    side = max(1, int(max_pixels ** 0.5))
    allowed = upscale_memory_bytes(side, max(1, max_pixels // side), scale)
    what = f"{width}x{height}" + (f" x {frames} frames" if frames > 1 else "")
    raise ImageTooLarge(
        f"{what} is over the limit of {max_pixels:,} pixels ({flag}): upscaling it needs about "
        f"{_gib(need)} of memory (the limit allows {_gib(allowed)}); raise {flag} to try anyway")

"""Cutting an LR image into overlapping tiles and blending the upscaled tiles back (numpy only).

Geometry (INVSR.md, "Images larger or smaller than one tile"), with `tile` as a parameter:
1. a side shorter than `tile` is reflect-padded, centred, up to `tile` (reflection repeats as needed,
   so 1x1 inputs work);
2. the result is reflect-padded right/bottom to a multiple of 16;
3. tiles of `tile` x `tile` are cut at stride `tile // 2`, the last one of each row/column pulled back
   to the edge; an image of exactly one tile gives one tile;
4. the `tile*scale` outputs are blended with a 2-D Gaussian weight in float64 (with the released
   code's half-pixel offset, see `gaussian_weight`), normalised by the summed weights and cropped back to
   the original image's `scale*h x scale*w` region.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

PAD_MULTIPLE = 16


@dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one image lie. `pad` is the total padding ((top, bottom), (left, right))."""

    lr_h: int
    lr_w: int
    padded_h: int
    padded_w: int
    pad: tuple[tuple[int, int], tuple[int, int]]
    tile: int
    stride: int
    scale: int
    origins: list[tuple[int, int]]

    @property
    def centre_pad(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """The first, centred padding stage (sides shorter than a tile); the rest goes right/bottom."""
        return (_centre_split(self.lr_h, self.tile), _centre_split(self.lr_w, self.tile))

    @property
    def num_tiles(self) -> int:
        """How many tiles the image is cut into."""
        return len(self.origins)


def _centre_split(size: int, tile: int) -> tuple[int, int]:
    """Padding (before, after) that centres a side shorter than `tile` in `tile` pixels."""
    total = max(0, tile - size)
    return total // 2, total - total // 2


def _round_up(size: int, multiple: int) -> int:
    """Smallest multiple of `multiple` that is >= size."""
    return -(-size // multiple) * multiple


def _starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile starts along one axis at `stride`, the last pulled back so it ends at the edge."""
    return list(range(0, length - tile, stride)) + [length - tile]


def plan_tiles(h: int, w: int, tile: int = 128, scale: int = 4) -> TilePlan:
    """Plan the padding and tile origins for an h x w LR image."""
    if h < 1 or w < 1:
        raise ValueError(f"image must be at least 1x1, got {h}x{w}: pass a non-empty image")
    if tile < 2 or scale < 1:
        raise ValueError(f"tile must be >= 2 and scale >= 1, got tile={tile} scale={scale}")
    (top, bottom), (left, right) = _centre_split(h, tile), _centre_split(w, tile)
    centred_h, centred_w = h + top + bottom, w + left + right
    padded_h, padded_w = _round_up(centred_h, PAD_MULTIPLE), _round_up(centred_w, PAD_MULTIPLE)
    stride = tile // 2
    origins = [(y, x) for y in _starts(padded_h, tile, stride) for x in _starts(padded_w, tile, stride)]
    return TilePlan(
        lr_h=h,
        lr_w=w,
        padded_h=padded_h,
        padded_w=padded_w,
        pad=((top, bottom + padded_h - centred_h), (left, right + padded_w - centred_w)),
        tile=tile,
        stride=stride,
        scale=scale,
        origins=origins,
    )


def pad_image(img_hwc: np.ndarray, plan: TilePlan) -> np.ndarray:
    """Reflect-pad an image as planned: centred up to a tile, then right/bottom to a multiple of 16."""
    if img_hwc.ndim != 3 or img_hwc.shape[:2] != (plan.lr_h, plan.lr_w):
        raise ValueError(f"image shape {img_hwc.shape} does not match the plan's {plan.lr_h}x{plan.lr_w}xC")
    (top, bottom), (left, right) = plan.centre_pad
    centred = np.pad(img_hwc, ((top, bottom), (left, right), (0, 0)), mode="reflect")
    extra_h, extra_w = plan.padded_h - centred.shape[0], plan.padded_w - centred.shape[1]
    return np.pad(centred, ((0, extra_h), (0, extra_w), (0, 0)), mode="reflect")


def extract_tiles(padded_hwc: np.ndarray, plan: TilePlan, indices: Sequence[int]) -> np.ndarray:
    """Stack the tiles with the given indices into [N, tile, tile, C]."""
    if padded_hwc.shape[:2] != (plan.padded_h, plan.padded_w):
        raise ValueError(f"padded image is {padded_hwc.shape[:2]}, plan expects "
                         f"{(plan.padded_h, plan.padded_w)}: pass pad_image(img, plan)")
    t = plan.tile
    tiles = [padded_hwc[y:y + t, x:x + t] for y, x in (plan.origins[i] for i in indices)]
    return np.stack(tiles) if tiles else np.empty((0, t, t, padded_hwc.shape[2]), padded_hwc.dtype)


def gaussian_kernel_1d(size: int) -> np.ndarray:
    """The 1-D factor of `gaussian_weight` (float64, length `size`)."""
    sig = 0.3 * ((size - 1) / 2 - 1) + 0.8
    n = size + 1 if size % 2 == 0 else size
    x = np.arange(n, dtype=np.float64) - (n - 1) * 0.5
    g = np.exp((-0.5 / (sig * sig)) * x * x)
    g *= 1.0 / g.sum()
    return g[1:] if n != size else g


def gaussian_weight(size: int) -> np.ndarray:
    """2-D Gaussian blending weight, float64 size x size, sigma = 0.3*((size-1)/2 - 1) + 0.8 (77.15 px for 512).

    The released code's weights: an OpenCV-style normalised Gaussian with that sigma, of length ``size``
    when odd; when even, of length ``size + 1`` with its first tap dropped. So for even sizes the peak is at index ``size // 2 - 1`` (255 for 512), half a pixel
    before the geometric centre, and the weight is not mirror-symmetric. The 2-D weight is the outer
    product of that 1-D kernel with itself.
    """
    g = gaussian_kernel_1d(size)
    return np.outer(g, g)


class TileBlender:
    """Accumulates upscaled tiles with Gaussian weights and returns the blended, cropped image.

    The whole-image float64 definition of the blend (the released code's arithmetic), kept as the
    oracle that `invsr_runtime.blend.StreamingBlender` (what the runtime uses) is tested against.
    """

    def __init__(self, plan: TilePlan, channels: int) -> None:
        self.plan = plan
        self.channels = channels
        s = plan.scale
        self._sum = np.zeros((plan.padded_h * s, plan.padded_w * s, channels), dtype=np.float64)
        self._weight = np.zeros((plan.padded_h * s, plan.padded_w * s), dtype=np.float64)
        self._kernel = gaussian_weight(plan.tile * s)

    def add(self, index: int, out_tile_hwc: np.ndarray) -> None:
        """Add the upscaled output of tile `index` (tile*scale square, HWC)."""
        size = self.plan.tile * self.plan.scale
        if out_tile_hwc.shape != (size, size, self.channels):
            raise ValueError(f"tile {index} output has shape {out_tile_hwc.shape}, "
                             f"expected {(size, size, self.channels)}")
        y, x = (v * self.plan.scale for v in self.plan.origins[index])
        self._sum[y:y + size, x:x + size] += self._kernel[..., None] * out_tile_hwc
        self._weight[y:y + size, x:x + size] += self._kernel

    def result(self) -> np.ndarray:
        """Normalised blend cropped to the original image's scale*h x scale*w region, float32."""
        p, s = self.plan, self.plan.scale
        top, left = p.pad[0][0] * s, p.pad[1][0] * s
        rows, cols = slice(top, top + p.lr_h * s), slice(left, left + p.lr_w * s)
        weight = self._weight[rows, cols]
        if not np.all(weight > 0):
            raise ValueError("some tiles were never added: call add() for every index in plan.origins")
        return (self._sum[rows, cols] / weight[..., None]).astype(np.float32)

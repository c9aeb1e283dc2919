"""Streaming Gaussian blend of upscaled tiles: output rows leave as soon as no later tile touches them.

The blend is the one of `tiling.TileBlender` (the whole-image float64 definition), computed so that
memory does not grow with the image:

- the normalisation is applied once, up front: the tile grid is a Cartesian product, so the summed
  weight at (Y, X) is Wy(Y) * Wx(X) and each tile is added with the already-normalised weight
  (g / Wy) x (g / Wx); no weight canvas, no division at the end;
- float32 accumulation in a ring of `tile*scale` rows x the padded width, planar (C, rows, cols), which
  is exactly what is in flight: once tile row r is complete, every row above tile row r+1's top is
  final and goes to the sink, and its ring rows are reused;
- tiles may arrive in any order (several devices); they are applied in tile-index order, so the sums,
  and therefore the bytes, never depend on batching, order or device count.
"""
from __future__ import annotations

import collections
import threading
from typing import Callable

import numpy as np

from .tiling import TilePlan, gaussian_kernel_1d

#: sink(rows): the next rows of the cropped output, planar float32 (C, n, scale*lr_w), top to bottom;
#: `rows` may be a view of the blender's buffer: valid (and free to modify) only during the call.
RowSink = Callable[[np.ndarray], None]


def use_blend_buffers(tile_px: int) -> None:
    """Set this thread's numpy ufunc buffer for blending `tile_px`-wide tiles (call once, on a blend thread).

    NumPy 2 (measured with 2.4) iterates an operand whose rows are short next to its ufunc buffer (8192
    elements by default) through that buffer, copying it in and out: adding a 512-px tile into the wider
    ring ran at half speed (0.17 vs 0.08 ms per 512x512 channel; the whole null-device host path 1.58 ->
    1.36 CPU ms per tile). A buffer of half a tile row lets the ufunc loop run on the ring directly. The
    arithmetic, and so every byte, is unchanged; the setting is numpy's per-thread context, so no other
    thread's numpy is affected.
    """
    np.setbufsize(max(16, min(8192, tile_px // 2 // 16 * 16)))


def _axis_weights(starts: list[int], length: int, kernel: np.ndarray) -> list[np.ndarray]:
    """Per tile start along one axis: the kernel divided by the summed kernels of all tiles there."""
    total = np.zeros(length, dtype=np.float64)
    for s in starts:
        total[s:s + kernel.size] += kernel
    return [kernel / total[s:s + kernel.size] for s in starts]


def _classes(vectors: list[np.ndarray]) -> list[int]:
    """Index of each vector among the distinct ones (interior tiles share their normalised weights)."""
    seen: dict[bytes, int] = {}
    return [seen.setdefault(v.tobytes(), len(seen)) for v in vectors]


class TileWeights:
    """The normalised 2-D weight of each tile of one TilePlan, float32 S x S.

    Interior tiles share one weight, so an image has a handful of distinct ones (9 for 1024x1024 LR, up to
    25); each is built on first use and shared by the blenders of the image's channels (thread-safe).
    Rebuilding a weight whenever it differed from the previous tile's cost ~20% of the blend's CPU (through
    numpy's casting buffer: with the blend threads' short buffers that is ~7x cheaper, see
    `use_blend_buffers`). The `keep` most recently used ones stay (S x S x 4 bytes each: 1 MiB at S=512):
    a tile row's three (left edge, interior, right edge) for most widths. Measured peak with 1500x1000 LR
    (bytes per output pixel, none / wavelet): keep 1: 4.89 / 6.62, 3: 5.18 / 7.02, 10: 5.46 / 7.24; the
    null-device host time differs by less than run-to-run noise.
    """

    def __init__(self, plan: TilePlan, keep: int = 3) -> None:
        s = plan.scale
        self.size = plan.tile * s
        self.ys = sorted({y for y, _ in plan.origins})
        self.xs = sorted({x for _, x in plan.origins})
        kernel = gaussian_kernel_1d(self.size)
        self._wy = _axis_weights([y * s for y in self.ys], plan.padded_h * s, kernel)
        self._wx = _axis_weights([x * s for x in self.xs], plan.padded_w * s, kernel)
        self._cy, self._cx = _classes(self._wy), _classes(self._wx)
        self.keep = keep
        self._built: collections.OrderedDict[tuple[int, int], np.ndarray] = collections.OrderedDict()
        self.builds = 0
        self._lock = threading.Lock()

    def __call__(self, r: int, c: int) -> np.ndarray:
        """The weight of the tile in tile row r, tile column c (read-only)."""
        key = (self._cy[r], self._cx[c])
        with self._lock:
            weight = self._built.get(key)
            if weight is not None:
                self._built.move_to_end(key)
                return weight
            weight = np.empty((self.size, self.size), dtype=np.float32)  # the float64 product, rounded once
            np.multiply(self._wy[r][:, None], self._wx[c][None, :], out=weight, casting="same_kind")
            weight.flags.writeable = False
            self._built[key] = weight
            self.builds += 1
            if len(self._built) > self.keep:
                self._built.popitem(last=False)
            return weight


class StreamingBlender:
    """Blends the tiles of one TilePlan (tile outputs planar, C x S x S) and streams the cropped rows.
    `weights`: the plan's TileWeights, shared with the blenders of the image's other channels."""

    def __init__(self, plan: TilePlan, sink: RowSink, channels: int = 3, weights: TileWeights | None = None) -> None:
        self.plan, self.sink, self.channels = plan, sink, channels
        s = plan.scale
        self.weights = TileWeights(plan) if weights is None else weights
        self.size = self.weights.size
        self._ys, self._xs = self.weights.ys, self.weights.xs
        self._ring = np.zeros((channels, self.size, plan.padded_w * s), dtype=np.float32)
        self._scratch = np.empty((channels, self.size, self.size), dtype=np.float32)
        self._pending: dict[int, np.ndarray] = {}
        self._next = 0
        self._final = 0  # padded output rows [0, _final) have gone to the sink
        top, left = plan.pad[0][0] * s, plan.pad[1][0] * s
        self._rows = (top, top + plan.lr_h * s)
        self._cols = slice(left, left + plan.lr_w * s)

    @property
    def done(self) -> bool:
        """True once every tile was added and every output row emitted."""
        return self._next == self.plan.num_tiles

    def add(self, index: int, tile_chw: np.ndarray) -> None:
        """Add the output of tile `index` (C x S x S float32); tiles are applied in index order."""
        if tile_chw.shape != (self.channels, self.size, self.size):
            raise ValueError(f"tile {index} output has shape {tile_chw.shape}, "
                             f"expected {(self.channels, self.size, self.size)}")
        if not self._next <= index < self.plan.num_tiles or index in self._pending:
            raise ValueError(f"tile {index} added twice or out of range (0..{self.plan.num_tiles - 1})")
        self._pending[index] = tile_chw
        while self._next in self._pending:
            self._apply(self._next, self._pending.pop(self._next))
            self._next += 1

    def _ring_pieces(self, start: int, stop: int) -> list[tuple[slice, slice]]:
        """(ring rows, offset rows) covering padded output rows [start, stop) (at most one wrap)."""
        pieces, pos = [], start
        while pos < stop:
            ring = pos % self.size
            n = min(stop - pos, self.size - ring)
            pieces.append((slice(ring, ring + n), slice(pos - start, pos - start + n)))
            pos += n
        return pieces

    def _apply(self, index: int, tile: np.ndarray) -> None:
        r, c = divmod(index, len(self._xs))
        s, y, x = self.plan.scale, self._ys[r] * self.plan.scale, self._xs[c] * self.plan.scale
        np.multiply(tile, self.weights(r, c), out=self._scratch)
        for ring, offset in self._ring_pieces(y, y + self.size):
            view = self._ring[:, ring, x:x + self.size]
            np.add(view, self._scratch[:, offset], out=view)
        if c == len(self._xs) - 1:  # tile row r complete: rows above the next tile row are final
            last = r == len(self._ys) - 1
            self._emit(self.plan.padded_h * s if last else self._ys[r + 1] * s)

    def _emit(self, stop: int) -> None:
        start, (top, bottom) = self._final, self._rows
        lo, hi = max(start, top), min(stop, bottom)
        step = max(1, self.size // 2)  # at most half a tile per call keeps the sinks' buffers small
        for ring, _ in self._ring_pieces(lo, hi) if lo < hi else []:
            for first in range(ring.start, ring.stop, step):
                self.sink(self._ring[:, first:min(first + step, ring.stop), self._cols])
        for ring, _ in self._ring_pieces(start, stop):
            self._ring[:, ring] = 0.0
        self._final = stop


def blend_tiles(plan: TilePlan, tiles_chw: np.ndarray) -> np.ndarray:
    """All tiles at once ([N, C, S, S]) -> the cropped blend, planar float32 (a convenience for tests/tools)."""
    rows: list[np.ndarray] = []
    blender = StreamingBlender(plan, lambda r: rows.append(r.copy()), channels=tiles_chw.shape[1])
    for index, tile in enumerate(tiles_chw):
        blender.add(index, np.asarray(tile, dtype=np.float32))
    return np.concatenate(rows, axis=1)


#: Output dtypes the assembler writes directly: float32 in [0, 1], or 8 / 16-bit integers.
OUTPUT_DTYPES = ("float32", "uint8", "uint16")


class ImageAssembler:
    """Writes streamed planar float blocks into the final HxWxC image of `dtype`, clipped (and rounded for
    integers exactly as `imageio.to_uint8` / `to_uint16` do), so no float copy of the whole output exists."""

    def __init__(self, height: int, width: int, channels: int = 3, dtype: str | np.dtype = "float32") -> None:
        self.dtype = np.dtype(dtype)
        if self.dtype.name not in OUTPUT_DTYPES:
            raise ValueError(f"output dtype {self.dtype} not supported: use one of {', '.join(OUTPUT_DTYPES)}")
        self.image = np.empty((height, width, channels), dtype=self.dtype)

    def __call__(self, block: np.ndarray, row: int, col: int = 0, channel: int | None = None) -> None:
        """Put a planar (C, n, m) float32 block (modified in place) at (row, col); `channel`: the block is
        (1, n, m) and holds that channel only (threads may write different channels at once)."""
        n, m = block.shape[1:]
        np.clip(block, 0.0, 1.0, out=block)
        if self.dtype != np.float32:
            block *= float(np.iinfo(self.dtype).max)
            block += 0.5
            block = block.astype(self.dtype)  # truncation after +0.5: the rounding of to_uint8 / to_uint16
        target = self.image[row:row + n, col:col + m]
        channels = range(block.shape[0]) if channel is None else [channel]
        for k, c in enumerate(channels):  # one channel at a time: a transposed assignment is ~4x slower
            target[..., c] = block[k]

"""Bicubic resizing that matches PyTorch's `interpolate(mode="bicubic", align_corners=False)` (numpy only).

The runtime must build exactly the same upsampled input (and colour reference) as the PyTorch reference
pipeline, so both of PyTorch's bicubic kernels are reproduced:

- antialias=False: cubic convolution with a = -0.75, four taps around the source position, taps outside
  the image clamped to the border pixel (replicate).
- antialias=True: PIL-style filter with a = -0.5 whose support is stretched by the downscale factor,
  weights normalised over the taps that fall inside the image.

Each axis becomes an (out x in) weight matrix, so resizing is two small matrix products.

Known difference: PyTorch 2.13's antialiased CPU kernel gives wrong rows when the output width is 1 and
the height changes (every output row uses the first row's weights); this module returns the correct
separable result there. The pipeline never asks for such sizes.
"""
from __future__ import annotations

import numpy as np

_A_PLAIN = -0.75
_A_ANTIALIAS = -0.5


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    """Keys' cubic convolution kernel with parameter a, evaluated at distances x."""
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return np.where(x <= 1.0, near, np.where(x < 2.0, far, 0.0))


def _plain_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out x in) weights of PyTorch's non-antialiased bicubic: 4 taps, border taps clamped."""
    scale = in_size / out_size
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
    base = np.floor(src)
    frac = src - base
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    for k in range(-1, 3):
        idx = np.clip(base.astype(np.int64) + k, 0, in_size - 1)
        np.add.at(weights, (rows, idx), _cubic(frac - k, _A_PLAIN))
    return weights


def _antialias_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out x in) weights of PyTorch's antialiased bicubic: a = -0.5, support scaled when downscaling."""
    scale = in_size / out_size
    support = 2.0 * scale if scale >= 1.0 else 2.0
    inv_scale = 1.0 / scale if scale >= 1.0 else 1.0
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        taps = np.arange(lo, hi, dtype=np.float64)
        w = _cubic((taps - center + 0.5) * inv_scale, _A_ANTIALIAS)
        total = w.sum()
        weights[i, lo:hi] = w / total if total != 0.0 else w
    return weights


def resize_weights(in_size: int, out_size: int, antialias: bool) -> np.ndarray:
    """The (out_size x in_size) float64 matrix that resizes one axis like PyTorch's bicubic."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be >= 1, got in={in_size} out={out_size}: pass a non-empty image and size")
    return _antialias_weights(in_size, out_size) if antialias else _plain_weights(in_size, out_size)


def bicubic_resize(img_hwc: np.ndarray, out_h: int, out_w: int, antialias: bool) -> np.ndarray:
    """Resize an HWC image (any channel count) to out_h x out_w, float32, like torch bicubic.

    A 2-D (HW) array is accepted and returned as 2-D. Values are not clamped (bicubic overshoots,
    as in PyTorch).
    """
    img = np.asarray(img_hwc)
    if img.ndim not in (2, 3):
        raise ValueError(f"expected an HWC (or HW) image, got shape {img.shape}: pass one image, not a batch")
    wh = resize_weights(img.shape[0], int(out_h), antialias)
    ww = resize_weights(img.shape[1], int(out_w), antialias)
    x = img.astype(np.float64, copy=False)
    if img.ndim == 2:
        return np.ascontiguousarray(wh @ x @ ww.T, dtype=np.float32)
    (h, w, c), out_h, out_w = x.shape, wh.shape[0], ww.shape[0]
    rows = (wh @ x.reshape(h, w * c)).reshape(out_h, w, c)  # BLAS matmuls, one per axis
    out = ww @ rows.transpose(1, 0, 2).reshape(w, out_h * c)
    return np.ascontiguousarray(out.reshape(out_w, out_h, c).transpose(1, 0, 2), dtype=np.float32)


def resize_taps(in_size: int, out_size: int, antialias: bool) -> tuple[np.ndarray, np.ndarray]:
    """The rows of `resize_weights` in sparse form: (index [out, K] int64, weight [out, K] float64).

    Output pixel i is sum_k weight[i, k] * input[index[i, k]]; unused taps have weight 0. Built without
    the dense (out x in) matrix, so one band of a very large resize costs only its own rows.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be >= 1, got in={in_size} out={out_size}: pass a non-empty image and size")
    scale = in_size / out_size
    if not antialias:
        src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
        base = np.floor(src)
        offsets = np.arange(-1, 3)
        index = np.clip(base.astype(np.int64)[:, None] + offsets, 0, in_size - 1)
        return index, _cubic((src - base)[:, None] - offsets, _A_PLAIN)
    support = 2.0 * scale if scale >= 1.0 else 2.0
    inv_scale = 1.0 / scale if scale >= 1.0 else 1.0
    center = scale * (np.arange(out_size, dtype=np.float64) + 0.5)
    lo = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
    hi = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size)
    taps = lo[:, None] + np.arange(int((hi - lo).max()))
    valid = taps < hi[:, None]
    weight = np.where(valid, _cubic((taps - center[:, None] + 0.5) * inv_scale, _A_ANTIALIAS), 0.0)
    total = weight.sum(axis=1, keepdims=True)
    weight = np.divide(weight, total, out=weight.copy(), where=total != 0.0)
    return np.where(valid, taps, lo[:, None]), weight  # unused taps point at a used one (weight 0)


class ResizedRows:
    """Rows of `bicubic_resize(image, scale*h, scale*w, antialias)` on demand, planar float32
    (C, n, scale*w), from sparse taps, for streaming consumers (colour-fix reference, alpha).

    Columns are resized first, on just the input rows a band reads, then rows are gathered (whole rows,
    contiguous), which keeps a band's cost and memory proportional to its own size."""

    def __init__(self, image_hwc: np.ndarray, scale: int, antialias: bool) -> None:
        h, w = image_hwc.shape[:2]
        self.lr = np.asarray(image_hwc, dtype=np.float32).transpose(2, 0, 1)  # a view when already float32
        rows_index, rows_weight = resize_taps(h, h * scale, antialias=antialias)
        cols_index, cols_weight = resize_taps(w, w * scale, antialias=antialias)
        self.rows_index, self.rows_weight = rows_index, rows_weight.astype(np.float32)
        self.cols_index, self.cols_weight = cols_index.T.copy(), cols_weight.T.astype(np.float32)

    def rows(self, start: int, stop: int, col_start: int = 0, col_stop: int | None = None) -> np.ndarray:
        """Reference rows [start, stop), columns [col_start, col_stop)."""
        index, weight = self.rows_index[start:stop], self.rows_weight[start:stop]
        first, last = int(index.min()), int(index.max()) + 1
        wide = _weighted_taps(self.lr[:, first:last], self.cols_index[:, col_start:col_stop],
                              self.cols_weight[:, col_start:col_stop], axis=2)
        return _weighted_taps(wide, (index - first).T, weight.T[:, None, :, None], axis=1)


def _weighted_taps(src: np.ndarray, indices: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """sum over taps k of take(src, indices[k], axis) * weights[k], accumulated in tap order.

    `np.take` into one reused buffer: fancy indexing along the last axis was ~5x slower, and a fresh
    temporary per tap cost page faults (the reference rows of a colour-fix band: 1.2 -> 0.44 ms)."""
    out = np.take(src, indices[0], axis=axis)
    out *= weights[0]
    tap = np.empty_like(out)
    for idx, weight in zip(indices[1:], weights[1:]):
        np.take(src, idx, axis=axis, out=tap, mode="clip")  # indices are in range; "clip" skips a buffered copy
        tap *= weight
        out += tap
    return out

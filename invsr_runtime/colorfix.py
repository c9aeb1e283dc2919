"""Optional colour correction of the super-resolved image against the LR image (numpy only).

The reference is the LR image upsampled with antialiased bicubic (from the un-padded LR, so it lines
up with the output). `wavelet` keeps the output's high frequencies and the reference's low frequencies
(5 levels of a dilated 3x3 [1,2,1] blur); `ycbcr` keeps the output's luma and the reference's chroma.

The runtime applies the fix band by band (`ColorFixStream`) as the streaming blender emits rows: the
reference rows come from the sparse bicubic taps, and since the blur is linear (replicate padding
included), out_high + ref_low == out + low(ref - out), one decomposition per band, computed over the
band plus `WAVELET_HALO` rows on each side (5 levels, dilations 1..16: 1+2+4+8+16 = 31 rows).
"""
from __future__ import annotations

import numpy as np

from typing import Callable

from .resize import ResizedRows, bicubic_resize

COLOR_FIXES = ("none", "wavelet", "ycbcr")
WAVELET_LEVELS = 5
#: Rows a wavelet low band reads on each side of a row: the sum of the dilations 2**i.
WAVELET_HALO = sum(2**i for i in range(WAVELET_LEVELS))

# BT.601 full range, offsets of 0.5 on Cb/Cr for values in [0, 1].
_RGB_TO_YCBCR = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=np.float64
)
_YCBCR_TO_RGB = np.linalg.inv(_RGB_TO_YCBCR)
_CHROMA_OFFSET = np.array([0.0, 0.5, 0.5])


def color_reference(lr_hwc: np.ndarray, scale: int = 4) -> np.ndarray:
    """The colour reference: the un-padded LR image upsampled x`scale` with antialiased bicubic."""
    h, w = lr_hwc.shape[:2]
    return bicubic_resize(lr_hwc, h * scale, w * scale, antialias=True)


def _blur(img: np.ndarray, dilation: int) -> np.ndarray:
    """3x3 [1,2,1]x[1,2,1]/16 blur with the given dilation and replicate padding, per channel."""
    d = dilation
    padded = np.pad(img, ((d, d), (d, d), (0, 0)), mode="edge")
    h, w = img.shape[:2]
    taps = (1.0, 2.0, 1.0)
    out = np.zeros_like(img)
    for i, wy in enumerate(taps):
        for j, wx in enumerate(taps):
            out += (wy * wx / 16.0) * padded[i * d:i * d + h, j * d:j * d + w]
    return out


def wavelet_decompose(img_hwc: np.ndarray, levels: int = WAVELET_LEVELS) -> tuple[np.ndarray, np.ndarray]:
    """Split an image into (high, low) bands, float64: low_i = blur(low_{i-1}, dilation 2**i).

    high is the sum of the per-level differences low_{i-1} - low_i, so high + low == image.
    """
    low = np.asarray(img_hwc, dtype=np.float64)
    high = np.zeros_like(low)
    for i in range(levels):
        blurred = _blur(low, 2**i)
        high += low - blurred
        low = blurred
    return high, low


def _wavelet_fix(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Output's high frequencies plus the reference's low frequencies."""
    high, _ = wavelet_decompose(out)
    _, low = wavelet_decompose(ref)
    return high + low


def _ycbcr_fix(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Luma of the output with the chroma of the reference (RGB channels; extra channels from out)."""
    y = out[..., :3].astype(np.float64) @ _RGB_TO_YCBCR.T + _CHROMA_OFFSET
    c = ref[..., :3].astype(np.float64) @ _RGB_TO_YCBCR.T + _CHROMA_OFFSET
    mixed = np.concatenate([y[..., :1], c[..., 1:]], axis=-1)
    rgb = (mixed - _CHROMA_OFFSET) @ _YCBCR_TO_RGB.T
    return np.concatenate([rgb, out[..., 3:].astype(np.float64)], axis=-1)


def apply_color_fix(out_hwc: np.ndarray, reference_hwc: np.ndarray, method: str) -> np.ndarray:
    """Correct the colours of `out_hwc` towards `reference_hwc` with `method`; float32, clipped to [0, 1].

    "none" returns the image unchanged. Grayscale (C=1): wavelet works per channel, ycbcr is a no-op.
    """
    if method not in COLOR_FIXES:
        raise ValueError(f"unknown colour fix {method!r}: use one of {', '.join(COLOR_FIXES)}")
    if method == "none" or (method == "ycbcr" and out_hwc.ndim == 3 and out_hwc.shape[2] < 3):
        return out_hwc
    if out_hwc.ndim != 3 or out_hwc.shape != reference_hwc.shape:
        raise ValueError(f"output {out_hwc.shape} and reference {reference_hwc.shape} must be HWC of the same "
                         "shape: build the reference with color_reference(lr, scale)")
    fixed = _wavelet_fix(out_hwc, reference_hwc) if method == "wavelet" else _ycbcr_fix(out_hwc, reference_hwc)
    return np.clip(fixed, 0.0, 1.0).astype(np.float32)


# ------------------------------------------------------------------------------------ band by band
class ReferenceRows(ResizedRows):
    """Rows of `color_reference(lr, scale)` on demand, planar float32 (C, n, scale*w): antialiased bicubic."""

    def __init__(self, lr_hwc: np.ndarray, scale: int = 4) -> None:
        super().__init__(lr_hwc, scale, antialias=True)


def _blur_planar(x: np.ndarray, d: int, edges: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """16 x `_blur` on a planar block (C, n, m), separably, [1, 2, 1] as two [1, 1] sums per axis (4 passes,
    not 8). A side that is the image's edge (top, bottom, left, right) is replicate-padded; any other side
    consumes d of the block's own extra rows/columns."""
    top, bottom, left, right = (d if edge else 0 for edge in edges)
    p = np.pad(x, ((0, 0), (top, bottom), (left, right)), mode="edge") if top or bottom or left or right else x
    v = p[:, :-d] + p[:, d:]
    v = v[:, :-d] + v[:, d:]
    h = v[:, :, :-d] + v[:, :, d:]
    return h[:, :, :-d] + h[:, :, d:]


def wavelet_low(x: np.ndarray, edges: tuple[bool, bool, bool, bool], levels: int = WAVELET_LEVELS) -> np.ndarray:
    """The low band of a planar block (C, n, m); each side that is not an image edge (top, bottom, left,
    right) loses WAVELET_HALO rows / columns. The blurs' 1/16 factors are applied once at the end (a power
    of two: the same as scaling at each level)."""
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    for i in range(levels):
        x = _blur_planar(x, 2**i, edges)
    x *= 16.0 ** -levels
    return x


def _ycbcr_matrix() -> np.ndarray:
    """K with ycbcr_fix(out, ref) == out + K (ref - out) for RGB: the chroma part of the reference's colour."""
    keep_chroma = np.diag([0.0, 1.0, 1.0])
    return (_YCBCR_TO_RGB @ keep_chroma @ _RGB_TO_YCBCR).astype(np.float32)


class ColorFixStream:
    """Colour fix of a streamed image: push output rows in order (planar float32); the fixed image goes to
    `sink(block, row, col)` in planar float32 blocks (which the sink may modify).

    Both fixes are out + F(ref - out) with F linear: the wavelet low band (so a row is fixed once the
    WAVELET_HALO rows below it have arrived) or a 3x3 colour matrix (`ycbcr`, row by row). The work goes
    in blocks of `block` columns (+ halo), so its scratch memory does not grow with the image.
    Call `finish()` after the last rows.
    """

    def __init__(self, lr_hwc: np.ndarray, scale: int, method: str, sink: Callable[[np.ndarray, int, int], None],
                 block: int = 512) -> None:
        if method not in COLOR_FIXES:
            raise ValueError(f"unknown colour fix {method!r}: use one of {', '.join(COLOR_FIXES)}")
        self.method, self.sink, self.block = method, sink, max(1, block)
        self.height, self.width = lr_hwc.shape[0] * scale, lr_hwc.shape[1] * scale
        self.halo = WAVELET_HALO if method == "wavelet" else 0
        self.reference = ReferenceRows(lr_hwc, scale) if method != "none" else None
        self._ycbcr = _ycbcr_matrix()
        self._held: np.ndarray | None = None  # wavelet: rows [_start, _end) in a rolling buffer
        self._start = 0  # first held row
        self._end = 0  # one past the last pushed row
        self._done = 0  # rows [0, _done) went to the sink

    def push(self, rows: np.ndarray) -> None:
        """The next rows of the blended output (C, n, W); the caller may reuse `rows` afterwards."""
        n = rows.shape[1]
        self._end += n
        if self.method == "none":
            self.sink(rows, self._done, 0)
            self._done = self._end
        elif self.method == "ycbcr":
            self._start = self._end - n
            self._fix(self._end, rows)
        else:
            self._hold(rows)
            ready = self._end - self.halo if self._end < self.height else self._end
            self._fix(ready, self._held[:, :self._end - self._start])
            keep = max(self._start, self._done - self.halo)  # rows the next band still reads
            kept = self._held[:, keep - self._start:self._end - self._start]
            self._held[:, :kept.shape[1]] = kept.copy() if keep > self._start else kept
            self._start = keep

    def _hold(self, rows: np.ndarray) -> None:
        """Append rows to the rolling buffer (grown only when a band is taller than any before)."""
        used, n = self._end - rows.shape[1] - self._start, rows.shape[1]
        if self._held is None or self._held.shape[1] < used + n:
            grown = np.empty((rows.shape[0], used + n + 2 * self.halo, self.width), dtype=np.float32)
            if self._held is not None:
                grown[:, :used] = self._held[:, :used]
            self._held = grown
        self._held[:, used:used + n] = rows

    def finish(self) -> None:
        """Check that every row went through (all rows must have been pushed)."""
        if self._done != self.height:
            raise ValueError(f"colour fix got {self._end} of {self.height} rows: push every row before finish()")

    def _fix(self, ready: int, held: np.ndarray) -> None:
        """Fix rows [_done, ready) from `held` (rows [_start, _end)) and send them to the sink."""
        if ready <= self._done:
            return
        first, last, halo = self._done, ready, self.halo
        lo, hi = max(0, first - halo), min(self.height, last + halo)
        out = held[:, lo - self._start:hi - self._start]
        for c0 in range(0, self.width, self.block):
            c1 = min(self.width, c0 + self.block)
            cl, cr = max(0, c0 - halo), min(self.width, c1 + halo)
            diff = self.reference.rows(lo, hi, cl, cr) - out[:, :, cl:cr]
            if self.method == "wavelet":
                low = wavelet_low(diff, (lo == 0, hi == self.height, cl == 0, cr == self.width))
                r0, k0 = (first if lo == 0 else first - lo - halo), (c0 if cl == 0 else c0 - cl - halo)
                correction = low[:, r0:r0 + last - first, k0:k0 + c1 - c0]
            else:
                correction = np.einsum("ij,jnm->inm", self._ycbcr, diff)
            self.sink(np.add(out[:, first - lo:last - lo, c0:c1], correction), first, c0)
        self._done = last

"""Image files and arrays in and out, in the form people have them.

The network works on RGB float32 HWC in [0, 1]. A `Picture` is that RGB plus what is needed to give
the result back in the input's own form: an alpha channel (upscaled separately), whether the input
was grayscale (returned as grayscale) and its bit depth (16-bit grayscale stays 16-bit where the
output format allows). Pillow decodes and encodes; writes are atomic (temporary name, then rename),
so a failed or interrupted run never leaves a half-written output.

Mode handling on input: L/1 -> gray; LA/La -> gray + alpha; I;16*/I/F -> 16-bit gray; P -> RGB, or
RGBA when the palette has transparency; PA/RGBa -> RGBA; CMYK/YCbCr/LAB/HSV/RGBX -> RGB. EXIF
orientation is applied. `read_picture` gives a file's first frame; `read_frames` gives every frame of an
animated GIF/PNG/WebP or multi-page TIFF (with durations and loop count) and `save_frames` writes them
back as one animated PNG or WebP. NaN or infinite samples (float TIFFs, float arrays) are refused.
"""
from __future__ import annotations

import logging
import os
import contextlib
import io
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, ImageSequence, UnidentifiedImageError

from .budget import ImageTooLarge, check_image_size
from .tempfiles import atomic_write

logger = logging.getLogger(__name__)

#: File suffixes picked up when a folder is given as input.
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".tif", ".tiff", ".bmp", ".dib", ".gif",
     ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".avif", ".qoi"}
)
#: Output formats: CLI name -> (Pillow format, file suffix).
OUTPUT_FORMATS = {"png": ("PNG", ".png"), "jpg": ("JPEG", ".jpg"), "webp": ("WEBP", ".webp")}
_SAVE_OPTIONS = {"PNG": {}, "JPEG": {"quality": 95}, "WEBP": {"quality": 95}}
# Pillow's grayscale conversion weights (ITU-R 601-2 luma).
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_GRAY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_COLOUR_SPACE_CHANGED = ("CMYK", "LAB", "HSV")


#: Output formats that hold several frames (animated PNG, animated WebP).
MULTI_FRAME_FORMATS = frozenset({"png", "webp"})


class ImageReadError(ValueError):
    """A file that cannot be read as an image (message names the file and the problem).

    `kind` says which problem, for callers that answer differently (an HTTP service: 413 / 415 / 422):
    "missing", "empty", "unsupported" (not an image Pillow knows), "too_large" (over the pixel limit or
    Pillow's bomb limit), "invalid" (NaN / inf samples) or "corrupt".
    """

    def __init__(self, message: str, kind: str = "corrupt") -> None:
        super().__init__(message)
        self.kind = kind


class NonFiniteImage(ValueError):
    """Float pixels that are NaN or infinite: refused, since they would come out as silent black."""


def require_finite(values: np.ndarray) -> None:
    """NonFiniteImage when a float array holds NaN or +-inf (one line: how many, how to fix)."""
    if np.issubdtype(values.dtype, np.floating):
        bad = int(values.size - np.count_nonzero(np.isfinite(values)))
        if bad:
            raise NonFiniteImage(f"{bad:,} of {values.size:,} float samples are NaN or infinite: "
                                 "replace them (e.g. numpy.nan_to_num) before upscaling")


@dataclass(frozen=True)
class Picture:
    """A decoded image: RGB HxWx3 + optional alpha HxW + how to give it back.

    `rgb` is float32 in [0, 1] when decoded; an upscaled result may hold uint8 / uint16 instead (the
    runtime assembles big outputs directly in their final bit depth); `as_float01` reads either."""

    rgb: np.ndarray
    alpha: np.ndarray | None = None
    gray: bool = False
    bits: int = 8
    icc_profile: bytes | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.rgb.shape[0], self.rgb.shape[1]


# ------------------------------------------------------------------------------------------- helpers
def as_float01(img: np.ndarray) -> np.ndarray:
    """An image as float32 in [0, 1]: uint8 / uint16 scaled by their maximum, floats as they are."""
    if img.dtype == np.uint8 or img.dtype == np.uint16:
        return img.astype(np.float32) * np.float32(1.0 / np.iinfo(img.dtype).max)
    return np.asarray(img, dtype=np.float32)


def to_uint8(img01: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] -> uint8 with rounding (uint8 passes through, uint16 is rounded down to 8 bits)."""
    if img01.dtype == np.uint8:
        return img01
    if img01.dtype == np.uint16:
        return ((img01.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return (np.clip(img01, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def to_uint16(img01: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] -> uint16 with rounding (uint16 passes through, uint8 is widened exactly)."""
    if img01.dtype == np.uint16:
        return img01
    if img01.dtype == np.uint8:
        return img01.astype(np.uint16) * 257
    return (np.clip(img01, 0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)


def luma(rgb01: np.ndarray) -> np.ndarray:
    """HxWx3 RGB -> HxW gray in [0, 1] with Pillow's weights (gray in -> gray out matches Image.convert("L"))."""
    return as_float01(rgb01) @ _LUMA


def _gray_to_rgb(gray01: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(gray01, dtype=np.float32)[..., None], 3, axis=2)


# ---------------------------------------------------------------------------------------- from Pillow
def _orient(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a broken EXIF block leaves the pixels as stored."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception as exc:  # noqa: BLE001 - EXIF parsers raise many types; orientation is optional
        logger.warning("%s: EXIF orientation ignored (%s)", getattr(im, "filename", "image") or "image", exc)
        return im


def _gray16(im: Image.Image) -> np.ndarray:
    """16-bit / int / float grayscale -> HxW float32 in [0, 1]."""
    arr = np.asarray(im)
    if im.mode == "F":
        arr = arr.astype(np.float32)
        require_finite(arr)
        return np.clip(arr if np.nanmax(arr, initial=0.0) <= 1.0 else arr / 255.0, 0.0, 1.0)
    return np.clip(arr.astype(np.float32), 0.0, 65535.0) / 65535.0


def _working_mode(im: Image.Image) -> str:
    """The 8-bit mode an image is decoded through: L, LA, RGB or RGBA (transparency kept as alpha)."""
    gray = im.mode in ("1", "L", "LA", "La")
    alpha = im.has_transparency_data
    return ("LA" if alpha else "L") if gray else ("RGBA" if alpha else "RGB")


def picture_from_pil(im: Image.Image) -> Picture:
    """Decode a Pillow image (any mode) into a Picture, EXIF orientation applied."""
    im = _orient(im)
    icc = im.info.get("icc_profile") if im.mode not in _COLOUR_SPACE_CHANGED else None
    if im.mode in _GRAY16_MODES:
        return Picture(_gray_to_rgb(_gray16(im)), gray=True, bits=16, icc_profile=icc)
    mode = _working_mode(im)
    arr = np.asarray(im if im.mode == mode else im.convert(mode), dtype=np.float32) / 255.0
    if mode in ("L", "LA"):
        arr = arr.reshape(arr.shape[0], arr.shape[1], -1)
        alpha = arr[..., 1] if mode == "LA" else None
        return Picture(_gray_to_rgb(arr[..., 0]), alpha=alpha, gray=True, icc_profile=icc)
    alpha = arr[..., 3] if mode == "RGBA" else None
    return Picture(np.ascontiguousarray(arr[..., :3]), alpha=alpha, icc_profile=icc)


# ------------------------------------------------------------------------------------------ to Pillow
def picture_to_pil(pic: Picture) -> Image.Image:
    """Encode a Picture as a Pillow image: L / LA / I;16 / RGB / RGBA (16-bit only for plain gray)."""
    if pic.gray and pic.bits == 16 and pic.alpha is None:
        im = Image.fromarray(to_uint16(luma(pic.rgb)))
    elif pic.gray:
        y = to_uint8(luma(pic.rgb))
        im = Image.fromarray(y) if pic.alpha is None else Image.fromarray(np.stack([y, to_uint8(pic.alpha)], axis=2))
    else:
        rgb = to_uint8(pic.rgb)
        im = Image.fromarray(rgb if pic.alpha is None else np.concatenate([rgb, to_uint8(pic.alpha)[..., None]], axis=2))
    if pic.icc_profile:
        im.info["icc_profile"] = pic.icc_profile
    return im


# ------------------------------------------------------------------------------------------ numpy I/O
@dataclass(frozen=True)
class ArrayLayout:
    """How a numpy image was laid out, so the result comes back the same way."""

    channels: int
    dtype: np.dtype
    squeeze: bool = False


def picture_from_array(arr: np.ndarray) -> tuple[Picture, ArrayLayout]:
    """HxW or HxWxC (C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA); uint8, uint16 or float in [0, 1]."""
    arr = np.asarray(arr)
    squeeze = arr.ndim == 2
    if squeeze:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"expected an HxW or HxWxC image with C in 1..4, got shape {np.shape(arr)}")
    if arr.dtype.kind == "u" and arr.dtype.itemsize in (1, 2):  # either byte order
        bits = 8 * arr.dtype.itemsize
        x = arr.astype(np.float32) / float(2**bits - 1)
    elif arr.dtype.kind == "f":
        require_finite(arr)
        bits, x = 8, np.clip(arr.astype(np.float32), 0.0, 1.0)
    else:
        raise ValueError(f"unsupported dtype {arr.dtype}: pass uint8, uint16 or float in [0, 1]")
    c = x.shape[2]
    gray = c <= 2
    rgb = _gray_to_rgb(x[..., 0]) if gray else np.ascontiguousarray(x[..., :3])
    alpha = x[..., -1] if c in (2, 4) else None
    layout = ArrayLayout(channels=c, dtype=arr.dtype, squeeze=squeeze)
    return Picture(rgb, alpha=alpha, gray=gray, bits=bits), layout


def picture_to_array(pic: Picture, layout: ArrayLayout) -> np.ndarray:
    """The Picture in the layout and dtype of the original array."""
    base = [luma(pic.rgb)[..., None]] if layout.channels <= 2 else [pic.rgb]
    if layout.channels in (2, 4):
        base = [as_float01(base[0])]
        base.append(pic.alpha[..., None] if pic.alpha is not None else np.ones_like(base[0][..., :1]))
    x = np.concatenate(base, axis=2) if len(base) > 1 else base[0]
    if layout.squeeze:
        x = x[..., 0]
    if layout.dtype.kind == "u":  # uint8 / uint16 in the input's byte order
        return (to_uint8(x) if layout.dtype.itemsize == 1 else to_uint16(x)).astype(layout.dtype)
    return np.clip(as_float01(x), 0.0, 1.0).astype(layout.dtype)


# --------------------------------------------------------------------------------------------- files
@dataclass(frozen=True)
class Frames:
    """Every frame of an image file, and how it plays (durations in ms, loop count; None for stills)."""

    pictures: list[Picture]
    durations: list[int] = field(default_factory=list)
    loop: int | None = None


@contextlib.contextmanager
def _decoding(source: Path | bytes, name: str | None = None) -> Iterator[Image.Image]:
    """Open an image file (a path) or its bytes; every decoding failure becomes one ImageReadError
    naming the file (or `name` for bytes)."""
    name = name or str(source)
    try:
        if isinstance(source, bytes):
            if not source:
                raise ImageReadError(f"{name}: empty file", "empty")
            stream = io.BytesIO(source)
        else:
            if source.is_dir():
                raise ImageReadError(f"{name}: is a folder, not an image", "unsupported")
            if source.stat().st_size == 0:
                raise ImageReadError(f"{name}: empty file", "empty")
            stream = source
        with Image.open(stream) as im:
            yield im
    except ImageReadError:
        raise
    except ImageTooLarge as exc:
        raise ImageReadError(f"{name}: {exc}", "too_large") from None
    except NonFiniteImage as exc:
        raise ImageReadError(f"{name}: {exc}", "invalid") from None
    except FileNotFoundError:
        raise ImageReadError(f"{name}: no such file", "missing") from None
    except PermissionError:
        raise ImageReadError(f"{name}: permission denied", "missing") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{name}: not an image (unknown or unsupported format)", "unsupported") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{name}: too large to decode safely ({exc})", "too_large") from None
    except Exception as exc:  # noqa: BLE001 - decoders raise OSError, SyntaxError, struct.error, zlib.error...
        raise ImageReadError(f"{name}: corrupt or truncated image ({_reason(exc)})") from None


def read_picture(path: str | os.PathLike, max_pixels: int | None = None, scale: int = 4) -> Picture:
    """Read an image file's first frame into a Picture; ImageReadError (one line: file + problem) otherwise.

    `max_pixels`: refuse (before decoding) an image whose x`scale` upscale needs more memory than
    one of that many pixels (see `budget.check_image_size`); None: no limit.
    """
    path = Path(path)
    with _decoding(path) as im:
        check_image_size(im.height, im.width, max_pixels, scale)
        im.load()
        return picture_from_pil(im)


def read_frames(path: str | os.PathLike | bytes, max_pixels: int | None = None, scale: int = 4,
                name: str | None = None) -> Frames:
    """Every frame of an image file, or of its bytes (one for stills); pages of another size than the
    first are dropped with a warning. Errors and `max_pixels` as in `read_picture` (the estimate counts
    every frame); `name` names bytes in messages."""
    path = path if isinstance(path, bytes) else Path(path)
    name = name or str(path if not isinstance(path, bytes) else "image")
    with _decoding(path, name) as im:
        count = max(1, int(getattr(im, "n_frames", 1)))
        check_image_size(im.height, im.width, max_pixels, scale, frames=count)
        size, pictures, durations = im.size, [], []
        for index, frame in enumerate(ImageSequence.Iterator(im)):
            if frame.size != size:
                logger.warning("%s: frame %d is %dx%d, not %dx%d like the first: left out",
                               name, index + 1, *frame.size, *size)
                continue
            frame.load()
            durations.append(int(frame.info.get("duration", 0) or 0))
            pictures.append(picture_from_pil(frame))
        loop = im.info.get("loop") if len(pictures) > 1 else None
        return Frames(pictures, durations if len(pictures) > 1 else [], loop)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def adapt_for_format(pic: Picture, fmt: str) -> tuple[Picture, list[str]]:
    """Fit a Picture to what the output format can store; returns the notes worth a warning.

    JPEG: no alpha (flattened onto white, with a warning), 8-bit. WebP: 8-bit, grayscale stored as
    RGB (WebP has no gray mode). PNG: everything (16-bit only for gray without alpha).
    """
    notes: list[str] = []
    if fmt in ("jpg", "webp") and pic.bits != 8:
        pic = replace(pic, bits=8)
    if fmt == "jpg" and pic.alpha is not None:
        a = pic.alpha[..., None]
        pic = replace(pic, rgb=as_float01(pic.rgb) * a + (1.0 - a), alpha=None)
        notes.append("JPEG has no alpha channel: flattened onto white (use --format png or webp to keep it)")
    if fmt == "webp" and pic.gray:
        pic = replace(pic, rgb=_gray_to_rgb(luma(pic.rgb)), gray=False)
    return pic, notes


def encode_picture(pic: Picture, fmt: str = "png") -> tuple[Image.Image, list[str]]:
    """A Picture as the Pillow image `fmt` (png | jpg | webp) will store; returns the notes worth a warning."""
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {fmt!r}: use one of {', '.join(OUTPUT_FORMATS)}")
    pic, notes = adapt_for_format(pic, fmt)
    return picture_to_pil(pic), notes


def _common_mode(images: list[Image.Image]) -> list[Image.Image]:
    """Frames in one mode (animated files have one): RGBA if any frame has alpha, else RGB, when they differ."""
    modes = {im.mode for im in images}
    if len(modes) == 1:
        return images
    target = "RGBA" if any("A" in m for m in modes) else "RGB"
    return [im if im.mode == target else im.convert(target) for im in images]


def frames_for_format(frames: Frames, fmt: str) -> tuple[list[Picture], list[str]]:
    """The frames worth upscaling for output format `fmt` (all, or the first when it holds one frame)."""
    if fmt in MULTI_FRAME_FORMATS or len(frames.pictures) == 1:
        return frames.pictures, []
    return frames.pictures[:1], [f"--format {fmt} holds one frame: upscaled the first of {len(frames.pictures)} "
                                 "(use --format png or webp to keep them all)"]


def _frame_save_args(images: list[Image.Image], fmt: str, durations: list[int] | None,
                     loop: int | None) -> tuple[Image.Image, dict, list[str]]:
    """(first image, Pillow save options, notes) that write `images` as one file of format `fmt`."""
    pil_format = OUTPUT_FORMATS[fmt][0]
    options = dict(_SAVE_OPTIONS[pil_format], format=pil_format)
    if images[0].info.get("icc_profile"):
        options["icc_profile"] = images[0].info["icc_profile"]
    notes: list[str] = []
    if len(images) > 1 and fmt not in MULTI_FRAME_FORMATS:
        notes.append(f"{pil_format} holds one frame: wrote the first of {len(images)} "
                     "(use --format png or webp to keep them all)")
        images = images[:1]
    if len(images) > 1:
        images = _common_mode(images)
        options.update(save_all=True, append_images=images[1:], loop=loop or 0)
        if durations and len(durations) == len(images) and any(durations):  # TIFF pages have none
            options["duration"] = [max(1, d) for d in durations]
    return images[0], options, notes


def save_frames(images: list[Image.Image], path: str | os.PathLike, fmt: str = "png",
                durations: list[int] | None = None, loop: int | None = None) -> list[str]:
    """Write one or more encoded frames atomically as one file (animated PNG / WebP when several)."""
    first, options, notes = _frame_save_args(images, fmt, durations, loop)
    save_atomic(first, path, **options)
    return notes


def frames_to_bytes(images: list[Image.Image], fmt: str = "png", durations: list[int] | None = None,
                    loop: int | None = None) -> tuple[bytes, list[str]]:
    """The bytes `save_frames` would write for the same frames (what a service sends back)."""
    first, options, notes = _frame_save_args(images, fmt, durations, loop)
    buffer = io.BytesIO()
    first.save(buffer, **options)
    return buffer.getvalue(), notes


def write_picture(pic: Picture, path: str | os.PathLike, fmt: str = "png") -> list[str]:
    """Write a Picture atomically as `fmt` (png | jpg | webp); returns notes (e.g. alpha dropped)."""
    image, notes = encode_picture(pic, fmt)
    return notes + save_frames([image], path, fmt)


def save_atomic(image: Image.Image, path: str | os.PathLike, **save_kwargs) -> None:
    """Save a Pillow image to `path` via a temporary file in the same folder (`tempfiles`), then rename."""
    path = Path(path)
    fmt = save_kwargs.pop("format", None) or Image.registered_extensions().get(path.suffix.lower())
    atomic_write(path, lambda fh: image.save(fh, format=fmt, **save_kwargs))


# ------------------------------------------------------------------------- simple RGB helpers (kept)
def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read any Pillow-readable image as RGB HWC float32 in [0, 1] (alpha and bit depth dropped)."""
    return read_picture(path).rgb


def save_rgb(img01: np.ndarray, path: str | os.PathLike) -> None:
    """Save an RGB HWC float image in [0, 1] (8-bit), atomically."""
    save_atomic(Image.fromarray(to_uint8(img01)), path)

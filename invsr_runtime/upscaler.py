"""The Python API: `Upscaler(engine_dir).upscale(image, steps=1, ...)` for PIL images and numpy arrays.

    from invsr_runtime import Upscaler
    up = Upscaler("engines/")                       # backend="auto": whatever the folder was built for
    big = up.upscale(Image.open("photo.png"), steps=1, color_fix="wavelet", seed=0)

The result has the input's type and form: a PIL image comes back in the same kind of mode (gray stays
gray, alpha is upscaled separately with bicubic and re-attached, 16-bit gray stays 16-bit); a numpy
array comes back with the same dtype (uint8, uint16, float in [0, 1]) and channel layout.

Tiles go through the tile scheduler (`invsr_runtime.scheduler`): host work overlaps device work, the
blend streams, and `devices=[0, 1]` opens one backend per GPU. `Upscaler.backend` may be replaced by any
object with the backend contract (docs/INTERFACES.md, "The backend contract"), e.g. a simulated device.
"""
from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence, TypeVar, Union

import numpy as np

from .backends import Backend, open_backend
from .budget import DEFAULT_MAX_PIXELS, check_image_size
from .imageio import Picture, picture_from_array, picture_from_pil, picture_to_array, picture_to_pil
from .blend import ImageAssembler
from .manifest import Manifest, load_manifest
from .noise import NoiseTable, tile_latent
from .resize import ResizedRows
from .schedule import Schedule, make_schedule, resolve_timesteps
from .scheduler import ProgressFn, TileScheduler

if TYPE_CHECKING:
    from PIL import Image

ImageLike = TypeVar("ImageLike", bound=Union["Image.Image", np.ndarray, Picture])


def upscale_alpha(alpha: np.ndarray, scale: int, out_dtype: str = "float32", band: int = 256) -> np.ndarray:
    """An alpha channel upscaled with bicubic (no antialias, like the network's input), clipped to [0, 1]
    and stored as `out_dtype` (float32, or uint8 / uint16 rounded like `imageio.to_uint8` / `to_uint16`,
    to match the RGB it goes with). Built `band` rows at a time from sparse taps: time and memory grow
    with the output alone (a dense resize of a 3000x2000 alpha needs ~1.5 GB and tens of seconds)."""
    h, w = alpha.shape
    rows = ResizedRows(alpha[..., None], scale, antialias=False)
    out = ImageAssembler(h * scale, w * scale, 1, out_dtype)
    for start in range(0, h * scale, band):
        out(rows.rows(start, min(start + band, h * scale)), start)
    return out.image[..., 0]


def check_int(name: str, value: Any, minimum: int | None, optional: bool = False) -> int | None:
    """`value` as an int >= minimum (None: any int): TypeError for a non-integer (bool, float, str), ValueError
    when too small."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        allowed = "an int" + (" or None" if optional else "")
        raise TypeError(f"{name} must be {allowed}, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def schedule_for(manifest: Manifest, steps: int | None = 1,
                 timesteps: Sequence[int] | str | None = None) -> Schedule:
    """The validated schedule: `timesteps` if given (their count must equal `steps` unless steps is None),
    else the folder's default timesteps for `steps` (1..5), on the folder's alphas_cumprod.
    ScheduleError otherwise."""
    resolved = resolve_timesteps(steps, timesteps)
    if timesteps is None:
        default = manifest.default_timesteps.get(str(len(resolved)))
        resolved = resolve_timesteps(timesteps=default) if default else resolved
    return make_schedule(resolved, np.asarray(manifest.alphas_cumprod, dtype=np.float64))


def queue_depth_for(tile_batch: int | None, engine_batch: int) -> int:
    """Engine batches queued between scheduler stages: enough for `tile_batch` tiles (default 2)."""
    if tile_batch is None:
        return 2
    if tile_batch < 1:
        raise ValueError(f"tile_batch must be >= 1, got {tile_batch}")
    return max(1, -(-tile_batch // engine_batch))


def output_dtype(pic: Picture) -> str:
    """The dtype a Picture's result is assembled in: its own bit depth (8 -> uint8, 16 -> uint16)."""
    return "uint16" if pic.bits == 16 else "uint8"


class Upscaler:
    """InvSR x4 super-resolution from an engine folder (ONNX Runtime or TensorRT), no PyTorch needed.

    `tile_batch`: tiles queued between the scheduler's stages (memory knob), in engine batches, default
    two batches. `devices`: GPU ids, one backend each (the scheduler spreads batches over them).
    `max_pixels`: larger images are refused with `budget.ImageTooLarge` before any memory is taken
    (default 4096 x 4096; None: no limit). `backend_options` go to the backend (e.g. `providers=[...]`
    for ONNX Runtime, `use_cuda_graph=False` for TensorRT).
    """

    def __init__(self, engine_dir: str | Path, backend: str = "auto", tile_batch: int | None = None,
                 devices: Sequence[int] | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 **backend_options: Any) -> None:
        tile_batch = check_int("tile_batch", tile_batch, 1, optional=True)
        self.max_pixels = check_int("max_pixels", max_pixels, 0, optional=True)
        self.folder = Path(engine_dir)
        self.manifest: Manifest = load_manifest(self.folder)
        self.backends: list[Backend] = []
        try:
            for device in (devices or [None]):
                extra = {} if device is None else {"device": int(device)}
                self.backends.append(open_backend(self.folder, self.manifest, backend, **backend_options, **extra))
        except BaseException:
            self.close()
            raise
        self.backend: Backend = self.backends[0]
        self.queue_depth = queue_depth_for(tile_batch, self.backend.batch)
        self._noise: NoiseTable | None = None
        self._noise_lock = threading.Lock()

    @property
    def scale(self) -> int:
        """Upscaling factor (4)."""
        return int(self.manifest.scale)

    @property
    def chains(self) -> list[Any]:
        """What the scheduler runs on: every device's backend, or just `backend` if it was replaced."""
        return self.backends if self.backends and self.backend is self.backends[0] else [self.backend]

    def scheduler(self, max_wait_s: float = 0.0) -> TileScheduler:
        """A tile scheduler over this folder's backends (the caller closes it); for streams of images and
        concurrent callers (`max_wait_s`: see TileScheduler)."""
        return TileScheduler(self.chains, queue_depth=self.queue_depth, max_wait_s=max_wait_s, noise=self.noise_table())

    def noise_table(self) -> NoiseTable:
        """The default seed's noise table, drawn on first use and shared by every scheduler of this Upscaler
        (so a call per image does not draw it again)."""
        with self._noise_lock:
            latent = tile_latent(self.backend.tile, self.backend.scale)
            if self._noise is None or self._noise.latent_hw != (latent, latent):  # `backend` may be replaced
                self._noise = NoiseTable((latent, latent))
            return self._noise

    def schedule(self, steps: int | None = None, timesteps: Sequence[int] | str | None = None) -> Schedule:
        """The validated schedule for this folder (see `schedule_for`)."""
        return schedule_for(self.manifest, steps, timesteps)

    def request(self, pic: Picture, schedule: Schedule, color_fix: str = "none", seed: int = 0,
                on_tiles: ProgressFn | None = None, out_dtype: str | None = None) -> Any:
        """The scheduler request for a Picture's RGB (`out_dtype` default: the picture's bit depth);
        `budget.ImageTooLarge` above `max_pixels`."""
        seed = check_int("seed", seed, 0)
        check_image_size(*pic.size, self.max_pixels, self.scale, flag="max_pixels")
        return TileScheduler.request(pic.rgb, schedule, color_fix, seed, out_dtype or output_dtype(pic), on_tiles)

    def finish_picture(self, pic: Picture, rgb: np.ndarray) -> Picture:
        """The upscaled Picture from its upscaled RGB (alpha upscaled here with bicubic, in the RGB's dtype)."""
        alpha = upscale_alpha(pic.alpha, self.scale, rgb.dtype.name) if pic.alpha is not None else None
        return replace(pic, rgb=rgb, alpha=alpha)

    def upscale_picture(self, pic: Picture, schedule: Schedule, color_fix: str = "none", seed: int = 0,
                        on_tiles: ProgressFn | None = None, out_dtype: str | None = None) -> Picture:
        """Upscale a decoded Picture (RGB through the network, alpha with bicubic); the RGB comes back as
        `out_dtype` (default: uint8, or uint16 for 16-bit pictures; "float32" for [0, 1] floats)."""
        request = self.request(pic, schedule, color_fix, seed, on_tiles, out_dtype)
        with self.scheduler() as scheduler:
            rgb = scheduler.submit_request(request).result()
        return self.finish_picture(pic, rgb)

    def upscale(self, image: ImageLike, steps: int = 1, timesteps: Sequence[int] | str | None = None,
                color_fix: str = "none", seed: int = 0, on_tiles: ProgressFn | None = None) -> ImageLike:
        """Upscale a PIL image, a numpy array (HxW / HxWxC, uint8 / uint16 / float in [0, 1]) or a Picture.

        `timesteps` (e.g. "200,100" or [200, 100]) override `steps` when given; `color_fix` is
        "none", "wavelet" or "ycbcr"; the same `seed` (an int >= 0) gives the same image. Float input
        with NaN or infinite values is refused (`imageio.NonFiniteImage`).
        """
        seed = check_int("seed", seed, 0)
        steps = check_int("steps", steps, 1, optional=True)
        schedule = self.schedule(None if timesteps is not None else steps, timesteps)
        if isinstance(image, Picture):
            return self.upscale_picture(image, schedule, color_fix, seed, on_tiles)
        if isinstance(image, np.ndarray):
            pic, layout = picture_from_array(image)
            dtype = np.dtype(layout.dtype).name if np.dtype(layout.dtype).name in ("uint8", "uint16") else "float32"
            out = self.upscale_picture(pic, schedule, color_fix, seed, on_tiles, out_dtype=dtype)
            return picture_to_array(out, layout)
        if hasattr(image, "getbands") and hasattr(image, "mode"):
            out = self.upscale_picture(picture_from_pil(image), schedule, color_fix, seed, on_tiles)
            return picture_to_pil(out)
        raise TypeError(f"expected a PIL image or a numpy array, got {type(image).__name__}")

    def close(self) -> None:
        """Release the backends' sessions / device memory."""
        for backend in {id(b): b for b in [*self.backends, getattr(self, "backend", None)] if b is not None}.values():
            backend.close()

    def __enter__(self) -> "Upscaler":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

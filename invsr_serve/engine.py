"""The service's one upscaler: admission control (bounded queue and pixels in flight) in front of the
runtime's tile scheduler, which packs tiles of all admitted requests into shared engine batches.

Admission fails fast instead of queueing without bound: a request that would exceed `max_queue`
requests or `max_inflight_pixels` input pixels in flight is refused at once (`Busy`: HTTP 503 with
Retry-After), so an overloaded service answers promptly and its memory stays bounded.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

from invsr_runtime.imageio import Picture
from invsr_runtime.schedule import Schedule
from invsr_runtime.upscaler import Upscaler, output_dtype

from .codec import UpscaleParams

logger = logging.getLogger(__name__)


class Busy(RuntimeError):
    """The queue or the pixel budget is full: retry later (HTTP 503 + Retry-After)."""


@dataclass
class EngineStats:
    """Counters for /metrics (read under the engine's lock)."""

    queued: int = 0
    inflight_pixels: int = 0
    started: float = field(default_factory=time.monotonic)


class Admission:
    """One admitted request: holds a queue slot, then its pixels (`charge`), until the block ends."""

    def __init__(self, engine: "UpscaleEngine") -> None:
        self.engine, self.pixels = engine, 0

    def charge(self, pixels: int) -> None:
        """Reserve the request's input pixels (Busy when the in-flight budget would overflow)."""
        self.engine._charge(pixels)
        self.pixels += pixels

    def __enter__(self) -> "Admission":
        return self

    def __exit__(self, *exc: object) -> None:
        self.engine._release(self.pixels)


class UpscaleEngine:
    """Owns the Upscaler and one long-lived tile scheduler over its backends; thread-safe."""

    def __init__(self, upscaler: Upscaler, max_queue: int, max_inflight_pixels: int,
                 max_batch_wait_ms: float = 5.0) -> None:
        self.upscaler = upscaler
        self.max_queue, self.max_inflight_pixels = max_queue, max_inflight_pixels
        self.scheduler = upscaler.scheduler(max_wait_s=max_batch_wait_ms / 1000.0)
        # alpha planes are upscaled here, not on the scheduler's blend thread that every request shares
        self._finisher = ThreadPoolExecutor(2, thread_name_prefix="invsr-finish")
        self.stats = EngineStats()
        self._lock = threading.Lock()

    @property
    def scale(self) -> int:
        return self.upscaler.scale

    def schedule(self, params: UpscaleParams) -> Schedule:
        """The checked schedule for a request's steps / timesteps (ScheduleError: HTTP 400)."""
        return self.upscaler.schedule(None if params.timesteps is not None else (params.steps or 1),
                                      params.timesteps)

    def busy(self) -> str | None:
        """Why a new request would be refused right now (queue full, pixel budget spent), else None: lets
        the service answer 503 before reading a body it could not take (the real admission follows it)."""
        with self._lock:
            if self.stats.queued >= self.max_queue:
                return f"the queue is full ({self.max_queue} requests): retry later"
            if self.stats.inflight_pixels >= self.max_inflight_pixels:
                return f"{self.stats.inflight_pixels:,} pixels are in flight (limit {self.max_inflight_pixels:,}): retry later"
        return None

    def admit(self) -> "Admission":
        """Count one request in (Busy when `max_queue` are already in); use as a context manager."""
        with self._lock:
            if self.stats.queued >= self.max_queue:
                raise Busy(f"the queue is full ({self.max_queue} requests): retry later")
            self.stats.queued += 1
        return Admission(self)

    def _charge(self, pixels: int) -> None:
        with self._lock:
            if self.stats.inflight_pixels and self.stats.inflight_pixels + pixels > self.max_inflight_pixels:
                raise Busy(f"{self.stats.inflight_pixels:,} pixels are in flight (limit "
                           f"{self.max_inflight_pixels:,}): retry later")
            self.stats.inflight_pixels += pixels

    def _release(self, pixels: int) -> None:
        with self._lock:
            self.stats.queued -= 1
            self.stats.inflight_pixels -= pixels

    def submit(self, pic: Picture, schedule: Schedule, params: UpscaleParams) -> "Future[Picture]":
        """Hand one picture's RGB to the scheduler; the future gives the upscaled Picture."""
        rgb = self.scheduler.submit(pic.rgb, schedule, params.color_fix, params.seed, output_dtype(pic))
        done: Future = Future()

        def finish(fut: Future) -> None:
            if not done.set_running_or_notify_cancel():
                return  # the request gave up (504 timeout, client gone): nobody waits for this picture
            try:
                done.set_result(self.upscaler.finish_picture(pic, fut.result()))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting request
                done.set_exception(exc)

        # called on the blend thread: a picture with alpha (a resize of its own) finishes elsewhere
        rgb.add_done_callback(finish if pic.alpha is None else lambda fut: self._finisher.submit(finish, fut))
        # a request that gave up stops its image: the scheduler skips the tiles it has not cut yet
        done.add_done_callback(lambda d: rgb.cancel() if d.cancelled() else None)
        return done

    async def upscale(self, schedule: Schedule, params: UpscaleParams,
                      pictures: Sequence[Picture]) -> list[Picture]:
        """Upscale every picture of one request (their tiles join the shared batches)."""
        futures = [asyncio.wrap_future(self.submit(pic, schedule, params)) for pic in pictures]
        return list(await asyncio.gather(*futures))

    def warm_up(self) -> None:
        """One tile through the whole chain, so the first request does not pay for lazy set-up."""
        import numpy as np

        tile = self.upscaler.backend.tile
        pic = Picture(rgb=np.full((tile, tile, 3), 0.5, np.float32))
        self.submit(pic, self.upscaler.schedule(1), UpscaleParams()).result()

    def device_seconds(self) -> float:
        return float(sum(self.scheduler.stats.device_seconds))

    def close(self) -> None:
        self.scheduler.close()
        self._finisher.shutdown()
        self.upscaler.close()

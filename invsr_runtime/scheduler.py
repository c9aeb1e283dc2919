"""The tile scheduler: images in, full engine batches of tiles through one or more backends, images out.

    host thread      cut tiles + their noise (NoiseTable), pack engine batches (tiles of consecutive images share one)
      -> queue (queue_depth batches)
    one thread per backend (device): run_chain, which releases the GIL while the device works
      -> queue (queue_depth batches)
    blend thread     StreamingBlender -> ColorFixStream -> ImageAssembler per image; resolves its future;
                     for the channel-wise colour fixes (none, wavelet) it hands channel c of each batch's
                     tiles to lane c (`lanes.ChannelLanes`: three threads, each channel's tiles in order), and the
                     lane that completes an image's last channel resolves its future

So while a device runs batch k, the host prepares batch k+1 and blends batch k-1. Memory is bounded
whatever the device's speed: input batches wait in a queue of `queue_depth`, and at most `output_slots`
(devices + 3) device outputs are alive, running or being blended: a device faster than the host waits
for a slot. The scheduler owns the queues
and nothing else: backends are plain executors (`TileChain`) and stay the caller's to close.

Results never depend on the scheduling: each tile's noise is `tile_noise(seed, tile index within its
image)` and the blender applies an image's tiles in index order, so any engine batch, batch sharing,
submission order or number of devices gives the same bytes. Only the last batch before the scheduler
would otherwise wait is padded (fixed-batch engines): a partial batch waits for the next image while
an open `map` stream promises more or while the devices still have queued work.

    with TileScheduler([backend], queue_depth=2) as scheduler:
        image = scheduler.submit(lr_rgb, schedule, color_fix="wavelet", seed=0, out_dtype="uint8").result()
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import CancelledError, Future, InvalidStateError
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np

from .blend import ImageAssembler, StreamingBlender, TileWeights, use_blend_buffers
from .colorfix import COLOR_FIXES, ColorFixStream
from .lanes import ChannelLanes
from .noise import TABLE_TILES, NoiseTable, tile_latent
from .schedule import Schedule
from .tiling import TilePlan, plan_tiles

logger = logging.getLogger(__name__)

#: on_tiles(done, total): progress of one image, called from the blend thread after each batch.
ProgressFn = Callable[[int, int], None]
#: Colour fixes that work channel by channel: their images are blended on the channel lanes.
CHANNELWISE_FIXES = ("none", "wavelet")
T = TypeVar("T")
_STOP = object()


@dataclass(frozen=True)
class TileRequest:
    """One image to upscale: RGB HxWx3 in [0, 1] and how."""

    image: np.ndarray
    schedule: Schedule
    color_fix: str = "none"
    seed: int = 0
    out_dtype: str = "float32"
    on_tiles: ProgressFn | None = None


@dataclass
class SchedulerStats:
    """Counters since the scheduler started (device seconds per backend, in order)."""

    images: int = 0
    tiles: int = 0
    batches: int = 0
    padded_tiles: int = 0
    device_seconds: list[float] = field(default_factory=list)


def pad_planar(image: np.ndarray, plan: TilePlan) -> np.ndarray:
    """`pad_image` straight into planar (C, H, W) float32: one allocation when no centring is needed."""
    (top, bottom), (left, right) = plan.centre_pad
    planar = image.transpose(2, 0, 1)
    if top or bottom or left or right:
        planar = np.pad(planar, ((0, 0), (top, bottom), (left, right)), mode="reflect")
    extra_h, extra_w = plan.padded_h - planar.shape[1], plan.padded_w - planar.shape[2]
    return np.ascontiguousarray(np.pad(planar, ((0, 0), (0, extra_h), (0, extra_w)), mode="reflect"))


class _Job:
    """One image in flight: its padded planar LR on the host side, its blend on the other (on the blend
    thread, or channel by channel on the lanes, which then finish the image and call `on_finished`)."""

    def __init__(self, request: TileRequest, tile: int, scale: int, lanes: ChannelLanes | None = None,
                 on_finished: Callable[[], None] = lambda: None) -> None:
        image = request.image
        self.seed, self.schedule, self.on_tiles = request.seed, request.schedule, request.on_tiles
        self.future: Future = Future()
        self.plan: TilePlan = plan_tiles(image.shape[0], image.shape[1], tile=tile, scale=scale)
        self.padded: np.ndarray | None = pad_planar(image, self.plan)
        (top, _), (left, _) = self.plan.pad
        lr = self.padded[:, top:top + image.shape[0], left:left + image.shape[1]].transpose(1, 2, 0)
        h, w = image.shape[0] * scale, image.shape[1] * scale
        self.assembler: ImageAssembler | None = ImageAssembler(h, w, 3, request.out_dtype)
        self.color: ColorFixStream | None = None
        self.blender: StreamingBlender | None = None
        self.lanes = lanes if lanes is not None and len(lanes) == 3 and request.color_fix in CHANNELWISE_FIXES else None
        self.channels: list[tuple[StreamingBlender, ColorFixStream]] | None = None
        if self.lanes is not None:
            weights = TileWeights(self.plan)
            self.channels = [self._channel(lr[..., c:c + 1], c, scale, request.color_fix, weights) for c in range(3)]
            self._left, self._lock, self._on_finished = 3, threading.Lock(), on_finished
        else:
            self.color = ColorFixStream(lr, scale, request.color_fix, self.assembler)
            self.blender = StreamingBlender(self.plan, self.color.push)
        self.done = 0

    def _channel(self, lr: np.ndarray, c: int, scale: int, fix: str,
                 weights: TileWeights) -> tuple[StreamingBlender, ColorFixStream]:
        color = ColorFixStream(lr, scale, fix, partial(self.assembler, channel=c))
        return StreamingBlender(self.plan, color.push, channels=1, weights=weights), color

    @property
    def failed(self) -> bool:
        return self.future.done()

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            try:
                self.future.set_exception(exc)
            except InvalidStateError:  # cancelled or finished meanwhile by another thread
                pass
        self._release()

    def _release(self) -> None:
        """Drop everything but the future: its result (if any) is all that stays."""
        self.padded = self.assembler = self.color = self.blender = self.channels = None

    def add(self, tiles: list[tuple[int, np.ndarray]], hold: "_OutputHold | None" = None) -> None:
        """Blend (tile index, C x S x S output) pairs: here, or one work item per lane for all of them
        (each holds `hold`, the tiles' device output, until it is done)."""
        if self.lanes is None:
            for index, tile_chw in tiles:
                self.blender.add(index, tile_chw)
        else:
            if hold is not None:
                hold.add(3)
            for c in range(3):
                channel = [(index, tile[c:c + 1]) for index, tile in tiles]
                self.lanes.put(c, partial(self._add_channel, c, channel, hold))
        self.done += len(tiles)

    def _add_channel(self, c: int, tiles: list[tuple[int, np.ndarray]], hold: "_OutputHold | None" = None) -> None:
        """On lane c: blend channel c of some tiles; the lane that completes the last channel finishes the image."""
        try:
            self._blend_channel(c, tiles)
        finally:
            tiles.clear()  # drop the views (the work item still holds this list) before freeing the slot
            if hold is not None:
                hold.done()

    def _blend_channel(self, c: int, tiles: list[tuple[int, np.ndarray]]) -> None:
        if self.failed:
            return
        try:
            blender, color = self.channels[c]
            for index, tile in tiles:
                blender.add(index, tile)
            if not blender.done:
                return
            color.finish()
            with self._lock:
                self._left -= 1
                last = self._left == 0
            if last:
                self.future.set_result(self.assembler.image)
                self._release()
                self._on_finished()
        except InvalidStateError:  # cancelled meanwhile: nobody waits for the image
            self._release()
        except Exception as exc:  # noqa: BLE001 - routed to this image
            self.fail(exc)

    def finish_if_done(self) -> bool:
        if self.lanes is not None or self.done < self.plan.num_tiles or self.failed:
            return False  # lane-blended images are finished by their last lane
        self.color.finish()
        self.future.set_result(self.assembler.image)
        self._release()
        return True


class _OutputHold:
    """Who still reads one engine batch's device output (the blend thread, lane work items); the last to
    let go calls `release` (a device may then produce another batch)."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._left, self._release, self._lock = 1, release, threading.Lock()  # 1: the blend thread

    def add(self, holders: int) -> None:
        with self._lock:
            self._left += holders

    def done(self) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self._release()


@dataclass
class _Batch:
    """One engine batch: (job, tile index) per slot, the first `real` of them real."""

    entries: list[tuple[_Job, int]]
    lr: np.ndarray
    vae_noise: np.ndarray
    pred_noise: np.ndarray
    schedule: Schedule

    @property
    def real(self) -> int:
        return len(self.entries)


class _BatchBuilder:
    """Fills the next engine batch tile by tile (cutting from the padded planar LR, taking the noise from
    `noise`, a NoiseTable)."""

    def __init__(self, batch: int, tile: int, noise: NoiseTable, fixed: bool) -> None:
        self.batch, self.tile, self.noise, self.fixed = batch, tile, noise, fixed
        self.latent = noise.latent_hw[0]
        self.entries: list[tuple[_Job, int]] = []
        self.schedule: Schedule | None = None
        self._new()

    def _new(self) -> None:
        b, t, lat = self.batch, self.tile, self.latent
        self.lr = np.empty((b, 3, t, t), dtype=np.float32)
        self.vae = np.empty((b, 4, lat, lat), dtype=np.float32)
        self.pred = np.empty((b, 4, lat, lat), dtype=np.float32)

    def add(self, job: _Job, index: int) -> None:
        k, t = len(self.entries), self.tile
        y, x = job.plan.origins[index]
        self.lr[k] = job.padded[:, y:y + t, x:x + t]
        self.vae[k], self.pred[k] = self.noise(job.seed, index)
        self.entries.append((job, index))
        self.schedule = job.schedule

    @property
    def full(self) -> bool:
        return len(self.entries) == self.batch

    def take(self) -> _Batch:
        """The batch so far (padded by repeating its last tile on fixed-batch engines); starts a new one."""
        n = len(self.entries)
        lr, vae, pred = self.lr, self.vae, self.pred
        if n < self.batch and self.fixed:
            lr[n:], vae[n:], pred[n:] = lr[n - 1], vae[n - 1], pred[n - 1]
        elif n < self.batch:
            lr, vae, pred = lr[:n], vae[:n], pred[:n]
        out = _Batch(self.entries, lr, vae, pred, self.schedule)
        self.entries, self.schedule = [], None
        self._new()
        return out


def _check_chains(chains: Sequence[Any]) -> tuple[int, int, int, bool]:
    """The (batch, tile, scale, fixed_batch) that every backend must share."""
    if not chains:
        raise ValueError("TileScheduler needs at least one backend")
    facts = {(int(c.batch), int(c.tile), int(c.scale), bool(getattr(c, "fixed_batch", True))) for c in chains}
    if len(facts) != 1:
        raise ValueError(f"backends differ in (batch, tile, scale, fixed_batch): {sorted(facts)}; "
                         "open them all from one engine folder")
    return facts.pop()


class TileScheduler:
    """Turns images into engine batches for one or more backends and routes the blended images back.

    `submit()` is thread-safe (concurrent requests); `map()` streams a sequence with look-ahead.
    `queue_depth` batches wait between stages (the memory bound); `close()` drains and stops the threads.
    `max_wait_s`: how long a partial engine batch may keep idle devices waiting for tiles of images not
    yet submitted (a service's concurrent requests); 0 sends it at once. `noise`: a NoiseTable to share
    (an Upscaler's, across its schedulers); without one the host thread draws its own of `noise_tiles`
    tiles when it starts (0: none, every tile's noise drawn as it is cut).
    """

    def __init__(self, chains: Sequence[Any] | Any, queue_depth: int = 2, poll_s: float = 0.002,
                 max_wait_s: float = 0.0, noise: NoiseTable | None = None, noise_tiles: int = TABLE_TILES) -> None:
        self.chains = list(chains) if isinstance(chains, (list, tuple)) else [chains]
        self.batch, self.tile, self.scale, self.fixed_batch = _check_chains(self.chains)
        self.latent = tile_latent(self.tile, self.scale)
        if noise is not None and noise.latent_hw != (self.latent, self.latent):
            raise ValueError(f"noise table of {noise.latent_hw} latents, the backends need {(self.latent,) * 2}")
        self._noise, self._noise_tiles = noise, noise_tiles
        if queue_depth < 1:
            raise ValueError(f"queue_depth must be >= 1, got {queue_depth}")
        if not max_wait_s >= 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        if noise_tiles < 0:
            raise ValueError(f"noise_tiles must be >= 0, got {noise_tiles}")
        self.queue_depth, self._poll, self.max_wait_s = queue_depth, poll_s, max_wait_s
        self.stats = SchedulerStats(device_seconds=[0.0] * len(self.chains))
        self._jobs: queue.Queue = queue.Queue()
        self._work: queue.Queue = queue.Queue(maxsize=queue_depth)
        self._done: queue.Queue = queue.Queue(maxsize=queue_depth)
        self._lock = threading.Lock()
        self._streams = 0
        self._closed = self._cancelled = False
        self._workers_left = len(self.chains)
        # device outputs alive at once: one per device running, one queued, two being blended. A device
        # faster than the host waits here instead of piling up float32 batches (~25 MB each at 128 px
        # tiles, batch 8; 1500x1000 LR with such a device: 24.9 -> 11.0 bytes per output pixel, wavelet).
        # Two being blended keep the channel lanes busy: with one the host took 18% longer.
        self.output_slots = len(self.chains) + 3
        self._slots = threading.Semaphore(self.output_slots)
        # channel by channel blending (the host's largest cost), each channel's tiles in order on its lane
        self._lanes = ChannelLanes(3, depth=2 * self.batch, initializer=self._blend_thread_setup)
        self._threads = [threading.Thread(target=self._feed, name="invsr-host", daemon=True),
                         threading.Thread(target=self._blend, name="invsr-blend", daemon=True)]
        self._threads += [threading.Thread(target=self._run, args=(i,), name=f"invsr-device{i}", daemon=True)
                          for i in range(len(self.chains))]
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------------------------------ public
    def submit(self, image: np.ndarray, schedule: Schedule, color_fix: str = "none", seed: int = 0,
               out_dtype: str = "float32", on_tiles: ProgressFn | None = None) -> "Future[np.ndarray]":
        """Queue one RGB HxWx3 image in [0, 1]; the future gives the (scale*H)x(scale*W)x3 `out_dtype` image.
        `future.cancel()` drops the image: tiles not yet cut never reach a device (those already in an
        engine batch finish with it and are discarded)."""
        return self.submit_request(self.request(image, schedule, color_fix, seed, out_dtype, on_tiles))

    @staticmethod
    def request(image: np.ndarray, schedule: Schedule, color_fix: str = "none", seed: int = 0,
                out_dtype: str = "float32", on_tiles: ProgressFn | None = None) -> TileRequest:
        """A validated TileRequest (ValueError with the fix otherwise)."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
            raise ValueError(f"expected an RGB image of shape HxWx3, got {image.shape}")
        if color_fix not in COLOR_FIXES:
            raise ValueError(f"unknown colour fix {color_fix!r}: use one of {', '.join(COLOR_FIXES)}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if image.dtype != np.float32 or not (image.min() >= 0.0 and image.max() <= 1.0):
            image = np.clip(image.astype(np.float32), 0.0, 1.0)  # our own copy; a valid float32 image is only read
        return TileRequest(image, schedule, color_fix, int(seed), str(np.dtype(out_dtype)), on_tiles)

    def map(self, items: Iterable[T], to_request: Callable[[T], TileRequest],
            ahead: int = 3) -> Iterator[tuple[T, "Future[np.ndarray]"]]:
        """Stream `items` through the scheduler in order: (item, finished future) pairs.

        `to_request` (e.g. decode a file) runs on a producer thread, at most `ahead` items ahead of
        the consumer, so decoding the next image and encoding the previous one overlap device work.
        An exception from `to_request` is that item's future's exception.
        """
        for item, context, futures in self.stream(items, lambda x: (None, [to_request(x)]), ahead):
            if isinstance(context, BaseException):
                futures = [Future()]
                futures[0].set_exception(context)
            yield item, futures[0]

    def stream(self, items: Iterable[T], prepare: Callable[[T], tuple[Any, Sequence[TileRequest]]],
               ahead: int = 3) -> Iterator[tuple[T, Any, list["Future[np.ndarray]"]]]:
        """Like `map`, with any number of images per item: `prepare(item)` -> (context, requests) runs on
        the producer thread; yields (item, context, finished futures) in order, or (item, exception, [])
        when `prepare` raised. While the producer is preparing, a partial engine batch waits for its
        tiles; while it waits on the consumer, the batch goes as it is once the devices have nothing queued.
        """
        slots = threading.Semaphore(max(1, ahead))
        pending: queue.Queue = queue.Queue()
        stopping = threading.Event()
        with self._lock:
            self._check_open()
            self._streams += 1

        def produce() -> None:
            try:
                for item in items:
                    if not slots.acquire(blocking=False):  # waiting on the consumer: promise nothing meanwhile
                        with self._lock:
                            self._streams -= 1
                        slots.acquire()
                        with self._lock:
                            self._streams += 1
                    if stopping.is_set():
                        break
                    try:
                        context, requests = prepare(item)
                        futures = [self.submit_request(r) for r in requests]
                    except BaseException as exc:  # noqa: BLE001 - the item's own failure, routed to it
                        context, futures = exc, []
                    pending.put((item, context, futures))
            except BaseException as exc:  # noqa: BLE001 - a broken iterator ends the stream
                pending.put((_STOP, exc, []))
            finally:
                with self._lock:
                    self._streams -= 1
                pending.put((_STOP, None, []))

        producer = threading.Thread(target=produce, name="invsr-decode", daemon=True)
        producer.start()
        try:
            while True:
                item, context, futures = pending.get()
                if item is _STOP:
                    if context is not None:
                        raise context
                    break
                try:
                    for future in futures:
                        future.exception()  # wait for it
                    yield item, context, futures
                finally:
                    slots.release()
        finally:  # also when the consumer stops early: the producer takes no further item
            stopping.set()
            slots.release()
            producer.join()

    def close(self, cancel: bool = False) -> None:
        """Finish queued work (`cancel`: fail queued images instead), stop the threads (idempotent).
        Backends are not closed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._cancelled = cancel
        self._jobs.put(_STOP)
        for thread in self._threads:
            thread.join()
        self._lanes.close()  # after the blend thread: every tile handed over is blended

    def __enter__(self) -> "TileScheduler":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close(cancel=exc_type is not None)

    # ---------------------------------------------------------------------------------- internals
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the TileScheduler is closed: create a new one")

    def submit_request(self, request: TileRequest) -> "Future[np.ndarray]":
        """Queue a request made by `request()`; its future gives the upscaled image."""
        job = _Job(request, self.tile, self.scale, self._lanes, self._image_done)
        with self._lock:
            self._check_open()
            self._jobs.put(job)
        return job.future

    def _next_job(self, partial: bool) -> Any:
        """The next job; with a partial batch waiting, None when waiting longer would idle a device."""
        if not partial:
            return self._jobs.get()
        deadline = time.monotonic() + self.max_wait_s
        while True:
            try:
                return self._jobs.get(timeout=self._poll)
            except queue.Empty:
                if self._streams == 0 and self._work.empty() and time.monotonic() >= deadline:
                    return None

    def _feed(self) -> None:
        noise = self._noise
        if noise is None:  # drawn here, not in the constructor: the caller's thread does not wait for it
            try:
                noise = NoiseTable((self.latent, self.latent), self._noise_tiles)
            except MemoryError:  # the table is an optimisation: without it every tile's noise is drawn
                logger.warning("no memory for the noise table of %d tiles: drawing every tile's noise",
                               self._noise_tiles)
                noise = NoiseTable((self.latent, self.latent), 0)
            self._noise = noise
        builder = _BatchBuilder(self.batch, self.tile, noise, self.fixed_batch)
        while True:
            job = self._next_job(partial=bool(builder.entries))
            if job is None or job is _STOP:
                if builder.entries:
                    self._put_batch(builder.take())
                if job is _STOP:
                    break
                continue
            if builder.entries and builder.schedule != job.schedule:
                self._put_batch(builder.take())  # one schedule per engine call
            if self._cancelled:
                job.fail(CancelledError("the scheduler was closed before this image ran"))
                continue
            try:
                for index in range(job.plan.num_tiles):
                    if job.failed:
                        break
                    builder.add(job, index)
                    if builder.full:
                        self._put_batch(builder.take())
            except Exception as exc:  # noqa: BLE001 - this image fails, the others go on
                logger.debug("host stage failed", exc_info=True)
                job.fail(exc)
            job.padded = None
        for _ in self.chains:
            self._work.put(_STOP)

    def _put_batch(self, batch: _Batch) -> None:
        self.stats.batches += 1
        self.stats.padded_tiles += self.batch - batch.real if self.fixed_batch else 0
        self._work.put(batch)

    def _run(self, device: int) -> None:
        chain = self.chains[device]
        while True:
            batch = self._work.get()
            if batch is _STOP:
                break
            self._slots.acquire()  # released by the blend stage once nothing reads this output any more
            start = time.perf_counter()
            try:
                out, error = chain.run_chain(batch.lr, batch.vae_noise, batch.pred_noise, batch.schedule), None
            except Exception as exc:  # noqa: BLE001 - routed to the images of this batch
                out, error = None, exc
            self.stats.device_seconds[device] += time.perf_counter() - start
            batch.lr = batch.vae_noise = batch.pred_noise = None  # inputs are not needed any more
            self._done.put((batch, out, error))
            batch = out = error = None  # the blend stage owns them now: hold nothing while waiting
        with self._lock:
            self._workers_left -= 1
            last = self._workers_left == 0
        if last:
            self._done.put(_STOP)

    def _blend_thread_setup(self) -> None:
        use_blend_buffers(self.tile * self.scale)

    def _blend(self) -> None:
        self._blend_thread_setup()
        while True:
            item = self._done.get()
            if item is _STOP:
                break
            batch, out, error = item
            hold = _OutputHold(self._slots.release)
            try:
                self._blend_batch(batch, out, error, hold)
            finally:
                item = batch = out = error = None  # the lanes hold what they still need
                hold.done()

    def _blend_batch(self, batch: _Batch, out: Any, error: BaseException | None, hold: _OutputHold) -> None:
        tiles: dict[int, tuple[_Job, list[tuple[int, int]]]] = {}  # per image, in batch order
        for k, (job, index) in enumerate(batch.entries):
            if not job.failed:
                tiles.setdefault(id(job), (job, []))[1].append((index, k))
        for job, indices in tiles.values():
            try:
                if error is not None:
                    raise error
                job.add([(index, np.asarray(out[k], dtype=np.float32)) for index, k in indices], hold)
                self.stats.tiles += len(indices)
            except Exception as exc:  # noqa: BLE001 - routed to this image
                job.fail(exc)
                continue
            self._progress(job)

    def _image_done(self) -> None:
        with self._lock:
            self.stats.images += 1

    def _progress(self, job: _Job) -> None:
        callback = job.on_tiles
        try:
            if callback is not None:
                callback(job.done, job.plan.num_tiles)
            if job.finish_if_done():
                self.stats.images += 1
        except Exception as exc:  # noqa: BLE001 - routed to this image
            job.fail(exc)


def run_one(chains: Sequence[Any] | Any, request: TileRequest, queue_depth: int = 2) -> np.ndarray:
    """Upscale one image on a scheduler of its own (started and closed here)."""
    with TileScheduler(chains, queue_depth=queue_depth) as scheduler:
        return scheduler.submit_request(request).result()

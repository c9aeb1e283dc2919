"""One image of a run: read it, hand its frames to a tile scheduler, encode and write the result.

`invsr-run` streams many jobs through one scheduler (`prepare` on its producer thread, `write_result` as
results come back); a Ray worker does one job at a time with `run_one`. Both write the same bytes, with
the same atomic writer, and report failures with the same one line (`failure_line`).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .run_options import RunOptions
from .warning_lines import thread_subject


@dataclass
class Job:
    """One input file and where its result goes (or why it cannot be done)."""

    src: Path | str  # a URI (s3://, file://) is a string: Ray jobs read those
    dst: Path | None = None
    error: str | None = None



@dataclass
class _Decoded:
    """A job's decoded frames, what the producer thread hands to the writer with the futures."""

    frames: object
    pictures: list
    notes: list[str]
    start: float
    bars: list = field(default_factory=list)


def prepare(upscaler, job: Job, opts: RunOptions, schedule,
             data: bytes | None = None) -> tuple[_Decoded | None, list]:
    """Producer side (overlaps device work): decode the job's frames (from the file, or `data`: its
    bytes), one scheduler request per frame."""
    from .imageio import frames_for_format, read_frames

    if job.error is not None:
        return None, []
    start = time.perf_counter()
    with thread_subject(str(job.src)):
        frames = read_frames(job.src if data is None else data, max_pixels=opts.max_pixels, scale=upscaler.scale,
                             name=str(job.src))
    pictures, notes = frames_for_format(frames, opts.format)
    decoded = _Decoded(frames, pictures, notes, start)
    requests = []
    base = Path(str(job.src)).name  # a URI is a string
    for k, pic in enumerate(pictures):
        label = base if len(pictures) == 1 else f"{base} [{k + 1}/{len(pictures)}]"
        requests.append(upscaler.request(pic, schedule, opts.color_fix, opts.seed, _tile_bar(upscaler, label, decoded)))
    return decoded, requests


def _tile_bar(upscaler, label: str, decoded: _Decoded):
    """on_tiles for one picture: a tile progress bar once it takes more than one engine batch."""
    from tqdm import tqdm

    bar = None

    def on_tiles(done: int, total: int) -> None:
        nonlocal bar
        if bar is None and total > upscaler.backend.batch:
            bar = tqdm(total=total, desc=label, unit="tile", leave=False, file=sys.stderr, disable=None)
            decoded.bars.append(bar)
        if bar is not None:
            bar.update(done - bar.n)

    return on_tiles


def write_result(upscaler, job: Job, decoded: _Decoded, futures: list, opts: RunOptions) -> float:
    """Writer side (overlaps device work on the next images): finish, encode and save one job."""
    from tqdm import tqdm

    from .imageio import encode_picture, save_frames

    try:
        rgbs = [future.result() for future in futures]
    finally:
        for bar in decoded.bars:
            bar.close()
    encoded, notes = [], list(decoded.notes)
    for pic, rgb in zip(decoded.pictures, rgbs):
        image, frame_notes = encode_picture(upscaler.finish_picture(pic, rgb), opts.format)
        encoded.append(image)
        notes += [n for n in frame_notes if n not in notes]
    notes += save_frames(encoded, job.dst, opts.format, decoded.frames.durations, decoded.frames.loop)
    for note in notes:
        tqdm.write(f"warning: {job.src}: {note}", file=sys.stderr)
    return time.perf_counter() - decoded.start


def run_one(upscaler, scheduler, job: Job, opts: RunOptions, schedule, data: bytes | None = None) -> float:
    """Read (the file, or `data`: its bytes), upscale on `scheduler` (the caller's, kept across images)
    and write one image (a Ray worker's unit of work); returns seconds. Raises what reading or running raised."""
    decoded, requests = prepare(upscaler, job, opts, schedule, data)
    futures = [scheduler.submit_request(request) for request in requests]
    return write_result(upscaler, job, decoded, futures, opts)


def failure_line(job: Job, exc: BaseException) -> str:
    """The one line that reports a failed image (the reader's own message, or the error's first line)."""
    from .imageio import ImageReadError

    if isinstance(exc, ImageReadError):
        return str(exc)
    first = (str(exc).strip().splitlines() or ["failed"])[0]
    return f"{job.src}: {type(exc).__name__}: {first}"

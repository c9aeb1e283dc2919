"""`invsr-run ENGINE_DIR INPUT... -o OUTDIR`: upscale image files x4 from an engine folder.

Exit status: 0 all done (or skipped), 1 some images failed (the others are still written),
2 usage or engine-folder errors (nothing processed), 130 on Ctrl-C and 143 on SIGTERM (the image
being written is not left half-written). Problems are one line on stderr: `error: ...`.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .backends import BACKEND_CHOICES
from .budget import DEFAULT_MAX_PIXELS
from .colorfix import COLOR_FIXES
from .imageio import IMAGE_SUFFIXES, OUTPUT_FORMATS
from .outdir import outdir_problem
from .run_options import RunOptionError, RunOptions, option_flag
from .schedule import MAX_STEPS
from .signals import exit_code, interruption, terminate_like_interrupt
from .image_job import Job, prepare, write_result, failure_line
from .warning_lines import warnings_as_lines

if TYPE_CHECKING:
    from .ray_job import RayOptions

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad arguments or an unusable engine folder: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        raise UsageError(f"{message} (see invsr-run --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="invsr-run", description="InvSR x4 super-resolution from an engine folder (ONNX or TensorRT).")
    p.add_argument("engine_dir", help="engine folder written by invsr-export")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    p.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output folder (created if missing)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"sampling steps 1..{MAX_STEPS} (default 1, or the count of --timesteps)")
    p.add_argument("--timesteps", default=None, help="custom timesteps, strictly decreasing in 1..250, e.g. 200,100")
    p.add_argument("--color-fix", default="none", choices=COLOR_FIXES, help="colour correction (default none)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (>= 0); same seed, same output (default 0)")
    p.add_argument("--tile-batch", type=int, default=None,
                   help="tiles queued between the scheduler's stages, in engine batches (memory; default 2 batches)")
    p.add_argument("--devices", default=None, metavar="IDS",
                   help="GPU ids, e.g. 0,1: one backend per device, tiles spread over them (default: one backend)")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                   help="default auto: what the folder holds")
    p.add_argument("--format", default="png", choices=tuple(OUTPUT_FORMATS), help="output format (default png)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip them)")
    p.add_argument("--recursive", action="store_true", help="look for images in subfolders too")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"refuse images needing more memory than one of N pixels (default {DEFAULT_MAX_PIXELS:,} "
                        "= 4096x4096, about 1.4 GiB; 0: no limit)")
    ray = p.add_argument_group("many machines (Ray Data; the `ray` extra)")
    ray.add_argument("--ray", action="store_true", help="run the job as a Ray Data pipeline (inputs may be URIs)")
    ray.add_argument("--address", default=None, help="Ray cluster: auto, ray://host:10001 (default: a new local one)")
    ray.add_argument("--workers", type=int, default=1, help="upscaling workers (one Upscaler each; default 1)")
    ray.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per worker (default 0: CPU)")
    return p


#: argparse destinations that are Ray settings, not RunOptions.
RAY_FLAGS = ("ray", "address", "workers", "gpus_per_worker")


@dataclass
class Tally:
    """What happened, for the summary."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: list[float] = field(default_factory=list)


# ---------------------------------------------------------------------------------------- arguments
def parse_options(argv: Sequence[str] | None = None) -> RunOptions:
    """The command line as checked RunOptions; UsageError (naming the flag) otherwise."""
    return parse_command(argv)[0]


def parse_command(argv: Sequence[str] | None = None) -> tuple[RunOptions, "RayOptions | None"]:
    """The command line as checked RunOptions and, with --ray, RayOptions; UsageError otherwise."""
    from .ray_job import RayOptions

    args = vars(build_parser().parse_args(argv))
    ray = {name: args.pop(name) for name in RAY_FLAGS}
    try:
        opts = RunOptions.from_mapping(args)
        ray_opts = RayOptions(address=ray["address"], workers=ray["workers"],
                              gpus_per_worker=ray["gpus_per_worker"]) if ray["ray"] else None
    except RunOptionError as exc:
        raise UsageError(f"{option_flag(exc.option)} {exc.detail}") from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if opts.out.exists() and not opts.out.is_dir():
        raise UsageError(f"{opts.out}: exists and is not a folder; pass an output folder to -o")  # even with no work
    return opts, ray_opts


# ------------------------------------------------------------------------------------------- inputs
def _folder_images(folder: Path, recursive: bool, outdir: Path) -> list[Path]:
    """Image files in a folder (by suffix; hidden files and an output folder inside it left out), sorted."""
    pattern = folder.rglob("*") if recursive else folder.glob("*")
    root = folder.resolve()
    inside = outdir != root and root in outdir.parents  # only an output folder *inside* this one is skipped
    found = []
    for path in pattern:
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES and not (inside and outdir in path.resolve().parents):
            found.append(path)
    return sorted(found)


def plan_jobs(inputs: Sequence[str | Path], outdir: Path, fmt: str, recursive: bool) -> list[Job]:
    """Expand files and folders into jobs; OUTDIR/<stem>.<ext> (subfolders mirrored with --recursive).

    The same file named twice (or through its folder) is done once. UsageError when OUTDIR is one of the
    input folders (outputs would mix with the inputs).
    """
    suffix = OUTPUT_FORMATS[fmt][1]
    out_resolved = outdir.resolve()
    jobs: list[Job] = []
    seen: set[Path] = set()
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            if path.resolve() == out_resolved:
                raise UsageError(f"-o {outdir} is the input folder {path}: the outputs would mix with the inputs; "
                                 f"pass another output folder, e.g. -o {path / 'x4'}")
            images = _folder_images(path, recursive, out_resolved)
            if not images:
                hint = "" if recursive else " (use --recursive for subfolders)"
                jobs.append(Job(path, error=f"{path}: no images found in this folder{hint}"))
            pairs = [(src, outdir / src.relative_to(path).parent / (src.stem + suffix)) for src in images]
        elif path.is_file():
            pairs = [(path, outdir / (path.stem + suffix))]
        else:
            jobs.append(Job(path, error=f"{path}: no such file or folder"))
            continue
        for src, dst in pairs:  # the same path twice is one job (a symlink is a name of its own)
            key = Path(os.path.abspath(src))
            if key not in seen:
                seen.add(key)
                jobs.append(Job(src, dst))
    return _refuse_overwriting_inputs(jobs)


def plan_all(opts: RunOptions, uris: bool = False) -> list[Job]:
    """Every job of a run: local files and folders (plan_jobs), plus URIs (s3://, file://, ...) with `uris`."""
    local = [p for p in opts.inputs if "://" not in str(p)]
    remote = [str(p) for p in opts.inputs if "://" in str(p)]
    jobs = plan_jobs(local, opts.out, opts.format, opts.recursive) if local else []
    if remote and not uris:
        jobs += [Job(uri, error=f"{uri}: URIs are read by Ray Data jobs only; add --ray") for uri in remote]
    elif remote:
        from .ray_job import plan_uri_jobs

        for uri in remote:
            jobs += plan_uri_jobs(uri, opts.out, opts.format, opts.recursive)
    return jobs


def _refuse_overwriting_inputs(jobs: list[Job]) -> list[Job]:
    """An output may never be an input. (Two inputs with one output are decided as they are written.)"""
    inputs = {job.src.resolve() for job in jobs if job.error is None}
    for job in jobs:
        if job.error is None and job.dst is not None and job.dst.resolve() in inputs:
            job.error = f"{job.src}: output {job.dst} would overwrite an input; choose another -o or --format"
    return jobs


def check_outdir(outdir: Path) -> None:
    """UsageError unless OUTDIR is (or can be created as) a writable folder: checked before any work."""
    problem = outdir_problem(outdir)
    if problem is not None:
        raise UsageError(f"{problem}; pass a writable output folder to -o")


# ------------------------------------------------------------------------------------------ running
class _TqdmHandler(logging.Handler):
    """Library warnings as `warning: ...` lines that do not break the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(f"{record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)


def _setup_logging() -> None:
    root = logging.getLogger("invsr_runtime")
    if not any(isinstance(h, _TqdmHandler) for h in root.handlers):
        root.addHandler(_TqdmHandler())
    root.setLevel(logging.WARNING)
    root.propagate = False


def _error(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"error: {message}", file=sys.stderr)


def _tqdm_line(line: str) -> None:
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


def process(jobs: list[Job], upscaler, opts: RunOptions, schedule, tally: Tally) -> None:
    """Run every job, counting into `tally`; one failure never stops the others.

    The jobs stream through the upscaler's tile scheduler: the next images are decoded and the previous
    ones encoded and written while the devices run, and tiles of consecutive images share engine batches.
    Two inputs with the same output (a.jpg, a.png) are decided here: the first one that is written
    wins and the later ones fail, so an unreadable a.jpg does not block a good a.png.
    """
    from tqdm import tqdm

    if upscaler is None:
        for job in jobs:
            _error(job.error or f"{job.src}: not run")
            tally.failed += 1
        return
    written: dict[Path, Path] = {}
    bar = tqdm(total=len(jobs), desc="images", unit="img", file=sys.stderr, disable=None)
    with warnings_as_lines(write=_tqdm_line), upscaler.scheduler() as scheduler:
        for job, decoded, futures in scheduler.stream(jobs, lambda j: prepare(upscaler, j, opts, schedule)):
            bar.update(1)
            if job.error is None and job.dst is not None and job.dst.resolve() in written:
                job.error = (f"{job.src}: output {job.dst} was already written from {written[job.dst.resolve()]}; "
                             "rename one of them")
            if job.error is not None:
                _error(job.error)
                tally.failed += 1
                continue
            try:
                if isinstance(decoded, BaseException):
                    raise decoded
                with warnings_as_lines(str(job.src), write=_tqdm_line):
                    tally.seconds.append(write_result(upscaler, job, decoded, futures, opts))
                tally.done += 1
                written[job.dst.resolve()] = job.src
            except Exception as exc:  # noqa: BLE001 - report the image, carry on with the others
                if (stop := interruption(exc)) is not None:
                    raise stop from None  # a library's clean-up failed on the signal's way out: stop
                _error(failure_line(job, exc))
                tally.failed += 1
    bar.close()


def summary(tally: Tally, elapsed: float) -> str:
    """The closing line: counts and time per image."""
    per = f", {sum(tally.seconds) / len(tally.seconds):.2f} s per image" if tally.seconds else ""
    return f"done {tally.done}, skipped {tally.skipped}, failed {tally.failed} in {elapsed:.1f} s{per}"


def _skip_existing(jobs: list[Job], overwrite: bool, tally: Tally) -> list[Job]:
    """Leave out jobs whose output exists (unless --overwrite); counted as skipped."""
    if overwrite:
        return jobs
    todo = []
    for job in jobs:
        if job.error is None and job.dst is not None and job.dst.exists():
            tally.skipped += 1
        else:
            todo.append(job)
    return todo


def run(argv: Sequence[str] | None = None) -> int:
    """The whole command; returns the exit status."""
    from .backends import BackendError
    from .manifest import ManifestError, load_manifest
    from .schedule import ScheduleError
    from .upscaler import Upscaler, schedule_for

    start = time.perf_counter()
    tally = Tally()
    try:
        opts, ray_opts = parse_command(argv)
        manifest = load_manifest(opts.engine_dir)
        try:
            schedule = schedule_for(manifest, opts.steps, opts.timesteps)
        except ScheduleError as exc:
            raise UsageError(f"{'--timesteps' if opts.timesteps is not None else '--steps'}: {exc}") from None
        jobs = plan_all(opts, uris=ray_opts is not None)
        jobs = _skip_existing(jobs, opts.overwrite, tally)
        if ray_opts is not None:
            return _run_on_ray(jobs, opts, ray_opts, tally, start)
        upscaler = None
        if any(job.error is None for job in jobs):
            check_outdir(opts.out)
            upscaler = Upscaler(opts.engine_dir, backend=opts.backend, tile_batch=opts.tile_batch,
                                devices=opts.devices, max_pixels=opts.max_pixels or None)
    except (UsageError, ManifestError, BackendError) as exc:
        _error(str(exc))
        return EXIT_USAGE
    process(jobs, upscaler, opts, schedule, tally)
    print(summary(tally, time.perf_counter() - start))
    return EXIT_FAILED if tally.failed else EXIT_OK


def _run_on_ray(jobs: list[Job], opts: RunOptions, ray_opts: "RayOptions", tally: Tally, start: float) -> int:
    """The same job as a Ray Data pipeline (invsr_runtime.ray_job); UsageError when Ray cannot be used."""
    from .ray_job import RayJobError, run_job_on_ray

    check_outdir(opts.out)
    try:
        run_job_on_ray(jobs, opts, ray_opts, tally, report=_error)
    except RayJobError as exc:
        raise UsageError(str(exc)) from None
    print(summary(tally, time.perf_counter() - start))
    return EXIT_FAILED if tally.failed else EXIT_OK


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (`invsr-run`)."""
    _setup_logging()
    try:
        with terminate_like_interrupt(), warnings_as_lines(write=_tqdm_line):
            code = run(argv)
    except KeyboardInterrupt as exc:
        _error(str(exc) or "interrupted")
        code = exit_code(exc)
    sys.exit(code)


if __name__ == "__main__":
    main()

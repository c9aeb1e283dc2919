"""`invsr-run --ray`: the same offline job as a Ray Data pipeline over many workers and machines.

The driver plans the job exactly as `invsr-run` does (inputs listed, outputs named, existing outputs
skipped, inputs never overwritten); Ray Data streams the planned rows through an actor pool, one
`Upscaler` per worker (loaded once, on its own GPU with `--gpus-per-worker`), each worker reading,
upscaling and writing (atomically, with the same encoder) its images. Failures are rows, not
exceptions: they are collected in OUTDIR/failures.jsonl with the reason. Ray restarts a worker that
dies and retries its rows; a row whose output already exists is skipped, so every output is written
once and a re-run resumes where the last one stopped. Output bytes equal a plain `invsr-run`'s.

Inputs may be local paths or URIs of any filesystem pyarrow understands (`s3://...`, `gs://...`, with
their libraries installed; `file://` always); OUTDIR is a local (or shared) folder. `ray` is imported
only here, and only when a job runs (the `ray` extra).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .run_options import RunOptions

logger = logging.getLogger(__name__)
FAILURES_FILE = "failures.jsonl"


class RayJobError(RuntimeError):
    """Ray is missing or the cluster cannot be reached (one line: what to do)."""


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide: cluster address (None: start a local one), workers, GPUs and CPUs per worker."""

    address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.gpus_per_worker < 0 or self.cpus_per_worker <= 0:
            raise ValueError("--gpus-per-worker must be >= 0 and CPUs per worker > 0")


@dataclass(frozen=True)
class Row:
    """One output and the inputs that may produce it, in order (a.jpg, a.png -> a.png: first written wins)."""

    dst: str
    srcs: tuple[str, ...]


def rows_for(jobs: Sequence[Any]) -> list[Row]:
    """Group planned jobs (image_job.Job without error) by output, keeping their order."""
    groups: dict[str, list[str]] = {}
    for job in jobs:
        groups.setdefault(str(job.dst), []).append(str(job.src))
    return [Row(dst, tuple(srcs)) for dst, srcs in groups.items()]


def plan_uri_jobs(uri: str, outdir: Path, fmt: str, recursive: bool) -> list:
    """Jobs for a URI: one file, or the images in a folder (subfolders with `recursive`, mirrored), named
    as `plan_jobs` names local ones."""
    from pyarrow import fs

    from .image_job import Job
    from .imageio import IMAGE_SUFFIXES, OUTPUT_FORMATS

    suffix = OUTPUT_FORMATS[fmt][1]
    try:
        filesystem, root = fs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(root)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... per filesystem
        return [Job(uri, error=f"{uri}: cannot be read ({(str(exc).splitlines() or ['?'])[0]})")]
    scheme = uri.split("://", 1)[0]
    if info.type == fs.FileType.File:
        return [Job(uri, outdir / (Path(root).stem + suffix))]
    if info.type != fs.FileType.Directory:
        return [Job(uri, error=f"{uri}: no such file or folder")]
    found = filesystem.get_file_info(fs.FileSelector(root, recursive=recursive))
    jobs = []
    for entry in sorted(found, key=lambda e: e.path):
        rel = Path(entry.path).relative_to(root.rstrip("/") or "/")
        if entry.type != fs.FileType.File or any(p.startswith(".") for p in rel.parts):
            continue
        if rel.suffix.lower() in IMAGE_SUFFIXES:
            jobs.append(Job(f"{scheme}://{entry.path}" if scheme != "file" else f"file://{entry.path}",
                            outdir / rel.parent / (rel.stem + suffix)))
    if not jobs:
        hint = "" if recursive else " (use --recursive for subfolders)"
        return [Job(uri, error=f"{uri}: no images found in this folder{hint}")]
    return jobs


def _read_bytes(uri: str) -> bytes:
    """The bytes of a pyarrow-filesystem URI (s3://, gs://, file://, ...)."""
    from pyarrow import fs

    filesystem, path = fs.FileSystem.from_uri(uri)
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


class UpscaleWorker:
    """The actor: one Upscaler, loaded once; `__call__` does a batch of rows and returns their outcomes."""

    def __init__(self, options: dict) -> None:
        from .upscaler import Upscaler, schedule_for

        self.opts = RunOptions(**options)
        self.upscaler = Upscaler(self.opts.engine_dir, backend=self.opts.backend, tile_batch=self.opts.tile_batch,
                                 max_pixels=self.opts.max_pixels or None)
        self.schedule = schedule_for(self.upscaler.manifest, self.opts.steps, self.opts.timesteps)
        self._scheduler = None  # one for the worker's life (made on first use, after any backend swap)

    def _tile_scheduler(self):
        """The worker's tile scheduler, started once rather than once per image."""
        if self._scheduler is None:
            self._scheduler = self.upscaler.scheduler()
        return self._scheduler

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {"dst": [], "status": [], "src": [], "errors": [], "seconds": []}
        for dst, srcs in zip(batch["dst"], batch["srcs"]):
            status, src, errors, seconds = self._one(str(dst), json.loads(str(srcs)))
            for key, value in (("dst", str(dst)), ("status", status), ("src", src),
                               ("errors", json.dumps(errors)), ("seconds", seconds)):
                out[key].append(value)
        return out

    def _one(self, dst: str, srcs: list[str]) -> tuple[str, str, list[str], float]:
        """done / skipped / failed for one output, trying its inputs in order."""
        from .image_job import Job, failure_line, run_one
        from .warning_lines import warnings_as_lines

        if Path(dst).exists() and not self.opts.overwrite:
            return "skipped", "", [], 0.0  # written by an earlier run, or by this job before a retry
        errors: list[str] = []
        for src in srcs:
            job = Job(Path(src) if "://" not in src else src, Path(dst))
            try:
                data = _read_bytes(src) if "://" in src else None
                with warnings_as_lines(src, write=logger.warning):
                    return "done", src, errors, run_one(self.upscaler, self._tile_scheduler(), job, self.opts,
                                                        self.schedule, data)
            except Exception as exc:  # noqa: BLE001 - a failed image is a row, never a failed job
                errors.append(failure_line(job, exc))
        return "failed", "", errors, 0.0


def _connect(options: RayOptions) -> Any:
    try:
        import ray
    except ImportError:
        raise RayJobError("--ray needs Ray: pip install 'invsr-trt[ray]'") from None
    if not ray.is_initialized():
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")  # no C++ info lines between our own
        try:
            ray.init(address=options.address, log_to_driver=False, include_dashboard=False,
                     logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or ["no answer"])[0]
            raise RayJobError(f"cannot reach the Ray cluster at {options.address or 'a new local cluster'}: "
                              f"{first}; start one with `ray start --head` or drop --address") from None
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # our own bar counts images; Ray's would interleave with it
    context.print_on_execution_start = False
    return ray


def run_on_ray(rows: Sequence[Row], opts: RunOptions, options: RayOptions,
               on_row: Any = None, worker: type = UpscaleWorker) -> list[dict]:
    """Run every row on the cluster; returns one outcome dict per row (dst, status, src, errors, seconds).

    `on_row(outcome)` is called as outcomes stream in (progress). Each failed input is also appended, one
    JSON line each, to OUTDIR/failures.jsonl. `worker`: the actor class, UpscaleWorker or a subclass of it
    (importable on the workers), e.g. one that replaces `self.upscaler.backend` with a simulated device.
    """
    ray = _connect(options)
    if not rows:
        return []
    items = [{"dst": row.dst, "srcs": json.dumps(list(row.srcs))} for row in rows]
    fields = {k: v for k, v in opts.__dict__.items()}
    fields.update(engine_dir=str(opts.engine_dir), out=str(opts.out), inputs=())
    dataset = ray.data.from_items(items, override_num_blocks=min(len(items), 4 * options.workers))
    # Ray Data's actor pools restart dead actors and retry their tasks by default (max_restarts=-1,
    # max_task_retries=-1): a killed worker is replaced and its rows redone.
    results = dataset.map_batches(
        worker, fn_constructor_kwargs={"options": fields}, batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=options.workers),
        num_gpus=options.gpus_per_worker, num_cpus=options.cpus_per_worker)
    outcomes = []
    failures_path = Path(opts.out) / FAILURES_FILE
    for row in results.iter_rows():
        outcome = {"dst": row["dst"], "status": row["status"], "src": row["src"],
                   "errors": json.loads(row["errors"]), "seconds": float(row["seconds"])}
        outcomes.append(outcome)
        for line in outcome["errors"]:
            _append_failure(failures_path, outcome["dst"], line)
        if on_row is not None:
            on_row(outcome)
    return outcomes


def run_job_on_ray(jobs: Sequence[Any], opts: RunOptions, options: RayOptions, tally: Any,
                   report: Any) -> None:
    """`invsr-run --ray`: planned jobs (errors reported and counted as the plain run does) on the
    cluster, with a progress bar over images; counts into `tally`."""
    from tqdm import tqdm

    failures = Path(opts.out) / FAILURES_FILE
    for job in jobs:
        if job.error is not None:
            report(job.error)
            tally.failed += 1
            _append_failure(failures, None, job.error)
    rows = rows_for([job for job in jobs if job.error is None])
    with tqdm(total=len(rows), desc="images", unit="img", file=sys.stderr, disable=None) as bar:
        def on_row(outcome: dict) -> None:
            bar.update(1)
            if outcome["status"] == "done":
                tally.done += 1
                tally.seconds.append(outcome["seconds"])
            elif outcome["status"] == "skipped":
                tally.skipped += 1
            tally.failed += len(outcome["errors"])  # every input that could not be read or run, as invsr-run counts
            for line in outcome["errors"]:
                bar.write(f"error: {line}", file=sys.stderr)

        run_on_ray(rows, opts, options, on_row)


def _append_failure(path: Path, output: str | None, error: str) -> None:
    """One JSON line per failed input: the output it was for, the one-line reason, when."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"output": output, "error": error, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")

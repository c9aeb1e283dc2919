"""One backend x precision (or the fp32 reference) in its own process: ``python -m benchmarks.worker JOB.json``.

A fresh process per backend and precision keeps models, sessions, compiled graphs and allocator
caches of one configuration out of the next one's memory figures and timings. The job file says what
to run; results go to ``job["result_path"]`` as JSON lines (``kind`` = reference | info | record),
and one progress line per configuration goes to stdout.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import flops, quality
from .contention import OtherCpu, QuietPolicy, wait_quiet
from .memory import PeakRss, gpu_peak_mib, gpu_used_mib, reset_gpu_peak
from .runners import STAGES, RunnerOptions, SkipConfig, TileInputs, make_runner
from .runners.base import BoundTile, Runner
from .timing import measure, summarize_ms

logger = logging.getLogger(__name__)

#: Measure at once, whatever else runs (the default; `--quiet-wait` turns waiting on).
NO_QUIET = QuietPolicy()


class ResultWriter:
    """Appends one JSON object per line to the job's result file (flushed: survives a crash)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def write(self, kind: str, **fields: Any) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"kind": kind, **fields}) + "\n")


def schedule_for(steps: int, alphas: np.ndarray | None) -> Any:
    """The default schedule for `steps` on `alphas` (SD-Turbo's table when None)."""
    from invsr_runtime.schedule import SD_TURBO_SCHEDULER, alphas_cumprod, make_schedule, resolve_timesteps

    table = alphas if alphas is not None else alphas_cumprod(**SD_TURBO_SCHEDULER)
    return make_schedule(resolve_timesteps(steps), table)


# ---------------------------------------------------------------------------------------- reference
def run_reference(job: dict[str, Any], out: ResultWriter) -> None:
    """Peak matmul rate, MACs per stage (meta device) and the fp32 reference image for every step count."""
    from .runners.torch_eager import device_inputs, load_pipeline

    device = job["options"]["device"]
    peak = measure_peak(device, QuietPolicy(wait_s=float(job.get("quiet_wait_s", 0.0))))
    options = RunnerOptions(**{**job["options"], "backend": "torch-eager", "precision": "fp32"})
    t0 = time.perf_counter()
    pipe = load_pipeline(options)
    load_s = time.perf_counter() - t0
    macs = flops.stage_macs(pipe.base, pipe.predictor, options.tile)
    photo = quality.photo_tile(options.tile)
    files = {}
    for steps in job["steps"]:
        inputs = TileInputs.from_photo(photo, 1, schedule_for(steps, pipe.base.alphas_cumprod), job["seed"])
        lr, vae_noise, pred_noise = device_inputs(inputs, pipe.device)
        image = pipe.upscale_tiles(lr, inputs.schedule, vae_noise, pred_noise).float().cpu().numpy()
        path = Path(job["outputs"]) / f"reference-s{steps}.npy"
        np.save(path, image[0].transpose(1, 2, 0))
        files[str(steps)] = str(path)
    out.write("reference", peak=peak, macs_per_tile=macs, files=files, load_s=load_s,
              params_m=_param_counts(pipe))


def measure_peak(device: str, quiet: QuietPolicy) -> dict[str, Any]:
    """The peak matmul rate (fp16 on GPU, fp32 on CPU); re-measured while other processes disturbed it, best kept."""
    best: dict[str, Any] | None = None
    for attempt in range(1, (quiet.attempts if quiet.enabled else 1) + 1):
        waited = wait_quiet(quiet.wait_s, quiet.threshold_cores)
        with OtherCpu() as others:
            peak = flops.peak_matmul_flops(device, "float16" if device == "cuda" else "float32")
        peak.update(others.summary(), waited_for_quiet_s=round(waited, 1), attempt=attempt)
        if best is None or peak["flops_per_s"] > best["flops_per_s"]:
            best = peak
        if others.other_cores + others.steal_cores <= quiet.threshold_cores:
            break
    return best


def _param_counts(pipe: Any) -> dict[str, float]:
    """Millions of parameters per network, for the report."""
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    vae = pipe.base.vae
    return {"unet": count(pipe.base.unet), "vae_encoder": count(vae.encoder) + count(vae.quant_conv),
            "vae_decoder": count(vae.decoder) + count(vae.post_quant_conv), "predictor": count(pipe.predictor)}


# -------------------------------------------------------------------------------------------- bench
def time_first_then(fn: Callable[[], Any], warmup: int, iters: int, runner: Runner,
                    quiet: QuietPolicy = NO_QUIET) -> dict[str, Any]:
    """Time the first call on its own, warm up, then time `iters` calls (the first call is warm-up call 1).

    The first call is wall-clock time until the device is idle: it holds compilation and session /
    allocator set-up, which happen on the host and which CUDA events would not see. The timed calls
    follow `quiet` (wait for other processes to leave the CPU, re-measure when they did not); the cores
    other processes took during the kept measurement are recorded (``other_cores``, ``steal_cores``).
    """
    t0 = time.perf_counter()
    fn()
    runner.sync()
    first = time.perf_counter() - t0
    for _ in range(max(warmup, 1) - 1):
        fn()
    runner.sync()
    best: tuple[float, list[float], dict[str, float], float, int] | None = None
    for attempt in range(1, (quiet.attempts if quiet.enabled else 1) + 1):
        waited = wait_quiet(quiet.wait_s, quiet.threshold_cores)
        with OtherCpu() as others:
            samples = measure(fn, 0, iters, runner.timer)
        busy = others.other_cores + others.steal_cores
        if best is None or busy < best[0]:
            best = (busy, samples, others.summary(), waited, attempt)
        if busy <= quiet.threshold_cores:
            break
        logger.info("%.2f other cores during the measurement (attempt %d)", busy, attempt)
    _, samples, disturbance, waited, attempt = best
    stats = summarize_ms(samples)
    stats.update(disturbance, first_call_ms=first * 1e3, waited_for_quiet_s=round(waited, 1), attempt=attempt)
    return stats


def time_stages(bound: BoundTile, runner: Runner, warmup: int, iters: int,
                quiet: QuietPolicy = NO_QUIET) -> dict[str, Any]:
    """Median / p90 / first call of each stage the runner exposes, in chain order."""
    result = {}
    for name in STAGES:
        if name in bound.stages:
            logger.info("timing stage %s", name)
            result[name] = time_first_then(bound.stages[name], warmup, iters, runner, quiet)
    return result


def time_chain(bound: BoundTile, runner: Runner, warmup: int, iters: int,
               quiet: QuietPolicy = NO_QUIET) -> tuple[dict[str, Any], np.ndarray]:
    """End-to-end timing of the chain; also returns the last output as an image batch [B,3,H,W]."""
    last: dict[str, Any] = {}

    def call() -> None:
        last["out"] = bound.chain()

    stats = time_first_then(call, warmup, iters, runner, quiet)
    return stats, bound.to_image(last["out"])


class BenchJob:
    """Runs every (batch, steps) of one backend x precision and writes a record per configuration."""

    def __init__(self, job: dict[str, Any], out: ResultWriter) -> None:
        self.job, self.out = job, out
        engines = {int(k): v for k, v in job["options"]["engines"].items()}  # JSON keys are strings
        self.options = RunnerOptions(**{**job["options"], "engines": engines})
        self.warmup, self.iters = int(job["warmup"]), int(job["iters"])
        self.quiet = QuietPolicy(wait_s=float(job.get("quiet_wait_s", 0.0)))
        self.photo = quality.photo_tile(self.options.tile)

    def key(self, batch: int, steps: int) -> dict[str, Any]:
        return {"backend": self.options.backend, "precision": self.options.precision, "batch": batch, "steps": steps}

    def skip_all(self, reason: str, batches: list[int] | None = None) -> None:
        for batch in batches or self.job["batches"]:
            for steps in self.job["steps"]:
                self.out.write("record", **self.key(batch, steps), status="skipped", reason=reason)
                print(f"  {self.label(batch, steps)}: skipped ({reason})", flush=True)

    def label(self, batch: int, steps: int) -> str:
        return f"{self.options.backend} {self.options.precision} b{batch} s{steps}"

    def run(self) -> None:
        runner = make_runner(self.options)
        try:
            runner.setup()
        except SkipConfig as exc:
            self.skip_all(str(exc))
            return
        try:
            for batch in sorted(self.job["batches"]):
                self.run_batch(runner, batch)
        finally:
            self.out.write("info", backend=self.options.backend, precision=self.options.precision, info=runner.info)
            runner.close()

    def inputs(self, runner: Runner, batch: int, steps: int) -> TileInputs:
        return TileInputs.from_photo(self.photo, batch, schedule_for(steps, getattr(runner, "alphas", None)),
                                     self.job["seed"])

    def run_batch(self, runner: Runner, batch: int) -> None:
        """Stage timings once per batch (they do not depend on the step count), then the chain per step count."""
        steps_list = sorted(self.job["steps"])
        try:
            bound = runner.bind(self.inputs(runner, batch, steps_list[0]))
        except SkipConfig as exc:
            self.skip_all(str(exc), [batch])
            return
        reset_gpu_peak()
        with PeakRss() as stage_mem:
            stages = time_stages(bound, runner, self.warmup, self.iters, self.quiet)
        stage_load = _load()
        for steps in steps_list:
            try:
                self.run_config(runner, batch, steps, stages, stage_mem, stage_load)
            except Exception as exc:  # noqa: BLE001 - one failed configuration must not stop the others
                logger.exception("%s failed", self.label(batch, steps))
                first = (str(exc).strip().splitlines() or [""])[0]
                self.out.write("record", **self.key(batch, steps), status="error",
                               reason=f"{type(exc).__name__}: {first}")
                print(f"  {self.label(batch, steps)}: ERROR {type(exc).__name__}: {exc}", flush=True)

    def run_config(self, runner: Runner, batch: int, steps: int, stages: dict[str, Any], stage_mem: PeakRss,
                   stage_load: float) -> None:
        """End-to-end timing, memory and quality drift of one (batch, steps); writes its record."""
        inputs = self.inputs(runner, batch, steps)
        bound = runner.bind(inputs)
        load_before = _load()
        with PeakRss() as chain_mem:
            e2e, images = time_chain(bound, runner, self.warmup, self.iters, self.quiet)
        memory = chain_mem.summary()
        memory["peak_rss_mib"] = max(memory["peak_rss_mib"], stage_mem.summary()["peak_rss_mib"])
        memory["gpu_peak_mib"] = gpu_peak_mib()
        memory["gpu_used_mib"] = gpu_used_mib()
        image = images[0].transpose(1, 2, 0)
        drift = self.drift(steps, image)
        record = dict(
            **self.key(batch, steps), status="ok", timesteps=list(inputs.schedule.timesteps),
            timer=runner.timer, stages=stages, end_to_end=e2e, per_image_ms=e2e["median"] / batch,
            throughput_ips=batch / (e2e["median"] / 1e3), memory=memory, quality=drift, note=bound.note,
            load_average=[round(x, 2) for x in (stage_load, load_before, _load())],
        )
        self.out.write("record", **record)
        print(f"  {self.label(batch, steps)}: {progress_text(record)}", flush=True)

    def drift(self, steps: int, image: np.ndarray) -> dict[str, Any] | None:
        """PSNR / SSIM of tile 0 against the fp32 reference for this step count (None without a reference)."""
        ref_path = self.job.get("references", {}).get(str(steps))
        if not ref_path or not Path(ref_path).is_file():
            return None
        return quality.drift(np.load(ref_path), image)


def _load() -> float:
    """The 1-minute load average (0 where the OS has none): other work competing for the cores shows here."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def progress_text(record: dict[str, Any]) -> str:
    """One line: end-to-end median / p90, throughput, drift, peak RSS."""
    e2e = record["end_to_end"]
    text = f"e2e {e2e['median']:.1f} ms (p90 {e2e['p90']:.1f}), {record['throughput_ips']:.3g} img/s"
    q = record.get("quality")
    if q:
        psnr = q["psnr_db"]
        text += f", PSNR {psnr if psnr == 'inf' else f'{psnr:.1f}'} dB, SSIM {q['ssim']:.4f}"
    return text + f", peak RSS {record['memory']['peak_rss_mib']:.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the worker process: run the job file given as the only argument."""
    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    logging.basicConfig(level=job.get("log_level", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    out = ResultWriter(job["result_path"])
    if job["mode"] == "reference":
        run_reference(job, out)
    else:
        BenchJob(job, out).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Ray scaling of the offline job: images per second for 1, 2, 4 workers, and Ray's overhead against the
plain runtime for the same work, with a simulated device (X ms per tile) in every worker.

    python -m benchmarks.ray_scale ENGINE_DIR --out DIR [--workers 1,2,4] [--images 24] [--size 256]
                                   [--ms-per-tile 7] [--repeats 3] [--warmup 1] [--address auto]

The plain run is `invsr-run`'s own loop (`invsr_runtime.cli.process`: one tile scheduler streaming all
images, decode and encode overlapping the device); the Ray runs are `invsr-run --ray`'s
(`ray_job.run_on_ray`: a Ray Data actor pool, one Upscaler per worker, one image at a time per worker).
Both replace the folder's backend with `SimulatedDevice(ms_per_tile=X, echo=False)`, so the device time
is the same everywhere and what differs is the host work and Ray. Each timing is the whole job: from
the call to the last file written (a Ray run includes starting its actors and loading their Upscalers;
the local cluster is started once, before). Every configuration runs `--repeats` times after
`--warmup` untimed runs; the report gives medians. Writes DIR/ray_scale.json and DIR/ray_scale.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from invsr_runtime.ray_job import UpscaleWorker


class SimulatedWorker(UpscaleWorker):
    """A Ray worker whose Upscaler runs on a simulated device of `ms_per_tile` (set by `simulated_worker`)."""

    ms_per_tile = 7.0

    def __init__(self, options: dict) -> None:
        super().__init__(options)
        self.upscaler.backend = simulate(self.upscaler.backend, self.ms_per_tile)


def simulated_worker(ms_per_tile: float) -> type:
    """A SimulatedWorker subclass carrying `ms_per_tile` (pickled by value to the workers)."""
    return type("SimulatedWorker", (SimulatedWorker,), {"ms_per_tile": float(ms_per_tile)})


def simulate(real: Any, ms_per_tile: float) -> Any:
    """A simulated device with the real backend's tile, scale and batch."""
    from invsr_runtime.backends.simulated import SimulatedDevice

    return SimulatedDevice(real.tile, real.scale, real.batch, ms_per_tile=ms_per_tile, echo=False)


def make_images(folder: Path, count: int, size: int) -> Path:
    """`count` photo-like PNGs of size x size (gradients plus noise; distinct per image)."""
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    for i in range(count):
        rng = np.random.default_rng(i)
        img = np.stack([x, y, 0.5 + 0.3 * np.sin(8 * x + 5 * y + i)], axis=2) + rng.normal(0, 0.03, (size, size, 3))
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(folder / f"img{i:03d}.png")
    return folder


def _options(engine: Path, inputs: Path, out: Path) -> Any:
    from invsr_runtime.run_options import RunOptions

    return RunOptions(engine_dir=engine, out=out, inputs=(inputs,), steps=1, seed=0)


def run_plain(engine: Path, inputs: Path, out: Path, ms_per_tile: float) -> dict:
    """invsr-run's loop on a simulated device: seconds for the whole job (Upscaler load included)."""
    from invsr_runtime.cli import Tally, plan_all, process
    from invsr_runtime.upscaler import Upscaler, schedule_for

    start = time.perf_counter()
    opts = _options(engine, inputs, out)
    upscaler = Upscaler(engine)
    upscaler.backend = simulate(upscaler.backend, ms_per_tile)
    tally = Tally()
    try:
        process(plan_all(opts), upscaler, opts, schedule_for(upscaler.manifest, opts.steps, None), tally)
    finally:
        upscaler.close()
    seconds = time.perf_counter() - start
    device = upscaler.backend
    return {"seconds": seconds, "done": tally.done, "failed": tally.failed, "device_calls": device.calls,
            "tiles_per_call": sum(device.batches) / max(device.calls, 1)}


def run_ray(engine: Path, inputs: Path, out: Path, ms_per_tile: float, workers: int) -> dict:
    """invsr-run --ray's pipeline on `workers` simulated workers: seconds for the whole job."""
    from invsr_runtime.cli import plan_all
    from invsr_runtime.ray_job import RayOptions, rows_for, run_on_ray

    start = time.perf_counter()
    opts = _options(engine, inputs, out)
    out.mkdir(parents=True, exist_ok=True)
    outcomes = run_on_ray(rows_for(plan_all(opts)), opts, RayOptions(workers=workers),
                          worker=simulated_worker(ms_per_tile))
    seconds = time.perf_counter() - start
    done = [o for o in outcomes if o["status"] == "done"]
    return {"seconds": seconds, "done": len(done), "failed": sum(len(o["errors"]) for o in outcomes),
            "image_seconds_median": statistics.median(o["seconds"] for o in done) if done else None}


def _timed(fn: Any, repeats: int, warmup: int, scratch: Path, **kwargs: Any) -> dict:
    """`warmup` runs, then `repeats` runs (fresh output folder each); the median and every run."""
    runs = []
    for i in range(warmup + repeats):
        out = scratch / f"out{i}"
        result = fn(out=out, **kwargs)
        shutil.rmtree(out, ignore_errors=True)
        if i >= warmup:
            runs.append(result)
    seconds = [r["seconds"] for r in runs]
    return {"median_s": statistics.median(seconds), "runs_s": [round(s, 3) for s in seconds],
            "done": [r["done"] for r in runs], "failed": sum(r["failed"] for r in runs), "last": runs[-1]}


def _start_cluster(address: str | None, num_cpus: int) -> tuple[Any, bool]:
    """Ray, connected (to `address`, or a new local cluster of `num_cpus` logical CPUs); True when this
    call started the connection (and so shuts it down), False when one was already up (e.g. in tests)."""
    import ray

    if ray.is_initialized():
        return ray, False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return ray, True


def measure(engine: Path, workers: Sequence[int], images: int, size: int, ms_per_tile: float, repeats: int,
            warmup: int = 1, address: str | None = None) -> dict:
    """Every configuration, side by side in one run (plain first, then Ray for each worker count)."""
    from invsr_runtime.manifest import load_manifest

    manifest = load_manifest(engine)
    with tempfile.TemporaryDirectory(prefix="ray_scale_") as tmp:
        scratch = Path(tmp)
        inputs = make_images(scratch / "in", images, size)
        result: dict = {"engine": str(engine), "tile": manifest.tile, "batch": manifest.batch, "images": images,
                        "size": size, "ms_per_tile": ms_per_tile, "repeats": repeats, "warmup": warmup,
                        "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}
        result["plain"] = _timed(run_plain, repeats, warmup, scratch, engine=engine, inputs=inputs, ms_per_tile=ms_per_tile)
        ray, started = _start_cluster(address, num_cpus=max(workers) + 1)
        try:
            result["ray_cpus"] = ray.cluster_resources().get("CPU")
            result["ray"] = {str(n): _timed(run_ray, repeats, warmup, scratch, engine=engine, inputs=inputs,
                                            ms_per_tile=ms_per_tile, workers=n) for n in workers}
        finally:
            if started:
                ray.shutdown()
        result["loadavg_end"] = os.getloadavg()
    plain = result["plain"]["median_s"]
    result["plain"]["images_per_s"] = images / plain
    for r in result["ray"].values():
        r["images_per_s"] = images / r["median_s"]
        r["vs_plain"] = r["median_s"] / plain
    return result


def markdown(result: dict) -> str:
    """The report: one row per configuration, medians."""
    from benchmarks.markdown import table
    from invsr_runtime.tiling import plan_tiles

    tiles = len(plan_tiles(result["size"], result["size"], result["tile"]).origins)
    plain = result["plain"]["last"]
    device_s = plain["device_calls"] * plain["tiles_per_call"] * result["ms_per_tile"] / 1000
    rows = [("plain invsr-run", "-", f"{result['plain']['median_s']:.2f}", f"{result['plain']['images_per_s']:.2f}",
             "1.00", str(result["plain"]["runs_s"]))]
    for n, r in result["ray"].items():
        rows.append((f"--ray --workers {n}", n, f"{r['median_s']:.2f}", f"{r['images_per_s']:.2f}",
                     f"{r['vs_plain']:.2f}", str(r["runs_s"])))
    head = [f"# Ray scaling: {result['images']} images of {result['size']}x{result['size']} "
            f"(tile {result['tile']}, {tiles} tiles each), simulated device {result['ms_per_tile']} ms/tile",
            "", f"Machine: {result['cpus']} CPU cores shared with other agents (load average "
            f"{result['loadavg_start'][0]:.1f} at start, {result['loadavg_end'][0]:.1f} at end); local Ray "
            f"cluster with {result.get('ray_cpus')} logical CPUs. Medians of {result['repeats']} runs after "
            f"{result.get('warmup', 1)} warm-up run(s); each time is the whole job (Ray: actors started and "
            "Upscalers loaded inside it).", "",
            f"The plain run's device was busy {device_s:.1f} s of its last run's {plain['seconds']:.1f} s "
            f"({plain['device_calls']} calls of batch {result['batch']}; {result['images'] * tiles} real tiles "
            f"need {-(-result['images'] * tiles // result['batch'])}): the rest is host work (decode, tiling, "
            "blend, PNG encode) on the shared cores. A Ray worker runs one image at a time on a scheduler of "
            f"its own, so each image is {-(-tiles // result['batch'])} device call(s) of {result['batch']} "
            f"({-(-tiles // result['batch']) * result['batch'] * result['ms_per_tile']:.0f} ms; "
            f"{-(-tiles // result['batch']) * result['images']} calls per job) where the plain run's stream may "
            "pack tiles of consecutive images into full batches.", ""]
    return "\n".join(head + table(("run", "workers", "median s", "images/s", "time vs plain", "runs s"), rows)) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ray_scale", description=__doc__.splitlines()[0])
    p.add_argument("engine", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--workers", default="1,2,4", help="comma-separated worker counts (default 1,2,4)")
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--ms-per-tile", type=float, default=7.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before each configuration's repeats")
    p.add_argument("--address", default=None, help="an existing Ray cluster (default: start a local one)")
    args = p.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",")]
    result = measure(args.engine, workers, args.images, args.size, args.ms_per_tile, args.repeats,
                     args.warmup, args.address)
    result["command"] = " ".join(["python -m benchmarks.ray_scale", *(sys.argv[1:] if argv is None else argv)])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ray_scale.json").write_text(json.dumps(result, indent=2))
    (args.out / "ray_scale.md").write_text(markdown(result))
    print(markdown(result))
    counts = [result["plain"]["done"]] + [r["done"] for r in result["ray"].values()]
    failed = result["plain"]["failed"] + sum(r["failed"] for r in result["ray"].values())
    return 1 if failed or any(d != args.images for c in counts for d in c) else 0


if __name__ == "__main__":
    raise SystemExit(main())

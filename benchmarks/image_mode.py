"""`invsr-bench --image 1024x1024|FILE`: whole images through the runtime's tile scheduler.

Per configuration: latency (median wall time per image after a warm-up), output MPix/s, host ms per tile
(the same image on a null device: everything but the device), device ms per tile (time inside
`run_chain`), device-bound efficiency (device busy time / (devices x wall time): 1.0 means the device
never waited for the host) and peak bytes per output pixel above the loaded runtime (a child process,
RSS growth, the returned uint8 image and the decoded input included).

The device is either simulated (`--simulate-device-ms X,Y`: `run_chain` sleeps X ms per tile, as a GPU
call releases the GIL) or a benchmarked backend (`runner.tile_chain(batch)`, e.g. torch-fast on CUDA).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from invsr_runtime.schedule import SD_TURBO_SCHEDULER, alphas_cumprod, make_schedule
from invsr_runtime.scheduler import TileScheduler
from invsr_runtime.tiling import plan_tiles

#: The image whose peak memory the issue bounds: a 3000x2000 LR photo (96 MP out) in under 1 GB.
BIG_IMAGE = "3000x2000"


def load_image(spec: str) -> np.ndarray:
    """`WIDTHxHEIGHT` (a seeded random photo-like image) or an image file -> RGB float32 HxWx3."""
    if "x" in spec and all(part.isdigit() for part in spec.lower().split("x")):
        w, h = (int(part) for part in spec.lower().split("x"))
        rng = np.random.default_rng(0)
        low = rng.random((max(1, h // 16), max(1, w // 16), 3), dtype=np.float32)
        smooth = low.repeat(16, axis=0).repeat(16, axis=1)[:h, :w]
        smooth = np.pad(smooth, ((0, h - smooth.shape[0]), (0, w - smooth.shape[1]), (0, 0)), mode="edge")
        return np.clip(smooth + 0.05 * rng.standard_normal((h, w, 3), dtype=np.float32), 0, 1)
    from invsr_runtime.imageio import read_picture

    return read_picture(spec).rgb


def time_image(chains: Sequence[Any], image: np.ndarray, schedule: Any, color_fix: str, iters: int,
               warmup: int = 1, queue_depth: int = 2, seed: int = 0) -> dict[str, Any]:
    """Median wall seconds per image and device seconds per image (summed over devices) on `chains`."""
    walls, device = [], []
    with TileScheduler(list(chains), queue_depth=queue_depth) as scheduler:
        for i in range(warmup + iters):
            before = sum(scheduler.stats.device_seconds)
            start = time.perf_counter()
            scheduler.submit(image, schedule, color_fix=color_fix, seed=seed, out_dtype="uint8").result()
            if i >= warmup:
                walls.append(time.perf_counter() - start)
                device.append(sum(scheduler.stats.device_seconds) - before)
    return {"wall_s": statistics.median(walls), "device_s": statistics.median(device), "walls_s": walls}


def simulated_rows(image: np.ndarray, device_ms: Sequence[float], devices: Sequence[int], color_fix: str,
                   iters: int, tile: int = 128, batch: int = 8) -> list[dict[str, Any]]:
    """One row per (simulated ms per tile, device count), plus the null device (host cost) with the default
    seed (its noise from the runtime's noise table) and with seed 1 (every tile's noise drawn)."""
    from invsr_runtime.backends.simulated import SimulatedDevice

    schedule = make_schedule((200,), alphas_cumprod(**SD_TURBO_SCHEDULER))
    tiles = plan_tiles(image.shape[0], image.shape[1], tile=tile).num_tiles
    out_px = image.shape[0] * image.shape[1] * 16
    rows = []
    for seed, name in ((0, "null"), (1, "null, seed 1 (noise drawn per tile)")):
        null = time_image([SimulatedDevice(tile, 4, batch, 0.0, echo=False)], image, schedule, color_fix, iters,
                          seed=seed)
        rows.append({"device": name, "devices": 1, "device_ms_per_tile": 0.0, "tiles": tiles, "seed": seed,
                     "latency_s": null["wall_s"], "mpix_per_s": out_px / null["wall_s"] / 1e6,
                     "host_ms_per_tile": null["wall_s"] / tiles * 1e3, "efficiency": None})
    host_ms = rows[0]["host_ms_per_tile"]
    for ms in device_ms:
        for n in devices:
            chains = [SimulatedDevice(tile, 4, batch, ms, echo=False) for _ in range(n)]
            t = time_image(chains, image, schedule, color_fix, iters)
            rows.append({"device": f"simulated {ms:g} ms/tile", "devices": n, "device_ms_per_tile": ms,
                         "tiles": tiles, "latency_s": t["wall_s"], "mpix_per_s": out_px / t["wall_s"] / 1e6,
                         "host_ms_per_tile": host_ms, "measured_device_ms_per_tile": t["device_s"] / tiles * 1e3,
                         "efficiency": t["device_s"] / (n * t["wall_s"])})
    return rows


def chain_row(chain: Any, name: str, image: np.ndarray, schedule: Any, color_fix: str, iters: int,
              host_ms: float | None) -> dict[str, Any]:
    """One row for a real tile chain (a benchmarked backend as the device)."""
    tiles = plan_tiles(image.shape[0], image.shape[1], tile=chain.tile).num_tiles
    t = time_image([chain], image, schedule, color_fix, iters)
    out_px = image.shape[0] * image.shape[1] * chain.scale ** 2
    return {"device": name, "devices": 1, "device_ms_per_tile": t["device_s"] / tiles * 1e3, "tiles": tiles,
            "latency_s": t["wall_s"], "mpix_per_s": out_px / t["wall_s"] / 1e6, "host_ms_per_tile": host_ms,
            "measured_device_ms_per_tile": t["device_s"] / tiles * 1e3, "efficiency": t["device_s"] / t["wall_s"]}


_PEAK_CODE = """
import sys
import numpy as np
from benchmarks.image_mode import load_image
from benchmarks.memory import PeakRss
from invsr_runtime.backends.simulated import SimulatedDevice
from invsr_runtime.schedule import SD_TURBO_SCHEDULER, alphas_cumprod, make_schedule
from invsr_runtime.scheduler import TileScheduler
spec, color_fix, fresh = sys.argv[1], sys.argv[2], sys.argv[3] == "fresh"
schedule = make_schedule((200,), alphas_cumprod(**SD_TURBO_SCHEDULER))
lr8 = (load_image(spec) * 255 + 0.5).astype(np.uint8)   # the file as decoded: 8-bit
scheduler = TileScheduler([SimulatedDevice(128, 4, 8, 0.0, echo=False, fresh_outputs=fresh)])
scheduler.submit(np.zeros((8, 8, 3), np.float32), schedule).result()
with PeakRss(interval=0.005) as rss:
    out = scheduler.submit(np.divide(lr8, 255, dtype=np.float32), schedule, color_fix=color_fix,
                           out_dtype="uint8").result()
scheduler.close()
print(rss.peak_bytes - rss.start_bytes, out.shape[0] * out.shape[1])
"""


def peak_bytes(spec: str, color_fix: str, fresh_outputs: bool = False) -> dict[str, Any]:
    """Peak RSS growth of one image in a fresh process: bytes and bytes per output pixel. The device is
    instant; `fresh_outputs`: its outputs are new arrays, as a real backend's are, so the outputs a device
    faster than the host keeps in flight count too (the runtime's own memory without it)."""
    res = subprocess.run([sys.executable, "-c", _PEAK_CODE, spec, color_fix, "fresh" if fresh_outputs else "canned"],
                         capture_output=True, text=True, timeout=1800)
    head = {"image": spec, "color_fix": color_fix, "fresh_outputs": fresh_outputs}
    if res.returncode != 0:
        return {**head, "error": (res.stderr.strip().splitlines() or ["?"])[-1]}
    grown, pixels = (int(x) for x in res.stdout.split())
    return {**head, "peak_bytes": grown, "output_pixels": pixels, "bytes_per_output_pixel": grown / pixels}


def run_image_mode(args: Any, out: Path) -> dict[str, Any]:
    """The whole image mode: rows, memory, report files. Returns the report."""
    from . import plots_image
    from .machine import describe

    image = load_image(args.image)
    report: dict[str, Any] = {"mode": "image", "image": args.image, "lr_shape": list(image.shape[:2]),
                              "color_fix": args.color_fix, "machine": describe(), "rows": [], "memory": [],
                              "command": getattr(args, "command", None),
                              "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.simulate_device_ms is not None:
        report["rows"] = simulated_rows(image, args.simulate_device_ms, args.devices, args.color_fix, args.iters)
    else:
        report["rows"] = runner_rows(args, image)
    if not args.no_memory:
        for spec in dict.fromkeys([args.image, BIG_IMAGE]):
            for fix in ("none", "wavelet"):
                for fresh in (False, True):
                    report["memory"].append(peak_bytes(spec, fix, fresh))
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    report["plots"] = plots_image.write(report, out)
    (out / "report.md").write_text(render(report), encoding="utf-8")
    return report


def runner_rows(args: Any, image: np.ndarray) -> list[dict[str, Any]]:
    """Rows with benchmarked backends as the device (one per backend x precision x batch x steps)."""
    from .runners import RunnerOptions, make_runner
    from .worker import schedule_for

    rows = []
    for backend in args.backends:
        for precision in args.precisions:
            for batch in args.batch:
                opts = RunnerOptions(backend=backend, precision=precision, base=args.base, predictor=args.predictor,
                                     device=args.resolved_device, tile=args.tile_px, compile=args.compile,
                                     compile_mode=args.compile_mode)
                runner = make_runner(opts)
                try:
                    runner.setup()
                    chain = runner.tile_chain(batch)
                    for steps in args.steps:
                        schedule = schedule_for(steps, None)
                        row = chain_row(chain, f"{backend} {precision} b{batch} s{steps}", image, schedule,
                                        args.color_fix, args.iters, None)
                        rows.append(row)
                        print(f"[image] {row['device']}: {row['latency_s']:.2f} s/image, "
                              f"efficiency {row['efficiency']:.3f}", flush=True)
                except Exception as exc:  # noqa: BLE001 - reported as a row, the others still run
                    rows.append({"device": f"{backend} {precision} b{batch}", "error": str(exc).splitlines()[0]})
                finally:
                    runner.close()
    return rows


def render(report: dict[str, Any]) -> str:
    """report.md for the image mode."""
    m = report["machine"]
    lines = [f"# invsr-bench image mode: {report['image']} LR ({report['lr_shape'][0]}x{report['lr_shape'][1]}), "
             f"colour fix {report['color_fix']}", "",
             f"Machine: {m.get('cpu', m)}, {m.get('cores_logical', '?')} logical cores, {m.get('ram_gib', '?')} GiB; "
             f"created {report['created']}; load average at the end {report.get('load_average_at_end')} "
             "(other processes on a shared machine slow the host side).", "",
             f"Command: `{report.get('command')}`", "",
             "Efficiency = device busy time / (devices x wall time): 1.0 = the device never waits for the host. "
             "Host ms/tile = wall time per tile on a null device (cutting, noise, blending, colour fix), "
             "seed 0 (the default: the first 256 tiles' noise comes from the runtime's noise table) unless the "
             "row says seed 1 (every tile's noise drawn).", "",
             "| device | devices | tiles | latency s | out MPix/s | host ms/tile | device ms/tile | efficiency |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['device']} | | | error: {r['error']} | | | | |")
            continue
        eff = "-" if r["efficiency"] is None else f"{r['efficiency']:.3f}"
        host = "-" if r.get("host_ms_per_tile") is None else f"{r['host_ms_per_tile']:.2f}"
        dev = r.get("measured_device_ms_per_tile", r["device_ms_per_tile"])
        lines.append(f"| {r['device']} | {r['devices']} | {r['tiles']} | {r['latency_s']:.3f} | {r['mpix_per_s']:.2f} "
                     f"| {host} | {dev:.2f} | {eff} |")
    if report["memory"]:
        lines += ["", "Peak memory above the loaded runtime (child process, RSS growth; uint8 result and decoded "
                  "input included). The device is instant: its outputs are either the simulator's canned arrays "
                  "(the runtime's own memory) or fresh arrays as a real backend returns them, of which a device "
                  "faster than the host keeps the most in flight (the scheduler's output slots: devices + 3).", "",
                  "| image | colour fix | device outputs | peak MB | bytes / output px |", "|---|---|---|---:|---:|"]
        for r in report["memory"]:
            outputs = "fresh, fast device" if r.get("fresh_outputs") else "canned"
            if "error" in r:
                lines.append(f"| {r['image']} | {r['color_fix']} | {outputs} | error: {r['error']} | |")
            else:
                lines.append(f"| {r['image']} | {r['color_fix']} | {outputs} | {r['peak_bytes'] / 2**20:.0f} | "
                             f"{r['bytes_per_output_pixel']:.2f} |")
    for plot in report.get("plots", []):
        lines += ["", f"![{plot}]({plot})"]
    return "\n".join(lines) + "\n"

"""A bounded load test of invsr-serve on loopback: N concurrent clients for a fixed time, then overload.

    python -m benchmarks.serve_load ENGINE_DIR --out DIR [--clients 16] [--seconds 30]
                                    [--simulate-device-ms 7] [--image 128x128] [--warmup-seconds 5]
                                    [--overload-seconds 10]

The service runs in this process (uvicorn in a thread) so its RSS can be read at start and end. With
`--simulate-device-ms X` the folder's backend is replaced by a simulated device taking X ms per tile
(the tile scheduler, batching and HTTP layers are the real ones). Phase 1: `--clients` clients post
the same image back to back for `--seconds` (after `--warmup-seconds` of the same load, so RSS "start"
is the steady state): throughput, p50 / p99 latency, batch fill ratio, errors (must be 0), RSS at start
and end. Phase 2 (overload, `--overload-seconds`): a service with `--max-queue 2` gets 4x as many
clients: every answer must be 200 or a prompt 503 with Retry-After, none may hang. Everything stops by
itself; only 127.0.0.1 is contacted. Writes DIR/serve_load.json and DIR/serve_load.md.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import httpx
import numpy as np
from PIL import Image


@dataclass
class Phase:
    """What one load phase measured."""

    clients: int
    seconds: float
    ok: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    busy_ms: list[float] = field(default_factory=list)
    retry_after_missing: int = 0

    def summary(self) -> dict:
        lat = sorted(self.latencies_ms)
        pick = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None)
        busy = sorted(self.busy_ms)
        return {"clients": self.clients, "seconds": round(self.seconds, 2), "ok": self.ok,
                "statuses": self.statuses, "images_per_s": round(self.ok / self.seconds, 2),
                "p50_ms": pick(0.5), "p99_ms": pick(0.99),
                "busy_p50_ms": busy[len(busy) // 2] if busy else None,
                "busy_p99_ms": busy[min(len(busy) - 1, int(0.99 * len(busy)))] if busy else None,
                "retry_after_missing": self.retry_after_missing}


class _ServerTimes(logging.Handler):
    """The service's own time per answer (its access log's `ms`), by status: what the service spent,
    apart from the client's and the network's share of the latency the clients measure."""

    def __init__(self) -> None:
        super().__init__()
        self.ms: dict[str, list[float]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        entry = json.loads(record.getMessage())
        if entry.get("path") == "/v1/upscale":
            self.ms.setdefault(str(entry["status"]), []).append(float(entry["ms"]))

    def percentiles(self) -> dict[str, dict[str, float]]:
        out = {}
        for status, values in self.ms.items():
            values = sorted(values)
            out[status] = {"p50_ms": values[len(values) // 2],
                           "p99_ms": values[min(len(values) - 1, int(0.99 * len(values)))]}
        return out


def _serve_in_thread(app, port: int):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return server, thread


def _load(url: str, body: bytes, clients: int, seconds: float, timeout: float = 60.0) -> Phase:
    phase = Phase(clients=clients, seconds=seconds)
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(timeout=timeout) as http:
            while time.monotonic() < stop_at:
                start = time.perf_counter()
                try:
                    r = http.post(url, content=body, headers={"Content-Type": "image/png"})
                    status = str(r.status_code)
                except httpx.HTTPError as exc:
                    r, status = None, type(exc).__name__
                ms = (time.perf_counter() - start) * 1000
                with lock:
                    phase.statuses[status] = phase.statuses.get(status, 0) + 1
                    if status == "200":
                        phase.ok += 1
                        phase.latencies_ms.append(ms)
                    elif status == "503":
                        phase.busy_ms.append(ms)
                        phase.retry_after_missing += int(not r.headers.get("retry-after"))
                if status == "503":
                    time.sleep(0.05)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    phase.seconds = time.perf_counter() - start
    return phase


def _metrics(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics/").text
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def _factory(simulate_ms: float | None):
    from invsr_serve.app import open_upscaler

    def make(config):
        upscaler = open_upscaler(config)
        if simulate_ms is not None:
            from invsr_runtime.backends.simulated import SimulatedDevice

            real = upscaler.backend
            upscaler.backend = SimulatedDevice(tile=real.tile, scale=real.scale, batch=real.batch,
                                               ms_per_tile=simulate_ms, echo=False)
        return upscaler
    return make


def run_phase(engine: Path, body: bytes, clients: int, seconds: float, simulate_ms: float | None,
              warmup_s: float = 5.0, **config) -> tuple[dict, dict, dict]:
    """One service, one load phase after `warmup_s` of the same load: (summary, metrics at the end,
    RSS in MiB after the warm-up / after the load, warm-up statuses)."""
    import psutil

    from invsr_serve.app import create_app
    from invsr_serve.config import ServeConfig

    app = create_app(ServeConfig(engine_dir=engine, **config), upscaler_factory=_factory(simulate_ms))
    served = _ServerTimes()
    logging.getLogger("invsr_serve.access").addHandler(served)
    logging.getLogger("invsr_serve.access").setLevel(logging.INFO)
    port = _free_port()
    server, thread = _serve_in_thread(app, port)
    url = f"http://127.0.0.1:{port}"
    try:
        # Clients run in their own process, so they do not compete with the service for the GIL.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as clients_process:
            # Warm-up at full concurrency, so RSS "before" is the steady state (buffers, thread pools
            # and allocator arenas at their working size), not the idle service's.
            warm = clients_process.submit(_load, url + "/v1/upscale", body, clients, warmup_s).result()
            rss_before = psutil.Process().memory_info().rss / 2**20
            served.ms.clear()
            phase = clients_process.submit(_load, url + "/v1/upscale", body, clients, seconds).result()
        rss_after = psutil.Process().memory_info().rss / 2**20
        summary = {**phase.summary(), "server_ms": served.percentiles()}
        metrics = _metrics(url)
    finally:
        logging.getLogger("invsr_serve.access").removeHandler(served)
        server.should_exit = True
        thread.join(60)
    return summary, metrics, {"before_mib": round(rss_before, 1), "after_mib": round(rss_after, 1),
                                      "warmup_statuses": warm.statuses}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _png(size: str) -> bytes:
    w, h = (int(v) for v in size.lower().split("x"))
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _markdown(result: dict) -> str:
    rows = ["| phase | clients | s | images/s | p50 ms | p99 ms | statuses | batch fill | RSS MiB start -> end |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name in ("load", "overload"):
        r = result[name]
        s = r["summary"]
        rows.append(f"| {name} | {s['clients']} | {s['seconds']} | {s['images_per_s']} | {s['p50_ms'] and round(s['p50_ms'])} "
                    f"| {s['p99_ms'] and round(s['p99_ms'])} | {s['statuses']} | "
                    f"{r['metrics'].get('invsr_batch_fill_ratio', 0):.3f} | {r['rss']['before_mib']} -> {r['rss']['after_mib']} |")
    over = result["overload"]["summary"]
    busy = " / ".join(str(v and round(v)) for v in (over.get("busy_p50_ms"), over["busy_p99_ms"]))
    head = (f"# invsr-serve load test\n\nEngine `{result['engine']}`, image {result['image']}, "
            f"device: {result['device']}. Machine: {result['cpus']} CPU cores shared with other agents (load "
            f"average {result['loadavg_start'][0]:.1f} at start, {result['loadavg_end'][0]:.1f} at end); "
            f"service and clients in two processes on it. Each phase starts a fresh service and runs "
            f"{result['warmup_s']:g} s of the same load before RSS 'start' is read. Overload: --max-queue 2; "
            f"p50 / p99 of the 503 answers: {busy} ms as the clients saw them; inside the service (its access "
            f"log): {over['server_ms'].get('503')} ms. Load phase, 200 answers inside the service: "
            f"{result['load']['summary']['server_ms'].get('200')} ms.\n\n")
    return head + "\n".join(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve_load", description=__doc__.splitlines()[0])
    p.add_argument("engine", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--simulate-device-ms", type=float, default=None)
    p.add_argument("--overload-seconds", type=float, default=10.0)
    p.add_argument("--warmup-seconds", type=float, default=5.0, help="load before RSS 'start' is read")
    p.add_argument("--image", default="128x128", help="WxH of the posted image (default 128x128: one tile)")
    args = p.parse_args(argv)
    body = _png(args.image)
    result: dict = {"engine": str(args.engine), "image": args.image,
                    "device": f"simulated {args.simulate_device_ms} ms/tile" if args.simulate_device_ms is not None
                    else "the folder's backend"}
    result.update(cpus=os.cpu_count(), loadavg_start=os.getloadavg(), warmup_s=args.warmup_seconds)
    for name, clients, seconds, extra in (("load", args.clients, args.seconds, {}),
                                          ("overload", args.clients * 4, args.overload_seconds, {"max_queue": 2})):
        summary, metrics, rss = run_phase(args.engine, body, clients, seconds, args.simulate_device_ms,
                                          args.warmup_seconds, **extra)
        result[name] = {"summary": summary, "metrics": metrics, "rss": rss}
        print(f"{name}: {json.dumps(summary)}")
    result["loadavg_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_load.json").write_text(json.dumps(result, indent=2))
    (args.out / "serve_load.md").write_text(_markdown(result))
    errors = {k: v for k, v in result["load"]["summary"]["statuses"].items() if k != "200"}
    hung = {k: v for k, v in result["overload"]["summary"]["statuses"].items() if k not in ("200", "503")}
    return 1 if errors or hung or result["overload"]["summary"]["retry_after_missing"] else 0


if __name__ == "__main__":
    raise SystemExit(main())

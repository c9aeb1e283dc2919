"""`invsr-serve ENGINE_DIR`: the HTTP service on uvicorn (SIGTERM: stop accepting, finish, exit 0)."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Sequence

from invsr_runtime.backends import BACKEND_CHOICES

from .config import ConfigError, ServeConfig, api_key_from_env

EXIT_OK, EXIT_USAGE = 0, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="invsr-serve", description="InvSR x4 super-resolution as an HTTP service.")
    p.add_argument("engine_dir", help="engine folder written by invsr-export")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES)
    p.add_argument("--devices", default="", help="GPU ids, e.g. 0,1: one backend each")
    p.add_argument("--max-batch-wait-ms", type=float, default=5.0,
                   help="how long a partial engine batch waits for tiles of other requests")
    p.add_argument("--max-pixels", type=int, default=2048 * 2048, help="input pixels per image (413 above)")
    p.add_argument("--max-body-mb", type=float, default=50.0, help="request body size (413 above)")
    p.add_argument("--max-queue", type=int, default=64, help="requests in flight (503 + Retry-After above)")
    p.add_argument("--request-timeout", type=float, default=120.0, help="seconds per request (504 after)")
    p.add_argument("--api-key-env", default=None, metavar="NAME",
                   help="require 'Authorization: Bearer <key>', the key read from environment variable NAME")
    p.add_argument("--graceful-timeout", type=float, default=30.0,
                   help="seconds in-flight requests get to finish after SIGTERM")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    ray = p.add_argument_group("many machines (Ray Serve; the `ray` extra)")
    ray.add_argument("--ray", action="store_true", help="deploy on Ray Serve (each replica: its own engines)")
    ray.add_argument("--address", default=None, help="Ray cluster: auto, ray://host:10001 (default: a new local one)")
    ray.add_argument("--replicas", type=int, default=1, help="fixed number of replicas (default 1)")
    ray.add_argument("--autoscale", default=None, metavar="MIN:MAX", help="autoscale between MIN and MAX replicas")
    ray.add_argument("--gpus-per-replica", type=float, default=0.0, help="GPUs per replica (default 0: CPU)")
    return p


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """The ServeConfig the flags describe (ConfigError for a bad value)."""
    try:
        devices = tuple(int(d) for d in args.devices.split(",") if d.strip())
    except ValueError:
        raise ConfigError(f"--devices must be GPU ids like 0,1, got {args.devices!r}") from None
    return ServeConfig(engine_dir=args.engine_dir, backend=args.backend, devices=devices,
                       max_batch_wait_ms=args.max_batch_wait_ms, max_pixels=args.max_pixels,
                       max_body_mb=args.max_body_mb, max_queue=args.max_queue,
                       request_timeout=args.request_timeout, api_key=api_key_from_env(args.api_key_env))


def run(argv: Sequence[str] | None = None) -> int:
    """Check everything that can be checked before binding, then serve until SIGTERM / SIGINT."""
    import uvicorn

    from invsr_runtime.backends import BackendError
    from invsr_runtime.manifest import ManifestError, load_manifest

    from .app import create_app

    try:
        args = build_parser().parse_args(argv)
        config = config_from_args(args)
        load_manifest(config.engine_dir)  # a bad folder is one line here, not a failed start-up later
    except (ConfigError, ManifestError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=args.log_level.upper(), format="%(message)s")
    if args.ray:
        return _run_on_ray(config, args)
    server = uvicorn.Server(uvicorn.Config(
        create_app(config), host=args.host, port=args.port, access_log=False, log_level=args.log_level,
        timeout_graceful_shutdown=args.graceful_timeout, lifespan="on"))
    # uvicorn drains on SIGTERM, then re-raises it to whatever handler was there before: make that a
    # no-op, so a drained service exits 0 (what process managers expect), not -15.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run()
    except BackendError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK if server.started else EXIT_USAGE


def _run_on_ray(config: ServeConfig, args: argparse.Namespace) -> int:
    """Deploy on Ray Serve and hold until SIGTERM / SIGINT, then take the deployment down (exit 0)."""
    try:
        from . import ray_serve
    except ImportError:
        print("error: --ray needs Ray Serve: pip install 'invsr-trt[ray]'", file=sys.stderr)
        return EXIT_USAGE
    try:
        options = ray_serve.RayServeOptions(address=args.address, replicas=args.replicas,
                                            autoscale=ray_serve.parse_autoscale(args.autoscale),
                                            gpus_per_replica=args.gpus_per_replica)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    ray_serve.start(config, options, args.host, args.port)
    print(f"invsr-serve on Ray Serve: http://{args.host}:{args.port}/ "
          f"({args.autoscale or args.replicas} replicas)", flush=True)
    stop.wait()
    ray_serve.stop()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (`invsr-serve`)."""
    sys.exit(run(argv))

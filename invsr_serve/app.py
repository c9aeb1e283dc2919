"""`create_app(config)`: the FastAPI app. Engines load (and warm up) in the lifespan, off the event loop,
and are released after it; /readyz says when they are in. Middleware: API key, request id, access log.
"""
from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

from invsr_runtime import __version__
from invsr_runtime.upscaler import Upscaler

from . import routes
from .config import ServeConfig
from .engine import UpscaleEngine
from .errors import error_response, install_error_handlers
from .metrics import Metrics

access_log = logging.getLogger("invsr_serve.access")
#: Paths answered without an API key: a load balancer's probes carry none and learn nothing.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})

UpscalerFactory = Callable[[ServeConfig], Upscaler]


def open_upscaler(config: ServeConfig) -> Upscaler:
    """The default factory: the engine folder on the configured backend and devices."""
    return Upscaler(config.engine_dir, backend=config.backend, devices=list(config.devices) or None,
                    max_pixels=None)


def create_app(config: ServeConfig, upscaler_factory: UpscalerFactory = open_upscaler) -> FastAPI:
    """The service as an ASGI app (uvicorn, Ray Serve, or any ASGI server)."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upscaler = await run_in_threadpool(upscaler_factory, config)
        engine = UpscaleEngine(upscaler, config.max_queue, config.max_inflight_pixels, config.max_batch_wait_ms)
        try:
            await run_in_threadpool(engine.warm_up)
            app.state.engine = metrics.engine = engine
            yield
        finally:
            app.state.engine = None
            await run_in_threadpool(engine.close)

    app = FastAPI(title="invsr-serve", version=__version__, lifespan=lifespan,
                  description="InvSR x4 super-resolution: POST an image to /v1/upscale.")
    app.state.config, app.state.metrics, app.state.engine = config, metrics, None
    app.include_router(routes.router)
    app.mount("/metrics", metrics.asgi_app())
    install_error_handlers(app)
    _install_middleware(app, config, metrics)
    return app


def _authorized(request: Request, key: str | None) -> bool:
    if key is None or request.url.path in OPEN_PATHS:
        return True
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


def _install_middleware(app: FastAPI, config: ServeConfig, metrics: Metrics) -> None:
    @app.middleware("http")
    async def access(request: Request, call_next):
        request_id = request.headers.get("x-request-id", "")[:64] or uuid.uuid4().hex[:16]
        request.state.log = {}
        start = time.perf_counter()
        if not _authorized(request, config.api_key):
            response = error_response(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                      {"WWW-Authenticate": "Bearer"})
        else:
            response = await call_next(request)
        response.headers["X-Request-Id"] = request_id
        if request.url.path == "/v1/upscale":
            metrics.requests.labels(status=str(response.status_code)).inc()
        access_log.info(json.dumps({
            "id": request_id, "method": request.method, "path": request.url.path,
            "status": response.status_code, "ms": round((time.perf_counter() - start) * 1000, 1),
            "bytes_in": int(request.headers.get("content-length") or 0), **request.state.log}))
        return response

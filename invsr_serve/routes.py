"""The HTTP routes: translate HTTP to frames and parameters, call the engine, translate back.

POST /v1/upscale   the image as the raw body (Content-Type image/...) or multipart field `image`;
                   query: steps, timesteps, color_fix, seed, format. 200: the upscaled image's bytes.
GET  /healthz      the process is alive.      GET /readyz   engines loaded and warmed up.
GET  /             the web page.              GET /metrics  Prometheus text (mounted by the app).
"""
from __future__ import annotations

import asyncio
from importlib import resources

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.formparsers import MultiPartException, MultiPartParser

from invsr_runtime.imageio import ImageReadError, frames_for_format
from invsr_runtime.schedule import ScheduleError

from .codec import MEDIA_TYPES, READ_ERROR_STATUS, ParamError, decode_image, encode_image, parse_params
from .engine import Busy, UpscaleEngine
from .errors import ApiError

router = APIRouter()
RETRY_AFTER_S = "1"


def _engine(request: Request) -> UpscaleEngine:
    engine = request.app.state.engine
    if engine is None:
        raise ApiError(503, "engines are still loading: retry shortly", {"Retry-After": RETRY_AFTER_S})
    return engine


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The request body, refused (413) as soon as it passes `limit` bytes (from Content-Length when
    given, before reading) and (408) when the client sends it slower than `timeout` seconds allow."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"body of {int(declared):,} bytes is over the limit of {limit:,} (--max-body-mb)")
    chunks: list[bytes] = []
    size = 0

    async def receive_all() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"body is over the limit of {limit:,} bytes (--max-body-mb)")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(receive_all(), timeout)
    except asyncio.TimeoutError:
        raise ApiError(408, f"the body did not arrive within {timeout:g} s") from None
    return b"".join(chunks)


async def image_bytes(request: Request, body: bytes) -> bytes:
    """The image inside the body: the body itself, or the multipart field `image`."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        async def one_chunk():
            yield body

        try:
            form = await MultiPartParser(request.headers, one_chunk(), max_files=1, max_fields=16).parse()
        except MultiPartException as exc:
            raise ApiError(400, f"malformed multipart body: {exc.message}") from None
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "multipart body without a file field named 'image'")
        try:
            return await upload.read()
        finally:
            await upload.close()
    if content_type and not content_type.startswith(("image/", "application/octet-stream")):
        raise ApiError(415, f"Content-Type {content_type.split(';')[0]!r} is not an image: send the image "
                            "as the body with Content-Type image/..., or as multipart field 'image'")
    return body


@router.post("/v1/upscale", responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}}})
async def upscale(request: Request) -> Response:
    """Upscale one image x4 (every frame of an animated one); same bytes as `invsr-run` writes."""
    engine, config = _engine(request), request.app.state.config
    try:
        params = parse_params(request.query_params)
        schedule = engine.schedule(params)
    except (ParamError, ScheduleError) as exc:
        raise ApiError(400, str(exc)) from None
    early = engine.busy()
    if early is not None:  # refuse before reading the body: an overloaded service answers at once
        raise ApiError(503, early, {"Retry-After": RETRY_AFTER_S})
    body = await read_body(request, config.max_body_bytes, config.request_timeout)
    data = await image_bytes(request, body)
    try:
        admission = engine.admit()
    except Busy as exc:
        raise ApiError(503, str(exc), {"Retry-After": RETRY_AFTER_S}) from None
    with admission:
        outputs, frames, notes = await _decode_and_upscale(request, engine, admission, data, params, schedule)
    payload, more = await run_in_threadpool(encode_image, outputs, frames, params.format)
    headers = {"X-Invsr-Warnings": " | ".join(notes + more)} if notes or more else {}
    return Response(payload, media_type=MEDIA_TYPES[params.format], headers=headers)


async def _decode_and_upscale(request: Request, engine: UpscaleEngine, admission, data: bytes, params,
                              schedule) -> tuple[list, object, list[str]]:
    """Decode (pixel limit checked from the header first), reserve the pixels, upscale within the timeout."""
    config = request.app.state.config
    try:
        frames = await run_in_threadpool(decode_image, data, config.max_pixels, engine.scale)
    except ImageReadError as exc:
        raise ApiError(READ_ERROR_STATUS.get(exc.kind, 422), str(exc)) from None
    pictures, notes = frames_for_format(frames, params.format)
    request.state.log.update(size=f"{pictures[0].size[1]}x{pictures[0].size[0]}", frames=len(pictures),
                             steps=len(schedule.timesteps))
    try:
        admission.charge(sum(p.size[0] * p.size[1] for p in pictures))
    except Busy as exc:
        raise ApiError(503, str(exc), {"Retry-After": RETRY_AFTER_S}) from None
    try:
        with request.app.state.metrics.latency.time():
            outputs = await asyncio.wait_for(engine.upscale(schedule, params, pictures), config.request_timeout)
    except asyncio.TimeoutError:
        raise ApiError(504, f"not done within {config.request_timeout:g} s (--request-timeout)") from None
    return outputs, frames, notes


@router.get("/healthz")
async def healthz() -> dict:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Readiness: engines loaded and warmed up (503 before, and while shutting down)."""
    if request.app.state.engine is None:
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": RETRY_AFTER_S})
    return JSONResponse({"status": "ready"})


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index() -> HTMLResponse:
    """The web page: upload, choose steps / colour fix / seed, compare before and after, download."""
    return HTMLResponse(resources.files("invsr_serve").joinpath("static/index.html").read_text("utf-8"))

"""invsr_serve: InvSR x4 super-resolution as an HTTP service (lean: no torch).

    invsr-serve ENGINE_DIR --port 8000
    curl --data-binary @photo.png -H 'Content-Type: image/png' 'http://127.0.0.1:8000/v1/upscale?steps=1' -o out.png

`create_app(ServeConfig(...))` gives the ASGI app (FastAPI) for any ASGI server or Ray Serve. Requests
become tiles of the runtime's one tile scheduler, so tiles of concurrent requests share engine batches.
"""
from __future__ import annotations

from .config import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module 'invsr_serve' has no attribute {name!r}")

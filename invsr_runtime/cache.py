"""The one cache root of invsr-trt: prompt embeddings, TensorRT engines, ORT TensorRT-EP engines, benchmarks.

`$INVSR_TRT_CACHE` when set, else `$XDG_CACHE_HOME/invsr_trt` (default `~/.cache/invsr_trt`), read at call
time so tests and jobs can point it elsewhere. Each user of the cache takes one subfolder of it.
"""
from __future__ import annotations

import os
from pathlib import Path

#: Environment variable that moves the whole cache.
CACHE_ENV = "INVSR_TRT_CACHE"
#: Folder name under the user's cache directory.
CACHE_NAME = "invsr_trt"


def cache_root() -> Path:
    """Root of invsr-trt's cache (not created here)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / CACHE_NAME

"""Engine folders for the engine backends, exported by ``invsr-export`` into a cache and reused.

Every (backend, base, predictor, precision, tile, batch) gets its own folder under the cache, e.g.
``~/.cache/invsr_trt/bench-engines/onnxruntime-synthetic_full-synthetic-fp32-t128-b1``. An existing
folder whose manifest matches is reused (the export of the full model takes minutes); ``fresh``
rebuilds it. Exports run as child processes, so their memory never counts against a benchmark.
"""
from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from invsr_runtime.cache import cache_root

from .child import log_tail, run_child

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineResult:
    """An engine folder (None when the export failed), how it was obtained and what it cost."""

    folder: Path | None
    reused: bool
    seconds: float | None
    peak_rss_mib: float | None
    error: str | None = None


def default_cache() -> Path:
    """The engine-folder cache of the benchmark: `cache_root()/bench-engines`."""
    return cache_root() / "bench-engines"


def folder_name(backend: str, base: str, predictor: str, precision: str, tile: int, batch: int,
                calib_tiles: int | None = None) -> str:
    """File-system-safe cache folder name for one engine configuration."""
    safe = lambda text: re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")[-60:]  # noqa: E731
    calib = f"-c{calib_tiles}" if calib_tiles and precision in ("int8", "fp8") else ""
    return f"{backend}-{safe(base)}-{safe(predictor)}-{precision}-t{tile}-b{batch}{calib}"


def matches(folder: Path, backend: str, precision: str, tile: int, batch: int) -> bool:
    """True when `folder` is a readable engine folder built for exactly this configuration by this exporter.

    A folder exported with other graph rewrites (e.g. by an older invsr-export) does not match.
    """
    from invsr_export.graph_rewrites import rewrites_for
    from invsr_runtime.manifest import ManifestError, load_manifest

    try:
        m = load_manifest(folder)
    except ManifestError:
        return False
    rewrites = tuple((m.provenance or {}).get("graph_rewrites", ()))
    return ((m.backend, m.precision, int(m.tile), int(m.batch), rewrites)
            == (backend, precision, tile, batch, rewrites_for(backend)))


def prepare(cache: Path, backend: str, base: str, predictor: str, precision: str, tile: int, batch: int,
            log_path: Path, fresh: bool = False, validate: bool = False,
            calib_tiles: int | None = None) -> EngineResult:
    """The engine folder for this configuration: reused from the cache or exported now with invsr-export."""
    folder = cache / folder_name(backend, base, predictor, precision, tile, batch, calib_tiles)
    if not fresh and matches(folder, backend, precision, tile, batch):
        logger.info("reusing %s", folder)
        return EngineResult(folder, True, None, None)
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "invsr_export.cli", "--out", str(folder), "--backend", backend,
           "--base", base, "--predictor", predictor, "--precision", precision, "--tile", str(tile),
           "--batch", str(batch), "--force"]
    if calib_tiles and precision in ("int8", "fp8"):
        cmd += ["--calib-tiles", str(calib_tiles)]
    if not validate:
        cmd.append("--no-validate")  # the benchmark measures drift itself, on the same photo tile for all
    logger.info("exporting: %s", " ".join(cmd))
    child = run_child(cmd, log_path)
    if child.returncode != 0 or not matches(folder, backend, precision, tile, batch):
        return EngineResult(None, False, child.seconds, child.peak_rss_mib,
                            error=f"invsr-export failed (exit {child.returncode}): {log_tail(log_path, 2)}")
    return EngineResult(folder, False, child.seconds, child.peak_rss_mib)

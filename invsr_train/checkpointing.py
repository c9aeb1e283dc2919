"""Full training-state checkpoints: atomic writes, finding the newest, pruning, RNG capture.

What: a checkpoint is one ``torch.save`` dict under ``OUT/checkpoints/step_XXXXXXXX.pt`` holding
everything needed to continue *exactly* (weights, EMA, optimisers, scalers, discriminator, step,
every RNG state). Files are written to a temporary name in the same folder and renamed, so a crash
never leaves a half-written checkpoint under a real name. The release artefact (the EMA predictor in
the official format) is written separately by the trainer with ``NoisePredictor.save_checkpoint``.
"""
from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from invsr_runtime.tempfiles import atomic_write

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_DIR",
    "FORMAT",
    "atomic_save",
    "capture_rng",
    "checkpoint_path",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "restore_rng",
]

CHECKPOINT_DIR = "checkpoints"
FORMAT = "invsr-train-state/1"
_NAME = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_path(out: Path, step: int) -> Path:
    """``OUT/checkpoints/step_00001234.pt``."""
    return Path(out) / CHECKPOINT_DIR / f"step_{step:08d}.pt"


def list_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in ``OUT/checkpoints``, oldest first."""
    folder = Path(out) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(out: Path) -> Path | None:
    """The newest checkpoint, or None."""
    found = list_checkpoints(out)
    return found[-1][1] if found else None


def prune_checkpoints(out: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for _, path in list_checkpoints(out)[:-keep] if keep > 0 else []:
        path.unlink(missing_ok=True)
        logger.info("removed old checkpoint %s", path)


def atomic_save(obj: Any, path: Path) -> Path:
    """``torch.save`` to a temporary file beside ``path`` (fsynced), then rename over it."""
    return atomic_write(path, lambda f: torch.save(obj, f), durable=True)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a training-state checkpoint (refusing files of another format)."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not an invsr-train checkpoint ({FORMAT})")
    return state


# --------------------------------------------------------------------------------------------------
# RNG
# --------------------------------------------------------------------------------------------------
def capture_rng() -> dict[str, Any]:
    """Every global RNG state (torch CPU + CUDA, numpy, Python) in a weights_only-loadable form."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": _plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def _plain(x: Any) -> Any:
    """Tuples -> lists (nested), so the state is plain data."""
    return [_plain(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tuples(x: Any) -> Any:
    """Lists -> tuples (nested): the shape random.setstate wants."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (tuple, list)) else x

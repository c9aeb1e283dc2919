"""Whether an output folder can be written, decided before any work is done (every CLI's --out / -o).

A run that finds out only at its first write wastes the work before it (every image upscaled, a
checkpoint's worth of training, a benchmark) and fails late with a traceback-shaped error.
"""
from __future__ import annotations

import os
from pathlib import Path


def outdir_problem(path: str | os.PathLike) -> str | None:
    """None when `path` is a writable folder or can be created as one; else the problem, one line
    starting with the path (e.g. "runs/x: exists and is not a folder")."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return f"{path}: exists and is not a folder"
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{path}: cannot be created ({probe} is not a folder)"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{path}: is not writable" if probe == path else f"{path}: cannot be created: {probe} is not writable"
    return None

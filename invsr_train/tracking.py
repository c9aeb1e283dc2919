"""Run logs: TensorBoard scalars/images and a plain JSONL log, written by rank 0 only.

What: :class:`RunLog` writes every record twice - to TensorBoard (``OUT/tb``, ``tag = kind/name``) and
as one JSON object per line to ``OUT/log.jsonl`` (``{"kind": "train"|"val", "step": ..., ...}``) for
scripts and tests. Records beyond the step a run starts from (left by a run that crashed after its last
checkpoint, or that never reached one) are dropped from both, so the log reads as one continuous run.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from invsr_runtime.tempfiles import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["RunLog", "read_log"]

LOG_FILE = "log.jsonl"
TB_DIR = "tb"


class RunLog:
    """TensorBoard + JSONL sink. ``enabled=False`` (ranks > 0) makes every call a no-op."""

    def __init__(self, out: Path, enabled: bool = True, resume_step: int = 0) -> None:
        """Open the sinks; records with step > ``resume_step`` left by an earlier run are dropped."""
        self.enabled = enabled
        self.path = Path(out) / LOG_FILE
        self._tb: Any = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _truncate(self.path, resume_step)
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(str(Path(out) / TB_DIR), purge_step=resume_step + 1)
        self._file = self.path.open("a", encoding="utf-8")

    def scalars(self, kind: str, step: int, values: dict[str, float]) -> None:
        """One record of named scalars (non-finite values are written as null in the JSONL)."""
        if not self.enabled:
            return
        for name, value in values.items():
            self._tb.add_scalar(f"{kind}/{name}", value, step)
        record = {"kind": kind, "step": step, "time": round(time.time(), 3)}
        record.update({k: (float(v) if math.isfinite(float(v)) else None) for k, v in values.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def image(self, tag: str, step: int, image_hwc01: np.ndarray) -> None:
        """An RGB image (HWC float in [0, 1]) to TensorBoard."""
        if self.enabled:
            self._tb.add_image(tag, np.clip(image_hwc01, 0.0, 1.0), step, dataformats="HWC")

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._file.close()
            self.enabled = False


def read_log(out: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The JSONL records of a run (optionally only one kind), in order."""
    path = Path(out) / LOG_FILE
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in records if kind is None or r.get("kind") == kind]


def _truncate(path: Path, step: int) -> None:
    """Drop JSONL records with step > ``step`` (left by a run that died after its last checkpoint)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except ValueError:
            continue  # a line cut short by a crash
    text = "".join(line + "\n" for line in kept).encode("utf-8")
    atomic_write(path, lambda f: f.write(text))  # a crash here must not lose the whole log

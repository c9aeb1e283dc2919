"""Run a child process and read what it cost: exit code, wall time and its own peak RSS (``wait4``).

Workers and exports run as children so that each one's memory is its own: the kernel reports every
child's maximum resident set size when it is reaped, independent of the parent and of its siblings.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChildResult:
    """Exit code, wall seconds and peak RSS (MiB) of a finished child process."""

    returncode: int
    seconds: float
    peak_rss_mib: float | None


def run_child(cmd: Sequence[str], log_path: Path, stdout_to_log: bool = True, env: dict | None = None) -> ChildResult:
    """Run `cmd`, stderr (and stdout unless `stdout_to_log` is False) appended to `log_path`; wait and measure."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with log_path.open("ab") as log:
        proc = subprocess.Popen(list(cmd), stdout=log if stdout_to_log else None, stderr=log, env=env)
        try:
            return _reap(proc, t0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise


def _reap(proc: subprocess.Popen, t0: float) -> ChildResult:
    """wait4 where available (per-child max RSS), else a plain wait."""
    if hasattr(os, "wait4"):
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        peak = usage.ru_maxrss * scale / 2**20
    else:  # pragma: no cover - Windows
        proc.wait()
        peak = None
    return ChildResult(proc.returncode, time.perf_counter() - t0, peak)


def log_tail(log_path: Path, lines: int = 5) -> str:
    """The last non-empty lines of a log, joined by ' | ' (for error messages in reports)."""
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(kept[-lines:])

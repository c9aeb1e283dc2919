"""Peak memory of one configuration: host RSS sampled while it runs, GPU memory from the allocator.

Every backend x precision runs in its own process (see ``worker``), so these numbers are not polluted
by other configurations' models. Within that process, ``PeakRss`` samples the resident set size in a
background thread while one configuration is timed and reports its peak, next to the RSS before it
started (models loaded) and the process's lifetime peak (``getrusage`` max RSS).
"""
from __future__ import annotations

import logging
import resource
import sys
import threading
from types import TracebackType

logger = logging.getLogger(__name__)

MIB = 2**20


def rss_bytes() -> int:
    """Current resident set size of this process."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def lifetime_peak_rss_bytes() -> int:
    """This process's peak RSS since it started (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class PeakRss:
    """Context manager: peak RSS of this process while the block runs, sampled every `interval` s."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.start_bytes = 0
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakRss":
        self.start_bytes = self.peak_bytes = rss_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, rss_bytes())

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_bytes = max(self.peak_bytes, rss_bytes())

    def summary(self) -> dict[str, float]:
        """MiB: RSS before the block, its peak during the block, the delta, and the process lifetime peak."""
        return {
            "rss_before_mib": self.start_bytes / MIB,
            "peak_rss_mib": self.peak_bytes / MIB,
            "peak_rss_delta_mib": (self.peak_bytes - self.start_bytes) / MIB,
            "process_peak_rss_mib": lifetime_peak_rss_bytes() / MIB,
        }


def reset_gpu_peak() -> None:
    """Reset PyTorch's CUDA peak-allocation counter (no-op without CUDA)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def gpu_peak_mib() -> float | None:
    """Peak CUDA memory PyTorch's allocator handed out since the last reset (None without CUDA).

    Memory that other libraries allocate themselves (ONNX Runtime, TensorRT) is not seen here.
    """
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / MIB


def gpu_used_mib() -> float | None:
    """Memory in use on GPU 0 by every process and library (cudaMemGetInfo total - free; None without CUDA).

    This is what sees ONNX Runtime's and TensorRT's own allocations; it also counts other processes.
    """
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return (total - free) / MIB

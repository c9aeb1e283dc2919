"""How much of the CPU other processes took while we measured, and waiting for a quiet machine.

On a shared machine a timing is only as good as the quiet around it: with 2 cores, one busy neighbour
can make PyTorch's OpenMP threads (which spin at barriers) several times slower. ``OtherCpu`` measures
the cores used by everything except this process (system busy time minus our own CPU time) and the
hypervisor's steal time over a window; every record carries it. ``wait_quiet`` holds a measurement
back until the neighbours are idle (up to a limit), for runs meant to be committed.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from types import TracebackType

logger = logging.getLogger(__name__)


def _busy_and_steal() -> tuple[float, float]:
    """System-wide busy CPU seconds (all cores, excluding idle / iowait / steal) and steal seconds."""
    import psutil

    t = psutil.cpu_times()
    steal = getattr(t, "steal", 0.0)
    idle = t.idle + getattr(t, "iowait", 0.0)
    total = sum(t)  # guest time is already part of user time on Linux; counted twice here, which is harmless
    busy = total - idle - steal - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)
    return busy, steal


def _own_cpu() -> float:
    """CPU seconds of this process (all threads) and its reaped children."""
    import psutil

    t = psutil.Process().cpu_times()
    return t.user + t.system + t.children_user + t.children_system


class OtherCpu:
    """Context manager: cores used by other processes and cores stolen by the hypervisor during the block."""

    def __enter__(self) -> "OtherCpu":
        self.t0 = time.perf_counter()
        self.busy0, self.steal0 = _busy_and_steal()
        self.own0 = _own_cpu()
        self.other_cores = self.steal_cores = 0.0
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        wall = max(time.perf_counter() - self.t0, 1e-6)
        busy, steal = _busy_and_steal()
        other = (busy - self.busy0) - (_own_cpu() - self.own0)
        self.other_cores = max(0.0, other / wall)
        self.steal_cores = max(0.0, (steal - self.steal0) / wall)

    def summary(self) -> dict[str, float]:
        return {"other_cores": round(self.other_cores, 3), "steal_cores": round(self.steal_cores, 3)}


def wait_quiet(max_wait_s: float, threshold_cores: float = 0.25, window_s: float = 2.0) -> float:
    """Wait (up to `max_wait_s`) until other processes use less than `threshold_cores`; seconds waited."""
    if max_wait_s <= 0:
        return 0.0
    start = time.perf_counter()
    while True:
        with OtherCpu() as probe:
            time.sleep(window_s)
        waited = time.perf_counter() - start
        if probe.other_cores + probe.steal_cores < threshold_cores:
            return waited
        if waited >= max_wait_s:
            logger.warning("machine still busy after %.0f s (%.2f other cores): measuring anyway",
                           waited, probe.other_cores + probe.steal_cores)
            return waited
        logger.info("waiting for a quiet machine: %.2f other cores busy", probe.other_cores + probe.steal_cores)


@dataclass(frozen=True)
class QuietPolicy:
    """How hard a measurement tries to run alone: wait up to `wait_s` for quiet before it, and when other
    processes still took more than `threshold_cores` during it, measure again (at most `attempts` times in
    all) and keep the least disturbed measurement. `wait_s` = 0 turns both off."""

    wait_s: float = 0.0
    threshold_cores: float = 0.25
    attempts: int = 3

    @property
    def enabled(self) -> bool:
        return self.wait_s > 0

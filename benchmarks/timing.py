"""Latency measurement: run a callable after warm-up, time each call, summarise as median and p90.

On CUDA the time of a call is read from CUDA events recorded around it on the current stream (what
the GPU spent, without host jitter after the last kernel); on CPU from ``time.perf_counter``.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

#: Kinds of clock a runner can ask for.
TIMERS = ("cpu", "cuda")


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics (numpy's default)."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be in [0, 100], got {q}")
    ordered = sorted(float(x) for x in samples)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(samples: Sequence[float]) -> float:
    """The median (mean of the two middle values for an even count)."""
    return percentile(samples, 50.0)


def p90(samples: Sequence[float]) -> float:
    """The 90th percentile (linear interpolation)."""
    return percentile(samples, 90.0)


def summarize_ms(samples_s: Sequence[float]) -> dict[str, Any]:
    """Seconds per call -> {median, p90, min, max, mean, n, samples} in milliseconds."""
    ms = [float(s) * 1e3 for s in samples_s]
    return {
        "median": median(ms),
        "p90": p90(ms),
        "min": min(ms),
        "max": max(ms),
        "mean": sum(ms) / len(ms),
        "n": len(ms),
        "samples": ms,
    }


def time_call(fn: Callable[[], Any], timer: str = "cpu") -> float:
    """Seconds one call of `fn` takes, on the given clock (the call is complete when this returns)."""
    if timer == "cuda":
        import torch

        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    if timer != "cpu":
        raise ValueError(f"unknown timer {timer!r}: use one of {', '.join(TIMERS)}")
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(fn: Callable[[], Any], warmup: int, iters: int, timer: str = "cpu") -> list[float]:
    """Call `fn` `warmup` times untimed, then `iters` times timed; seconds per timed call."""
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    for _ in range(max(0, warmup)):
        time_call(fn, timer)
    return [time_call(fn, timer) for _ in range(iters)]

"""Prometheus metrics of one app, in its own registry (two apps in one process never collide).

Counters and the latency histogram are updated by the routes; the scheduler's and the engine's
counters (tiles, batch fill, queue depth, device busy ratio) are read at scrape time.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, make_asgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .engine import UpscaleEngine

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _EngineCollector(Collector):
    """Reads the engine's and the scheduler's counters when /metrics is scraped."""

    def __init__(self, holder: "Metrics") -> None:
        self.holder = holder

    def collect(self) -> Iterator:
        engine = self.holder.engine
        if engine is None:
            return
        stats = engine.scheduler.stats
        tiles = CounterMetricFamily("invsr_tiles", "Tiles run through the tile chain (rate = tiles per second)")
        tiles.add_metric([], stats.tiles)
        yield tiles
        slots = stats.tiles + stats.padded_tiles
        fill = GaugeMetricFamily("invsr_batch_fill_ratio", "Real tiles over engine batch slots since start")
        fill.add_metric([], stats.tiles / slots if slots else 0.0)
        yield fill
        depth = GaugeMetricFamily("invsr_queue_depth", "Requests admitted and not finished")
        depth.add_metric([], engine.stats.queued)
        yield depth
        pixels = GaugeMetricFamily("invsr_inflight_pixels", "Input pixels of admitted requests")
        pixels.add_metric([], engine.stats.inflight_pixels)
        yield pixels
        uptime = max(time.monotonic() - engine.stats.started, 1e-9)
        devices = max(1, len(stats.device_seconds))
        busy = GaugeMetricFamily("invsr_device_busy_ratio", "Device seconds over wall seconds since start, per device")
        busy.add_metric([], min(1.0, engine.device_seconds() / (uptime * devices)))
        yield busy


class Metrics:
    """The app's registry, its instruments and the ASGI app that serves them at /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.engine: "UpscaleEngine | None" = None
        self.requests = Counter("invsr_requests", "Upscale requests by HTTP status", ["status"],
                                registry=self.registry)
        self.latency = Histogram("invsr_request_seconds", "Upscale request latency (admitted to answered)",
                                 buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_EngineCollector(self))

    def asgi_app(self):
        return make_asgi_app(registry=self.registry)

"""`invsr-serve ENGINE_DIR --ray`: the same ASGI app as a Ray Serve deployment (replicas, autoscaling,
GPUs per replica). Each replica builds its own app, and with it its own engines and tile scheduler, so
the HTTP interface and the bytes are exactly the single-machine service's. `ray` is imported only here.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from ray import serve

from .app import create_app
from .config import ConfigError, ServeConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayServeOptions:
    """Cluster address (None: start a local one), fixed replicas or autoscaling bounds, GPUs per replica."""

    address: str | None = None
    replicas: int = 1
    autoscale: tuple[int, int] | None = None
    gpus_per_replica: float = 0.0

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ConfigError(f"--replicas must be >= 1, got {self.replicas}")
        if self.autoscale is not None and not 0 <= self.autoscale[0] <= self.autoscale[1] >= 1:
            raise ConfigError(f"--autoscale MIN:MAX needs 0 <= MIN <= MAX and MAX >= 1, got {self.autoscale}")
        if self.gpus_per_replica < 0:
            raise ConfigError(f"--gpus-per-replica must be >= 0, got {self.gpus_per_replica}")


def parse_autoscale(text: str | None) -> tuple[int, int] | None:
    """'MIN:MAX' -> (MIN, MAX); ConfigError otherwise."""
    if not text:
        return None
    try:
        low, high = (int(v) for v in text.split(":"))
    except ValueError:
        raise ConfigError(f"--autoscale must be MIN:MAX, e.g. 1:4, got {text!r}") from None
    return low, high


@serve.ingress()
class InvsrReplica:
    """One replica: the service's ASGI app, built on the replica (engines load in its lifespan)."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config

    def __serve_build_asgi_app__(self):
        return create_app(self.config)


def deployment(config: ServeConfig, options: RayServeOptions):
    """The bound Serve application for `config` on `options`' replicas."""
    scaling = ({"autoscaling_config": {"min_replicas": options.autoscale[0], "max_replicas": options.autoscale[1],
                                       "target_ongoing_requests": max(1, config.max_queue // 4)}}
               if options.autoscale else {"num_replicas": options.replicas})
    return serve.deployment(InvsrReplica, name="invsr", max_ongoing_requests=config.max_queue,
                            ray_actor_options={"num_gpus": options.gpus_per_replica, "num_cpus": 1},
                            **scaling).bind(config)


def start(config: ServeConfig, options: RayServeOptions, host: str, port: int) -> None:
    """Connect (or start a local cluster), start Serve's HTTP proxy on host:port, deploy; returns when ready."""
    import ray

    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "error")
    if not ray.is_initialized():
        ray.init(address=options.address, log_to_driver=False, include_dashboard=False,
                 logging_level=logging.WARNING)
    serve.start(http_options={"host": host, "port": port})
    serve.run(deployment(config, options), name="invsr", route_prefix="/", blocking=False)


def stop() -> None:
    """Remove the deployment and Serve (the cluster itself stays when it was given by --address)."""
    serve.shutdown()

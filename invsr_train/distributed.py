"""DDP plumbing: set-up from torchrun's environment, rank-0-only helpers, metric averaging.

What: :func:`init_distributed` reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (set by ``torchrun``)
and starts a process group (NCCL on CUDA, Gloo on CPU); without them the run is a single process and
every helper here is a no-op. Why a module: the trainer stays free of ``if distributed`` branches.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

__all__ = ["DistInfo", "all_reduce_mean", "barrier", "cleanup", "init_distributed", "resolve_device"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank, world size, local rank and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        """True when a process group is running (world > 1)."""
        return self.world > 1

    @property
    def main(self) -> bool:
        """True on the rank that writes files and logs."""
        return self.rank == 0


class DeviceError(ValueError):
    """A --device this machine does not have (one line: what was asked, what there is)."""


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:LOCAL_RANK`` when CUDA is there, else CPU; ``cuda`` gets the local rank's index.

    DeviceError for a device name torch does not know, or a CUDA device this machine does not have.
    """
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise DeviceError(f"--device {spec!r} is not a device: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if device.index >= count:
            have = f"{count} CUDA device(s)" if count else "no CUDA GPU (or a CPU-only PyTorch)"
            raise DeviceError(f"--device {spec}: this machine has {have}; use --device cpu or auto")
    return device


def init_distributed(device_spec: str = "auto") -> DistInfo:
    """Join torchrun's process group when its variables say world > 1; return this process's place."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
        logger.info("rank %d/%d joined the %s process group on %s", rank, world, backend, device)
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=device)


def cleanup(info: DistInfo) -> None:
    """Leave the process group (if any)."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in a single process)."""
    if info.enabled:
        dist.barrier()


def all_reduce_mean(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Average named scalars over ranks (same keys on every rank required)."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    t /= info.world
    return dict(zip(keys, t.tolist()))

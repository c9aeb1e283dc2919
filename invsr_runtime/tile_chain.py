"""The contract between the tile loop and whatever runs tiles: `TileChain`.

The PnP loop (`invsr_runtime.pnp`) — and the tile scheduler built on it — only ever needs five facts and
two calls from the thing that runs tiles, so that is all this protocol declares. An engine backend
(`invsr_runtime.backends.Backend`), the PyTorch reference adapter (`invsr_train.pipeline.ReferenceChain`),
the benchmark runners' chains and a simulated device all satisfy it, and say so by subclassing it.

- `tile`: LR tile size in pixels; `scale`: upscaling factor (4); `batch`: tiles per `run_chain` call.
- `fixed_batch`: True when every call must carry exactly `batch` tiles (engines built for one batch: the
  loop pads a partial last batch by repeating its last tile); False when a shorter last batch is fine.
- `run_chain(lr, vae_noise, pred_noise, schedule)`: lr [N,3,T,T] float32 in [0,1] and the two noises
  [N,4,L,L] (L = T*scale/8) -> HR tiles [N,3,sT,sT] float32 in [0,1], N == batch when fixed_batch.
- `close()`: release sessions / device memory; idempotent.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from .schedule import Schedule


@runtime_checkable
class TileChain(Protocol):
    """What the tile loop needs from a backend: geometry, batch rule, one chain call, close."""

    @property
    def tile(self) -> int:
        """LR tile size in pixels."""
        ...

    @property
    def scale(self) -> int:
        """Upscaling factor."""
        ...

    @property
    def batch(self) -> int:
        """Tiles per `run_chain` call (the most; exactly this many when `fixed_batch`)."""
        ...

    @property
    def fixed_batch(self) -> bool:
        """True: every call carries exactly `batch` tiles (the loop pads the last one)."""
        ...

    def run_chain(
        self, lr: np.ndarray, vae_noise: np.ndarray, pred_noise: np.ndarray, schedule: Schedule
    ) -> np.ndarray:
        """One batch: lr [N,3,T,T] in [0,1] + noises [N,4,L,L] -> HR tiles [N,3,sT,sT] float32 in [0,1]."""
        ...

    def close(self) -> None:
        """Release sessions / device memory (idempotent)."""
        ...

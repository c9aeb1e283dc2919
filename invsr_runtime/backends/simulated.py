"""A simulated device: a `TileChain` whose `run_chain` takes a set time per tile, as a GPU call would.

It sleeps (releasing the GIL, like a backend waiting on its device) for `ms_per_tile` times the batch,
minus what it spent computing, so tests and `invsr-bench --simulate-device-ms X` can measure the
runtime's own overhead on any CPU machine. No engine folder, no model.

- `echo=True` (tests): a deterministic function of the tile, its noise and the schedule (nearest x`scale`
  upsample of the LR tile, plus a small noise and sigma term), so mixed-up tiles, noise or batches show
  up in the output bytes.
- `echo=False` (benchmarks): returns precomputed output batches in turn (three, so they are not all hot
  in the CPU cache), costing the host nothing, as a device's result already copied to host memory;
  with `fresh_outputs=True` each call returns a new copy, as a real backend's download does (what the
  memory benchmark needs: in-flight outputs then take memory).
"""
from __future__ import annotations

import time

import numpy as np

from ..schedule import Schedule


class SimulatedDevice:
    """Satisfies the TileChain contract (tile, scale, batch, fixed_batch, run_chain, close)."""

    name = "simulated"

    def __init__(self, tile: int = 128, scale: int = 4, batch: int = 8, ms_per_tile: float = 0.0,
                 fixed_batch: bool = True, echo: bool = True, fresh_outputs: bool = False) -> None:
        if tile < 2 or scale < 1 or batch < 1 or ms_per_tile < 0:
            raise ValueError(f"tile >= 2, scale >= 1, batch >= 1 and ms_per_tile >= 0 required, got "
                             f"tile={tile} scale={scale} batch={batch} ms_per_tile={ms_per_tile}")
        self.tile, self.scale, self.batch, self.fixed_batch = tile, scale, batch, fixed_batch
        self.ms_per_tile, self.echo, self.fresh_outputs = ms_per_tile, echo, fresh_outputs
        self.calls = 0
        self.batches: list[int] = []  # tiles per call, in call order
        self._canned: list[np.ndarray] = []
        if not echo:
            rng = np.random.default_rng(0)
            size = tile * scale
            self._canned = [rng.random((batch, 3, size, size), dtype=np.float32) for _ in range(3)]

    def run_chain(self, lr: np.ndarray, vae_noise: np.ndarray, pred_noise: np.ndarray,
                  schedule: Schedule) -> np.ndarray:
        """lr [N,3,T,T] + noises [N,4,L,L] -> [N,3,sT,sT] float32 after ms_per_tile * N milliseconds."""
        start = time.perf_counter()
        n = lr.shape[0]
        if lr.shape[1:] != (3, self.tile, self.tile) or (self.fixed_batch and n != self.batch) or n > self.batch:
            raise ValueError(f"simulated device got lr {lr.shape}, expects [{self.batch},3,{self.tile},{self.tile}]")
        if self.echo:
            out = self._echo(lr, vae_noise, pred_noise, schedule)
        else:
            out = self._canned[self.calls % 3][:n]
            out = out.copy() if self.fresh_outputs else out
        self.calls += 1
        self.batches.append(n)
        left = self.ms_per_tile * n / 1000.0 - (time.perf_counter() - start)
        if left > 0:
            time.sleep(left)
        return out

    def _echo(self, lr: np.ndarray, vae_noise: np.ndarray, pred_noise: np.ndarray,
              schedule: Schedule) -> np.ndarray:
        s = self.scale
        up = lr.repeat(s, axis=2).repeat(s, axis=3)
        f = up.shape[2] // vae_noise.shape[2]
        mix = (vae_noise[:, :3] - 0.5 * pred_noise[:, :3]).repeat(f, axis=2).repeat(f, axis=3)
        out = up + 0.02 * mix + np.float32(0.01 * schedule.sigmas[0])
        return np.clip(out, 0.0, 1.0).astype(np.float32)

    def close(self) -> None:
        """Nothing to release."""

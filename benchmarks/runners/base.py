"""What every benchmarked backend offers: set up once, bind one batch of inputs, run stages or the chain.

A runner turns (backend, precision) into callables the timing loop can call again and again:
``bind(inputs)`` returns a :class:`BoundTile` whose ``stages`` run one graph each (in chain order,
sharing a state: each stage reads what the previous one produced, so every stage sees realistic
inputs) and whose ``chain`` runs one whole tile chain end to end. Stages a backend cannot time on their
own (TensorRT replays the whole chain as one CUDA graph) are left out of ``stages``.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from invsr_runtime.manifest import COMPONENTS as STAGES  # the exported graphs, in chain order
from invsr_runtime.noise import tile_noise
from invsr_runtime.schedule import Schedule
from invsr_runtime.tile_chain import TileChain


class SkipConfig(Exception):
    """This configuration cannot run on this machine; the message is the reason shown in the report."""


@dataclass(frozen=True)
class RunnerOptions:
    """Everything a runner needs to know to load its models or engines."""

    backend: str
    precision: str
    base: str
    predictor: str
    device: str
    tile: int
    engines: dict[int, str] = field(default_factory=dict)  # batch -> engine folder (onnxruntime / tensorrt)
    compile: bool = True
    compile_mode: str | None = None


@dataclass(frozen=True)
class TileInputs:
    """One engine batch: LR tiles [B,3,T,T] in [0,1], their two noises [B,4,L,L] and the schedule."""

    lr: np.ndarray
    vae_noise: np.ndarray
    pred_noise: np.ndarray
    schedule: Schedule

    @property
    def batch(self) -> int:
        return int(self.lr.shape[0])

    @staticmethod
    def from_photo(tile_hwc: np.ndarray, batch: int, schedule: Schedule, seed: int = 0) -> "TileInputs":
        """The photo tile repeated `batch` times; tile i gets tile_noise(seed, i) (tile 0 = the drift sample)."""
        lr = np.repeat(tile_hwc.transpose(2, 0, 1)[None], batch, axis=0).astype(np.float32)
        latent = tile_hwc.shape[0] * 4 // 8
        pairs = [tile_noise(seed, i, (latent, latent)) for i in range(batch)]
        return TileInputs(
            lr=np.ascontiguousarray(lr),
            vae_noise=np.stack([v for v, _ in pairs]),
            pred_noise=np.stack([p for _, p in pairs]),
            schedule=schedule,
        )


@dataclass
class BoundTile:
    """Callables over one bound batch: per-stage (chain order, shared state) and the whole chain."""

    stages: dict[str, Callable[[], Any]]
    chain: Callable[[], Any]
    to_image: Callable[[Any], np.ndarray]  # chain output -> [B,3,H,W] float32 numpy
    note: str = ""


class Runner(abc.ABC):
    """One backend at one precision, loaded once, bound to many (batch, steps) inputs."""

    #: "cpu" (perf_counter) or "cuda" (CUDA events) - see benchmarks.timing.
    timer = "cpu"
    #: The schedule's alphas_cumprod of the loaded models / engines (None: SD-Turbo's table).
    alphas: np.ndarray | None = None

    def __init__(self, options: RunnerOptions) -> None:
        self.options = options
        self.info: dict[str, Any] = {}

    @abc.abstractmethod
    def setup(self) -> None:
        """Load models / sessions (raise SkipConfig when this machine cannot run them); fill self.info."""

    @abc.abstractmethod
    def bind(self, inputs: TileInputs) -> BoundTile:
        """Callables for this batch of inputs (may open batch-specific engines)."""

    def sync(self) -> None:
        """Wait for queued device work (no-op on CPU)."""

    def close(self) -> None:
        """Release models / sessions."""

    def tile_chain(self, batch: int) -> "RunnerChain":
        """This loaded runner as the tile loop's device (a `TileChain` of fixed `batch`), e.g. for whole images."""
        return RunnerChain(self, batch)


class RunnerChain(TileChain):
    """A runner as a `TileChain`: each `run_chain` binds the batch and runs the whole chain, host arrays in and out.

    Fixed batch: engines are built for one batch and torch-fast compiles static shapes, so the loop pads.
    """

    def __init__(self, runner: Runner, batch: int, scale: int = 4) -> None:
        self.runner, self._batch, self._scale = runner, batch, scale

    @property
    def tile(self) -> int:
        return int(self.runner.options.tile)

    @property
    def scale(self) -> int:
        return self._scale

    @property
    def batch(self) -> int:
        return self._batch

    @property
    def fixed_batch(self) -> bool:
        return True

    def run_chain(
        self, lr: np.ndarray, vae_noise: np.ndarray, pred_noise: np.ndarray, schedule: Schedule
    ) -> np.ndarray:
        bound = self.runner.bind(TileInputs(lr, vae_noise, pred_noise, schedule))
        out = bound.to_image(bound.chain())
        self.runner.sync()
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        self.runner.close()


def engine_folder(options: RunnerOptions, batch: int) -> Path:
    """The engine folder for `batch`, or SkipConfig when none was prepared."""
    folder = options.engines.get(batch)
    if not folder:
        raise SkipConfig(f"no {options.backend} engine folder for batch {batch}")
    return Path(folder)

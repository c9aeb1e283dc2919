"""What every backend offers the PnP loop: run the whole tile chain on one engine batch.

A backend owns the four graphs of an engine folder. The loop hands it one batch of LR tiles, their two
noises and the schedule; the backend returns the HR tiles. Backends that run named graphs on named
numpy arrays (ONNX Runtime) get the chain for free from `ArrayBackend`; the TensorRT backend chains
device buffers instead and replays the whole chain as one CUDA graph.
"""
from __future__ import annotations

import abc
from pathlib import Path
from typing import Mapping

import numpy as np

from ..chain_feeds import chain_feeds
from ..manifest import GRAPH_IO, Manifest, read_prompt_embeds
from ..schedule import Schedule
from ..tile_chain import TileChain

__all__ = ["GRAPH_IO", "ArrayBackend", "Backend", "BackendError"]


class BackendError(RuntimeError):
    """A backend cannot run this engine folder here; the message says why and what to do."""


class Backend(TileChain, abc.ABC):
    """Runs the tile chain of one engine folder; fixed engine batch and tile size from the manifest.

    The manifest comes from `load_manifest`, which already checked it against the schema (contract
    names and shapes) and verified every file it names; backends only open those files.
    """

    name = "base"

    def __init__(self, folder: str | Path, manifest: Manifest) -> None:
        self.folder = Path(folder)
        self.manifest = manifest
        self.prompt_embeds = read_prompt_embeds(self.folder, manifest)

    @property
    def batch(self) -> int:
        """Tiles per graph call (fixed when the engines were built)."""
        return int(self.manifest.batch)

    @property
    def tile(self) -> int:
        """LR tile size in pixels."""
        return int(self.manifest.tile)

    @property
    def scale(self) -> int:
        """Upscaling factor."""
        return int(self.manifest.scale)

    @property
    def fixed_batch(self) -> bool:
        """Engines are built for one batch: every call carries exactly `batch` tiles."""
        return True

    def dtype_of(self, component: str, tensor: str) -> np.dtype:
        """The numpy dtype the manifest declares for one graph input (float32 if unknown)."""
        for spec in self.manifest.components[component].inputs:
            if spec.name == tensor:
                return np.dtype(spec.dtype)
        return np.dtype(np.float32)

    @abc.abstractmethod
    def run_chain(
        self, lr: np.ndarray, vae_noise: np.ndarray, pred_noise: np.ndarray, schedule: Schedule
    ) -> np.ndarray:
        """One engine batch: lr [B,3,T,T] in [0,1] + noises [B,4,L,L] -> image [B,3,sT,sT] float32."""

    def close(self) -> None:
        """Release sessions / device memory (idempotent)."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ArrayBackend(Backend):
    """A backend that runs one named graph at a time on named numpy arrays."""

    @abc.abstractmethod
    def run_graph(self, component: str, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        """Run one graph; return its (single) contract output."""

    def run_chain(
        self, lr: np.ndarray, vae_noise: np.ndarray, pred_noise: np.ndarray, schedule: Schedule
    ) -> np.ndarray:
        latent_lr = self.run_graph("vae_encoder", self._cast("vae_encoder", {"lr": lr, "noise": vae_noise}))
        feeds = chain_feeds(schedule, lr.shape[0], self.prompt_embeds)
        pred = dict(feeds.predictor, lr=lr, noise=pred_noise, latent_lr=latent_lr)
        latent = self.run_graph("predictor", self._cast("predictor", pred))
        for step in feeds.unet_steps:
            latent = self.run_graph("unet", self._cast("unet", dict(step, latent=latent)))
        return self.run_graph("vae_decoder", self._cast("vae_decoder", {"latent": latent}))

    def _cast(self, component: str, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Feeds in the dtypes the manifest declares, C-contiguous."""
        return {k: np.ascontiguousarray(v, dtype=self.dtype_of(component, k)) for k, v in feeds.items()}

"""onnxruntime: an exported engine folder through invsr_runtime's ONNX Runtime backend.

Stages run through ``run_graph`` with the feeds the runtime itself would build (``chain_feeds``, cast
to the manifest's dtypes); end to end is the backend's own ``run_chain``. Engines have a fixed batch,
so each batch has its own folder; the sessions of one batch are closed before the next one opens.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Mapping

import numpy as np

from .base import BoundTile, Runner, SkipConfig, TileInputs, engine_folder

logger = logging.getLogger(__name__)


class EngineFolderRunner(Runner):
    """Opens one engine folder per batch with `open_backend(folder, manifest, self.backend_name)`."""

    backend_name = "onnxruntime"

    def setup(self) -> None:
        from invsr_runtime.manifest import ManifestError, load_manifest

        self.backend: Any = None
        self.batch: int | None = None
        self.info["session_open_s"] = {}
        first = engine_folder(self.options, min(self.options.engines)) if self.options.engines else None
        if first is None:
            raise SkipConfig(f"no {self.backend_name} engine folder was prepared")
        try:
            manifest = load_manifest(first)
        except ManifestError as exc:
            raise SkipConfig(str(exc)) from None
        self.alphas = np.asarray(manifest.alphas_cumprod, dtype=np.float64)
        self.info["graph_rewrites"] = list(manifest.provenance.get("graph_rewrites", []))

    def _open(self, batch: int) -> Any:
        """The backend for this batch's folder (re-used while the batch stays the same)."""
        if self.batch == batch and self.backend is not None:
            return self.backend
        from invsr_runtime.backends import BackendError, open_backend
        from invsr_runtime.manifest import ManifestError, load_manifest

        self.close()
        folder = engine_folder(self.options, batch)
        t0 = time.perf_counter()
        try:
            self.backend = open_backend(folder, load_manifest(folder), self.backend_name)
        except (BackendError, ManifestError) as exc:
            raise SkipConfig(str(exc)) from None
        self.info["session_open_s"][str(batch)] = time.perf_counter() - t0
        self.info["engine_folder"] = str(folder)
        self.batch = batch
        return self.backend

    def close(self) -> None:
        if getattr(self, "backend", None) is not None:
            self.backend.close()
        self.backend, self.batch = None, None


class OnnxRuntimeRunner(EngineFolderRunner):
    """Per stage via `run_graph`, end to end via `run_chain`, numpy in and out."""

    backend_name = "onnxruntime"

    def bind(self, inputs: TileInputs) -> BoundTile:
        from invsr_runtime.chain_feeds import chain_feeds

        backend = self._open(inputs.batch)
        self.info.setdefault("providers", backend.sessions["unet"].get_providers())
        feeds = chain_feeds(inputs.schedule, inputs.batch, backend.prompt_embeds)

        def cast(component: str, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {k: np.ascontiguousarray(v, dtype=backend.dtype_of(component, k)) for k, v in arrays.items()}

        enc_feeds = cast("vae_encoder", {"lr": inputs.lr, "noise": inputs.vae_noise})
        pred_feeds = cast("predictor", dict(feeds.predictor, lr=inputs.lr, noise=inputs.pred_noise))
        unet_feeds = cast("unet", feeds.unet_steps[0])
        state: dict[str, np.ndarray] = {}

        def vae_encoder() -> None:
            state["latent_lr"] = backend.run_graph("vae_encoder", enc_feeds)

        def predictor() -> None:
            latent_lr = cast("predictor", {"latent_lr": state["latent_lr"]})
            state["latent"] = backend.run_graph("predictor", dict(pred_feeds, **latent_lr))

        def unet() -> None:
            latent = cast("unet", {"latent": state["latent"]})
            state["latent_next"] = backend.run_graph("unet", dict(unet_feeds, **latent))

        def vae_decoder() -> None:
            state["image"] = backend.run_graph("vae_decoder", cast("vae_decoder", {"latent": state["latent_next"]}))

        def chain() -> np.ndarray:
            return backend.run_chain(inputs.lr, inputs.vae_noise, inputs.pred_noise, inputs.schedule)

        stages = {"vae_encoder": vae_encoder, "predictor": predictor, "unet": unet, "vae_decoder": vae_decoder}
        return BoundTile(stages=stages, chain=chain, to_image=lambda out: np.asarray(out, dtype=np.float32))

"""torch-eager: the reference pipeline as its authors run it (fp32 on CPU, fp16 on GPU), stage by stage."""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from .base import BoundTile, Runner, SkipConfig, TileInputs

logger = logging.getLogger(__name__)


def torch_dtype(precision: str) -> Any:
    """torch dtype of a PyTorch precision (fp32 / fp16); SkipConfig for engine-only precisions."""
    import torch

    if precision == "fp32":
        return torch.float32
    if precision == "fp16":
        return torch.float16
    raise SkipConfig(f"PyTorch runs fp32 / fp16 only; {precision} exists only as quantized engine graphs")


def load_pipeline(options: Any) -> Any:
    """The ReferencePipeline for the options' base, predictor, device and precision (models in eval mode)."""
    from invsr_train.models.base import load_base, load_predictor
    from invsr_train.pipeline import ReferencePipeline

    base = load_base(options.base, device=options.device, dtype=torch_dtype(options.precision))
    predictor = load_predictor(options.predictor, base_name=base.name, device=options.device)
    predictor.requires_grad_(False)
    return ReferencePipeline(base, predictor)


def device_inputs(inputs: TileInputs, device: Any) -> tuple[Any, Any, Any]:
    """(lr, vae_noise, pred_noise) as float32 tensors on `device`."""
    import torch

    return tuple(torch.from_numpy(a).to(device) for a in (inputs.lr, inputs.vae_noise, inputs.pred_noise))


class TorchEagerRunner(Runner):
    """`ReferencePipeline` stages (encode, predict_noise, unet_eps + the Euler update, decode) and `upscale_tiles`."""

    def setup(self) -> None:
        import torch

        if self.options.device == "cuda":
            self.timer = "cuda"
        t0 = time.perf_counter()
        self.pipe = load_pipeline(self.options)
        self.alphas = self.pipe.base.alphas_cumprod
        self.info["load_s"] = time.perf_counter() - t0
        self.info["torch_threads"] = torch.get_num_threads()

    def bind(self, inputs: TileInputs) -> BoundTile:
        pipe, sched = self.pipe, inputs.schedule
        lr, vae_noise, pred_noise = device_inputs(inputs, pipe.device)
        t0, s0, sn0 = int(sched.net_timesteps[0]), float(sched.sigmas[0]), float(sched.sigmas_next[0])
        state: dict[str, Any] = {}

        def vae_encoder() -> None:
            state["z_lr"] = pipe.encode(lr, vae_noise)

        def predictor() -> None:
            state["z"] = state["z_lr"] + s0 * pipe.predict_noise(lr, t0, pred_noise)

        def unet() -> None:
            eps = pipe.unet_eps(state["z"], s0, t0)
            state["z_next"] = state["z"] - s0 * eps + sn0 * eps

        def vae_decoder() -> None:
            state["image"] = pipe.decode(state["z_next"])

        def chain() -> Any:
            return pipe.upscale_tiles(lr, sched, vae_noise, pred_noise)

        stages = {"vae_encoder": vae_encoder, "predictor": predictor, "unet": unet, "vae_decoder": vae_decoder}
        return BoundTile(stages=stages, chain=chain, to_image=_to_numpy)

    def sync(self) -> None:
        import torch

        if self.options.device == "cuda":
            torch.cuda.synchronize()

    def close(self) -> None:
        self.pipe = None


def _to_numpy(out: Any) -> np.ndarray:
    """A [B,3,H,W] tensor -> float32 numpy on the host."""
    return out.detach().float().cpu().numpy()

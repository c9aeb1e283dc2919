"""torch-fast: the fastest honest PyTorch path a user would otherwise pick.

The four graphs of docs/INTERFACES.md as torch modules (``invsr_export.wrappers``: the same arithmetic
as the reference, with every schedule scalar a tensor, so one compiled graph serves every step and
every schedule), with SDPA attention everywhere, channels_last weights and inputs, and
``torch.compile`` (inductor). On CPU inductor generates C++ (gcc) with ``freezing`` on (weights folded
as constants and pre-packed for oneDNN, PyTorch's own recipe for CPU inference); on GPU
``mode="reduce-overhead"`` replays each graph as a CUDA graph. Compile time is not latency: the
worker times the first call of every stage separately and reports it.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Callable

from .base import BoundTile, Runner, TileInputs
from .torch_eager import _to_numpy, load_pipeline

logger = logging.getLogger(__name__)


def use_sdpa(*models: Any) -> int:
    """Put diffusers' SDPA attention processor (AttnProcessor2_0) on every Attention module; returns how many."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    count = 0
    for model in models:
        for module in model.modules():
            if isinstance(module, Attention):
                module.set_processor(AttnProcessor2_0())
                count += 1
    return count


def compile_graphs(graphs: dict[str, Any], device: str, mode: str | None) -> dict[str, Any]:
    """torch.compile each graph module (inductor, static shapes); CPU: freezing on."""
    import torch
    import torch._inductor.config as inductor_config

    if device == "cpu":
        inductor_config.freezing = True
    return {name: torch.compile(module, mode=mode, dynamic=False) for name, module in graphs.items()}


class TorchFastRunner(Runner):
    """Compiled graph modules chained with torch tensors kept on the device."""

    def setup(self) -> None:
        import torch

        from invsr_export.wrappers import build_wrappers

        opts = self.options
        self.cuda = opts.device == "cuda"
        self.timer = "cuda" if self.cuda else "cpu"
        t0 = time.perf_counter()
        pipe = load_pipeline(opts)
        self.base, self.predictor = pipe.base, pipe.predictor
        self.alphas = self.base.alphas_cumprod
        self.info["load_s"] = time.perf_counter() - t0
        self.info["sdpa_attention_modules"] = use_sdpa(self.base.unet, self.base.vae, self.predictor)
        graphs = build_wrappers(self.base, self.predictor)
        for module in graphs.values():
            module.to(memory_format=torch.channels_last)
        self.mode = opts.compile_mode or ("reduce-overhead" if self.cuda else None)
        self.cudagraphs = self.cuda and opts.compile and self.mode in ("reduce-overhead", "max-autotune")
        self.graphs = compile_graphs(graphs, opts.device, self.mode) if opts.compile else graphs
        self.info.update(compiled=opts.compile, compile_mode=self.mode or "default",
                         inductor_freezing=opts.compile and not self.cuda, cuda_graphs=self.cudagraphs,
                         channels_last=True, torch_threads=torch.get_num_threads())

    def _call(self, name: str) -> Callable[..., Any]:
        """One graph call: no_grad, autocast for the fp16 predictor, CUDA-graph step marking, output copy."""
        import torch

        module = self.graphs[name]
        autocast = name == "predictor" and self.cuda and self.options.precision == "fp16"

        def call(**feeds: Any) -> Any:
            ctx = torch.autocast("cuda", dtype=torch.float16) if autocast else contextlib.nullcontext()
            if self.cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()
            with torch.no_grad(), ctx:
                out = module(**feeds)
            # CUDA-graph outputs live in a pool that the next replay overwrites: keep a copy.
            return out.clone() if self.cudagraphs else out

        return call

    def bind(self, inputs: TileInputs) -> BoundTile:
        import torch

        dev, b, sched = self.options.device, inputs.batch, inputs.schedule
        img = lambda a: torch.from_numpy(a).to(dev).contiguous(memory_format=torch.channels_last)  # noqa: E731
        vec = lambda v: torch.full((b,), float(v), device=dev, dtype=torch.float32)  # noqa: E731
        lr, vae_noise, pred_noise = img(inputs.lr), img(inputs.vae_noise), img(inputs.pred_noise)
        ehs = self.base.prompt_embeds.to(dev, torch.float32).expand(b, -1, -1).contiguous()
        steps = [dict(timestep=vec(t), sigma=vec(s), sigma_next=vec(sn), encoder_hidden_states=ehs)
                 for t, s, sn in zip(sched.net_timesteps, sched.sigmas, sched.sigmas_next)]
        enc, pred, unet, dec = (self._call(n) for n in ("vae_encoder", "predictor", "unet", "vae_decoder"))
        pred_feeds = dict(lr=lr, timestep=steps[0]["timestep"], noise=pred_noise, sigma=steps[0]["sigma"])
        state: dict[str, Any] = {}

        def vae_encoder() -> None:
            state["latent_lr"] = enc(lr=lr, noise=vae_noise)

        def predictor() -> None:
            state["latent"] = pred(latent_lr=state["latent_lr"], **pred_feeds)

        def unet_step() -> None:
            state["latent_next"] = unet(latent=state["latent"], **steps[0])

        def vae_decoder() -> None:
            state["image"] = dec(latent=state["latent_next"])

        def chain() -> Any:
            latent = pred(latent_lr=enc(lr=lr, noise=vae_noise), **pred_feeds)
            for step in steps:
                latent = unet(latent=latent, **step)
            return dec(latent=latent)

        stages = {"vae_encoder": vae_encoder, "predictor": predictor, "unet": unet_step, "vae_decoder": vae_decoder}
        return BoundTile(stages=stages, chain=chain, to_image=_to_numpy)

    def sync(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()

    def close(self) -> None:
        self.graphs = {}
        self.base = self.predictor = None

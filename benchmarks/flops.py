"""Compute per stage, counted from the models themselves, and the machine's peak matmul rate.

MACs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention;
elementwise work is not counted) while each stage of the reference pipeline runs once on **meta-device
clones** of the loaded models: same architecture, no memory, no arithmetic, so counting the full
SD-Turbo costs seconds. On the meta device attention decomposes into two batched matmuls, which the
counter sees. For the full model at a 128 tile this gives INVSR.md's per-stage numbers (predictor 664
GMAC, VAE encoder 558, UNet 402 per step, VAE decoder 1257).

The compute floor of a configuration is its FLOPs (2 x MACs) divided by a peak rate measured on the
same machine in the same run: a large fp32 matmul on CPU, a large fp16 matmul on GPU.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

import numpy as np

logger = logging.getLogger(__name__)


def count_macs(fn: Callable[[], Any]) -> tuple[float, dict[str, float]]:
    """MACs of one call of `fn` (total, and per aten op), counted by FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    by_op = {str(op): flops / 2.0 for op, flops in counter.get_flop_counts().get("Global", {}).items()}
    return counter.get_total_flops() / 2.0, by_op


def meta_clone(model: Any) -> Any:
    """The same architecture on the meta device (diffusers ``from_config`` or ``cls(config)``), eval mode."""
    import torch

    with torch.device("meta"):
        if hasattr(type(model), "from_config"):
            clone = type(model).from_config(model.config)
        else:
            clone = type(model)(model.config)
    return clone.eval()


def meta_pipeline(base: Any, predictor: Any) -> Any:
    """A ReferencePipeline whose UNet, VAE, predictor and prompt embedding live on the meta device."""
    import dataclasses

    import torch

    from invsr_train.pipeline import ReferencePipeline

    meta_base = dataclasses.replace(
        base,
        unet=meta_clone(base.unet),
        vae=meta_clone(base.vae),
        prompt_embeds=torch.empty(tuple(base.prompt_embeds.shape), device="meta", dtype=torch.float32),
    )
    return ReferencePipeline(meta_base, meta_clone(predictor))


def stage_macs(base: Any, predictor: Any, tile: int, net_timestep: int = 199,
               sigma: float = 0.5693) -> dict[str, float]:
    """MACs of each stage for ONE tile of `tile` LR pixels (batch 1): predictor, VAE encoder, one UNet step, decoder."""
    import torch

    pipe = meta_pipeline(base, predictor)
    lat = tile * 4 // 8
    meta = {"device": "meta", "dtype": torch.float32}
    lr = torch.empty(1, 3, tile, tile, **meta)
    noise = torch.empty(1, 4, lat, lat, **meta)
    macs = {
        "vae_encoder": count_macs(lambda: pipe.encode(lr, noise))[0],
        "predictor": count_macs(lambda: pipe.predict_noise(lr, net_timestep, noise))[0],
        "unet": count_macs(lambda: pipe.unet_eps(noise, sigma, net_timestep))[0],
        "vae_decoder": count_macs(lambda: pipe.decode(noise))[0],
    }
    logger.info("MACs per tile: %s", ", ".join(f"{k} {v / 1e9:.1f} G" for k, v in macs.items()))
    return macs


def chain_macs(per_stage: dict[str, float], steps: int) -> float:
    """MACs of one whole tile chain with `steps` UNet steps."""
    return per_stage["vae_encoder"] + per_stage["predictor"] + steps * per_stage["unet"] + per_stage["vae_decoder"]


def peak_matmul_flops(device: str = "cpu", dtype: str = "float32", n: int | None = None,
                      repeats: int = 6) -> dict[str, Any]:
    """Best FLOP/s of an n x n x n matmul on this machine (the roofline's compute ceiling, measured)."""
    import torch

    n = n or (8192 if device == "cuda" else 4096)
    tdtype = getattr(torch, dtype)
    a = torch.randn(n, n, device=device).to(tdtype)
    b = torch.randn(n, n, device=device).to(tdtype)
    best = float("inf")
    for i in range(repeats + 2):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:  # two warm-up calls
            best = min(best, time.perf_counter() - t0)
    flops = 2.0 * n**3 / best
    logger.info("peak %s %s matmul (n=%d): %.1f GFLOP/s", device, dtype, n, flops / 1e9)
    return {"device": device, "dtype": dtype, "n": n, "repeats": repeats, "flops_per_s": flops,
            "threads": torch.get_num_threads()}


def floor_ms(macs: float, flops_per_s: float) -> float:
    """Milliseconds the given MACs need at the peak rate: the compute floor."""
    return 2.0 * macs / flops_per_s * 1e3 if flops_per_s > 0 else float(np.nan)

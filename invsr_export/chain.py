"""One batch of tiles through the four graphs, on any runner: torch wrappers or ONNX Runtime sessions.

The same loop feeds calibration (record the UNet's inputs at the sampler's timesteps), validation
(per-component inputs, and the ORT chain end to end) and nothing else: the runtime has its own.
Scalar feeds (timesteps, sigmas, prompt embedding) come from `invsr_runtime.chain_feeds.chain_feeds`, so they
are built exactly as the runtime builds them.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np

from invsr_runtime.chain_feeds import chain_feeds
from invsr_runtime.schedule import Schedule

#: run(component, feeds) -> the component's single output.
Runner = Callable[[str, Mapping[str, np.ndarray]], np.ndarray]
#: component -> list of the feeds it received (one per call).
Record = dict[str, list[dict[str, np.ndarray]]]


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Run torch with denormals flushed to zero (restored after).

    Random-weight synthetic models produce denormal floats, which make CPU kernels up to 100x slower;
    flushing them changes values below 1e-38 only.
    """
    import torch

    enabled = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if enabled:
            torch.set_flush_denormal(False)


def torch_runner(wrappers: Mapping[str, "object"]) -> Runner:
    """Runner over the torch graph modules (fp32 reference of every exported graph)."""
    import torch

    def run(name: str, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        module = wrappers[name]
        with torch.no_grad():
            out = module(**{k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in feeds.items()})
        return out.numpy()

    return run


def ort_sessions(paths: Mapping[str, Path], threads: int = 0) -> dict[str, "object"]:
    """One CPU InferenceSession per graph, loaded from the file path (needed for external data)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # No busy-waiting between runs: spinning ORT threads starve torch's, which runs in between here.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Give transient buffers back after each run: the full-size predictor's attention alone is ~8 GB.
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 3
    return {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            for name, path in paths.items()}


def ort_runner(sessions: Mapping[str, "object"]) -> Runner:
    """Runner over ONNX Runtime sessions."""
    def run(name: str, feeds: Mapping[str, np.ndarray]) -> np.ndarray:
        return sessions[name].run(None, {k: np.ascontiguousarray(v) for k, v in feeds.items()})[0]

    return run


def run_chain(
    run: Runner,
    lr: np.ndarray,
    vae_noise: np.ndarray,
    pred_noise: np.ndarray,
    schedule: Schedule,
    prompt_embeds: np.ndarray,
    record: Record | None = None,
    decode: bool = True,
) -> np.ndarray:
    """LR tiles [B,3,T,T] -> HR tiles [B,3,4T,4T] (or the final latent when `decode` is False)."""
    fixed = chain_feeds(schedule, lr.shape[0], prompt_embeds.astype(np.float32))

    def call(name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if record is not None:
            record.setdefault(name, []).append({k: np.array(v, dtype=np.float32) for k, v in feeds.items()})
        return run(name, feeds)

    latent_lr = call("vae_encoder", {"lr": lr, "noise": vae_noise})
    latent = call("predictor", {"lr": lr, "noise": pred_noise, "latent_lr": latent_lr, **fixed.predictor})
    for step in fixed.unet_steps:
        latent = call("unet", {"latent": latent, **step})
    return call("vae_decoder", {"latent": latent}) if decode else latent


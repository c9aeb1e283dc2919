"""The constant and scalar inputs of one tile chain, built once for every backend and the exporter.

Per engine batch the chain needs, besides the per-tile LR tiles and noises, the network timesteps,
sigmas and the prompt embedding broadcast to the batch (docs/INTERFACES.md, "The exported graphs").
This module owns that layout so that the ONNX Runtime and TensorRT backends, the exporter's validation
and the benchmark runners feed the graphs identically. It depends only on the schedule.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .schedule import Schedule


@dataclass(frozen=True)
class ChainFeeds:
    """The scalar and constant inputs of one tile chain for a batch (per-tile arrays are added by the caller)."""

    predictor: dict[str, np.ndarray]
    unet_steps: list[dict[str, np.ndarray]]


def chain_feeds(schedule: Schedule, batch: int, prompt_embeds: np.ndarray) -> ChainFeeds:
    """Timesteps (network values, t-1), sigmas and the prompt embedding as [B] / [B,77,D] float32 arrays."""
    def full(value: float) -> np.ndarray:
        return np.full((batch,), value, dtype=np.float32)

    embeds = np.broadcast_to(prompt_embeds, (batch,) + prompt_embeds.shape[1:])
    steps = [
        {"timestep": full(t), "sigma": full(s), "sigma_next": full(sn), "encoder_hidden_states": embeds}
        for t, s, sn in zip(schedule.net_timesteps, schedule.sigmas, schedule.sigmas_next)
    ]
    predictor = {"timestep": full(schedule.net_timesteps[0]), "sigma": full(schedule.sigmas[0])}
    return ChainFeeds(predictor=predictor, unet_steps=steps)

"""Exponential moving average of the predictor's weights (what gets released and validated).

What: :class:`EMA` keeps an fp32 copy of a model and moves it towards the live weights after every
optimiser step with decay ``min(rate, (1 + i) / (10 + i))``, ``i`` = updates so far (InvSR's warm-up:
early averages follow the model closely instead of remembering the random init).
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """EMA of ``model``'s parameters (buffers are copied). ``shadow`` is a frozen, eval-mode module."""

    def __init__(self, model: nn.Module, rate: float = 0.999) -> None:
        self.rate = float(rate)
        self.updates = 0
        self.shadow = copy.deepcopy(model).float().eval().requires_grad_(False)

    def decay(self) -> float:
        """Decay applied by the next update."""
        i = self.updates
        return min(self.rate, (1.0 + i) / (10.0 + i))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """shadow = d * shadow + (1 - d) * model, for every parameter; buffers copied."""
        d = self.decay()
        for s, p in zip(self.shadow.parameters(), model.parameters()):
            s.lerp_(p.detach().to(s.dtype), 1.0 - d)
        for s, b in zip(self.shadow.buffers(), model.buffers()):
            s.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"rate": self.rate, "updates": self.updates, "model": self.shadow.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        self.shadow.load_state_dict(state["model"])

"""tensorrt: .plan engine folders through invsr_runtime's TensorRT backend (GPU + TensorRT only).

The backend replays the whole tile chain as one CUDA graph and exposes no per-graph call, so only end
to end is timed (host arrays in and out, as a user of the runtime sees it); stage rows stay empty.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from invsr_runtime.backends.trt_import import find_tensorrt

from .base import BoundTile, SkipConfig, TileInputs
from .onnxruntime import EngineFolderRunner


def tensorrt_skip_reason(device: str) -> str | None:
    """Why TensorRT cannot run here (None when it can): no TensorRT module, or no CUDA GPU."""
    reasons = []
    if find_tensorrt() is None:  # the runtime's own detection: full, lean or dispatch wheels
        reasons.append("TensorRT is not installed (pip install tensorrt-lean-cu13-bindings tensorrt-lean-cu13-libs)")
    if device != "cuda":
        reasons.append("no CUDA GPU on this machine")
    return "; ".join(reasons) or None


class TensorRTRunner(EngineFolderRunner):
    """End to end via the TensorRT backend's `run_chain` (synchronous: the image is on the host when it returns)."""

    backend_name = "tensorrt"

    def setup(self) -> None:
        reason = tensorrt_skip_reason(self.options.device)
        if reason:
            raise SkipConfig(reason)
        super().setup()

    def bind(self, inputs: TileInputs) -> BoundTile:
        backend = self._open(inputs.batch)

        def chain() -> Any:
            return backend.run_chain(inputs.lr, inputs.vae_noise, inputs.pred_noise, inputs.schedule)

        return BoundTile(stages={}, chain=chain, to_image=lambda out: np.asarray(out, dtype=np.float32),
                         note="per-stage times n/a: the whole chain is one CUDA graph")

"""invsr_runtime: the lean InvSR runtime (numpy at import; onnxruntime / tensorrt loaded by backends).

    from invsr_runtime import Upscaler
    Upscaler("engines/").upscale(image, steps=1, timesteps=None, color_fix="none", seed=0)

`Upscaler` is imported on first use, so `import invsr_runtime` stays light (no Pillow, no onnxruntime).
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Upscaler", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Upscaler":
        from .upscaler import Upscaler

        return Upscaler
    raise AttributeError(f"module 'invsr_runtime' has no attribute {name!r}")

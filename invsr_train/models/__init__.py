"""Model definitions and loading: ``from invsr_train.models import NoisePredictor, load_base, load_predictor``.

Names are resolved lazily (PEP 562), so importing a submodule such as ``invsr_train.models.base`` does not
pull diffusers in through the noise predictor.
"""
from __future__ import annotations

import importlib
from typing import Any

#: Public name -> submodule that defines it.
_EXPORTS = {
    "NoisePredictor": "noise_predictor",
    "NoisePredictorConfig": "noise_predictor",
    "CheckpointError": "noise_predictor",
    "sample_from_moments": "noise_predictor",
    "BaseModels": "base",
    "ModelLoadError": "base",
    "load_base": "base",
    "load_predictor": "base",
}

__all__ = sorted(_EXPORTS)

#: --help text of every command's --base / --predictor (one description of the accepted forms).
BASE_HELP = (
    "SD-Turbo: hub id (org/name[@revision]; offline: from the hub cache, HF_HOME / HF_HUB_CACHE), bundle folder "
    "(invsr-models download), diffusers folder, copied models--org--name cache folder, single-file .safetensors, "
    "synthetic:tiny or synthetic:full"
)
PREDICTOR_HELP = "noise predictor: hub (OAOA/InvSR's v5), .pth path, bundle folder, synthetic"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

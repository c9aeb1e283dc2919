"""Checks a base-model folder must pass before diffusers sees it, each failing with one line naming the problem.

diffusers' own errors for a bad folder are long, spread over several lines and often name the symptom
(a size mismatch deep in ``load_state_dict``) rather than the cause. These checks run first and cheaply
(configs and safetensors headers only, the model built on the meta device), so the user reads which
file is missing, truncated or does not fit its config, or which SD-Turbo property a wrong model lacks:
its cross-attention width, its latent channels or its block layout.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from invsr_train.models.errors import ModelLoadError

#: SD-Turbo's UNet block layout (SD 2.x): three cross-attention levels, then a plain one.
SD_TURBO_DOWN = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
SD_TURBO_CROSS_ATTENTION = 1024
SD_TURBO_LATENT_CHANNELS = 4
#: Cross-attention widths of other Stable Diffusion families (a tiny test width is none of these).
OTHER_FAMILY_WIDTHS = {768: "SD 1.x", 2048: "SDXL", 1280: "SDXL refiner"}
#: Weight files diffusers looks for in a component folder, in its order of preference.
WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin",
)
_FIX = "pass stabilityai/sd-turbo, a folder or bundle of it (invsr-models download), or synthetic:tiny / synthetic:full"


def require_file(folder: Path, relative: str, name: str) -> Path:
    """``folder/relative`` if it is a readable file; else a one-line error naming it (broken links included)."""
    path = folder / relative
    if path.is_file():
        return path
    if path.is_symlink():  # a hub-cache snapshot copied without its blobs/
        target = os.readlink(path)
        raise ModelLoadError(
            f"base model {name!r}: {relative} is a broken link (to {target}): copy the whole "
            "models--org--name folder of the Hugging Face cache (blobs/ too), or copy with cp -L"
        )
    if not path.parent.is_dir():
        raise ModelLoadError(f"base model {name!r}: missing subfolder {path.parent.relative_to(folder)}/ in {folder}: {_FIX}")
    raise ModelLoadError(f"base model {name!r}: missing file {relative} in {folder}: {_FIX}")


def read_json(folder: Path, relative: str, name: str) -> dict[str, Any]:
    """A required JSON object file of a model folder, or a one-line error naming it."""
    path = require_file(folder, relative, name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelLoadError(f"base model {name!r}: {relative} is not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ModelLoadError(f"base model {name!r}: {relative} holds a {type(data).__name__}, not a JSON object")
    return data


def check_not_transformer_model(folder: Path, name: str) -> None:
    """SD3 / Flux folders have ``transformer/`` instead of ``unet/``: say so instead of 'missing unet'."""
    if not (folder / "unet").exists() and (folder / "transformer").is_dir():
        raise ModelLoadError(
            f"base model {name!r} is not SD-Turbo (looks like SD3 or Flux): block layout is a transformer/, "
            f"not a unet/; {_FIX}"
        )


def family_problems(unet: Mapping[str, Any], vae: Mapping[str, Any]) -> tuple[list[str], str | None]:
    """What makes these UNet / VAE configs not SD-Turbo's design, and the family they look like.

    Widths are not compared with SD-Turbo's exact numbers (tiny test folders are legitimate); the
    cross-attention width is refused only when it is another family's known width.
    """
    problems: list[str] = []
    family: str | None = None
    cross = unet.get("cross_attention_dim")
    if isinstance(cross, int) and cross in OTHER_FAMILY_WIDTHS:
        family = OTHER_FAMILY_WIDTHS[cross]
        problems.append(f"cross-attention width {cross} (SD-Turbo: {SD_TURBO_CROSS_ATTENTION})")
    latents = {
        "UNet in_channels": unet.get("in_channels", 4),
        "UNet out_channels": unet.get("out_channels", 4),
        "VAE latent_channels": vae.get("latent_channels", 4),
    }
    for what, n in latents.items():
        if n != SD_TURBO_LATENT_CHANNELS:
            family = family or ("SD3" if n == 16 else None)
            problems.append(f"latent channels: {what} {n} (SD-Turbo: {SD_TURBO_LATENT_CHANNELS})")
            break
    down = tuple(unet.get("down_block_types") or ())
    if down != SD_TURBO_DOWN:
        family = family or ("SDXL" if len(down) == 3 else None)
        problems.append(f"block layout {'/'.join(down) or 'none'} (SD-Turbo: 3 x CrossAttnDownBlock2D + DownBlock2D)")
    if unet.get("addition_embed_type") == "text_time":
        family = family or "SDXL"
        problems.append("block layout adds SDXL's text_time embedding (SD-Turbo has none)")
    if len(vae.get("block_out_channels") or (0,) * 4) != 4:
        problems.append(f"block layout: VAE has {len(vae['block_out_channels'])} levels (SD-Turbo: 4, an 8x VAE)")
    return problems, family


def check_family(unet: Mapping[str, Any], vae: Mapping[str, Any], name: str) -> None:
    """One-line error naming which of cross-attention width, latent channels, block layout is wrong."""
    problems, family = family_problems(unet, vae)
    if problems:
        looks = f" (looks like {family})" if family else ""
        raise ModelLoadError(f"base model {name!r} is not SD-Turbo{looks}: {'; '.join(problems)}; {_FIX}")


def check_prediction_type(scheduler: Mapping[str, Any], name: str) -> None:
    """InvSR's update assumes an epsilon-predicting UNet (SD 2.x 768-v models predict v)."""
    kind = scheduler.get("prediction_type", "epsilon")
    if kind not in (None, "epsilon"):
        raise ModelLoadError(
            f"base model {name!r} predicts {kind!r} (scheduler/scheduler_config.json), SD-Turbo predicts epsilon: {_FIX}"
        )


def weight_files(folder: Path, sub: str, name: str) -> list[Path]:
    """The weight file(s) diffusers will read for ``folder/sub`` (shards of an index included)."""
    for fname in WEIGHT_NAMES:
        path = folder / sub / fname
        if not (path.is_file() or path.is_symlink()):
            continue
        require_file(folder, f"{sub}/{fname}", name)  # broken links get their own message
        if fname.endswith(".index.json"):
            index = read_json(folder, f"{sub}/{fname}", name)
            shards = sorted(set((index.get("weight_map") or {}).values()))
            return [require_file(folder, f"{sub}/{shard}", name) for shard in shards]
        return [path]
    raise ModelLoadError(f"base model {name!r}: missing file {sub}/{WEIGHT_NAMES[0]} in {folder}: {_FIX}")


def safetensors_shapes(path: Path, label: str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header; corrupt or truncated files give a one-line error."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except Exception as e:  # SafetensorError: bad header, truncated data, empty file
        size = path.stat().st_size if path.exists() else 0
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(
            f"{label} is corrupt or truncated ({size} bytes; {reason}): download it again "
            "(invsr-models verify DIR names every bad file of a bundle)"
        ) from e


def check_weights_fit_config(cls: Any, config: Mapping[str, Any], files: list[Path], folder: Path, sub: str, name: str) -> None:
    """Build ``cls`` from ``config`` on the meta device and compare every tensor shape with the file headers.

    Only ``.safetensors`` files are read (headers only); ``.bin`` files are left to diffusers.
    """
    import torch

    if not all(f.suffix == ".safetensors" for f in files):
        return
    found: dict[str, tuple[int, ...]] = {}
    for f in files:
        found.update(safetensors_shapes(f, f"base model {name!r}: {f.relative_to(folder)}"))
    try:
        with torch.device("meta"):
            model = cls.from_config(dict(config))
    except Exception as e:  # a config diffusers cannot build
        raise ModelLoadError(f"base model {name!r}: {sub}/config.json does not describe a {cls.__name__} ({type(e).__name__}: {_first(e)})") from e
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    legacy = any(k.endswith((".query.weight", ".proj_attn.weight")) for k in found)  # old VAE attention names
    problems = [
        f"{k} is {list(found[k])} in the weights, {list(v)} from the config"
        for k, v in expected.items()
        if k in found and found[k] != v
    ]
    if not legacy:
        problems += [f"{k} is missing from the weights" for k in expected if k not in found]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ModelLoadError(
            f"base model {name!r}: {sub}/config.json does not match its weights {files[0].name}: {problems[0]}{more}; "
            "use the config that came with these weights"
        )


def _first(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__

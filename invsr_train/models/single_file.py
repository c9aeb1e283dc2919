"""SD-Turbo from one ``.safetensors`` checkpoint with the original (LDM / Stability) key names, offline.

diffusers' single-file loader (``from_single_file``) converts the keys; left alone it also *fetches* the
model's diffusers config from the hub (it guesses a repo from the keys), which an offline machine cannot.
So the config is always given as a local folder: ``unet/config.json`` + ``vae/config.json`` beside the
checkpoint when present (e.g. a bundle's, or a fine-tune's own), else SD-Turbo's configs written from
:func:`invsr_train.models.base.unet_config` / ``vae_config`` into a temporary folder. Nothing is fetched.

The checkpoint's text encoder is not used: the file carries no tokenizer vocabulary (CLIP's BPE merges are
not weights), so the prompt embedding comes, as for a folder, from ``prompt_embeds.npy`` beside the file,
the invsr-trt cache, or ``tokenizer/`` + ``text_encoder/`` beside it.
"""
from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from invsr_train import prompts
from invsr_train.models import checks
from invsr_train.models.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

    from invsr_train.models.base import BaseModels

logger = logging.getLogger(__name__)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
#: Keys that identify other families' original checkpoints.
_SDXL_KEY = "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"
_SD3_KEY = "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"
_CROSS_KEY = UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
_IN_KEY = UNET_PREFIX + "input_blocks.0.0.weight"


def load(path: Path, name: str, device: str | torch.device, dtype: torch.dtype) -> BaseModels:
    """UNet + VAE from the checkpoint, schedule and prompt embedding from beside it (see the module doc)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from invsr_train.models import base

    if path.suffix != ".safetensors":
        raise ModelLoadError(
            f"single-file base model {name!r}: only .safetensors checkpoints are read (a .ckpt is a pickle): "
            "pass the .safetensors release or a diffusers folder / bundle"
        )
    shapes = checks.safetensors_shapes(path, f"single-file base model {name!r}")
    check_family(shapes, name)
    with _config_folder(path.parent) as config:
        unet = _from_single_file(UNet2DConditionModel, path, config, "unet", name)
        vae = _from_single_file(AutoencoderKL, path, config, "vae", name)
    acp = base._folder_alphas_cumprod(path.parent, name)
    info = {"source": "single-file", "path": str(path.resolve())}
    try:
        embeds, origin = prompts.folder_prompt_embeds(path.parent, prompts.PROMPT, source=str(path.resolve()))
    except prompts.PromptEmbedError as e:
        raise ModelLoadError(
            f"single-file base model {name!r}: the checkpoint has no tokenizer, so the prompt embedding must come from "
            f"beside it: put {prompts.FOLDER_EMBEDS_FILE}, or SD-Turbo's tokenizer/ and text_encoder/ folders, next to it"
        ) from e
    dim = unet.config.cross_attention_dim
    if embeds.shape[-1] != dim:
        raise ModelLoadError(f"single-file base model {name!r}: prompt embedding width {embeds.shape[-1]} != UNet cross_attention_dim {dim}")
    logger.info("loaded single-file base %s (%s, prompt embedding: %s)", path, base._sizes(unet, vae), origin)
    return base._assemble(unet, vae, embeds, acp, base.FULL_TILE, name, {**info, "prompt_embeds": origin}, device, dtype)


def check_family(shapes: dict[str, tuple[int, ...]], name: str) -> None:
    """One-line error for a checkpoint that is not an original-format SD 2.x-design model."""
    what = f"single-file base model {name!r}"
    if _SD3_KEY in shapes:
        raise ModelLoadError(f"{what} is not SD-Turbo (looks like SD3): block layout is a transformer (joint_blocks)")
    if _IN_KEY not in shapes or not any(k.startswith(VAE_PREFIX) for k in shapes):
        raise ModelLoadError(
            f"{what} has no {UNET_PREFIX}* and {VAE_PREFIX}* keys: not an original-format Stable Diffusion checkpoint "
            "(a diffusers-format file goes in a diffusers folder)"
        )
    problems: list[str] = []
    family = "SDXL" if _SDXL_KEY in shapes else None
    cross = shapes.get(_CROSS_KEY, (0, 0))[-1]
    if cross in checks.OTHER_FAMILY_WIDTHS:
        family = family or checks.OTHER_FAMILY_WIDTHS[cross]
        problems.append(f"cross-attention width {cross} (SD-Turbo: {checks.SD_TURBO_CROSS_ATTENTION})")
    if shapes[_IN_KEY][1] != checks.SD_TURBO_LATENT_CHANNELS:
        problems.append(f"latent channels: UNet input {shapes[_IN_KEY][1]} (SD-Turbo: {checks.SD_TURBO_LATENT_CHANNELS})")
    if family == "SDXL":
        problems.append("block layout has SDXL's two text encoders (conditioner.embedders)")
    if problems:
        looks = f" (looks like {family})" if family else ""
        raise ModelLoadError(f"{what} is not SD-Turbo{looks}: {'; '.join(problems)}")


@contextmanager
def _config_folder(beside: Path) -> Iterator[Path]:
    """A local diffusers config folder for from_single_file: the one beside the file, or SD-Turbo's (temporary)."""
    if (beside / "unet" / "config.json").is_file() and (beside / "vae" / "config.json").is_file():
        logger.info("single-file configs from %s", beside)
        yield beside
        return
    from invsr_train.models.base import unet_config, vae_config

    with tempfile.TemporaryDirectory(prefix="invsr-sd-turbo-config-") as tmp:
        root = Path(tmp)
        for sub, cfg, cls in (("unet", unet_config("full"), "UNet2DConditionModel"), ("vae", vae_config("full"), "AutoencoderKL")):
            (root / sub).mkdir()
            (root / sub / "config.json").write_text(json.dumps({"_class_name": cls, **cfg}), encoding="utf-8")
        logger.info("single-file configs: SD-Turbo's (built in)")
        yield root


def _from_single_file(cls: Any, path: Path, config: Path, sub: str, name: str) -> Any:
    """``cls.from_single_file`` with a local config; failures become one line saying config and weights differ."""
    try:
        return cls.from_single_file(
            str(path), config=str(config), subfolder=sub, local_files_only=True, low_cpu_mem_usage=False
        )
    except Exception as e:  # shape mismatch, missing keys, unreadable config
        origin = "built-in SD-Turbo config" if config.name.startswith("invsr-sd-turbo-config-") else f"{sub}/config.json beside it"
        raise ModelLoadError(
            f"single-file base model {name!r}: the {origin} does not match its {sub} weights "
            f"({_detail(e)}); put the matching unet/ and vae/ config.json next to the file"
        ) from e


def _detail(e: BaseException) -> str:
    """The informative line of a load_state_dict error (its first line is only a header), shortened."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    for line in lines:
        if line.startswith(("size mismatch", "Missing key", "Unexpected key")):
            return line.replace("torch.Size", "")[:240]
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__

"""Model folders in the exact real layouts, at tiny widths, for offline tests (no download ever).

* :func:`make_sd_turbo_folder`: a diffusers folder with SD-Turbo's real ``config.json`` keys (as in
  stabilityai/sd-turbo, diffusers 0.24.0.dev0) holding the ``synthetic:tiny`` weights, its scheduler
  config, ``model_index.json``, a tiny CLIP tokenizer (character vocabulary) and text encoder.
* :func:`make_hub_cache_repo`: huggingface_hub's cache layout (``models--org--name/{blobs,refs,snapshots}``,
  snapshot files as relative links into ``blobs/`` named by their sha256, as the hub names LFS blobs).
* :func:`original_checkpoint`: the same weights under the original (LDM) key names of a single-file
  release (``model.diffusion_model.*``, ``first_stage_model.*``).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch

#: SD-Turbo's unet/config.json; the width entries are replaced by the tiny ones in :func:`sd_turbo_unet_config`.
SD_TURBO_UNET = {
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.24.0.dev0", "act_fn": "silu",
    "addition_embed_type": None, "addition_embed_type_num_heads": 64, "addition_time_embed_dim": None,
    "attention_head_dim": [5, 10, 20, 20], "attention_type": "default", "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "class_embed_type": None, "class_embeddings_concat": False, "conv_in_kernel": 3,
    "conv_out_kernel": 3, "cross_attention_dim": 1024, "cross_attention_norm": None,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "dropout": 0.0, "dual_cross_attention": False, "encoder_hid_dim": None,
    "encoder_hid_dim_type": None, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_only_cross_attention": None, "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05, "norm_num_groups": 32, "num_attention_heads": None, "num_class_embeds": None,
    "only_cross_attention": False, "out_channels": 4, "projection_class_embeddings_input_dim": None,
    "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": False, "resnet_time_scale_shift": "default",
    "reverse_transformer_layers_per_block": None, "sample_size": 64, "time_cond_proj_dim": None,
    "time_embedding_act_fn": None, "time_embedding_dim": None, "time_embedding_type": "positional",
    "timestep_post_act": None, "transformer_layers_per_block": 1,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "upcast_attention": None, "use_linear_projection": True,
}
SD_TURBO_VAE = {
    "_class_name": "AutoencoderKL", "_diffusers_version": "0.24.0.dev0", "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4, "force_upcast": True,
    "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
    "sample_size": 768, "scaling_factor": 0.18215, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SD_TURBO_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.24.0.dev0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False, "interpolation_type": "linear",
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "trailing", "timestep_type": "discrete",
    "trained_betas": None, "use_karras_sigmas": False,
}
SD_TURBO_MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.24.0.dev0", "feature_extractor": [None, None],
    "image_encoder": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
    "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def sd_turbo_unet_config(**widths) -> dict:
    """SD-Turbo's UNet config with the tiny synthetic widths (or the given overrides)."""
    from invsr_train.models.base import unet_config

    tiny = unet_config("tiny")
    keys = ("block_out_channels", "attention_head_dim", "cross_attention_dim", "norm_num_groups", "sample_size")
    return {**SD_TURBO_UNET, **{k: _plain(tiny[k]) for k in keys}, **widths}


def sd_turbo_vae_config(**widths) -> dict:
    from invsr_train.models.base import vae_config

    tiny = vae_config("tiny")
    return {**SD_TURBO_VAE, **{k: _plain(tiny[k]) for k in ("block_out_channels", "norm_num_groups", "sample_size")}, **widths}


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


def byte_alphabet() -> list[str]:
    """The 256 printable stand-ins for bytes used by byte-level BPE tokenizers (GPT-2 / CLIP)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + i) for i in range(len(extra))]


def tiny_tokenizer():
    """A CLIP tokenizer over single characters (+ a couple of merges): tokenizes any text, no download."""
    from transformers import CLIPTokenizer

    chars = byte_alphabet()
    tokens = ["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars] + ["ph", "pho"]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[("p", "h"), ("ph", "o")])


def tiny_text_encoder(vocab_size: int, hidden: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(1234)
    cfg = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    return CLIPTextModel(cfg).eval()


def make_sd_turbo_folder(folder: Path, base, scheduler: dict | None = None, text: bool = True) -> Path:
    """Write ``base`` (a tiny BaseModels) as an SD-Turbo diffusers folder with the real config keys."""
    folder.mkdir(parents=True, exist_ok=True)
    base.unet.save_pretrained(folder / "unet")
    base.vae.save_pretrained(folder / "vae")
    _write_json(folder / "unet" / "config.json", sd_turbo_unet_config())
    _write_json(folder / "vae" / "config.json", sd_turbo_vae_config())
    _write_json(folder / "scheduler" / "scheduler_config.json", {**SD_TURBO_SCHEDULER, **(scheduler or {})})
    _write_json(folder / "model_index.json", SD_TURBO_MODEL_INDEX)
    if text:
        tokenizer = tiny_tokenizer()
        tokenizer.save_pretrained(folder / "tokenizer")
        tiny_text_encoder(len(tokenizer), base.unet.config.cross_attention_dim).save_pretrained(folder / "text_encoder")
    return folder


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def make_hub_cache_repo(cache: Path, repo_id: str, files_from: Path, commit: str, refs: dict[str, str] | None = None) -> Path:
    """Lay ``files_from``'s files out as huggingface_hub caches them; returns the snapshot folder.

    ``refs`` maps ref names to commits (default ``{"main": commit}``; ``{}`` writes no refs/ at all).
    """
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = storage / "snapshots" / commit
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    for src in sorted(p for p in files_from.rglob("*") if p.is_file()):
        rel = src.relative_to(files_from)
        blob = storage / "blobs" / hashlib.sha256(src.read_bytes()).hexdigest()
        if not blob.exists():
            shutil.copyfile(src, blob)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref, sha in ({"main": commit} if refs is None else refs).items():
        (storage / "refs").mkdir(exist_ok=True)
        (storage / "refs" / ref).write_text(sha)
    return snapshot


def lock_folder(folder: Path, sources: dict) -> None:
    """Write a bundle lock file listing every file of ``folder`` (as invsr-models download would)."""
    from invsr_train.models import bundle
    from invsr_train.models.files import sha256_file

    files = [
        bundle.LockedFile(p.relative_to(folder).as_posix(), p.stat().st_size, sha256_file(p), "test")
        for p in sorted(folder.rglob("*")) if p.is_file()
    ]
    bundle.write_lock(folder, bundle.Lock(files, sources))


def make_bundle(folder: Path, base, predictor, commit: str = "c" * 40) -> Path:
    """An SD-Turbo folder + the predictor checkpoint + a lock file: what invsr-models download writes."""
    from invsr_train.models.base import PREDICTOR_FILE

    make_sd_turbo_folder(folder, base)
    predictor.save_checkpoint(folder / PREDICTOR_FILE)
    lock_folder(folder, {"base": {"repo": "stabilityai/sd-turbo", "revision": "main", "commit": commit}})
    return folder


# ----------------------------------------------------------------------------- original (LDM) key names
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _unet_key(key: str, attn_blocks: set[int], levels: int) -> str:
    """One diffusers UNet key (layers_per_block = 2) -> its original name, without the prefix."""
    def resnet(rest: str) -> str:
        part, _, tail = rest.partition(".")
        return f"{_RESNET[part]}.{tail}"

    fixed = {"conv_in.": "input_blocks.0.0.", "time_embedding.linear_1.": "time_embed.0.",
             "time_embedding.linear_2.": "time_embed.2.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
    for old, new in fixed.items():
        if key.startswith(old):
            return new + key[len(old):]
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"input_blocks.{3 * i + j + 1}." + ("0." + resnet(rest) if kind == "resnets" else "1." + rest)
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{3 * int(m[1]) + 3}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key):
        if m[1] == "attentions":
            return f"middle_block.1.{m[3]}"
        return f"middle_block.{2 * int(m[2])}." + resnet(m[3])
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"output_blocks.{3 * i + j}." + ("0." + resnet(rest) if kind == "resnets" else "1." + rest)
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        i = int(m[1])
        return f"output_blocks.{3 * i + 2}.{2 if i in attn_blocks else 1}.conv.{m[2]}"
    raise KeyError(key)


def _vae_key(key: str, levels: int) -> str:
    """One diffusers VAE key -> its original name, without the prefix."""
    key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        return f"decoder.up.{levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.*)", key):
        return f"{m[1]}.mid.attn_1.{_VAE_ATTN[m[2]]}.{m[3]}"
    return key


def original_checkpoint(unet, vae) -> dict[str, torch.Tensor]:
    """The UNet and VAE weights under the original single-file key names (VAE attention as 1x1 convs)."""
    attn_blocks = {i for i, t in enumerate(unet.config.up_block_types) if "CrossAttn" in t}
    levels = len(vae.config.block_out_channels)
    out: dict[str, torch.Tensor] = {}
    for k, v in unet.state_dict().items():
        out["model.diffusion_model." + _unet_key(k, attn_blocks, len(unet.config.block_out_channels))] = v.clone()
    for k, v in vae.state_dict().items():
        name = _vae_key(k, levels)
        if ".mid.attn_1." in name and name.endswith("weight") and v.ndim == 2:
            v = v[:, :, None, None]
        out["first_stage_model." + name] = v.clone()
    return out

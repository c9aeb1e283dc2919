"""SD-Turbo / noise-predictor loading: synthetic bases, local diffusers folders, hub ids (offline only).

Nothing here touches the network: hub tests run with HF_HUB_OFFLINE=1 and a hub cache in tmp_path;
diffusers folders (with a tiny CLIP text encoder and a hand-built tokenizer) are created by the tests.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import model_folders as mf
from invsr_runtime.schedule import SD_TURBO_SCHEDULER, alphas_cumprod
from invsr_train import prompts
from invsr_train.models import base as base_mod
from invsr_train.models.base import ModelLoadError, build_unet, build_vae, load_base, load_predictor

TINY = "synthetic:tiny"
#: A schedule that differs from SD-Turbo's, to prove the folder's scheduler config is read.
FOLDER_SCHEDULER = {"beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear", "num_train_timesteps": 1000}


# --------------------------------------------------------------------------------------- helpers


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A complete diffusers folder: the tiny synthetic UNet/VAE + scheduler + tokenizer + text encoder."""
    folder = tmp_path_factory.mktemp("tiny-turbo")
    tiny = load_base(TINY)
    tiny.unet.save_pretrained(folder / "unet")
    tiny.vae.save_pretrained(folder / "vae")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "EulerDiscreteScheduler", **FOLDER_SCHEDULER})
    )
    tokenizer = mf.tiny_tokenizer()
    tokenizer.save_pretrained(folder / "tokenizer")
    mf.tiny_text_encoder(len(tokenizer), tiny.unet.config.cross_attention_dim).save_pretrained(folder / "text_encoder")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return folder


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty invsr-trt cache for this test."""
    root = tmp_path / "invsr-cache"
    monkeypatch.setenv("INVSR_TRT_CACHE", str(root))
    return root


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """Offline mode and an empty hub cache in tmp_path (read by huggingface_hub at call time)."""
    from huggingface_hub import constants

    hub = tmp_path / "hf-hub"
    hub.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))  # read at call time by invsr_train.models.hub_cache
    return hub


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


# --------------------------------------------------------------------------------------- synthetic


def test_synthetic_tiny_is_deterministic_and_leaves_rng_alone(tiny_base):
    state = torch.get_rng_state()
    again = load_base(TINY)
    assert torch.equal(torch.get_rng_state(), state)
    assert _same_state(tiny_base.unet, again.unet) and _same_state(tiny_base.vae, again.vae)
    assert torch.equal(tiny_base.prompt_embeds, again.prompt_embeds)
    assert tiny_base.prompt_embeds.shape == (1, 77, tiny_base.unet.config.cross_attention_dim)
    assert 0.3 < tiny_base.prompt_embeds.std().item() < 0.7
    # Different components get different seeds (not one stream reused).
    assert not torch.equal(tiny_base.unet.conv_in.weight[:4, :3].flatten(), tiny_base.vae.encoder.conv_in.weight[:4, :3].flatten())


def test_synthetic_tiny_fields(tiny_base):
    b = tiny_base
    assert b.name == TINY and b.tile == 32 and b.info["source"] == "synthetic"
    assert b.scaling_factor == pytest.approx(0.18215)
    np.testing.assert_array_equal(b.alphas_cumprod, alphas_cumprod(**SD_TURBO_SCHEDULER))
    assert b.alphas_cumprod.dtype == np.float64
    for model in (b.unet, b.vae):
        assert not model.training
        assert not any(p.requires_grad for p in model.parameters())
    assert b.device.type == "cpu" and b.dtype == torch.float32 and b.prompt_embeds.dtype == torch.float32


def test_synthetic_tiny_shapes_are_those_of_the_real_model(tiny_base):
    b = tiny_base
    lr_tile = b.tile
    image = torch.rand(1, 3, 4 * lr_tile, 4 * lr_tile, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        post = b.vae.encode(image).latent_dist
        z = b.scaling_factor * post.sample(generator=torch.Generator().manual_seed(1))
        eps = b.unet(z, 199, encoder_hidden_states=b.prompt_embeds).sample
        out = b.vae.decode((z - 0.5 * eps) / b.scaling_factor).sample
    latent = 4 * lr_tile // 8
    assert z.shape == (1, 4, latent, latent) == eps.shape
    assert out.shape == image.shape
    for t in (z, eps, out):
        assert torch.isfinite(t).all()
        assert t.abs().max().item() < 50  # random init stays at sane magnitudes (fp16-safe)


def test_synthetic_dtype(tiny_base):
    half = load_base(TINY, dtype=torch.float16)
    assert half.dtype == torch.float16 and half.vae.dtype == torch.float16
    assert half.prompt_embeds.dtype == torch.float16
    assert torch.equal(half.unet.conv_in.weight, tiny_base.unet.conv_in.weight.half())


def test_synthetic_full_architecture_on_meta():
    unet, vae = build_unet("full", device="meta"), build_vae("full", device="meta")
    assert all(p.is_meta for p in unet.parameters()) and all(p.is_meta for p in vae.parameters())
    assert abs(_n_params(unet) - 865.9e6) < 0.05e6
    assert abs(_n_params(vae.encoder) - 34.16e6) < 0.005e6
    assert abs(_n_params(vae.decoder) - 49.49e6) < 0.005e6
    cfg = unet.config
    assert tuple(cfg.block_out_channels) == (320, 640, 1280, 1280)
    assert tuple(cfg.attention_head_dim) == (5, 10, 20, 20)
    assert cfg.cross_attention_dim == 1024 and cfg.use_linear_projection and cfg.sample_size == 64
    assert vae.config.scaling_factor == pytest.approx(0.18215) and vae.config.latent_channels == 4


def test_tiny_keeps_the_block_structure():
    full, tiny = base_mod.unet_config("full"), base_mod.unet_config("tiny")
    for key in ("down_block_types", "up_block_types", "layers_per_block", "use_linear_projection"):
        assert full[key] == tiny[key]
    vfull, vtiny = base_mod.vae_config("full"), base_mod.vae_config("tiny")
    assert len(vtiny["block_out_channels"]) == len(vfull["block_out_channels"]) == 4
    assert vtiny["latent_channels"] == 4


# --------------------------------------------------------------------------------------- bad specs


@pytest.mark.parametrize("spec", ["synthetic:huge", "synthetic", "/nonexistent/sd-turbo", "not a model", ""])
def test_unknown_spec(spec):
    with pytest.raises(ModelLoadError) as err:
        load_base(spec)
    msg = _one_line(err)
    assert "synthetic:tiny" in msg and "diffusers folder" in msg


def test_existing_folder_that_is_not_diffusers(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelLoadError) as err:
        load_base(tmp_path)
    assert "not a diffusers folder" in _one_line(err)


def test_offline_hub_id(offline_hub):
    with pytest.raises(ModelLoadError) as err:
        load_base("invsr-trt-test/no-such-model")
    msg = _one_line(err)
    assert "invsr-trt-test/no-such-model" in msg
    assert "--base /path/to/sd-turbo" in msg and "synthetic:tiny" in msg and "synthetic:full" in msg


def test_broken_folder(tmp_path, cache):
    (tmp_path / "unet").mkdir()
    (tmp_path / "vae").mkdir()
    with pytest.raises(ModelLoadError) as err:
        load_base(tmp_path)
    assert "unet" in _one_line(err)


# --------------------------------------------------------------------------------------- local folders


def _direct_embedding(folder: Path) -> np.ndarray:
    tokenizer = prompts._load_tokenizer(folder)
    encoder = prompts._load_text_encoder(folder)
    ids = tokenizer(prompts.PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return encoder(ids)[0].numpy()


def test_local_folder_loads_and_caches_the_prompt(tiny_folder, tiny_base, cache, monkeypatch):
    first = load_base(tiny_folder)
    assert first.info["source"] == "folder" and first.info["prompt_embeds"] == "computed"
    assert first.name == str(tiny_folder) and first.tile == 128
    assert _same_state(first.unet, tiny_base.unet) and _same_state(first.vae, tiny_base.vae)
    assert not first.unet.training and not any(p.requires_grad for p in first.vae.parameters())
    np.testing.assert_array_equal(first.alphas_cumprod, alphas_cumprod(**FOLDER_SCHEDULER))
    assert first.scaling_factor == pytest.approx(0.18215)
    assert first.prompt_embeds.shape == (1, 77, 32)
    np.testing.assert_allclose(first.prompt_embeds.numpy(), _direct_embedding(tiny_folder), rtol=1e-6, atol=1e-6)
    assert len(list((cache / "prompt_embeds").glob("*.npy"))) == 1

    def broken(folder):
        raise OSError("text encoder must not be loaded again")

    monkeypatch.setattr(prompts, "_load_text_encoder", broken)
    second = load_base(tiny_folder)
    assert second.info["prompt_embeds"] == "cache"
    assert torch.equal(second.prompt_embeds, first.prompt_embeds)

    # Without the cache the (broken) encoder is needed again: a one-line ModelLoadError.
    monkeypatch.setenv("INVSR_TRT_CACHE", str(cache.parent / "empty-cache"))
    with pytest.raises(ModelLoadError) as err:
        load_base(tiny_folder)
    assert "prompt_embeds.npy" in _one_line(err)


def test_cache_key_depends_on_prompt_and_encoder(tiny_folder, tmp_path):
    fp = prompts.text_encoder_fingerprint(tiny_folder)
    assert fp == prompts.text_encoder_fingerprint(tiny_folder)
    key = prompts.prompt_cache_key("src", fp)
    assert key != prompts.prompt_cache_key("src", fp, prompts.NEGATIVE_PROMPT)
    assert key != prompts.prompt_cache_key("other", fp)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_folder / "text_encoder", copy / "text_encoder")
    (copy / "text_encoder" / "config.json").write_text("{}")
    assert prompts.text_encoder_fingerprint(copy) != fp


def test_negative_prompt_embedding(tiny_folder, cache):
    pos, origin = prompts.folder_prompt_embeds(tiny_folder)
    neg, _ = prompts.folder_prompt_embeds(tiny_folder, prompts.NEGATIVE_PROMPT)
    assert origin in ("computed", "cache") and pos.shape == neg.shape and not np.array_equal(pos, neg)


def test_prompt_texts():
    """Verbatim from INVSR.md / InvSR's sampler_invsr.py: any changed character changes the embedding."""
    assert prompts.PROMPT == (
        "Cinematic, high-contrast, photo-realistic, 8k, ultra HD, meticulous detailing, hyper sharpness, "
        "perfect without deformations"
    )
    assert prompts.NEGATIVE_PROMPT == (
        "Low quality, blurring, jpeg artifacts, deformed, over-smooth, cartoon, noisy,painting, drawing, sketch, "
        "oil painting"
    )


def test_minimal_folder_with_shipped_embedding(tiny_folder, tmp_path, cache):
    """unet/ + vae/ only (no model_index, scheduler or text encoder) + prompt_embeds.npy at the top."""
    folder = tmp_path / "minimal"
    for sub in ("unet", "vae"):
        shutil.copytree(tiny_folder / sub, folder / sub)
    embeds = np.random.default_rng(0).standard_normal((77, 32)).astype(np.float32)
    np.save(folder / "prompt_embeds.npy", embeds)
    b = load_base(folder)
    assert b.info["prompt_embeds"] == "folder"
    np.testing.assert_array_equal(b.prompt_embeds.numpy(), embeds[None])
    np.testing.assert_array_equal(b.alphas_cumprod, alphas_cumprod(**SD_TURBO_SCHEDULER))
    assert not cache.exists()  # nothing computed, nothing cached

    np.save(folder / "prompt_embeds.npy", np.zeros((1, 77, 16), np.float32))
    with pytest.raises(ModelLoadError) as err:
        load_base(folder)
    assert "cross_attention_dim" in _one_line(err)


def test_hub_id_from_the_local_hub_cache(tiny_folder, offline_hub, cache, monkeypatch):
    """A hub id resolves through huggingface_hub's cache (offline), is loaded like a folder, keyed by revision."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = offline_hub / "models--acme--tiny-turbo"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    shutil.copytree(tiny_folder, repo / "snapshots" / sha)

    b = load_base("acme/tiny-turbo")
    assert b.info["source"] == "hub" and b.info["revision"] == sha and b.info["prompt_embeds"] == "computed"
    assert b.name == "acme/tiny-turbo"
    assert (cache / "prompt_embeds" / f"{prompts.prompt_cache_key('acme/tiny-turbo', 'revision:' + sha)}.npy").is_file()

    monkeypatch.setattr(prompts, "_load_text_encoder", lambda folder: (_ for _ in ()).throw(OSError("no")))
    assert load_base("acme/tiny-turbo").info["prompt_embeds"] == "cache"


# --------------------------------------------------------------------------------------- predictor


def test_synthetic_predictor_follows_the_base(tiny_base):
    from invsr_train.models.noise_predictor import NoisePredictorConfig

    p = load_predictor("synthetic", base_name=tiny_base.name)
    assert p.config == NoisePredictorConfig.tiny()
    assert next(p.parameters()).dtype == torch.float32 and not p.training
    assert _same_state(p, load_predictor("synthetic:tiny"))
    assert base_mod._predictor_size("synthetic", None) == "full"
    assert base_mod._predictor_size("synthetic", "synthetic:full") == "full"
    assert base_mod._predictor_size("synthetic:full", TINY) == "full"
    lr = torch.rand(1, 3, tiny_base.tile, tiny_base.tile)
    with torch.inference_mode():
        moments = p(lr, 199)
    assert moments.shape == (1, 8, tiny_base.tile // 2, tiny_base.tile // 2) and torch.isfinite(moments).all()


def test_synthetic_full_predictor():
    from invsr_train.models.noise_predictor import NoisePredictorConfig

    p = load_predictor("synthetic:full")
    assert p.config == NoisePredictorConfig() and _n_params(p) == 33_837_576


def test_predictor_from_path(tmp_path):
    saved = load_predictor("synthetic:tiny").save_checkpoint(tmp_path / "predictor.pth")
    loaded = load_predictor(str(saved))
    assert _same_state(loaded, load_predictor("synthetic:tiny"))
    assert _same_state(load_predictor(saved), loaded)  # a Path works too


def test_predictor_errors(tmp_path, offline_hub):
    with pytest.raises(ModelLoadError) as err:
        load_predictor("hub")
    msg = _one_line(err)
    assert "OAOA/InvSR" in msg and "--predictor synthetic" in msg and ".pth" in msg

    with pytest.raises(ModelLoadError) as err:
        load_predictor(tmp_path / "missing.pth")
    assert "synthetic" in _one_line(err)

    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError) as err:
        load_predictor(bad)
    assert "bad.pth" in _one_line(err)


def test_hub_predictor_from_the_local_hub_cache(tmp_path, offline_hub):
    """``hub`` resolves OAOA/InvSR's checkpoint through huggingface_hub's cache (offline); config from shapes."""
    sha = "89abcdef0123456789abcdef0123456789abcdef"
    repo = offline_hub / "models--OAOA--InvSR"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True)
    tiny = load_predictor("synthetic:tiny")
    saved = tiny.save_checkpoint(tmp_path / base_mod.PREDICTOR_FILE)
    shutil.copy(saved, snapshot / base_mod.PREDICTOR_FILE)  # the .pth only, as on the hub
    assert _same_state(load_predictor("hub"), tiny)

"""Every form ``--base`` / ``--predictor`` accept besides synthetic, and the one-line errors for bad ones.

Folders are created by the tests in the real layouts (tests/model_folders.py): an SD-Turbo diffusers
folder with the real config keys at tiny widths, a hub cache copied from "another machine" (found via
HF_HOME, offline), a single-file checkpoint with the original key names, a bundle with its lock file.
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
from invsr_train.models.base import PREDICTOR_FILE, ModelLoadError, load_base, load_predictor
from invsr_train.models.files import sha256_file

COMMIT = "a" * 40
OTHER = "b" * 40


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _error(spec, **kw) -> str:
    with pytest.raises(ModelLoadError) as err:
        (load_predictor if kw.pop("predictor", False) else load_base)(spec, **kw)
    msg = str(err.value)
    assert msg and "\n" not in msg, msg
    return msg


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Own invsr-trt cache, offline, no inherited hub cache location."""
    from huggingface_hub import constants

    monkeypatch.setenv("INVSR_TRT_CACHE", str(tmp_path / "invsr-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))


@pytest.fixture(scope="module")
def turbo(tmp_path_factory, tiny_base) -> Path:
    return mf.make_sd_turbo_folder(tmp_path_factory.mktemp("sd-turbo"), tiny_base)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _configs_only(folder: Path, unet: dict | None, vae: dict, extra: dict | None = None) -> Path:
    """A folder with just the JSON files a family check reads (weights are never reached)."""
    files = {"model_index.json": mf.SD_TURBO_MODEL_INDEX, "vae/config.json": vae, **(extra or {})}
    if unet is not None:
        files["unet/config.json"] = unet
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(json.dumps(data))
    return folder


# ------------------------------------------------------------------------------------------ public names


def test_public_imports():
    import invsr_train.models as models
    from invsr_train.models import NoisePredictor, NoisePredictorConfig
    from invsr_train.models import load_base as lb
    from invsr_train.models import load_predictor as lp
    from invsr_train.models import base, noise_predictor

    assert NoisePredictor is noise_predictor.NoisePredictor and NoisePredictorConfig is noise_predictor.NoisePredictorConfig
    assert lb is base.load_base and lp is base.load_predictor and models.ModelLoadError is ModelLoadError
    assert {"NoisePredictor", "load_base", "load_predictor"} <= set(dir(models))
    with pytest.raises(AttributeError):
        models.no_such_name  # noqa: B018


# ------------------------------------------------------------------------------------------ diffusers folder


def test_sd_turbo_folder_with_real_config_keys(turbo, tiny_base):
    b = load_base(turbo)
    assert _same(b.unet, tiny_base.unet) and _same(b.vae, tiny_base.vae)
    np.testing.assert_array_equal(b.alphas_cumprod, alphas_cumprod(**SD_TURBO_SCHEDULER))
    assert b.info["source"] == "folder" and b.scaling_factor == pytest.approx(0.18215)


@pytest.mark.parametrize(
    "family, unet, vae, extra, expect",
    [
        ("sd15", {"cross_attention_dim": 768, "use_linear_projection": False, "attention_head_dim": 8}, {}, None,
         ["looks like SD 1.x", "cross-attention width 768 (SD-Turbo: 1024)"]),
        ("sdxl", {"cross_attention_dim": 2048, "addition_embed_type": "text_time",
                  "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                  "block_out_channels": [320, 640, 1280]}, {"scaling_factor": 0.13025}, None,
         ["looks like SDXL", "cross-attention width 2048", "block layout DownBlock2D/CrossAttnDownBlock2D/CrossAttnDownBlock2D"]),
        ("latent16", {}, {"latent_channels": 16}, None, ["latent channels: VAE latent_channels 16 (SD-Turbo: 4)"]),
        ("sd3", None, {"latent_channels": 16, "scaling_factor": 1.5305, "shift_factor": 0.0609},
         {"transformer/config.json": {"_class_name": "SD3Transformer2DModel", "joint_attention_dim": 4096}},
         ["looks like SD3", "transformer/"]),
    ],
)
def test_wrong_family_says_what_is_wrong(tmp_path, family, unet, vae, extra, expect):
    unet_cfg = None if unet is None else mf.sd_turbo_unet_config(**unet)
    folder = _configs_only(tmp_path / family, unet_cfg, mf.sd_turbo_vae_config(**vae), extra)
    msg = _error(folder)
    assert "is not SD-Turbo" in msg
    for part in expect:
        assert part in msg


def test_v_prediction_model_is_refused(turbo, tmp_path):
    folder = _copy(turbo, tmp_path / "v")
    cfg = json.loads((folder / "scheduler/scheduler_config.json").read_text())
    (folder / "scheduler/scheduler_config.json").write_text(json.dumps({**cfg, "prediction_type": "v_prediction"}))
    assert "predicts 'v_prediction'" in _error(folder)


def test_config_that_does_not_match_its_weights(turbo, tmp_path):
    folder = _copy(turbo, tmp_path / "mismatch")
    cfg = mf.sd_turbo_unet_config(block_out_channels=[32, 32, 64, 128])
    (folder / "unet/config.json").write_text(json.dumps(cfg))
    msg = _error(folder)
    assert "unet/config.json does not match its weights diffusion_pytorch_model.safetensors" in msg
    assert "[128" in msg and "more" in msg  # names a tensor with both shapes


def test_truncated_and_corrupt_safetensors(turbo, tmp_path):
    folder = _copy(turbo, tmp_path / "trunc")
    weights = folder / "vae/diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    msg = _error(folder)
    assert "vae/diffusion_pytorch_model.safetensors is corrupt or truncated" in msg and f"{len(data) // 2} bytes" in msg
    weights.write_bytes(b"\x00" * 64)
    assert "corrupt or truncated" in _error(folder)


def test_missing_subfolder_and_file(turbo, tmp_path):
    folder = _copy(turbo, tmp_path / "missing")
    (folder / "unet/diffusion_pytorch_model.safetensors").unlink()
    assert "missing file unet/diffusion_pytorch_model.safetensors" in _error(folder)
    shutil.rmtree(folder / "vae")
    (folder / "unet/diffusion_pytorch_model.safetensors").write_bytes(b"")
    assert "missing subfolder vae/" in _error(folder)


def test_truncated_predictor_checkpoint(tmp_path):
    saved = load_predictor("synthetic:tiny").save_checkpoint(tmp_path / PREDICTOR_FILE)
    saved.with_suffix(".json").unlink()
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) - 1000])
    msg = _error(saved, predictor=True)
    assert PREDICTOR_FILE in msg and "not a PyTorch checkpoint" in msg


# ------------------------------------------------------------------------------------------ copied hub cache


def test_copied_hub_cache_found_through_hf_home(turbo, tiny_base, tmp_path, monkeypatch):
    home = tmp_path / "copied-hf-home"
    mf.make_hub_cache_repo(home / "hub", "acme/tiny-turbo", turbo, COMMIT)
    monkeypatch.setenv("HF_HOME", str(home))
    b = load_base("acme/tiny-turbo")
    assert b.info["revision"] == COMMIT and _same(b.unet, tiny_base.unet)
    assert load_base(f"acme/tiny-turbo@{COMMIT}").info["revision"] == COMMIT
    # HF_HUB_CACHE wins over HF_HOME, as in huggingface_hub.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert "acme/tiny-turbo" in _error("acme/tiny-turbo")


def test_copied_hub_cache_revisions(turbo, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    # Downloaded by commit hash: no refs/ at all -> the only snapshot is used without a revision.
    mf.make_hub_cache_repo(cache, "acme/tiny-turbo", turbo, COMMIT, refs={})
    assert load_base("acme/tiny-turbo").info["revision"] == COMMIT
    # A second snapshot makes "no revision" ambiguous: the error lists both and how to choose.
    mf.make_hub_cache_repo(cache, "acme/tiny-turbo", turbo, OTHER, refs={"v1.0": OTHER})
    msg = _error("acme/tiny-turbo")
    assert COMMIT in msg and OTHER in msg and "acme/tiny-turbo@<commit>" in msg
    assert load_base("acme/tiny-turbo@v1.0").info["revision"] == OTHER
    assert "revision 'v2.0' is not in refs/" in _error("acme/tiny-turbo@v2.0")
    # The models--org--name folder itself is a spec too (repo id and commit come from it).
    storage = cache / "models--acme--tiny-turbo"
    shutil.rmtree(storage / "snapshots" / OTHER)
    b = load_base(storage)
    assert b.info["source"] == "hub-cache" and b.info["repo_id"] == "acme/tiny-turbo" and b.info["revision"] == COMMIT


def test_snapshot_copied_without_blobs(turbo, tmp_path):
    snapshot = mf.make_hub_cache_repo(tmp_path / "hub", "acme/tiny-turbo", turbo, COMMIT)
    copy = tmp_path / "copied-snapshot"
    shutil.copytree(snapshot, copy, symlinks=True)  # links now point at ../../blobs that is not there
    msg = _error(copy)
    assert "is a broken link" in msg and "blobs/" in msg


# ------------------------------------------------------------------------------------------ single file


@pytest.fixture(scope="module")
def single_file(tmp_path_factory, tiny_base) -> Path:
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("single") / "sd_turbo.safetensors"
    save_file(mf.original_checkpoint(tiny_base.unet, tiny_base.vae), path)
    return path


def test_single_file_with_configs_beside_it(single_file, turbo, tiny_base, tmp_path):
    folder = tmp_path / "release"
    folder.mkdir()
    shutil.copy(single_file, folder / single_file.name)
    for sub in ("unet", "vae", "tokenizer", "text_encoder"):
        shutil.copytree(turbo / sub, folder / sub, ignore=shutil.ignore_patterns("*.safetensors") if sub in ("unet", "vae") else None)
    b = load_base(folder / single_file.name)
    assert b.info["source"] == "single-file"
    assert _same(b.unet, tiny_base.unet) and _same(b.vae, tiny_base.vae)
    assert b.prompt_embeds.shape == (1, 77, tiny_base.unet.config.cross_attention_dim)


def test_single_file_alone_uses_sd_turbo_config_offline(single_file):
    # No config beside the tiny file: SD-Turbo's built-in config is used (nothing fetched) and does not fit.
    msg = _error(single_file)
    assert "built-in SD-Turbo config does not match its unet weights" in msg and "size mismatch" in msg


def test_single_file_errors(single_file, tmp_path):
    from safetensors.torch import load_file, save_file

    sd = load_file(single_file)
    key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    sd[key] = torch.zeros(sd[key].shape[0], 768)
    save_file(sd, tmp_path / "sd15.safetensors")
    assert "looks like SD 1.x" in _error(tmp_path / "sd15.safetensors")
    data = single_file.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 4096])
    assert "cut.safetensors' is corrupt or truncated" in _error(tmp_path / "cut.safetensors")
    (tmp_path / "old.ckpt").write_bytes(b"x")
    assert "only .safetensors" in _error(tmp_path / "old.ckpt")


# ------------------------------------------------------------------------------------------ bundle


def test_bundle_is_base_and_predictor(turbo, tiny_base, tmp_path):
    folder = _copy(turbo, tmp_path / "bundle")
    tiny_predictor = load_predictor("synthetic:tiny")
    tiny_predictor.save_checkpoint(folder / PREDICTOR_FILE)
    mf.lock_folder(folder, {"base": {"repo": "acme/tiny-turbo", "commit": COMMIT}})
    b = load_base(folder)
    assert b.info["source"] == "bundle" and b.info["revision"] == COMMIT and _same(b.unet, tiny_base.unet)
    assert _same(load_predictor(folder), tiny_predictor)
    assert _same(load_predictor(folder / PREDICTOR_FILE), tiny_predictor)
    from invsr_export.exporter import _predictor_sha256  # the engine manifest's provenance names the file

    assert _predictor_sha256(str(folder), tiny_predictor) == sha256_file(folder / PREDICTOR_FILE)
    # A truncated file is caught at load time by its size in the lock file.
    weights = folder / "text_encoder/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    msg = _error(folder)
    assert "text_encoder/model.safetensors is 100 bytes, the lock file says" in msg and "invsr-models verify" in msg
    assert "text_encoder/model.safetensors" in _error(folder, predictor=True)

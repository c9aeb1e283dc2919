"""Unit tests of the training pieces: config, data order, latent LPIPS, discriminator, losses, EMA,
checkpoint helpers, the training forward pass (vs the reference pipeline) and a 2-process DDP run."""
from __future__ import annotations

import logging
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from invsr_train import checkpointing as ckpt
from invsr_train.builders import TrainError, plan_batches, resolve_precision, warmup_lr
from invsr_train.config import ConfigError, TrainConfig, load_config, parse_assignment
from invsr_train.data import DataError, HRCropDataset, StepSampler, find_images, random_crop
from invsr_train.discriminator import LatentDiscriminator
from invsr_train.ema import EMA
from invsr_train.losses import d_hinge_loss, g_hinge_loss
from invsr_train.lpips_latent import LPIPSWeightsError, build_latent_lpips

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------- config
def test_default_yaml_is_the_recipe():
    cfg = load_config(REPO / "configs" / "invsr_train.yaml")
    assert cfg == TrainConfig()
    assert cfg.loss.timesteps == [250, 200, 150, 100]
    loss = cfg.loss
    assert (loss.l2_weight, loss.lpips_weight, loss.gan_weight, loss.gan_start) == (1.0, 2.0, 0.1, 10000)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.warmup) == (5e-5, 0.0, 2000)
    assert (cfg.optim.d_lr, cfg.optim.d_weight_decay, cfg.optim.ema_rate) == (5e-5, 1e-3, 0.999)
    assert (cfg.train.batch_size, cfg.train.micro_batch, cfg.train.max_steps) == (64, 16, 100000)
    assert cfg.data.crop == 512 and cfg.loss.gan_clamp == 10.0


def test_config_rejects_unknown_keys_and_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="loss.l2_wieght"):
        TrainConfig.from_dict({"loss": {"l2_wieght": 1.0}})
    with pytest.raises(ConfigError, match="train.max_steps"):
        TrainConfig.from_dict({"train": {"max_steps": "many"}})
    with pytest.raises(ConfigError, match="data.crop"):
        TrainConfig.from_dict({"data": {"crop": 100}})
    with pytest.raises(ConfigError, match="loss.timesteps"):
        TrainConfig.from_dict({"loss": {"timesteps": [300]}})
    with pytest.raises(ConfigError, match="degradation"):
        TrainConfig.from_dict({"degradation": {"no_such_key": 1}})
    with pytest.raises(ConfigError, match="unknown config key"):
        TrainConfig().override({"train.nope": 1})
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_config_values_are_coerced_and_degradation_overrides_apply():
    cfg = TrainConfig.from_dict({"optim": {"lr": "1e-4"}, "data": {"train": "/some/folder"},
                                 "degradation": {"second_stage_prob": 0.25, "first": {"jpeg_quality_range": [60, 90]}}})
    assert cfg.optim.lr == 1e-4 and cfg.data.train == ["/some/folder"]
    deg = cfg.degradation_config()
    assert deg.second_stage_prob == 0.25 and tuple(deg.first.jpeg_quality_range) == (60, 90)
    assert parse_assignment("loss.gan_start=500") == ("loss.gan_start", 500)
    assert parse_assignment("discriminator.channels=[8, 16]") == ("discriminator.channels", [8, 16])
    with pytest.raises(ConfigError):
        parse_assignment("no-equals-sign")


def test_cli_precedence_defaults_file_set_flags(tmp_path):
    from invsr_train.cli import build_parser, resolve_config

    f = tmp_path / "c.yaml"
    f.write_text("train: {max_steps: 7, batch_size: 8, seed: 1}\noptim: {lr: 1.0e-4}\n", encoding="utf-8")
    args = build_parser().parse_args(["--out", "o", "--config", str(f), "--data", "a", "b", "--max-steps", "9",
                                      "--set", "train.seed=2", "--set", "train.max_steps=8"])
    cfg = resolve_config(args)
    assert cfg.train.max_steps == 9  # flag > --set > file
    assert cfg.train.seed == 2  # --set > file
    assert cfg.train.batch_size == 8 and cfg.optim.lr == 1e-4  # file > defaults
    assert cfg.train.micro_batch == 16  # default
    assert cfg.data.train == ["a", "b"]


def test_batch_plan_precision_and_warmup():
    assert plan_batches(64, 16, 1).accum == 4
    p = plan_batches(64, 16, 8)
    assert (p.per_rank, p.micro, p.accum) == (8, 8, 1)
    with pytest.raises(TrainError):
        plan_batches(64, 16, 3)
    with pytest.raises(TrainError):
        plan_batches(48, 10, 1)
    assert resolve_precision("auto", torch.device("cpu")).autocast is None
    with pytest.raises(TrainError, match="fp16"):
        resolve_precision("fp16", torch.device("cpu"))
    cfg = TrainConfig()
    assert warmup_lr(cfg, 0) == pytest.approx(5e-5 / 2000)
    assert warmup_lr(cfg, 999) == pytest.approx(2.5e-5)
    assert warmup_lr(cfg, 1999) == warmup_lr(cfg, 50000) == 5e-5


# --------------------------------------------------------------------------------------------- data
def test_step_sampler_shards_and_resumes():
    n, batch, micro = 10, 8, 2
    one = StepSampler(n, batch, micro, seed=1, world=1)
    ranks = [StepSampler(n, batch, micro, seed=1, rank=r, world=2) for r in range(2)]
    for step in range(4):
        full = [k for mb in one.step_samples(step) for _, k in mb]
        parts = [[k for mb in s.step_samples(step) for _, k in mb] for s in ranks]
        assert not set(parts[0]) & set(parts[1])
        assert sorted(parts[0] + parts[1]) == sorted(full) == list(range(step * batch, (step + 1) * batch))
        assert all(len(mb) == micro for mb in ranks[0].step_samples(step))
    # every file once per epoch
    assert sorted(one.file_index(k) for k in range(n)) == list(range(n))
    # starting at step 3 yields what step 3 of an uninterrupted stream yields
    it, resumed = iter(one), iter(StepSampler(n, batch, micro, seed=1, start_step=3))
    stream = [next(it) for _ in range(4 * 4)]
    assert [next(resumed) for _ in range(4)] == stream[12:16]
    with pytest.raises(DataError):
        StepSampler(n, 8, 3, seed=0)


def _write_png(path: Path, h: int, w: int, seed: int) -> None:
    from invsr_runtime.imageio import save_rgb

    save_rgb(np.random.default_rng(seed).random((h, w, 3), dtype=np.float32), path)


def test_dataset_crops_are_keyed_and_bad_files_skipped(tmp_path, caplog):
    _write_png(tmp_path / "a.png", 40, 50, 0)
    _write_png(tmp_path / "small.png", 10, 12, 1)
    (tmp_path / "b.png").write_bytes(b"garbage")
    files = find_images([tmp_path])
    assert [p.name for p in files] == ["a.png", "b.png", "small.png"]
    ds = HRCropDataset(files, crop=16, hflip=True, seed=0)
    assert torch.equal(ds[(0, 5)], ds[(0, 5)])
    assert not torch.equal(ds[(0, 5)], ds[(0, 6)])
    assert ds[(2, 0)].shape == (3, 16, 16)  # padded up from 10 x 12
    with caplog.at_level(logging.WARNING):
        x = ds[(1, 0)]  # b.png is garbage -> the next file is used instead
    assert x.shape == (3, 16, 16) and any("b.png" in r.getMessage() for r in caplog.records)
    with pytest.raises(DataError, match="does not exist"):
        find_images([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        find_images([tmp_path / "empty"])


def test_random_crop_flip():
    img = np.arange(4 * 6 * 3, dtype=np.float32).reshape(4, 6, 3)
    rng = np.random.default_rng(0)
    crops = {random_crop(img, 4, rng, hflip=True).tobytes() for _ in range(40)}
    assert len(crops) > 3  # positions and flips vary


# ------------------------------------------------------------------------------------- latent LPIPS
@pytest.fixture(scope="module")
def lpips_model():
    return build_latent_lpips(None, seed=0)


def test_lpips_distance_and_gradient(lpips_model):
    a = torch.randn(2, 4, 16, 16)
    b = a + 0.5 * torch.randn_like(a)
    assert torch.allclose(lpips_model(a, a), torch.zeros(2), atol=1e-6)
    a.requires_grad_(True)
    d = lpips_model(a, b)
    assert d.shape == (2,) and (d > 0).all()
    d.sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in lpips_model.parameters())
    assert lpips_model.conv_keys()[0] == "net.slice1.0.weight" and len(lpips_model.conv_keys()) == 13
    assert lpips_model.state_dict()["net.slice1.0.weight"].shape == (64, 4, 3, 3)


def test_lpips_weights_load_by_name_and_by_shape(lpips_model, tmp_path, caplog):
    x, y = torch.randn(1, 4, 16, 16), torch.randn(1, 4, 16, 16)
    ref = lpips_model(x, y)
    sd = {k: v for k, v in lpips_model.state_dict().items() if k not in ("shift", "scale")}
    sd["scaling_layer.shift"] = torch.zeros(1, 3, 1, 1)  # an image-LPIPS leftover: ignored (3 channels)
    by_name = tmp_path / "by_name.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, by_name)
    assert torch.allclose(build_latent_lpips(by_name)(x, y), ref)
    renamed = {k.replace("net.slice", "features.block").replace("model.1", "conv"): v for k, v in sd.items()}
    by_shape = tmp_path / "by_shape.pth"
    torch.save(renamed, by_shape)
    assert torch.allclose(build_latent_lpips(by_shape)(x, y), ref)
    bad = tmp_path / "bad.pth"
    torch.save({"w": torch.zeros(3)}, bad)
    with pytest.raises(LPIPSWeightsError, match="4-channel VGG16"):
        build_latent_lpips(bad)
    with caplog.at_level(logging.WARNING):
        build_latent_lpips(None)
    assert any("not perceptually meaningful" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------- discriminator and losses
def test_discriminator_is_multiscale_and_conditioned():
    d = LatentDiscriminator(4, channels=(16, 32, 32), time_dim=32, norm_groups=8, cond_dim=12)
    z = torch.randn(3, 4, 16, 16, requires_grad=True)
    outs = d(z, torch.tensor([99, 199, 249]), torch.randn(1, 77, 12))
    assert [tuple(o.shape) for o in outs] == [(3, 1, 4, 4), (3, 1, 8, 8), (3, 1, 16, 16)]
    other = d(z, torch.tensor([0, 0, 0]), torch.randn(1, 77, 12))
    assert not torch.allclose(outs[-1], other[-1])  # the timestep matters
    g_hinge_loss(outs).backward()
    assert z.grad is not None and all(p.grad is not None for p in d.parameters())
    odd = d(torch.randn(1, 4, 9, 11), torch.tensor([5]))
    assert odd[-1].shape == (1, 1, 9, 11)


def test_hinge_losses():
    two, minus_two = [torch.full((2, 1, 4, 4), 2.0)], [torch.full((2, 1, 4, 4), -2.0)]
    assert float(d_hinge_loss(two, minus_two)) == 0.0  # confident and right: no loss
    assert float(d_hinge_loss(minus_two, two)) == pytest.approx(6.0)
    assert float(g_hinge_loss([torch.full((1, 1, 2, 2), 0.5), torch.full((1, 1, 4, 4), 1.5)])) == pytest.approx(-1.0)


# ------------------------------------------------------------------------------------- EMA, ckpt
def test_ema_warmup_and_update():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, rate=0.999)
    assert ema.decay() == pytest.approx(0.1)
    start = ema.shadow.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.shadow.weight, 0.1 * start + 0.9 * model.weight.detach())
    assert ema.decay() == pytest.approx(2 / 11)
    ema.updates = 10**6
    assert ema.decay() == 0.999


def test_atomic_save_prune_and_rng(tmp_path):
    for step in (1, 2, 3):
        ckpt.atomic_save({"format": ckpt.FORMAT, "step": step}, ckpt.checkpoint_path(tmp_path, step))
    ckpt.prune_checkpoints(tmp_path, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [2, 3]
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))["step"] == 3
    assert not [p for p in (tmp_path / ckpt.CHECKPOINT_DIR).iterdir() if p.name.startswith(".")]
    state = ckpt.capture_rng()
    ckpt.atomic_save(state, tmp_path / "rng.pt")
    a = (torch.rand(3), np.random.rand(3), random.random())
    ckpt.restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


# ------------------------------------------------------------------------------- training forward
def test_training_forward_matches_the_reference_pipeline(tiny_base, tiny_predictor):
    """x0 of the objective = one reference-pipeline step fed the same noises; gradients reach the predictor only."""
    from invsr_runtime.schedule import make_schedule
    from invsr_train.objective import InvSRObjective
    from invsr_train.pipeline import ReferencePipeline

    obj = InvSRObjective(tiny_base, [200])
    lr = torch.rand(2, 3, 32, 32)
    gen = torch.Generator().manual_seed(4)
    z_lr = obj.encode_lr(lr, gen)
    t, sigma = obj.sample_timesteps(2, gen)
    x0 = obj.predict_x0(tiny_predictor, lr, z_lr, t, sigma, gen)

    replay = torch.Generator().manual_seed(4)
    vae_noise = torch.randn(2, 4, 16, 16, generator=replay)
    torch.randint(1, (2,), generator=replay)
    pred_noise = torch.randn(2, 4, 16, 16, generator=replay)
    pipe = ReferencePipeline(tiny_base, tiny_predictor)
    sched = make_schedule([200], tiny_base.alphas_cumprod)
    s = float(sched.sigmas[0])
    z_ref = pipe.encode(lr, vae_noise)
    torch.testing.assert_close(z_lr, z_ref)
    z = z_ref + s * pipe.predict_noise(lr, 199, pred_noise)
    x0_ref = z - s * pipe.unet_eps(z, s, 199)
    torch.testing.assert_close(x0.detach(), x0_ref, rtol=1e-4, atol=1e-5)
    assert t.tolist() == [200, 200] and sigma[0].item() == pytest.approx(s, rel=1e-6)

    x0.square().mean().backward()
    assert all(p.grad is not None for p in tiny_predictor.parameters())
    assert all(p.grad is None for p in tiny_base.unet.parameters())
    grads = [p.grad.clone() for p in tiny_predictor.parameters()]
    tiny_predictor.zero_grad(set_to_none=True)

    # UNet gradient checkpointing (the recipe's memory saver) gives the same gradients
    tiny_base.unet.enable_gradient_checkpointing()
    try:
        gen = torch.Generator().manual_seed(4)
        z_lr = obj.encode_lr(lr, gen)
        t, sigma = obj.sample_timesteps(2, gen)
        obj.predict_x0(tiny_predictor, lr, z_lr, t, sigma, gen).square().mean().backward()
    finally:
        tiny_base.unet.disable_gradient_checkpointing()
    for g, p in zip(grads, tiny_predictor.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-7)
    tiny_predictor.zero_grad(set_to_none=True)


# ------------------------------------------------------------------------------------------ DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_process_gloo_run(tmp_path):
    from invsr_runtime.imageio import save_rgb
    from invsr_train.samples import sample_photo

    data = tmp_path / "data"
    data.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        save_rgb(sample_photo(name)[:96, :96], data / f"{name}.png")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "data: {crop: 64, workers: 0, val_holdout: 1, val_count: 1}\nmodel: {unet_grad_checkpointing: false}\n"
        "loss: {gan_start: 1}\ndiscriminator: {channels: [16, 32], norm_groups: 8, time_dim: 32}\n"
        "optim: {warmup: 0}\ntrain: {max_steps: 2, batch_size: 4, micro_batch: 1, log_every: 1, sample_count: 0}\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "invsr_train.cli",
           "--data", str(data), "--out", str(out), "--base", "synthetic:tiny", "--config", str(cfg), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (out / "log.jsonl").read_text().splitlines()
    assert [r.count('"kind": "train"') for r in lines].count(1) == 2  # rank 0 writes, once per step
    assert "rank 0/2 joined the gloo process group" in proc.stderr
    assert ckpt.latest_checkpoint(out) is not None and (out / "noise_predictor.pth").is_file()

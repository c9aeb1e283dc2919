"""End-to-end training tests on the tiny synthetic base (CPU, offline, seconds per run).

Runs: a 20-step L2-only run (the loss goes down); a 6-step run with every loss term straight through
and the same run cut in two halves with a resume in between (identical figures); the CLI on a config
file with overrides, its resume, and its one-line errors; the trained checkpoint through export and
the runtime when those packages are there.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from invsr_train import checkpointing as ckpt
from invsr_train.builders import TrainError
from invsr_train.config import load_config
from invsr_train.models.noise_predictor import NoisePredictor
from invsr_train.tracking import read_log
from invsr_train.trainer import PREDICTOR_FILE, Trainer

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def write_photos(folder: Path, size: int = 160, corrupt: bool = True) -> Path:
    """Sample photos (half size, centre crop) as PNGs, one in a subfolder, plus a corrupt file."""
    from invsr_runtime.imageio import save_rgb
    from invsr_train.samples import downscale, sample_photo

    (folder / "nested").mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(PHOTOS):
        img = downscale(sample_photo(name), 2)
        y, x = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
        target = (folder / "nested" if i == 1 else folder) / f"{name}.png"
        save_rgb(np.ascontiguousarray(img[y : y + size, x : x + size]), target)
    if corrupt:
        (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a PNG")
    return folder


def tiny(data: Path, **extra: Any) -> dict[str, Any]:
    """Dotted overrides for a run that takes a fraction of a second per step on a 2-core CPU."""
    over: dict[str, Any] = {
        "data.train": [str(data)], "data.crop": 64, "data.workers": 0, "data.val_holdout": 1, "data.val_count": 1,
        "model.base": "synthetic:tiny", "model.unet_grad_checkpointing": False,
        "discriminator.channels": [16, 32], "discriminator.norm_groups": 8, "discriminator.time_dim": 32,
        "optim.warmup": 0, "train.batch_size": 2, "train.micro_batch": 1, "train.log_every": 1,
        "train.ckpt_every": 1000, "train.val_every": 0, "train.sample_count": 1,
    }
    over.update(extra)
    return over


def tiny_config_file(path: Path, train: str) -> Path:
    """A YAML config for the CLI: the tiny recipe, L2 only, with `train` (YAML mapping entries) on top."""
    path.write_text(
        "data: {crop: 64, workers: 0, val_holdout: 1, val_count: 1}\n"
        "model: {unet_grad_checkpointing: false}\n"
        "loss: {lpips_weight: 0.0, gan_weight: 0.0}\n"
        "optim: {warmup: 0}\n"
        f"train: {{micro_batch: 1, log_every: 1, sample_count: 0, {train}}}\n",
        encoding="utf-8",
    )
    return path


def train(cfg_over: dict[str, Any], out: Path, base: Any, resume: bool = False) -> Any:
    trainer = Trainer(load_config(None, cfg_over), out, resume=resume, progress=False, base=base)
    try:
        return trainer.train()
    finally:
        trainer.close()


def train_records(out: Path) -> dict[int, dict[str, float]]:
    return {r["step"]: r for r in read_log(out, "train")}


pytestmark = pytest.mark.usefixtures("one_thread")


def exit_code(main, argv: list[str]) -> int:
    """A CLI's status whether its main returns it or calls sys.exit."""
    try:
        return int(main(argv) or 0)
    except SystemExit as e:
        return int(e.code or 0)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return write_photos(tmp_path_factory.mktemp("photos"))


# ---------------------------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def full_runs(photos, tiny_base, tmp_path_factory) -> dict[str, Any]:
    """6 steps with L2 + LPIPS + GAN (generator term from step 3), straight and as 3 + resume + 3."""
    root = tmp_path_factory.mktemp("runs")
    over = tiny(photos, **{"loss.gan_start": 2, "optim.lr": 1e-3, "optim.d_lr": 1e-3, "train.max_steps": 6})
    straight = train(over, root / "straight", tiny_base)
    train({**over, "train.max_steps": 3}, root / "split", tiny_base)
    resumed = train(over, root / "split", tiny_base, resume=True)
    return {"straight": straight, "resumed": resumed, "over": over, "root": root}


def test_l2_goes_down_and_bad_file_is_skipped(photos, tiny_base, tmp_path, caplog):
    over = tiny(photos, **{"loss.lpips_weight": 0.0, "loss.gan_weight": 0.0, "optim.lr": 2e-3,
                           "train.max_steps": 20, "train.micro_batch": 2, "train.seed": 3})
    with caplog.at_level(logging.WARNING):
        result = train(over, tmp_path / "run", tiny_base)
    assert any("corrupt.png" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    l2 = [train_records(tmp_path / "run")[s]["l2"] for s in range(1, 21)]
    first, last = np.mean(l2[:4]), np.mean(l2[-4:])
    assert last < 0.8 * first, f"L2 did not go down: first {first:.4f}, last {last:.4f} ({l2})"
    assert result.step == 20 and result.steps_run == 20
    assert "lpips" not in result.last and "gan" not in result.last and "d_loss" not in result.last
    # only the predictor trains: the frozen UNet / VAE got no gradients
    assert all(p.grad is None and not p.requires_grad for p in tiny_base.unet.parameters())
    assert all(p.grad is None and not p.requires_grad for p in tiny_base.vae.parameters())


def test_resume_reproduces_the_straight_run(full_runs):
    straight = train_records(full_runs["root"] / "straight")
    resumed = train_records(full_runs["root"] / "split")
    assert sorted(straight) == sorted(resumed) == list(range(1, 7))
    for step in range(1, 7):
        a, b = straight[step], resumed[step]
        assert set(a) == set(b)
        for key in a:
            if key not in ("time", "kind", "step"):
                assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), (step, key)
    sa = ckpt.load_checkpoint(ckpt.latest_checkpoint(full_runs["root"] / "straight"))
    sb = ckpt.load_checkpoint(ckpt.latest_checkpoint(full_runs["root"] / "split"))
    for k, v in sa["ema"]["model"].items():
        torch.testing.assert_close(v, sb["ema"]["model"][k], rtol=1e-6, atol=1e-7)
    assert sa["step"] == sb["step"] == 6 and sb["ema"]["updates"] == 6


def test_gan_and_lpips_terms(full_runs):
    records = train_records(full_runs["root"] / "straight")
    for step, r in records.items():
        for key in ("l2", "lpips", "d_loss", "d_real", "d_fake", "loss"):
            assert r[key] is not None and np.isfinite(r[key]), (step, key)
        if step <= 2:
            assert "gan" not in r, f"generator GAN term present at step {step} before loss.gan_start"
        else:
            assert r["gan"] is not None and np.isfinite(r["gan"])
    # weighted sum: loss = 1.0 l2 + 2.0 lpips + 0.1 gan
    r = records[6]
    assert r["loss"] == pytest.approx(r["l2"] + 2.0 * r["lpips"] + 0.1 * r["gan"], rel=1e-4)


def test_outputs_and_official_checkpoint_holds_the_ema(full_runs):
    out = full_runs["root"] / "straight"
    result = full_runs["straight"]
    assert result.predictor == out / PREDICTOR_FILE
    model = NoisePredictor.from_checkpoint(out / PREDICTOR_FILE)
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(out))
    loaded = model.state_dict()
    assert list(loaded) == list(state["ema"]["model"])
    for k, v in state["ema"]["model"].items():
        assert torch.equal(loaded[k], v), k
    assert any(not torch.equal(state["predictor"][k], v) for k, v in state["ema"]["model"].items())
    assert all(k.startswith("encoder.") for k in torch.load(out / PREDICTOR_FILE, weights_only=True))
    val = read_log(out, "val")
    assert val and val[-1]["step"] == 6 and np.isfinite(val[-1]["psnr_y"]) and 0 < val[-1]["ssim_y"] <= 1
    assert len(list((out / "samples").glob("step_00000006_*.png"))) == 1
    assert list((out / "tb").iterdir()), "no TensorBoard event file"
    assert (out / "config.yaml").is_file()


def test_refuses_to_overwrite_a_run_without_resume(full_runs, tiny_base):
    with pytest.raises(TrainError, match="--resume"):
        Trainer(load_config(None, full_runs["over"]), full_runs["root"] / "straight", progress=False, base=tiny_base)


def test_init_from_checkpoint_starts_from_those_weights(full_runs, photos, tiny_base, tmp_path):
    pth = full_runs["root"] / "straight" / PREDICTOR_FILE
    over = tiny(photos, **{"model.init": str(pth), "train.max_steps": 0})
    trainer = Trainer(load_config(None, over), tmp_path / "ft", progress=False, base=tiny_base)
    try:
        ref = NoisePredictor.from_checkpoint(pth).state_dict()
        for k, v in trainer.raw.state_dict().items():
            assert torch.equal(v, ref[k]), k
    finally:
        trainer.close()


# ----------------------------------------------------------------------------------------------- CLI
def test_cli_config_overrides_and_resume(photos, tmp_path, capsys):
    from invsr_train.cli import main

    cfg = tiny_config_file(tmp_path / "tiny.yaml", "max_steps: 50, batch_size: 4, seed: 5")
    out = tmp_path / "out"
    args = ["--data", str(photos), "--out", str(out), "--base", "synthetic:tiny", "--config", str(cfg), "--no-progress"]
    assert main(args + ["--max-steps", "1", "--batch-size", "2", "--set", "train.seed=9"]) == 0
    printed = capsys.readouterr().out
    assert "steps: 1" in printed and "noise_predictor.pth" in printed
    used = load_config(out / "config.yaml")
    assert used.train.max_steps == 1 and used.train.batch_size == 2  # flags beat the file
    assert used.train.micro_batch == 1 and used.data.crop == 64  # the file beats the defaults
    assert used.train.seed == 9 and used.model.base == "synthetic:tiny"
    assert main(args + ["--max-steps", "1"]) == 2  # existing run, no --resume
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--max-steps", "2", "--batch-size", "2", "--resume"]) == 0
    assert sorted(train_records(out)) == [1, 2]


@pytest.mark.parametrize("kind", ["missing", "empty", "only-corrupt"])
def test_cli_bad_data_folder_is_one_error_line(tmp_path, capsys, kind):
    from invsr_train.cli import main

    data = tmp_path / "data"
    if kind != "missing":
        data.mkdir()
    if kind == "only-corrupt":
        (data / "x.jpg").write_bytes(b"nope")
    code = main(["--data", str(data), "--out", str(tmp_path / "out"), "--base", "synthetic:tiny", "--no-progress"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("invsr-train: error:")]
    assert code == 2 and len(err) == 1
    assert str(data) in err[0] or "could be read" in err[0]


# ------------------------------------------------------------------------------- export + runtime
def test_trained_predictor_exports_and_runs(full_runs, tmp_path):
    export_cli = pytest.importorskip("invsr_export.cli", reason="invsr_export.cli is not there yet")
    runtime_cli = pytest.importorskip("invsr_runtime.cli", reason="invsr_runtime.cli is not there yet")
    pytest.importorskip("onnx")
    from invsr_runtime.imageio import load_rgb, save_rgb
    from invsr_train.samples import sample_lr

    engines = tmp_path / "engines"
    pth = full_runs["root"] / "straight" / PREDICTOR_FILE
    argv = ["--out", str(engines), "--base", "synthetic:tiny", "--predictor", str(pth), "--precision", "fp32",
            "--backend", "onnxruntime", "--validate-tiles", "1", "--validate-steps", "1"]
    assert exit_code(export_cli.main, argv) == 0
    img = tmp_path / "lr.png"
    save_rgb(sample_lr("coffee", 8)[:24, :40], img)
    out = tmp_path / "sr"
    assert exit_code(runtime_cli.main, [str(engines), str(img), "-o", str(out)]) == 0
    results = [p for p in out.rglob("*") if p.is_file()] if out.is_dir() else [out]
    assert results, "invsr-run wrote nothing"
    assert load_rgb(results[0]).shape[:2] == (96, 160)

"""Hostile-but-realistic inputs for `invsr-export`, `invsr-train` and `invsr-bench` (issue 10, items 4, 5, 7, 9).

Every bad option or input is one line and exit 2 *before* any heavy work; tiny calibration photos
neither hang nor break an export; a corrupt newest checkpoint does not stop `--resume`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from test_inputs_hardening import _subprocess_cli, _unprivileged_prefix  # noqa: E402  (tests/ is on sys.path)
from test_train import exit_code, tiny, train, write_photos  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_EXPORT = ["--base", "synthetic:tiny", "--predictor", "synthetic", "--precision", "fp32", "--no-validate"]


def _error_lines(err: str, prefix: str = "error: ") -> list[str]:
    return [line for line in err.splitlines() if line.startswith(prefix)]


# --------------------------------------------------------------------------------- calibration photos
@pytest.mark.timeout(120)
def test_calibration_photos_from_1x1_up_work_or_are_skipped(tmp_path, caplog):
    from invsr_export.photos import PhotoError, photo_lr_tiles

    rng = np.random.default_rng(0)
    for name, (h, w) in {"a_1x1.png": (1, 1), "b_2x3.png": (2, 3), "c_4x4.png": (4, 4), "d_5x7.png": (5, 7)}.items():
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(tmp_path / name)
    with caplog.at_level(logging.WARNING, logger="invsr_export.photos"):
        tiles = photo_lr_tiles(16, 4, tmp_path)  # LR images of 1x1: padded up to the tile, no endless loop
    assert tiles.shape == (4, 3, 16, 16) and np.isfinite(tiles).all()
    skipped = sorted(r.getMessage().split(":")[0] for r in caplog.records)
    assert skipped == ["a_1x1.png", "b_2x3.png"]
    only_tiny = tmp_path / "tiny"
    only_tiny.mkdir()
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(only_tiny / "x.png")
    with pytest.raises(PhotoError, match="no calibration photo is at least 4x4 px"):
        photo_lr_tiles(16, 1, only_tiny)


# ------------------------------------------------------------------------------------ export options
@pytest.mark.parametrize("tile, ok", [(16, True), (256, True), (2048, False), (272, False), (33, False), (0, False)])
def test_export_tile_is_bounded(tmp_path, tile, ok):
    from invsr_export.exporter import ExportOptionError, ExportOptions, check_options

    opts = ExportOptions(out=tmp_path / "out", tile=tile)
    if ok:
        assert check_options(opts) == tile
    else:
        with pytest.raises(ExportOptionError, match=r"--tile must be a multiple of 16 from 16 to 256 .* 4th power"):
            check_options(opts)


@pytest.mark.parametrize("batch, ok", [(1, True), (32, True), (0, False), (33, False), (4096, False)])
def test_export_batch_is_bounded(tmp_path, batch, ok):
    from invsr_export.exporter import ExportOptionError, ExportOptions, check_options

    opts = ExportOptions(out=tmp_path / "out", batch=batch)
    if ok:
        check_options(opts)
    else:
        with pytest.raises(ExportOptionError, match=r"--batch must be 1\.\.32, got .*export memory grows"):
            check_options(opts)


@pytest.mark.parametrize("flag, value, text", [
    ("--opset", "5", "--opset must be 19.."), ("--opset", "18", "--opset must be 19.."),
    ("--opset", "99", "--opset must be 19.."), ("--gate-db", "nan", "--gate-db must be a finite PSNR"),
    ("--gate-db", "inf", "--gate-db must be a finite PSNR"), ("--gate-db", "-3", "--gate-db must be a finite PSNR"),
    ("--tile", "2048", "--tile must be a multiple of 16 from 16 to 256"), ("--batch", "1000", "--batch must be 1..32"),
])
def test_export_junk_options_one_line_exit_2_before_any_work(tmp_path, capsys, flag, value, text):
    from invsr_export.cli import main
    from invsr_export.onnx_export import max_opset

    code = main(["--out", str(tmp_path / "out"), *TINY_EXPORT, flag, value])
    lines = _error_lines(capsys.readouterr().err)
    assert code == 2 and len(lines) == 1 and text in lines[0], lines
    if flag == "--opset":
        assert f"19..{max_opset()}" in lines[0] and max_opset() >= 19
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return write_photos(tmp_path_factory.mktemp("photos"), size=96, corrupt=False)


def _train_cli(capsys, *argv: str) -> tuple[int, str, list[str]]:
    from invsr_train.cli import main

    code = exit_code(main, ["--base", "synthetic:tiny", "--no-progress", "--set", "data.workers=0",
                            "--set", "data.crop=32", "--set", "loss.lpips_weight=0", "--batch-size", "1",
                            "--micro-batch", "1", *argv])
    out, err = capsys.readouterr()
    return code, out, _error_lines(err, "invsr-train: error: ")


def test_train_on_truncated_pngs_is_one_line(photos, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for png in sorted(photos.glob("*.png"))[:3]:
        raw = png.read_bytes()
        (data / png.name).write_bytes(raw[: len(raw) // 2])  # header readable, pixels cut off
    code, _, errors = _train_cli(capsys, "--data", str(data), "--out", str(tmp_path / "run"), "--max-steps", "1")
    assert code == 2 and len(errors) == 1
    assert "training images could be decoded" in errors[0] and "truncated" in errors[0]


def test_train_out_that_is_a_file_is_one_line(photos, tmp_path, capsys):
    (tmp_path / "taken").write_text("keep me")
    code, _, errors = _train_cli(capsys, "--data", str(photos), "--out", str(tmp_path / "taken"), "--max-steps", "1")
    assert code == 2 and errors == [f"invsr-train: error: {tmp_path / 'taken'}: exists and is not a folder; "
                                    "pass a writable folder to --out"]
    assert (tmp_path / "taken").read_text() == "keep me"


@pytest.mark.parametrize("device, text", [("cuda", "this machine has"), ("cuda:7", "this machine has"),
                                          ("banana", "is not a device")])
def test_train_device_it_does_not_have_is_one_line(photos, tmp_path, capsys, device, text):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has the CUDA devices asked for")
    code, _, errors = _train_cli(capsys, "--data", str(photos), "--out", str(tmp_path / "run"), "--device", device)
    assert code == 2 and len(errors) == 1 and text in errors[0] and "--device" in errors[0]


def test_train_max_steps_0_reports_no_rate(photos, tmp_path, capsys):
    code, out, errors = _train_cli(capsys, "--data", str(photos), "--out", str(tmp_path / "run"), "--max-steps", "0")
    assert code == 0 and not errors
    assert "steps: 0 (0 this run)" in out and "nan" not in out


def test_resume_falls_back_from_a_corrupt_newest_checkpoint(photos, tiny_base, tmp_path, caplog):
    from invsr_train import checkpointing as ckpt

    over = tiny(photos, **{"data.crop": 32, "loss.lpips_weight": 0.0, "loss.gan_weight": 0.0,
                           "train.batch_size": 1, "train.ckpt_every": 1, "train.keep_checkpoints": 3,
                           "train.max_steps": 2})
    train(over, tmp_path, tiny_base)
    newest = ckpt.checkpoint_path(tmp_path, 2)
    newest.write_bytes(newest.read_bytes()[:1000])  # e.g. the disk filled up
    with caplog.at_level(logging.WARNING, logger="invsr_train.trainer"):
        result = train({**over, "train.max_steps": 3}, tmp_path, tiny_base, resume=True)
    assert result.step == 3 and result.steps_run == 2  # continued from step 1
    assert any("cannot resume from" in r.getMessage() and "step_00000002.pt" in r.getMessage() for r in caplog.records)
    ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path, 2))  # step 2 was trained again and saved whole


def test_resume_with_only_corrupt_checkpoints_is_one_line(photos, tiny_base, tmp_path):
    from invsr_train import checkpointing as ckpt
    from invsr_train.builders import TrainError

    path = ckpt.checkpoint_path(tmp_path, 1)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 not a checkpoint")
    over = tiny(photos, **{"data.crop": 32, "train.max_steps": 2})
    with pytest.raises(TrainError, match=r"cannot resume: none of the 1 checkpoints .* loads"):
        train(over, tmp_path, tiny_base, resume=True)
    assert path.read_bytes() == b"PK\x03\x04 not a checkpoint"  # left as it was


# ---------------------------------------------------------------------------------------- benchmark
@pytest.mark.parametrize("extra, text", [
    (["--tile", "33"], "--tile must be a multiple of 16 from 16 to 256"),
    (["--batch", "1,64"], "--batch must be 1..32"),
])
def test_bench_bad_tile_or_batch_fails_early(tmp_path, capsys, extra, text):
    from benchmarks.cli import main

    code = main(["--base", "synthetic:tiny", "--backends", "torch-eager", "--precisions", "fp32",
                 "--out", str(tmp_path / "report"), *extra])
    lines = _error_lines(capsys.readouterr().err)
    assert code == 2 and len(lines) == 1 and text in lines[0]
    assert not (tmp_path / "report").exists()


def test_bench_out_that_is_a_file_or_read_only(tmp_path, capsys):
    from benchmarks.cli import main

    (tmp_path / "taken").write_text("keep me")
    code = main(["--base", "synthetic:tiny", "--out", str(tmp_path / "taken")])
    assert code == 2 and _error_lines(capsys.readouterr().err) == [
        f"error: --out {tmp_path / 'taken'}: exists and is not a folder; pass a writable report folder"]
    prefix = _unprivileged_prefix()
    if prefix is None:
        pytest.skip("running as root without setpriv: a read-only folder cannot be made")
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        res = _subprocess_cli(["--base", "synthetic:tiny", "--out", str(tmp_path / "ro" / "report")], prefix=prefix,
                              module="benchmarks.cli")
    finally:
        (tmp_path / "ro").chmod(0o755)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == (f"error: --out {tmp_path / 'ro' / 'report'}: cannot be created: "
                                  f"{tmp_path / 'ro'} is not writable; pass a writable report folder")
    assert os.listdir(tmp_path / "ro") == []


@pytest.mark.parametrize("flag", ["--calib-tiles", "--validate-tiles"])
@pytest.mark.parametrize("count, ok", [(1, True), (1024, True), (0, False), (100_000, False)])
def test_probe_photo_tile_counts_are_bounded(tmp_path, flag, count, ok):
    from invsr_export.exporter import ExportOptionError, ExportOptions, check_options

    opts = ExportOptions(out=tmp_path / "out", **{flag[2:].replace("-", "_"): count})
    if ok:
        check_options(opts)
    else:
        with pytest.raises(ExportOptionError, match=rf"{flag} must be 1\.\.1024, got {count}: .* held in memory"):
            check_options(opts)


def test_training_outputs_respect_the_umask(photos, tiny_base, tmp_path):
    """Checkpoints, noise_predictor.pth and config.yaml get 0666 & ~umask, like any file the user writes."""
    import stat

    from invsr_train import checkpointing as ckpt
    from invsr_train.trainer import PREDICTOR_FILE

    over = tiny(photos, **{"data.crop": 32, "loss.lpips_weight": 0.0, "loss.gan_weight": 0.0,
                           "train.batch_size": 1, "train.max_steps": 1})
    mask = os.umask(0o022)
    try:
        train(over, tmp_path, tiny_base)
    finally:
        os.umask(mask)
    for path in (ckpt.checkpoint_path(tmp_path, 1), tmp_path / PREDICTOR_FILE, tmp_path / "config.yaml"):
        assert oct(stat.S_IMODE(path.stat().st_mode)) == oct(0o644), path.name

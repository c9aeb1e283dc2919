"""`invsr-run` on a toy engine folder: image formats, errors, skip / overwrite, determinism."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from invsr_runtime import cli
from invsr_runtime.imageio import save_atomic

from test_runtime_toyengine import build_toy_engine  # noqa: E402  (tests/ is on sys.path)


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Path:
    return build_toy_engine(tmp_path_factory.mktemp("toy") / "engine", tile=16, batch=2)


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB uint8 test picture."""
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    img = np.stack([x / max(w - 1, 1), y / max(h - 1, 1), 0.5 + 0.3 * np.sin(x / 3.0 + y / 5.0)], axis=2)
    return (np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1) * 255).astype(np.uint8)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.run([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error: ")]


# -------------------------------------------------------------------------------------------- formats
FORMAT_CASES = {
    # name: (make image, save kwargs, expected output mode)
    "gray.png": (lambda: Image.fromarray(_photo(20, 24)).convert("L"), {}, "L"),
    "rgba.png": (lambda: Image.fromarray(np.dstack([_photo(20, 24), np.full((20, 24), 128, np.uint8)]), "RGBA"), {}, "RGBA"),
    "la.png": (lambda: Image.fromarray(_photo(20, 24)).convert("LA"), {}, "LA"),
    "palette.png": (lambda: Image.fromarray(_photo(20, 24)).convert("P"), {"transparency": 0}, "RGBA"),
    "palette_opaque.gif": (lambda: Image.fromarray(_photo(20, 24)).convert("P"), {}, "RGB"),
    "gray16_png.png": (lambda: Image.fromarray((np.arange(480, dtype=np.uint16).reshape(20, 24) * 130)), {}, "I;16"),
    "cmyk.jpg": (lambda: Image.fromarray(_photo(20, 24)).convert("CMYK"), {"quality": 95}, "RGB"),
    "photo_webp.webp": (lambda: Image.fromarray(_photo(20, 24)), {"lossless": True}, "RGB"),
    "gray16_tif.tif": (lambda: Image.fromarray((np.arange(480, dtype=np.uint16).reshape(20, 24) * 130)), {}, "I;16"),
    "photo_bmp.bmp": (lambda: Image.fromarray(_photo(20, 24)), {}, "RGB"),
    "tiny.png": (lambda: Image.fromarray(_photo(1, 1)), {}, "RGB"),
    "wide.png": (lambda: Image.fromarray(_photo(3, 200)), {}, "RGB"),
}


@pytest.fixture(scope="module")
def format_run(engine, tmp_path_factory):
    """All format cases in one CLI call (the engine session is opened once)."""
    src = tmp_path_factory.mktemp("formats")
    for name, (make, kwargs, _) in FORMAT_CASES.items():
        make().save(src / name, **kwargs)
    out = src / "out"
    code = cli.run([str(engine), str(src), "-o", str(out)])
    return src, out, code


@pytest.mark.parametrize("name", sorted(FORMAT_CASES))
def test_format_mode_and_size(format_run, name):
    src, out, code = format_run
    assert code == 0
    with Image.open(src / name) as im:
        w, h = im.size
    with Image.open(out / (Path(name).stem + ".png")) as res:
        assert res.format == "PNG"
        assert res.mode == FORMAT_CASES[name][2]
        assert res.size == (4 * w, 4 * h)


def test_16bit_kept(format_run):
    _, out, _ = format_run
    for name in ("gray16_png.png", "gray16_tif.png"):
        arr = np.asarray(Image.open(out / name))
        assert arr.dtype == np.uint16 and arr.max() > 255


def test_alpha_upscaled_separately(engine, tmp_path, capsys):
    alpha = np.zeros((20, 24), np.uint8)
    alpha[:, 12:] = 255
    Image.fromarray(np.dstack([_photo(20, 24), alpha]), "RGBA").save(tmp_path / "a.png")
    code, _, _ = run_cli(capsys, engine, tmp_path / "a.png", "-o", tmp_path / "out")
    assert code == 0
    a = np.asarray(Image.open(tmp_path / "out" / "a.png"))[..., 3]
    assert a.shape == (80, 96)
    assert a[:, :40].max() == 0 and a[:, 56:].min() == 255  # hard edge stays where it was


def test_exif_orientation_applied(engine, tmp_path, capsys):
    from invsr_runtime import Upscaler

    im = Image.fromarray(_photo(20, 36))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    im.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    code, _, _ = run_cli(capsys, engine, tmp_path / "rot.jpg", "-o", tmp_path / "out")
    assert code == 0
    res = Image.open(tmp_path / "out" / "rot.png")
    assert res.size == (80, 144)  # displayed 20 wide x 36 high, times 4
    expected = Upscaler(engine).upscale(ImageOps.exif_transpose(Image.open(tmp_path / "rot.jpg")))
    np.testing.assert_array_equal(np.asarray(res), np.asarray(expected))


def test_jpeg_output_flattens_alpha_with_warning(engine, tmp_path, capsys):
    Image.fromarray(np.dstack([_photo(20, 24), np.full((20, 24), 100, np.uint8)]), "RGBA").save(tmp_path / "a.png")
    code, _, err = run_cli(capsys, engine, tmp_path / "a.png", "-o", tmp_path / "out", "--format", "jpg")
    assert code == 0
    res = Image.open(tmp_path / "out" / "a.jpg")
    assert res.format == "JPEG" and res.mode == "RGB" and res.size == (96, 80)
    assert "warning:" in err and "alpha" in err


def test_webp_output(engine, tmp_path, capsys):
    gray = np.asarray(Image.fromarray(_photo(20, 24)).convert("L"))
    Image.fromarray(np.dstack([gray, np.full_like(gray, 90)]), "LA").save(tmp_path / "g.png")
    code, _, _ = run_cli(capsys, engine, tmp_path / "g.png", "-o", tmp_path / "out", "--format", "webp")
    assert code == 0
    res = Image.open(tmp_path / "out" / "g.webp")
    assert res.format == "WEBP" and res.mode == "RGBA" and res.size == (96, 80)


def test_recursive_mirrors_subfolders_and_ignores_others(engine, tmp_path, capsys):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    Image.fromarray(_photo(8, 8)).save(tmp_path / "in" / "a.png")
    Image.fromarray(_photo(8, 8)).save(tmp_path / "in" / "sub" / "b.jpg")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    Image.fromarray(_photo(8, 8)).save(tmp_path / "in" / ".hidden.png")
    code, out, _ = run_cli(capsys, engine, tmp_path / "in", "-o", tmp_path / "out")
    assert code == 0 and (tmp_path / "out" / "a.png").is_file() and not (tmp_path / "out" / "sub").exists()
    code, out, _ = run_cli(capsys, engine, tmp_path / "in", "-o", tmp_path / "out", "--recursive")
    assert code == 0 and (tmp_path / "out" / "sub" / "b.png").is_file()
    assert "done 1, skipped 1, failed 0" in out


# --------------------------------------------------------------------------------------------- errors
def _make_bad_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, expected words in the message)."""
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "good.png"
    Image.fromarray(_photo(20, 24)).save(good)
    data = good.read_bytes()
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "notes.txt").write_text("hello, not an image\n")
    return {
        "corrupt": (folder / "corrupt.png", "corrupt"),
        "empty": (folder / "empty.png", "empty file"),
        "truncated": (folder / "truncated.png", "truncated"),
        "text": (folder / "notes.txt", "not an image"),
        "missing": (folder / "missing.png", "no such file"),
    }


def test_bad_inputs_reported_others_done(engine, tmp_path, capsys):
    bad = _make_bad_files(tmp_path / "in")
    out = tmp_path / "out"
    args = [engine, tmp_path / "in" / "good.png"] + [p for p, _ in bad.values()] + ["-o", out]
    code, stdout, err = run_cli(capsys, *args)
    assert code == 1
    assert "Traceback" not in err
    errors = _error_lines(err)
    assert len(errors) == len(bad)
    for path, words in bad.values():
        [line] = [e for e in errors if str(path) in e]
        assert words in line
    assert "done 1, skipped 0, failed 5" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]  # no partial files, no .part left


@pytest.mark.parametrize("argv_tail, words", [
    (["--steps", "7"], "--steps must be 1..5"),
    (["--steps", "0"], "--steps must be 1..5"),
    (["--timesteps", "300"], "out of range"),
    (["--timesteps", "100,200"], "strictly decreasing"),
    (["--timesteps", "200,abc"], "not an integer"),
    (["--timesteps", "200,100", "--steps", "1"], "steps=1"),
    (["--color-fix", "sepia"], "--color-fix"),
    (["--format", "gif"], "--format"),
    (["--steps", "two"], "invalid int"),
])
def test_usage_errors(engine, tmp_path, capsys, argv_tail, words):
    Image.fromarray(_photo(8, 8)).save(tmp_path / "a.png")
    code, _, err = run_cli(capsys, engine, tmp_path / "a.png", "-o", tmp_path / "out", *argv_tail)
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith("error: ") and words in line
    assert not (tmp_path / "out").exists()


def test_output_folder_is_a_file(engine, tmp_path, capsys):
    Image.fromarray(_photo(8, 8)).save(tmp_path / "a.png")
    (tmp_path / "out").write_text("a file")
    code, _, err = run_cli(capsys, engine, tmp_path / "a.png", "-o", tmp_path / "out")
    assert code == 2 and "not a folder" in err


def test_not_an_engine_folder(tmp_path, capsys):
    Image.fromarray(_photo(8, 8)).save(tmp_path / "a.png")
    code, _, err = run_cli(capsys, tmp_path, tmp_path / "a.png", "-o", tmp_path / "out")
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith(f"error: {tmp_path}") and "not an engine folder" in line


def test_newer_engine_format(engine, tmp_path, capsys):
    import shutil

    newer = tmp_path / "newer"
    shutil.copytree(engine, newer)
    manifest = json.loads((newer / "manifest.json").read_text())
    manifest["format_version"] = 99
    (newer / "manifest.json").write_text(json.dumps(manifest))
    Image.fromarray(_photo(8, 8)).save(tmp_path / "a.png")
    code, _, err = run_cli(capsys, newer, tmp_path / "a.png", "-o", tmp_path / "out")
    assert code == 2
    [line] = err.strip().splitlines()
    assert "newer" in line and "manifest.json" in line


def test_tensorrt_unavailable_is_a_clean_engine_error(engine, tmp_path, capsys):
    Image.fromarray(_photo(8, 8)).save(tmp_path / "a.png")
    code, _, err = run_cli(capsys, engine, tmp_path / "a.png", "-o", tmp_path / "out", "--backend", "tensorrt")
    assert code == 2
    [line] = err.strip().splitlines()
    assert line.startswith("error: ") and "onnxruntime" in line


def test_entry_point_exit_codes_without_traceback(engine, tmp_path):
    Image.fromarray(_photo(8, 8)).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"nope")
    cmd = [sys.executable, "-c", "from invsr_runtime.cli import main; main()"]
    res = subprocess.run(cmd + [str(engine), str(tmp_path / "good.png"), str(tmp_path / "bad.png"),
                                "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr
    assert res.stderr.strip() == f"error: {tmp_path / 'bad.png'}: not an image (unknown or unsupported format)"
    assert res.stdout.startswith("done 1, skipped 0, failed 1")
    res = subprocess.run(cmd + [str(engine), str(tmp_path / "good.png"), "-o", str(tmp_path / "o2"), "--steps", "9"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    im = Image.fromarray(_photo(8, 8))

    def broken_save(fh, **kwargs):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(im, "save", broken_save)
    with pytest.raises(OSError):
        save_atomic(im, tmp_path / "x.png", format="PNG")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- skip / overwrite
def test_skip_existing_and_overwrite(engine, tmp_path, capsys):
    Image.fromarray(_photo(20, 24)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    assert run_cli(capsys, engine, tmp_path / "a.png", "-o", out, "--seed", "1")[0] == 0
    first = (out / "a.png").read_bytes()
    code, stdout, _ = run_cli(capsys, engine, tmp_path / "a.png", "-o", out, "--seed", "2")
    assert code == 0 and "skipped 1" in stdout and (out / "a.png").read_bytes() == first
    code, stdout, _ = run_cli(capsys, engine, tmp_path / "a.png", "-o", out, "--seed", "2", "--overwrite")
    assert code == 0 and "done 1" in stdout and (out / "a.png").read_bytes() != first


def test_never_overwrites_an_input(engine, tmp_path, capsys):
    Image.fromarray(_photo(20, 24)).save(tmp_path / "a.png")
    before = (tmp_path / "a.png").read_bytes()
    for extra in ([], ["--overwrite"]):
        code, _, err = run_cli(capsys, engine, tmp_path / "a.png", "-o", tmp_path, *extra)
        assert code == 1 and "would overwrite an input" in err
        assert (tmp_path / "a.png").read_bytes() == before


def test_two_inputs_same_output_name(engine, tmp_path, capsys):
    Image.fromarray(_photo(8, 8)).save(tmp_path / "a.png")
    Image.fromarray(_photo(8, 8)).save(tmp_path / "a.jpg")
    code, stdout, err = run_cli(capsys, engine, tmp_path / "a.jpg", tmp_path / "a.png", "-o", tmp_path / "out")
    assert code == 1 and "done 1" in stdout and "already written from" in err


def test_same_seed_same_output(engine, tmp_path, capsys):
    Image.fromarray(_photo(40, 30)).save(tmp_path / "a.png")
    for name, seed in (("o1", 5), ("o2", 5), ("o3", 6)):
        assert run_cli(capsys, engine, tmp_path / "a.png", "-o", tmp_path / name, "--seed", seed, "--steps", 2)[0] == 0
    one, two, three = ((tmp_path / n / "a.png").read_bytes() for n in ("o1", "o2", "o3"))
    assert one == two and one != three


# ------------------------------------------------------------------------------------ RunOptions
def test_every_flag_is_a_run_option():
    """parse_options maps every argparse destination onto a RunOptions field (nothing dropped on the way)."""
    from dataclasses import fields

    from invsr_runtime.run_options import RunOptions

    from invsr_runtime.ray_job import RayOptions

    dests = {a.dest for a in cli.build_parser()._actions if a.dest != "help"}
    # every flag is a RunOptions field, or a Ray setting (RayOptions, or --ray itself)
    assert dests - set(cli.RAY_FLAGS) == {f.name for f in fields(RunOptions)}
    assert set(cli.RAY_FLAGS) - {"ray"} <= {f.name for f in fields(RayOptions)}
    opts = cli.parse_options(["E", "a.png", "b", "-o", "O", "--steps", "2", "--color-fix", "wavelet",
                              "--tile-batch", "3", "--format", "webp", "--recursive"])
    assert opts == RunOptions(engine_dir=Path("E"), out=Path("O"), inputs=(Path("a.png"), Path("b")), steps=2,
                              color_fix="wavelet", tile_batch=3, format="webp", recursive=True)


@pytest.mark.parametrize("values, option", [
    ({"steps": 6}, "steps"), ({"seed": -1}, "seed"), ({"tile_batch": 0}, "tile_batch"),
    ({"max_pixels": -1}, "max_pixels"), ({"color_fix": "sepia"}, "color_fix"), ({"backend": "cuda"}, "backend"),
    ({"format": "gif"}, "format"), ({"colour_fix": "none"}, "colour_fix"),
])
def test_run_options_refuse_bad_values_without_argparse(values, option):
    from invsr_runtime.run_options import RunOptionError, RunOptions

    with pytest.raises(RunOptionError) as info:
        RunOptions.from_mapping({"engine_dir": "E", "out": "O", **values})
    assert info.value.option == option and str(info.value).startswith(option)


def test_processing_takes_run_options_built_without_argparse(engine, tmp_path, capsys):
    """What a service or a Ray job does: RunOptions by hand -> the same files as invsr-run writes."""
    from invsr_runtime.run_options import RunOptions
    from invsr_runtime.upscaler import Upscaler

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_photo(20, 24)).save(src / "a.png")
    opts = RunOptions(engine_dir=engine, out=tmp_path / "api", inputs=(src,), seed=3, color_fix="ycbcr")
    tally = cli.Tally()
    with Upscaler(opts.engine_dir, tile_batch=opts.tile_batch) as up:
        cli.process(cli.plan_jobs(opts.inputs, opts.out, opts.format, opts.recursive), up, opts,
                    up.schedule(opts.steps, opts.timesteps), tally)
    assert (tally.done, tally.failed) == (1, 0)
    code, _, _ = run_cli(capsys, engine, src, "-o", tmp_path / "cli", "--seed", 3, "--color-fix", "ycbcr")
    assert code == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "api" / "a.png")),
                          np.asarray(Image.open(tmp_path / "cli" / "a.png")))

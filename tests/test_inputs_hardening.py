"""Hostile-but-realistic inputs for `invsr-run` and the Python API (issue 10, items 5, 8, 9).

Each test names the class of defect it guards: warnings as lines, multi-frame files, non-finite pixels,
images too large for memory, odd output folders, duplicate / clashing inputs, junk API arguments.
"""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_runtime_cli import _photo, run_cli  # noqa: E402  (tests/ is on sys.path)
from test_runtime_toyengine import build_toy_engine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Path:
    return build_toy_engine(tmp_path_factory.mktemp("toy") / "engine", tile=16, batch=2)


@pytest.fixture(scope="module")
def upscaler(engine):
    from invsr_runtime import Upscaler

    with Upscaler(engine) as up:
        yield up


def _subprocess_cli(args: list, prelude: str = "", prefix: list[str] | None = None,
                    module: str = "invsr_runtime.cli") -> subprocess.CompletedProcess:
    """A CLI (default invsr-run) in a fresh interpreter (real stderr, real warnings machinery)."""
    code = f"import sys\n{prelude}\nfrom {module} import main\nsys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([*(prefix or []), sys.executable, "-c", code, *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120)


def _raw_warning_text(err: str) -> bool:
    """Python's own warning format: 'file.py:123: UserWarning: ...' followed by the source line."""
    return any(("Warning: " in line and ".py:" in line) or line.strip().startswith("warnings.warn(")
               for line in err.splitlines())


# -------------------------------------------------------------------------------- warnings as lines
def test_pillow_warnings_become_one_line_per_file(engine, tmp_path):
    """DecompressionBombWarning and broken-EXIF UserWarnings: `warning: <file>: ...`, never raw."""
    Image.fromarray(_photo(12, 12)).save(tmp_path / "bomb.png")  # 144 px: over a limit of 100, under 2x
    im = Image.fromarray(_photo(8, 8))
    exif = im.getexif()
    exif[0x0112] = 6
    exif[0x010E] = "x" * 100
    im.save(tmp_path / "exif.jpg", exif=exif.tobytes()[:-60])  # tag data cut off
    res = _subprocess_cli([engine, tmp_path / "bomb.png", tmp_path / "exif.jpg", "-o", tmp_path / "out"],
                          prelude="import PIL.Image; PIL.Image.MAX_IMAGE_PIXELS = 100")
    assert res.returncode == 0, res.stderr
    assert not _raw_warning_text(res.stderr), res.stderr
    lines = res.stderr.splitlines()
    assert any(line.startswith(f"warning: {tmp_path / 'bomb.png'}: ") and "exceeds limit" in line for line in lines)
    assert any(line.startswith(f"warning: {tmp_path / 'exif.jpg'}: ") and "Tag data" in line for line in lines)


def test_warning_lines_context_nests_and_restores():
    import warnings

    from invsr_runtime.warning_lines import warnings_as_lines

    lines: list[str] = []
    with warnings_as_lines(write=lines.append):
        with warnings_as_lines("a.png", write=lines.append):
            with np.errstate(divide="warn"):
                np.float32(1.0) / np.float32(0.0)  # numpy RuntimeWarning
        warnings.warn("after the image", UserWarning, stacklevel=1)
    assert lines == ["warning: a.png: divide by zero encountered in scalar divide", "warning: after the image"]
    assert warnings.showwarning.__module__ == "warnings"  # restored


# ------------------------------------------------------------------------------------ multi-frame
def _frames_of(path: Path) -> list[np.ndarray]:
    with Image.open(path) as im:
        out = []
        for k in range(getattr(im, "n_frames", 1)):
            im.seek(k)
            out.append(np.asarray(im.convert("RGB")))
        return out


def test_animated_gif_every_frame_upscaled_into_one_file(engine, upscaler, tmp_path, capsys):
    frames = [Image.fromarray(_photo(10, 12, seed=k)).convert("P", palette=Image.Palette.ADAPTIVE) for k in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=[70, 80, 90], loop=0)
    code, _, err = run_cli(capsys, engine, tmp_path / "anim.gif", "-o", tmp_path / "out")
    assert code == 0, err
    got = _frames_of(tmp_path / "out" / "anim.png")
    assert len(got) == 3
    with Image.open(tmp_path / "anim.gif") as src:
        for k in range(3):
            src.seek(k)
            want = np.asarray(upscaler.upscale(src.convert("RGB")))
            np.testing.assert_array_equal(got[k], want)
    with Image.open(tmp_path / "out" / "anim.png") as res:
        assert res.info.get("loop") == 0
        durations = []
        for k in range(3):
            res.seek(k)
            durations.append(res.info.get("duration"))
    assert durations == [70, 80, 90]


def test_multipage_tiff_pages_kept_and_jpeg_warns(engine, tmp_path, capsys):
    pages = [Image.fromarray(_photo(9, 11, seed=k)) for k in range(2)]
    pages[0].save(tmp_path / "scan.tif", save_all=True, append_images=pages[1:])
    code, _, err = run_cli(capsys, engine, tmp_path / "scan.tif", "-o", tmp_path / "out", "--format", "webp")
    assert code == 0, err
    webp = _frames_of(tmp_path / "out" / "scan.webp")
    assert len(webp) == 2 and webp[0].shape == (36, 44, 3) and not np.array_equal(webp[0], webp[1])
    code, _, err = run_cli(capsys, engine, tmp_path / "scan.tif", "-o", tmp_path / "jpg", "--format", "jpg")
    assert code == 0
    assert f"warning: {tmp_path / 'scan.tif'}: --format jpg holds one frame: upscaled the first of 2" in err
    assert len(_frames_of(tmp_path / "jpg" / "scan.jpg")) == 1


# ----------------------------------------------------------------------------------- non-finite
def test_nan_float_tiff_refused_with_one_line(engine, tmp_path, capsys):
    data = np.full((8, 8), 0.5, np.float32)
    data[2, 3], data[4, 4] = np.nan, np.inf
    Image.fromarray(data, mode="F").save(tmp_path / "nan.tif")
    code, out, err = run_cli(capsys, engine, tmp_path / "nan.tif", "-o", tmp_path / "out")
    assert code == 1 and "failed 1" in out
    assert err.strip().splitlines() == [
        f"error: {tmp_path / 'nan.tif'}: 2 of 64 float samples are NaN or infinite: "
        "replace them (e.g. numpy.nan_to_num) before upscaling"]
    assert not (tmp_path / "out" / "nan.png").exists()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_array_refused_by_the_api(upscaler, bad):
    from invsr_runtime.imageio import NonFiniteImage

    arr = np.full((8, 8, 3), 0.25, np.float32)
    arr[1, 1, 1] = bad
    with pytest.raises(NonFiniteImage, match="1 of 192 float samples are NaN or infinite"):
        upscaler.upscale(arr)


# ------------------------------------------------------------------------------- API arguments
def test_big_endian_uint16_array_accepted_and_returned_as_given(upscaler):
    native = (np.arange(10 * 12 * 3, dtype=np.uint16).reshape(10, 12, 3) * 150)
    swapped = native.astype(">u2")
    out_native, out_swapped = upscaler.upscale(native), upscaler.upscale(swapped)
    assert out_swapped.dtype == np.dtype(">u2")
    np.testing.assert_array_equal(out_swapped.astype(np.uint16), out_native)


@pytest.mark.parametrize("seed, error, text", [
    ("x", TypeError, "seed must be an int, got str 'x'"),
    (None, TypeError, "seed must be an int, got NoneType None"),
    (1.5, TypeError, "seed must be an int, got float 1.5"),
    (True, TypeError, "seed must be an int, got bool True"),
    (-1, ValueError, "seed must be >= 0, got -1"),
])
def test_junk_seed_refused_clearly(upscaler, seed, error, text):
    with pytest.raises(error) as info:
        upscaler.upscale(np.zeros((4, 4, 3), np.uint8), seed=seed)
    assert str(info.value) == text


def test_numpy_integer_seed_works(upscaler):
    img = _photo(6, 6)
    np.testing.assert_array_equal(upscaler.upscale(img, seed=np.int64(3)), upscaler.upscale(img, seed=3))


@pytest.mark.parametrize("kwargs, error, text", [
    ({"tile_batch": "4"}, TypeError, "tile_batch must be an int or None, got str '4'"),
    ({"tile_batch": 0}, ValueError, "tile_batch must be >= 1, got 0"),
    ({"max_pixels": 1e6}, TypeError, "max_pixels must be an int or None, got float 1000000.0"),
])
def test_junk_constructor_arguments_refused_before_loading(tmp_path, kwargs, error, text):
    from invsr_runtime import Upscaler

    with pytest.raises(error) as info:
        Upscaler(tmp_path / "no-such-folder", **kwargs)  # checked before the folder is even looked at
    assert str(info.value) == text


# ------------------------------------------------------------------------------- too large
def test_memory_estimate_matches_what_upscaling_allocates(upscaler):
    """The estimate behind --max-pixels is within 25% of the measured numpy peak (tracemalloc)."""
    import tracemalloc

    from invsr_runtime.budget import upscale_memory_bytes

    img = _photo(96, 80)
    from invsr_runtime.imageio import picture_from_array

    pic, _ = picture_from_array(img)
    schedule = upscaler.schedule(1)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        upscaler.upscale_picture(pic, schedule)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    estimate = upscale_memory_bytes(96, 80, tile=upscaler.backend.tile, batch=upscaler.backend.batch)
    assert 0.75 * peak <= estimate <= 1.25 * peak, (estimate, peak)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that claims width x height but holds a tiny, truncated image stream."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)))


def test_huge_image_refused_before_decoding_naming_max_pixels(engine, tmp_path, capsys):
    _png_header_only(tmp_path / "huge.png", 9000, 9000)  # 81 MP: under Pillow's bomb limit
    Image.fromarray(_photo(8, 8)).save(tmp_path / "small.png")
    code, out, err = run_cli(capsys, engine, tmp_path / "huge.png", tmp_path / "small.png", "-o", tmp_path / "out")
    assert code == 1 and "done 1" in out and "failed 1" in out
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: {tmp_path / 'huge.png'}: 9000x9000 is over the limit of 16,777,216 pixels "
                           "(--max-pixels): upscaling it needs about ")
    assert "GiB of memory" in line and line.endswith("raise --max-pixels to try anyway")
    # the limit is the knob: raised, the same file gets as far as decoding (and is truncated)
    code, _, err = run_cli(capsys, engine, tmp_path / "huge.png", "-o", tmp_path / "out", "--max-pixels", "0")
    assert code == 1 and "corrupt or truncated" in err


def test_max_pixels_in_the_api_and_for_animations(engine, tmp_path, capsys):
    from invsr_runtime import Upscaler
    from invsr_runtime.budget import ImageTooLarge

    with Upscaler(engine, max_pixels=300) as up:
        up.upscale(np.zeros((15, 20, 3), np.uint8))  # 300 px: allowed
        with pytest.raises(ImageTooLarge, match=r"21x15 is over the limit of 300 pixels \(max_pixels\)"):
            up.upscale(np.zeros((15, 21, 3), np.uint8))
    frames = [Image.fromarray(_photo(15, 20, seed=k)) for k in range(40)]
    frames[0].save(tmp_path / "long.gif", save_all=True, append_images=frames[1:])
    code, _, err = run_cli(capsys, engine, tmp_path / "long.gif", "-o", tmp_path / "out", "--max-pixels", "300")
    assert code == 1 and "20x15 x 40 frames is over the limit of 300 pixels" in err
    code, _, err = run_cli(capsys, engine, tmp_path / "long.gif", "-o", tmp_path / "o2", "--max-pixels", "-1")
    assert code == 2 and "--max-pixels must be >= 0" in err


# --------------------------------------------------------------------------- odd output folders
def test_output_folder_that_is_an_ancestor_of_the_input_folder(engine, tmp_path, capsys):
    (tmp_path / "photos" / "new").mkdir(parents=True)
    Image.fromarray(_photo(8, 8)).save(tmp_path / "photos" / "new" / "a.jpg")
    code, out, err = run_cli(capsys, engine, tmp_path / "photos" / "new", "-o", tmp_path / "photos")
    assert code == 0 and "done 1" in out, err
    assert (tmp_path / "photos" / "a.png").is_file()


def test_output_folder_equal_to_the_input_folder_says_so(engine, tmp_path, capsys):
    Image.fromarray(_photo(8, 8)).save(tmp_path / "a.jpg")
    code, _, err = run_cli(capsys, engine, tmp_path, "-o", tmp_path)
    assert code == 2
    assert err.strip() == (f"error: -o {tmp_path} is the input folder {tmp_path}: the outputs would mix with the "
                           f"inputs; pass another output folder, e.g. -o {tmp_path / 'x4'}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jpg"]


def test_output_folder_inside_the_input_folder_is_still_left_out(engine, tmp_path, capsys):
    Image.fromarray(_photo(8, 8)).save(tmp_path / "a.jpg")
    (tmp_path / "out").mkdir()
    Image.fromarray(_photo(8, 8)).save(tmp_path / "out" / "old.png")
    code, out, _ = run_cli(capsys, engine, tmp_path, "-o", tmp_path / "out", "--recursive")
    assert code == 0 and "done 1" in out


def test_output_path_under_a_file_refused_before_any_work(engine, tmp_path, capsys):
    Image.fromarray(_photo(8, 8)).save(tmp_path / "a.png")
    code, out, err = run_cli(capsys, engine, tmp_path / "a.png", "-o", tmp_path / "a.png" / "sub")
    assert code == 2 and out == ""
    assert err.strip() == f"error: {tmp_path / 'a.png' / 'sub'}: cannot be created ({tmp_path / 'a.png'} is not a folder); pass a writable output folder to -o"


def _unprivileged_prefix() -> list[str] | None:
    """Run a child without the power to write into read-only folders (root: drop CAP_DAC_OVERRIDE)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None or subprocess.run([setpriv, "--bounding-set", "-dac_override,-dac_read_search", "true"],
                                         capture_output=True).returncode != 0:
        return None
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]


def test_read_only_outdir_refused_up_front(engine, tmp_path):
    prefix = _unprivileged_prefix()
    if prefix is None:
        pytest.skip("running as root without setpriv: a read-only folder cannot be made")
    Image.fromarray(_photo(8, 8)).save(tmp_path / "a.png")
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        for out in (tmp_path / "ro", tmp_path / "ro" / "new"):
            res = _subprocess_cli([engine, tmp_path / "a.png", "-o", out], prefix=prefix)
            assert res.returncode == 2, res.stderr
            assert res.stdout == ""  # no summary: nothing was upscaled
            assert res.stderr.strip().startswith(f"error: {out}: ") and "not writable" in res.stderr
    finally:
        (tmp_path / "ro").chmod(0o755)


# -------------------------------------------------------------------------- duplicates, clashes
def test_same_file_twice_is_done_once(engine, tmp_path, capsys):
    Image.fromarray(_photo(8, 8)).save(tmp_path / "a.png")
    code, out, err = run_cli(capsys, engine, tmp_path / "a.png", tmp_path / "a.png", tmp_path, "-o", tmp_path / "out")
    assert code == 0 and out.startswith("done 1, skipped 0, failed 0"), err


def test_corrupt_jpg_does_not_block_a_good_png_of_the_same_stem(engine, tmp_path, capsys):
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    Image.fromarray(_photo(8, 8)).save(tmp_path / "a.png")
    code, out, err = run_cli(capsys, engine, tmp_path, "-o", tmp_path / "out")
    assert code == 1 and "done 1" in out and "failed 1" in out
    assert err.strip() == f"error: {tmp_path / 'a.jpg'}: not an image (unknown or unsupported format)"
    assert Image.open(tmp_path / "out" / "a.png").size == (32, 32)


# ------------------------------------------------------------------------------ probe campaign
def _anim(path: Path, frames: list[Image.Image], **kwargs) -> None:
    frames[0].save(path, save_all=True, append_images=frames[1:], **kwargs)


def test_probe_multi_frame_kinds(engine, tmp_path, capsys, caplog):
    """APNG / animated WebP / transparent GIF in, 16-bit and odd-sized TIFF pages, one-frame GIF."""
    rng = np.random.default_rng(1)
    rgba = [Image.fromarray((rng.random((10, 12, 4)) * 255).astype(np.uint8), "RGBA") for _ in range(3)]
    src = tmp_path / "in"
    src.mkdir()
    _anim(src / "apng.png", rgba, duration=[30, 40, 50])
    _anim(src / "anim.webp", rgba, duration=60, lossless=True)
    _anim(src / "clear.gif", rgba, duration=50, loop=2, disposal=2)
    y, x = np.mgrid[0:10, 0:12]
    _anim(src / "gray16.tif", [Image.fromarray((x * 5000).astype(np.uint16)), Image.fromarray((y * 6000).astype(np.uint16))])
    _anim(src / "sizes.tif", [Image.fromarray(_photo(10, 12)), Image.fromarray(_photo(5, 6))])
    Image.fromarray(_photo(5, 5)).save(src / "still.gif", save_all=True)
    code, out, err = run_cli(capsys, engine, src, "-o", tmp_path / "out")
    assert code == 0 and "done 6" in out, err
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"{src / 'sizes.tif'}: frame 2 is 6x5, not 12x10 like the first: left out"]  # `warning: ...` in invsr-run
    expect = {"apng": (3, "RGBA", [30, 40, 50]), "anim": (3, "RGBA", [60] * 3), "clear": (3, "RGBA", [50] * 3),
              "gray16": (2, "I;16", None), "sizes": (1, "RGB", None), "still": (1, "RGB", None)}
    for stem, (count, mode, durations) in expect.items():
        with Image.open(tmp_path / "out" / f"{stem}.png") as im:
            assert (getattr(im, "n_frames", 1), im.mode) == (count, mode), stem
            if durations:
                got = []
                for k in range(count):
                    im.seek(k)
                    got.append(int(im.info["duration"]))
                assert got == durations, stem


def test_probe_symlink_is_its_own_input_and_odd_spellings_of_the_input_folder(engine, tmp_path, capsys):
    Image.fromarray(_photo(8, 8)).save(tmp_path / "a.png")
    (tmp_path / "b.png").symlink_to("a.png")
    code, out, err = run_cli(capsys, engine, tmp_path / "a.png", tmp_path / "b.png", str(tmp_path / "a.png"),
                             "-o", tmp_path / "out")
    assert code == 0 and "done 2" in out, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]
    (tmp_path / "same").symlink_to(tmp_path)
    for spelling in (f"{tmp_path}/.", f"{tmp_path}/out/..", tmp_path / "same"):
        code, _, err = run_cli(capsys, engine, tmp_path, "-o", spelling)
        assert code == 2 and "is the input folder" in err, spelling


@pytest.mark.parametrize("call, error, text", [
    (lambda up: up.upscale(np.zeros((4, 4, 3), np.uint8), steps="1"), TypeError, "steps must be an int or None"),
    (lambda up: up.upscale(np.zeros((4, 4, 3), np.uint8), steps=1.0), TypeError, "steps must be an int or None"),
    (lambda up: up.upscale(np.zeros((4, 4), bool)), ValueError, "unsupported dtype bool"),
    (lambda up: up.upscale(np.zeros((4, 4, 3), np.int32)), ValueError, "unsupported dtype int32"),
    (lambda up: up.upscale(np.full((4, 4), np.nan, np.float16)), ValueError, "16 of 16 float samples are NaN"),
    (lambda up: up.upscale(Image.fromarray(np.full((4, 4), np.inf, np.float32), mode="F")), ValueError,
     "16 of 16 float samples are NaN"),
    (lambda up: up.upscale(np.zeros((0, 4, 3), np.uint8)), ValueError, "expected an HxW or HxWxC image"),
    (lambda up: up.upscale([[0, 1], [1, 0]]), TypeError, "expected a PIL image or a numpy array"),
])
def test_probe_junk_api_inputs(upscaler, call, error, text):
    with pytest.raises(error, match=text):
        call(upscaler)


def test_probe_max_pixels_zero_is_no_limit(engine):
    from invsr_runtime import Upscaler

    with Upscaler(engine, max_pixels=0) as up:
        assert up.upscale(np.zeros((8, 8, 3), np.uint8)).shape == (32, 32, 3)


@pytest.mark.parametrize("values, text", [
    ({"seed": "x"}, "seed must be an int, got str 'x'"), ({"seed": None}, "seed must be an int, got NoneType None"),
    ({"steps": "2"}, "steps must be an int or None, got str '2'"), ({"steps": 0}, "steps must be 1..5, got 0"),
    ({"tile_batch": 1.5}, "tile_batch must be an int or None, got float 1.5"),
    ({"max_pixels": -1}, "max_pixels must be >= 0, got -1 (0: no limit)"),
])
def test_probe_junk_run_options_name_the_option(values, text):
    """RunOptions (what a service builds instead of a command line) checks types like the API does."""
    from invsr_runtime.run_options import RunOptionError, RunOptions

    with pytest.raises(RunOptionError) as info:
        RunOptions(engine_dir="e", out="o", **values)
    assert str(info.value) == text and info.value.option == next(iter(values))

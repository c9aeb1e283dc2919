"""Nothing of the user's is lost: `--force` replaces only engine folders, and SIGTERM / SIGKILL leave nothing.

`invsr-export --force` refuses (one line, exit 2, nothing deleted) any folder that is not an engine folder
an export wrote, holding only what an export writes, and any --out that is a filesystem root, the home
folder, or holds the working directory or an input. Real subprocesses of invsr-run, invsr-export and
invsr-train get SIGTERM at several moments: exit 143, no temporary file left, earlier outputs intact.
A SIGKILLed export's staging folder is removed by the next export.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from invsr_export.cli import main as export_main
from invsr_runtime import cli as run_cli
from invsr_runtime.tempfiles import is_leftover

from test_runtime_toyengine import build_toy_engine  # noqa: E402  (tests/ is on sys.path)

TINY = ["--base", "synthetic:tiny", "--predictor", "synthetic", "--backend", "onnxruntime"]
FAST_EXPORT = ["--precision", "fp32", "--no-validate", *TINY]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under `folder` (links as their target, files as their bytes)."""
    out: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        out[rel] = f"-> {os.readlink(path)}" if path.is_symlink() else "dir" if path.is_dir() else path.read_bytes()
    return out


def leftovers(*folders: Path) -> list[Path]:
    return [p for f in folders if f.is_dir() for p in f.iterdir() if is_leftover(p.name)]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    """Poll until `condition()` holds; fail if the process ends first."""
    end = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"ended early with {proc.returncode}: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def terminate(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> tuple[int, str]:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


# ------------------------------------------------------------------------------------------ --force
@pytest.fixture
def no_export(monkeypatch):
    """Refusals come before any work: should one not, the export stops before it writes anything."""
    monkeypatch.setattr("invsr_train.models.base.load_base", lambda *a, **k: pytest.fail("--out was not refused"))


def _user_folder(root: Path) -> Path:
    folder = root / "photos"
    (folder / "2024").mkdir(parents=True)
    (folder / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    (folder / "2024" / "dog.png").write_bytes(b"\x89PNG a dog")
    return folder


def test_force_refuses_a_user_folder(tmp_path, capsys, no_export):
    folder = _user_folder(tmp_path)
    before = snapshot(folder)
    assert export_main(["--out", str(folder), "--force", *TINY]) == 2
    line = one_error_line(capsys)
    assert "--force refused" in line and "not an engine folder" in line
    assert snapshot(folder) == before


@pytest.mark.parametrize("extra", ["notes.txt", "subfolder", "link", "foreign-manifest"])
def test_force_refuses_an_engine_folder_holding_more_than_an_export_writes(tmp_path, capsys, no_export, extra):
    folder = build_toy_engine(tmp_path / "engines")
    if extra == "notes.txt":
        (folder / "notes.txt").write_text("my benchmark notes")
    elif extra == "subfolder":
        (folder / "results").mkdir()
        (folder / "results" / "upscaled.png").write_bytes(b"mine")
    elif extra == "link":
        (folder / "unet.onnx").unlink()
        (folder / "unet.onnx").symlink_to(tmp_path)
    else:
        (folder / "manifest.json").write_text('{"name": "my web app", "start_url": "/"}')
    before = snapshot(folder)
    assert export_main(["--out", str(folder), "--force", *TINY]) == 2
    assert "--force refused" in one_error_line(capsys)
    assert snapshot(folder) == before


@pytest.mark.parametrize("where", ["cwd", "parent-of-cwd", "root", "home", "holds-input"])
def test_force_refuses_precious_folders(tmp_path, capsys, monkeypatch, no_export, where):
    work = build_toy_engine(tmp_path / "project")  # even an engine folder, when it holds what matters
    (work / "calib").mkdir()
    (work / "calib" / "photo.png").write_bytes(b"mine")
    monkeypatch.chdir(work if where != "holds-input" else tmp_path)
    monkeypatch.setenv("HOME", str(work if where == "home" else tmp_path / "elsewhere"))
    out = {"cwd": ".", "parent-of-cwd": "..", "root": "/", "home": "~", "holds-input": str(work)}[where]
    extra = ["--calib-images", str(work / "calib")] if where == "holds-input" else []
    before = snapshot(tmp_path)
    assert export_main(["--out", out, "--force", *extra, *TINY]) == 2
    line = one_error_line(capsys)
    assert "--out" in line and {"root": "filesystem root", "home": "home folder"}.get(where, "holds") in line
    assert snapshot(tmp_path) == before


def test_files_added_during_the_export_stop_the_replace(tmp_path):
    """--force is checked again at the end: a file the user put in --out meanwhile keeps the folder as it is."""
    from invsr_export.engine_folder import OutputError, staging

    out = build_toy_engine(tmp_path / "engines")
    with pytest.raises(OutputError, match="notes.txt"):
        with staging(out, force=True) as stage:
            (stage / "manifest.json").write_text("{}")
            (out / "notes.txt").write_text("written while the export ran")
    assert (out / "notes.txt").exists() and (out / "unet.onnx").exists() and not leftovers(tmp_path)


# --------------------------------------------------------------------------------------------- invsr-run
@pytest.fixture(scope="module")
def run_setup(tmp_path_factory):
    """A toy engine, 40 small photos, and their outputs from a first (complete) run."""
    root = tmp_path_factory.mktemp("run")
    engine = build_toy_engine(root / "engine", tile=16, batch=2)
    src = root / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(src / f"p{i:02d}.png")
    out = root / "out"
    assert run_cli.run([str(engine), str(src), "-o", str(out)]) == 0
    return engine, src, out


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.3])
def test_sigterm_during_invsr_run(run_setup, delay):
    engine, src, out = run_setup
    first = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    proc = subprocess.Popen([sys.executable, "-m", "invsr_runtime.cli", str(engine), str(src), "-o", str(out),
                             "--overwrite", "--seed", str(int(delay * 100) + 1)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    wait_for(lambda: any(p.stat().st_mtime_ns != first[p.name] for p in out.iterdir() if p.name in first), proc)
    time.sleep(delay)
    code, err = terminate(proc)
    assert code == 143 and "terminated by SIGTERM" in err and "Traceback" not in err, err
    assert sorted(p.name for p in out.iterdir()) == sorted(first)  # no temporary files, nothing missing
    for path in out.iterdir():
        with Image.open(path) as im:
            im.load()  # complete: the old or the new picture, never half of one
            assert im.size == (4 * 48, 4 * 40)


# ------------------------------------------------------------------------------------------ invsr-export
def _export(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "invsr_export.cli", "--out", str(out), "--force", *FAST_EXPORT],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


@pytest.mark.parametrize("delay", [0.0, 1.5])
def test_sigterm_during_invsr_export_keeps_the_old_folder(tmp_path, delay):
    out = build_toy_engine(tmp_path / "engines")
    before = snapshot(out)
    proc = _export(out)
    wait_for(lambda: bool(leftovers(tmp_path)), proc)
    time.sleep(delay)
    code, err = terminate(proc)
    assert code == 143 and "terminated by SIGTERM" in err and "Traceback" not in err, err
    assert not leftovers(tmp_path) and snapshot(out) == before


def test_sigkilled_export_is_cleaned_by_the_next(tmp_path, capsys):
    out = build_toy_engine(tmp_path / "engines")
    proc = _export(out)
    wait_for(lambda: any((p / "unet.onnx").exists() for p in leftovers(tmp_path)), proc)
    code, _ = terminate(proc, signal.SIGKILL)
    assert code == -signal.SIGKILL and len(leftovers(tmp_path)) == 1  # what a SIGKILL leaves
    assert export_main(["--out", str(out), "--force", *FAST_EXPORT]) == 0
    assert not leftovers(tmp_path) and sorted(p.name for p in tmp_path.iterdir()) == ["engines"]
    from invsr_runtime.manifest import load_manifest

    assert load_manifest(out).provenance["base"] != "toy"  # replaced by the export


# ------------------------------------------------------------------------------------------- invsr-train
def test_sigterm_during_invsr_train(tmp_path):
    from test_train import tiny_config_file, write_photos

    from invsr_train import checkpointing

    photos = write_photos(tmp_path / "photos", size=64, corrupt=False)
    cfg = tiny_config_file(tmp_path / "tiny.yaml", "max_steps: 500, batch_size: 2, ckpt_every: 1, val_every: 0")
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "invsr_train.cli", "--data", str(photos), "--out", str(out),
                             "--base", "synthetic:tiny", "--config", str(cfg), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    wait_for(lambda: len(checkpointing.list_checkpoints(out)) >= 1, proc)
    code, err = terminate(proc)
    assert code == 143 and "--resume" in err and "Traceback" not in err, err[-2000:]
    assert not leftovers(out, out / "checkpoints")
    checkpointing.load_checkpoint(checkpointing.latest_checkpoint(out))  # complete

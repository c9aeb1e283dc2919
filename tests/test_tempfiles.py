"""`invsr_runtime.tempfiles`: temporary names a later run recognises, and removes only when their owner died."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from invsr_runtime import tempfiles
from invsr_runtime.imageio import save_atomic
from invsr_runtime.manifest import Manifest

CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from invsr_runtime import tempfiles
    target, kind, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    tmp = tempfiles.temp_path(target, kind)
    tmp.mkdir() if kind != "part" else tmp.write_bytes(b"half")
    print(tmp.name, flush=True)
    if mode == "wait":
        time.sleep(60)
""")


def leftover_of(target: Path, kind: str, alive: bool = False) -> tuple[Path, subprocess.Popen]:
    """A temporary entry made by another process: finished (dead owner) or still sleeping (live owner)."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(target), kind, "wait" if alive else "exit"],
                            stdout=subprocess.PIPE, text=True)
    name = proc.stdout.readline().strip()
    if not alive:
        proc.wait(timeout=30)
    return target.with_name(name), proc


def test_names_carry_owner_and_fit_name_max(tmp_path):
    stem = "é" * 125  # 250 bytes in UTF-8
    for kind in tempfiles.KINDS:
        tmp = tempfiles.temp_path(tmp_path / f"{stem}.png", kind)
        assert len(os.fsencode(tmp.name)) <= 255 and tempfiles.is_leftover(tmp.name)
        assert f"-{os.getpid()}-" in tmp.name and tmp.name.endswith(f".{kind}")
    short = tempfiles.temp_path(tmp_path / "photo.png")
    assert short.name.startswith(".photo.png.invsr-") and short.parent == tmp_path
    assert not tempfiles.is_leftover(".photo.png.12345.part") and not tempfiles.is_leftover("photo.png")


def test_a_250_character_stem_is_written(tmp_path):
    """The output name fits in NAME_MAX; so must the temporary name used to write it."""
    target = tmp_path / ("a" * 250 + ".png")
    save_atomic(Image.new("RGB", (4, 4)), target)
    assert target.is_file() and os.listdir(tmp_path) == [target.name]


def test_dead_owners_leftovers_go_live_ones_stay(tmp_path):
    dead_file, _ = leftover_of(tmp_path / "a.png", "part")
    dead_dir, _ = leftover_of(tmp_path / "engines", "partial")
    (dead_dir / "unet.onnx").write_bytes(b"x" * 1000)
    live_file, live = leftover_of(tmp_path / "b.png", "part", alive=True)
    try:
        mine = tempfiles.temp_path(tmp_path / "c.png")
        mine.write_bytes(b"mine")
        user = [tmp_path / ".a.png.12345.part", tmp_path / "notes.txt", tmp_path / ".a.png.invsr-zzzz-1-0-aaaaaa.part"]
        for path in user:
            path.write_text("user data")
        removed = tempfiles.sweep(tmp_path)
        assert sorted(removed) == sorted([dead_file, dead_dir])
        assert not dead_file.exists() and not dead_dir.exists()
        assert live_file.exists() and mine.exists() and all(p.read_text() == "user data" for p in user)
    finally:
        live.kill()
        live.wait()
    assert tempfiles.sweep(tmp_path) == [live_file]  # its owner is gone now


def test_a_reused_pid_does_not_keep_a_leftover_alive(tmp_path):
    """Same pid as this process but another start time: the owner is dead, the pid was reused."""
    name = tempfiles.temp_path(tmp_path / "x.png").name
    host, pid, start = name.split(".invsr-")[1].split("-")[:3]
    reused = tmp_path / name.replace(f"-{pid}-{start}-", f"-{pid}-{'1' if start != '1' else '2'}-")
    reused.write_bytes(b"old")
    assert tempfiles.sweep(tmp_path) == [reused]


def test_links_and_wrong_kinds_are_never_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.jpg").write_bytes(b"photo")
    folder = tmp_path / "work"
    folder.mkdir()
    dead_dir, _ = leftover_of(folder / "engines", "partial")
    dead_dir.rmdir()
    dead_dir.symlink_to(outside, target_is_directory=True)  # a link under a staging name
    assert tempfiles.sweep(folder) == []
    assert (outside / "precious.jpg").read_bytes() == b"photo" and dead_dir.is_symlink()


def test_interrupted_replace_is_rolled_back_not_lost(tmp_path):
    """Killed between "rename the old folder aside" and "rename the new one in": the old one comes back."""
    target = tmp_path / "engines"
    old, _ = leftover_of(target, "old")
    (old / "manifest.json").write_text("{}")
    stage, _ = leftover_of(target, "partial")
    assert sorted(tempfiles.sweep(tmp_path)) == sorted([old, stage])
    assert (target / "manifest.json").read_text() == "{}" and not stage.exists()
    # after a completed replace, the aside copy is the one that goes
    old, _ = leftover_of(target, "old")
    assert tempfiles.sweep(tmp_path) == [old] and not old.exists() and target.is_dir()


def test_atomic_write_keeps_the_old_file_on_failure_and_respects_umask(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def broken(fh):
        fh.write(b"new, half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        tempfiles.atomic_write(target, broken)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]
    mask = os.umask(0o027)
    try:
        tempfiles.atomic_write(target, lambda fh: fh.write(b"new"), durable=True)
    finally:
        os.umask(mask)
    assert target.read_bytes() == b"new" and (target.stat().st_mode & 0o777) == 0o640


def test_manifest_save_sweeps_its_folder(tmp_path):
    dead, _ = leftover_of(tmp_path / "manifest.json", "part")
    Manifest(backend="onnxruntime", precision="fp32", tile=16, batch=1, components={}, alphas_cumprod=[],
             default_timesteps={}).save(tmp_path)
    assert not dead.exists() and os.listdir(tmp_path) == ["manifest.json"]


def test_checkpoint_write_removes_a_killed_writers_temp_file(tmp_path):
    """invsr-train killed (-9) in the middle of a checkpoint write; the next write removes its temp file."""
    torch = pytest.importorskip("torch")
    from invsr_train import checkpointing

    path = tmp_path / "checkpoints" / "step_00000001.pt"
    path.parent.mkdir()
    code = ("import sys, time; from pathlib import Path; from invsr_runtime.tempfiles import atomic_write\n"
            "def slow(fh):\n    fh.write(b'x' * 4096); fh.flush(); print('writing', flush=True); time.sleep(60)\n"
            "atomic_write(Path(sys.argv[1]), slow, durable=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    stale = [p for p in path.parent.iterdir() if tempfiles.is_leftover(p.name)]
    assert len(stale) == 1 and not path.exists()
    checkpointing.atomic_save({"step": torch.tensor(1)}, path.with_name("step_00000002.pt"))
    assert sorted(p.name for p in path.parent.iterdir()) == ["step_00000002.pt"]


def test_sweep_of_a_missing_folder_is_quiet(tmp_path):
    assert tempfiles.sweep(tmp_path / "missing") == []

"""``invsr-models download`` / ``verify`` against a hub served on 127.0.0.1 (tests/fake_hub.py), never the network.

The served repos hold the tiny SD-Turbo folder (real layout and config keys) plus files a bundle must
not take (fp16 copies, a single-file checkpoint, a README), and OAOA/InvSR's predictor file.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import model_folders as mf
from fake_hub import FakeHub
from invsr_train import models_cli
from invsr_train.models import bundle, download
from invsr_train.models.base import PREDICTOR_FILE, load_base, load_predictor

BASE_COMMIT = "1" * 40
PRED_COMMIT = "2" * 40
UNET = "unet/diffusion_pytorch_model.safetensors"
#: huggingface_hub writes a download in chunks of this many bytes (constants.DOWNLOAD_CHUNK_SIZE).
CHUNK = 10 * 1024 * 1024


@pytest.fixture(scope="module")
def repo_files(tmp_path_factory, tiny_base, tiny_predictor) -> dict[str, dict[str, bytes]]:
    folder = mf.make_sd_turbo_folder(tmp_path_factory.mktemp("served-turbo"), tiny_base)
    base = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    wanted = dict(base)
    base.update({
        "README.md": b"# sd-turbo\n",
        "unet/diffusion_pytorch_model.fp16.safetensors": b"fp16 copy",
        "text_encoder/model.fp16.safetensors": b"fp16 copy",
        "sd_turbo.safetensors": b"single-file copy",
    })
    saved = tiny_predictor.save_checkpoint(tmp_path_factory.mktemp("pred") / PREDICTOR_FILE)
    predictor = {PREDICTOR_FILE: saved.read_bytes(), "noise_predictor_sd_turbo_v4.pth": b"old release"}
    return {"base": base, "wanted": wanted, "predictor": predictor}


@pytest.fixture
def hub(repo_files, monkeypatch):
    from huggingface_hub import constants

    with FakeHub() as fake:
        fake.add_repo("stabilityai/sd-turbo", repo_files["base"], BASE_COMMIT)
        fake.add_repo("OAOA/InvSR", repo_files["predictor"], PRED_COMMIT)
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        monkeypatch.setenv("HF_HOME", str(Path(os.environ.get("TMPDIR", "/tmp")) / "invsr-no-such-hf-home"))
        yield fake


def _cli(args: list[str], capsys) -> tuple[int, str, str]:
    rc = models_cli.main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def _expected(repo_files) -> dict[str, bytes]:
    return {**repo_files["wanted"], PREDICTOR_FILE: repo_files["predictor"][PREDICTOR_FILE]}


def test_download_verify_and_use(hub, repo_files, tmp_path, capsys, monkeypatch, tiny_base, tiny_predictor):
    out = tmp_path / "bundle"
    rc, stdout, stderr = _cli(["download", "--out", str(out)], capsys)
    assert rc == 0, stderr
    expected = _expected(repo_files)
    got = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file() and ".invsr-models" not in p.parts}
    assert set(got) == set(expected) | {bundle.LOCK_NAME}  # exactly what export needs: no fp16, README, v4
    assert all(got[k] == v for k, v in expected.items())
    assert f"--base {out} --predictor {out}" in stdout and f"[{len(expected)}/{len(expected)}]" in stderr

    lock = json.loads((out / bundle.LOCK_NAME).read_text())
    assert {f["path"]: (f["size"], f["sha256"]) for f in lock["files"]} == {
        k: (len(v), hashlib.sha256(v).hexdigest()) for k, v in expected.items()
    }
    assert lock["sources"]["base"]["repo"] == "stabilityai/sd-turbo" and lock["sources"]["base"]["commit"] == BASE_COMMIT
    assert lock["sources"]["base"]["revision"] == "main" and lock["sources"]["predictor"]["commit"] == PRED_COMMIT
    # The hub's protocol: a HEAD /resolve per file at the resolved commit, weights fetched from the CDN origin.
    heads = {p for m, p, _ in hub.log if m == "HEAD"}
    assert f"/stabilityai/sd-turbo/resolve/{BASE_COMMIT}/{UNET}" in heads
    assert hub.gets("stabilityai/sd-turbo", UNET) == [None] and hub.gets("OAOA/InvSR", PREDICTOR_FILE) == [None]

    rc, stdout, _ = _cli(["verify", str(out)], capsys)
    assert rc == 0 and "all sizes and sha256 match" in stdout and BASE_COMMIT[:12] in stdout

    # Use it offline, as on the GPU machine.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("INVSR_TRT_CACHE", str(tmp_path / "cache"))
    b = load_base(out)
    assert b.info["source"] == "bundle" and b.info["revision"] == BASE_COMMIT
    assert all(torch.equal(v, tiny_base.unet.state_dict()[k]) for k, v in b.unet.state_dict().items())
    p = load_predictor(out)
    assert all(torch.equal(v, tiny_predictor.state_dict()[k]) for k, v in p.state_dict().items())

    # Running again fetches nothing: every file is checked against the hub's hash and kept.
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    hub.log.clear()
    rc, _, stderr = _cli(["download", "--out", str(out)], capsys)
    assert rc == 0 and stderr.count("already complete") == len(expected)
    assert not [entry for entry in hub.log if entry[0] == "GET" and entry[1].startswith("/cdn/")]


def test_verify_catches_corruption(hub, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert _cli(["download", "--out", str(out), "--predictor", "none"], capsys)[0] == 0
    vae = out / "vae/diffusion_pytorch_model.safetensors"
    data = bytearray(vae.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one bit pattern changed: only the hash can tell
    vae.write_bytes(bytes(data))
    rc, _, stderr = _cli(["verify", str(out)], capsys)
    assert rc == 1 and stderr.count("\n") == 1
    assert "vae/diffusion_pytorch_model.safetensors has sha256" in stderr and "the lock file says" in stderr
    # A rerun of download repairs exactly that file.
    hub.log.clear()
    assert _cli(["download", "--out", str(out), "--predictor", "none"], capsys)[0] == 0
    assert [p for m, p, _ in hub.log if m == "GET" and p.startswith("/cdn/")] == [
        "/cdn/" + hashlib.sha256((out / "vae/diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()
    ]
    assert _cli(["verify", str(out)], capsys)[0] == 0
    (out / "tokenizer/tokenizer.json").unlink()
    rc, _, stderr = _cli(["verify", str(out)], capsys)
    assert rc == 1 and "tokenizer/tokenizer.json is missing" in stderr
    rc, _, stderr = _cli(["verify", str(tmp_path)], capsys)
    assert rc == 2 and "no invsr-models.lock.json" in stderr


def test_interrupted_download_resumes(hub, repo_files, tmp_path, capsys):
    """A real process is interrupted (Ctrl-C) mid-UNet; the next run asks only for the missing bytes."""
    big = os.urandom(CHUNK + 2 * 1024 * 1024)  # > one write chunk, so the partial file has data when stopped
    hub.add_repo("acme/big-turbo", {**repo_files["wanted"], UNET: big}, "3" * 40)
    hub.stall_after[UNET] = CHUNK + 1024 * 1024
    out = tmp_path / "bundle"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "invsr_train.models_cli", "download", "--out", str(out), "--base", "acme/big-turbo",
           "--predictor", "none"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial_dir = out / download.WORK_DIR / "partial"
    deadline = time.monotonic() + 120
    while max((p.stat().st_size for p in partial_dir.glob("*.incomplete")), default=0) < CHUNK:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted: run the same command again to resume" in stderr
    (partial,) = partial_dir.glob("*.incomplete")
    kept = partial.stat().st_size
    assert kept >= CHUNK and not (out / UNET).exists() and not (out / bundle.LOCK_NAME).exists()

    del hub.stall_after[UNET]
    hub.release.set()
    rc, _, stderr = _cli(["download", "--out", str(out), "--base", "acme/big-turbo", "--predictor", "none"], capsys)
    assert rc == 0, stderr
    assert f"resuming at {kept / 1e6:.1f} MB" in stderr
    assert hub.gets("acme/big-turbo", UNET) == [None, f"bytes={kept}-"]  # only the missing tail was asked for
    assert (out / UNET).read_bytes() == big and not partial.exists()
    assert _cli(["verify", str(out)], capsys)[0] == 0


def test_download_errors(hub, tmp_path, capsys, monkeypatch):
    user = tmp_path / "photos"
    user.mkdir()
    (user / "keep.png").write_bytes(b"x")
    rc, _, err = _cli(["download", "--out", str(user)], capsys)
    assert rc == 2 and "not a bundle" in err and (user / "keep.png").read_bytes() == b"x" and len(list(user.iterdir())) == 1
    rc, _, err = _cli(["download", "--out", str(tmp_path / "a"), "--base", "acme/missing"], capsys)
    assert rc == 1 and "could not list acme/missing@main" in err and "RepositoryNotFoundError" in err
    rc, _, err = _cli(["download", "--out", str(tmp_path / "b"), "--revision", "v9"], capsys)
    assert rc == 1 and "stabilityai/sd-turbo@v9" in err and "RevisionNotFoundError" in err
    hub.add_repo("acme/not-a-diffusers-repo", {"model.safetensors": b"x"}, "4" * 40)
    rc, _, err = _cli(["download", "--out", str(tmp_path / "c"), "--base", "acme/not-a-diffusers-repo"], capsys)
    assert rc == 1 and "has no model_index.json" in err
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc, _, err = _cli(["download", "--out", str(tmp_path / "d")], capsys)
    assert rc == 2 and "offline mode" in err
    for e in (err,):
        assert e.count("\n") == 1 and e.startswith("error: ")


def test_console_script_and_every_cli_names_the_bundle():
    import importlib
    import tomllib

    root = Path(__file__).resolve().parents[1]
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["invsr-models"] == "invsr_train.models_cli:main"
    for module in ("invsr_export.cli", "invsr_train.cli", "invsr_train.reference", "benchmarks.cli"):
        text = " ".join(importlib.import_module(module).build_parser().format_help().split())
        assert "bundle folder (invsr-models download)" in text, module

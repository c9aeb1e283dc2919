"""`invsr-export` failure modes: one `error:` line, the right exit code, and nothing left at --out."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from invsr_export import exporter
from invsr_runtime.tempfiles import is_leftover
from invsr_export.cli import main

from test_runtime_toyengine import build_toy_engine  # noqa: E402  (tests/ is on sys.path)

TINY = ["--base", "synthetic:tiny", "--predictor", "synthetic", "--backend", "onnxruntime"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err
    return errors[0]


def _leftovers(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if is_leftover(p.name) or ".partial-" in p.name or ".old-" in p.name]


def test_corrupted_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "noise_predictor.pth"
    ckpt.write_bytes(b"\x80\x04 this is not a checkpoint")
    code = main(["--out", str(tmp_path / "out"), "--base", "synthetic:tiny", "--predictor", str(ckpt),
                 "--backend", "onnxruntime"])
    assert code == 2
    assert "noise_predictor.pth" in _one_error_line(capsys)
    assert not (tmp_path / "out").exists() and not _leftovers(tmp_path)


def test_unknown_base(tmp_path, capsys):
    code = main(["--out", str(tmp_path / "out"), "--base", "synthetic:huge", "--predictor", "synthetic",
                 "--backend", "onnxruntime"])
    assert code == 2
    assert "synthetic:huge" in _one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code = main(["--out", str(blocker / "engines"), *TINY])
    assert code == 2
    assert "--out" in _one_error_line(capsys)


def test_bad_precision_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "out"), "--precision", "int4", *TINY])
    assert exc.value.code == 2
    assert "int4" in _one_error_line(capsys)


@pytest.mark.parametrize("tile", ["20", "0"])
def test_bad_tile(tmp_path, capsys, tile):
    assert main(["--out", str(tmp_path / "out"), "--tile", tile, *TINY]) == 2
    assert "--tile" in _one_error_line(capsys)


def test_existing_folder_needs_force(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["--out", str(out), *TINY]) == 2
    assert "--force" in _one_error_line(capsys)
    assert (out / "keep.txt").read_text() == "mine"


def test_tensorrt_backend_without_tensorrt_fails_at_once(tmp_path, capsys, monkeypatch):
    from invsr_export import tensorrt_build

    def unavailable():
        raise tensorrt_build.TensorRTUnavailable(f"TensorRT is not installed; {tensorrt_build.SUGGESTION}")

    monkeypatch.setattr(tensorrt_build, "probe", unavailable)
    monkeypatch.setattr("invsr_train.models.base.load_base", lambda *a, **k: pytest.fail("loaded models first"))
    assert main(["--out", str(tmp_path / "out"), "--backend", "tensorrt", "--base", "synthetic:tiny"]) == 2
    assert "--backend onnxruntime" in _one_error_line(capsys)


def test_interrupted_export_leaves_nothing(tmp_path, capsys, monkeypatch):
    real = exporter.export_module
    calls = []

    def export_then_interrupt(*args, **kwargs):
        calls.append(args[4])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(exporter, "export_module", export_then_interrupt)
    out = tmp_path / "out"
    assert main(["--out", str(out), "--precision", "fp32", *TINY]) == 130
    assert "interrupted" in _one_error_line(capsys)
    assert len(calls) == 2 and not out.exists() and not _leftovers(tmp_path)


def test_failed_export_keeps_the_old_folder(tmp_path, capsys, monkeypatch):
    out = build_toy_engine(tmp_path / "out")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(exporter, "export_module", broken)
    assert main(["--out", str(out), "--force", *TINY]) == 1
    assert "disk on fire" in _one_error_line(capsys)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and not _leftovers(tmp_path)


def test_missed_gate_fails_and_no_gate_keeps(tmp_path, capsys):
    common = ["--precision", "fp16", "--validate-tiles", "1", "--validate-steps", "1", "--gate-db", "500", *TINY]
    out = tmp_path / "out"
    assert main(["--out", str(out), *common]) == 1
    line = _one_error_line(capsys)
    assert "gate" in line and "--no-gate" in line and not out.exists() and not _leftovers(tmp_path)
    assert main(["--out", str(out), "--no-gate", *common]) == 0
    summary = capsys.readouterr().out
    assert "MISSED" in summary
    from invsr_runtime.manifest import load_manifest

    validation = load_manifest(out).validation
    assert validation["passed"] is False and validation["gate_enforced"] is False

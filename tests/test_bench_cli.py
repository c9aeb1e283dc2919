"""`invsr-bench` end to end on the tiny synthetic models: every report kind, skips with reasons, drift.

torch-fast runs without torch.compile here (--no-compile): inductor's C++ build of even the tiny graphs
takes minutes on 2 cores. Speed is measured by the benchmark, never asserted.
"""
from __future__ import annotations

import json

import pytest

from benchmarks.cli import main

STAGES = {"predictor", "vae_encoder", "unet", "vae_decoder"}


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["--base", "synthetic:tiny", "--backends", "torch-eager,torch-fast,onnxruntime,tensorrt",
            "--precisions", "fp32,fp16", "--steps", "1,2", "--batch", "1", "--warmup", "1", "--iters", "2",
            "--out", str(out / "report"), "--engines", str(out / "engines"), "--no-compile"]
    code = main(argv)
    return code, out / "report", json.loads((out / "report" / "report.json").read_text())


def _configs(report, **key):
    return [r for r in report["configs"] if all(r.get(k) == v for k, v in key.items())]


def test_run_writes_every_report_kind(bench_run):
    code, folder, report = bench_run
    assert code == 0
    for name in ("report.json", "report.md", "stages.png", "steps.png"):
        assert (folder / name).stat().st_size > 0, name
    assert (folder / "stages.png").read_bytes()[:4] == b"\x89PNG"
    text = (folder / "report.md").read_text()
    for section in ("## Headline", "## End to end", "## Stages", "## Compute per tile", "## Machine", "skipped"):
        assert section in text


def test_report_structure(bench_run):
    _, _, report = bench_run
    assert report["machine"]["cpu"] and report["machine"]["libraries"]["torch"]
    assert report["settings"]["tile"] == 32 and report["settings"]["steps"] == [1, 2]
    assert set(report["compute"]["macs_per_tile"]) == STAGES and report["compute"]["peak"]["flops_per_s"] > 0
    # 4 backends x 2 precisions x 2 step counts x 1 batch
    assert len(report["configs"]) == 16
    for r in _configs(report, status="ok"):
        assert set(r["stages"]) == STAGES
        for stats in (*r["stages"].values(), r["end_to_end"]):
            assert stats["n"] == 2 and stats["p90"] >= stats["median"] > 0 and stats["first_call_ms"] > 0
        assert r["throughput_ips"] > 0 and r["memory"]["peak_rss_mib"] > 0
        assert 0 < r["floor_share"]["end_to_end"] < 1
        assert r["paper_a100_ms"] == {1: 117.0, 2: 149.0}[r["steps"]]
        assert r["speedup_vs_torch_eager"] > 0
    ok = {(r["backend"], r["precision"]) for r in _configs(report, status="ok")}
    assert ok == {("torch-eager", "fp32"), ("torch-fast", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "fp16")}


def test_unrunnable_configurations_are_skipped_with_reasons(bench_run):
    _, _, report = bench_run
    unrunnable = (("tensorrt", "fp32"), ("tensorrt", "fp16"), ("torch-eager", "fp16"), ("torch-fast", "fp16"))
    for backend, precision in unrunnable:
        rows = _configs(report, backend=backend, precision=precision)
        assert rows and all(r["status"] == "skipped" and r["reason"] for r in rows), (backend, precision)
    assert not _configs(report, status="error")


def test_quality_drift(bench_run):
    _, _, report = bench_run
    for r in _configs(report, backend="torch-eager", precision="fp32"):
        psnr = r["quality"]["psnr_db"]
        assert psnr == "inf" or psnr > 100
    for r in _configs(report, backend="onnxruntime", precision="fp32"):
        assert r["quality"]["psnr_db"] == "inf" or r["quality"]["psnr_db"] >= 45
    for r in _configs(report, status="ok"):
        assert 0.9 < r["quality"]["ssim"] <= 1.0


def test_bad_options_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--out", "x", "--backends", "nope"])
    assert exc.value.code == 2
    assert main(["--out", "x", "--steps", "6"]) == 2
    assert "error:" in capsys.readouterr().err


def test_render_rewrites_markdown_and_plots(bench_run):
    _, folder, _ = bench_run
    (folder / "report.md").unlink()
    (folder / "steps.png").unlink()
    assert main(["--render", str(folder)]) == 0
    assert "## End to end" in (folder / "report.md").read_text() and (folder / "steps.png").is_file()

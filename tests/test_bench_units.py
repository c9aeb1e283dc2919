"""invsr-bench building blocks: statistics, drift, skip rules, FLOP counting, report rendering (no timing asserted)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks import quality, timing
from benchmarks.report import PAPER_A100_MS, build_report, derive, write_json
from benchmarks.runners import skip_reason


@pytest.mark.parametrize(
    "samples", [[3.0], [5.0, 1.0], [4.0, 1.0, 3.0, 2.0], list(np.random.default_rng(0).random(17))])
def test_median_and_p90_match_numpy(samples):
    assert timing.median(samples) == pytest.approx(float(np.median(samples)))
    assert timing.p90(samples) == pytest.approx(float(np.percentile(samples, 90)))
    assert timing.percentile(samples, 0) == min(samples) and timing.percentile(samples, 100) == max(samples)


def test_percentile_rejects_bad_input():
    with pytest.raises(ValueError):
        timing.median([])
    with pytest.raises(ValueError):
        timing.percentile([1.0], 101)


def test_measure_counts_calls_and_summary_is_in_ms():
    calls = []
    samples = timing.measure(lambda: calls.append(1), warmup=2, iters=3)
    assert len(calls) == 5 and len(samples) == 3 and all(s >= 0 for s in samples)
    stats = timing.summarize_ms([0.001, 0.002, 0.003])
    assert stats["median"] == pytest.approx(2.0) and stats["p90"] == pytest.approx(2.8) and stats["n"] == 3


def test_drift_identical_is_infinite_and_noise_is_finite():
    img = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    same = quality.drift(img, img.copy())
    assert same["psnr_db"] == "inf" and same["ssim"] == pytest.approx(1.0)
    noisy = np.clip(img + 0.01, 0, 1)
    d = quality.drift(img, noisy)
    assert 35 < d["psnr_db"] < 45 and d["ssim"] < 1.0
    assert quality.psnr_value(same) == math.inf


def test_photo_tile_is_a_real_photo_crop():
    tile = quality.photo_tile(32)
    assert tile.shape == (32, 32, 3) and tile.dtype == np.float32 and tile.std() > 0.02
    assert quality.photo_tile(128).shape == (128, 128, 3)


def test_skip_rules_on_cpu():
    assert skip_reason("torch-eager", "fp32", "cpu") is None
    assert "fp16" in skip_reason("torch-eager", "fp16", "cpu")
    assert skip_reason("torch-fast", "fp16", "cuda") is None
    assert "int8" in skip_reason("torch-fast", "int8", "cuda")
    assert skip_reason("onnxruntime", "int8", "cpu") is None
    assert skip_reason("onnxruntime", "fp8", "cpu") is None  # Q/DQ fp8 runs (emulated) on ORT's CPU provider
    assert "TensorRT" in skip_reason("tensorrt", "fp16", "cpu") or "GPU" in skip_reason("tensorrt", "fp16", "cpu")


def test_flop_counter_matches_invsr_md_for_the_full_architecture():
    """Meta-device count of the full SD-Turbo + released predictor at a 128 tile vs INVSR.md (GMAC)."""
    from benchmarks.flops import stage_macs
    from invsr_train.models.base import BaseModels, build_unet, build_vae, SD_SCALING_FACTOR
    from invsr_train.models.noise_predictor import NoisePredictor, NoisePredictorConfig
    import torch

    with torch.device("meta"):
        predictor = NoisePredictor(NoisePredictorConfig())
    base = BaseModels(unet=build_unet("full", "meta"), vae=build_vae("full", "meta"),
                      prompt_embeds=torch.empty(1, 77, 1024, device="meta"), alphas_cumprod=np.ones(1000),
                      scaling_factor=SD_SCALING_FACTOR, tile=128, name="synthetic:full")
    gmac = {k: v / 1e9 for k, v in stage_macs(base, predictor, 128).items()}
    expected = {"predictor": 664, "vae_encoder": 558, "unet": 402, "vae_decoder": 1257}
    for stage, value in expected.items():
        assert gmac[stage] == pytest.approx(value, rel=0.02), stage


def _record(backend, precision, e2e, stages, steps=1, batch=1):
    return {"backend": backend, "precision": precision, "steps": steps, "batch": batch, "status": "ok",
            "per_image_ms": e2e / batch, "end_to_end": {"median": e2e, "p90": e2e},
            "stages": {s: {"median": v, "p90": v, "first_call_ms": v} for s, v in stages.items()},
            "throughput_ips": batch / e2e * 1e3, "memory": {"peak_rss_mib": 100.0}, "quality": None}


def test_derived_speedups_paper_and_floor():
    stages = {"vae_encoder": 10.0, "predictor": 20.0, "unet": 30.0, "vae_decoder": 40.0}
    eager = _record("torch-eager", "fp32", 234.0, stages)
    fast = _record("onnxruntime", "fp32", 117.0, {k: v / 2 for k, v in stages.items()})
    macs = {k: 1e9 for k in stages}
    r = derive(fast, [eager, fast], macs, peak_flops=1e12, device="cpu")
    assert r["speedup_vs_torch_eager"] == pytest.approx(2.0)
    assert r["stage_speedup_vs_torch_eager"]["unet"] == pytest.approx(2.0)
    assert r["speedup_vs_paper_a100"] == pytest.approx(PAPER_A100_MS[1] / 117.0)
    assert r["floor_ms"]["unet"] == pytest.approx(2.0)  # 2 GFLOP at 1 TFLOP/s
    assert r["floor_share"]["end_to_end"] == pytest.approx(8.0 / 117.0)


def test_report_json_is_strict_and_markdown_renders(tmp_path):
    from benchmarks import markdown
    from benchmarks.machine import describe

    stages = {"vae_encoder": 1.0, "predictor": 2.0, "unet": 3.0, "vae_decoder": 4.0}
    records = [_record("torch-eager", "fp32", 10.0, stages),
               {"backend": "tensorrt", "precision": "fp16", "steps": 1, "batch": 1, "status": "skipped",
                "reason": "no CUDA GPU on this machine"}]
    records[0]["quality"] = {"psnr_db": "inf", "ssim": 1.0, "max_abs_diff": 0.0}
    meta = {"created": "now", "command": "invsr-bench --out x", "description": "", "machine": describe(),
            "settings": {"base": "synthetic:tiny", "predictor": "synthetic", "tile": 32, "device": "cpu",
                         "warmup": 1, "iters": 2, "compile": True}}
    ref = {"macs_per_tile": {k: 1e6 for k in stages}, "peak": {"flops_per_s": float("inf"), "device": "cpu",
                                                                 "dtype": "float32", "n": 8}}
    report = build_report(meta, ref, records, [])
    path = write_json(report, tmp_path / "report.json")
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    text = markdown.render(report)
    assert "## End to end" in text and "inf (identical)" in text and "no CUDA GPU" in text


class _FakeRunner:
    timer = "cpu"

    def sync(self):
        pass


def test_first_call_is_timed_alone_and_counts_as_warmup():
    from benchmarks.contention import QuietPolicy, wait_quiet
    from benchmarks.worker import time_first_then

    calls = []
    stats = time_first_then(lambda: calls.append(1), warmup=3, iters=4, runner=_FakeRunner(), quiet=QuietPolicy())
    assert len(calls) == 1 + 2 + 4  # first call, 2 more warm-up calls, 4 timed
    assert stats["n"] == 4 and stats["first_call_ms"] >= 0 and stats["attempt"] == 1
    assert "other_cores" in stats and "steal_cores" in stats
    assert wait_quiet(0) == 0.0


def test_other_cpu_does_not_count_our_own_work():
    import time

    from benchmarks.contention import OtherCpu

    with OtherCpu() as probe:
        end = time.perf_counter() + 0.5
        while time.perf_counter() < end:
            pass
    assert probe.other_cores >= 0.0 and set(probe.summary()) == {"other_cores", "steal_cores"}


def test_engine_cache_names_are_safe_and_distinct():
    from benchmarks.engines import folder_name

    a = folder_name("onnxruntime", "/models/sd turbo", "hub", "fp32", 128, 1)
    assert "/" not in a and " " not in a
    assert a != folder_name("onnxruntime", "/models/sd turbo", "hub", "fp32", 128, 8)
    assert folder_name("onnxruntime", "b", "p", "int8", 32, 1, calib_tiles=4).endswith("-c4")


def test_cached_engine_folder_must_have_this_exporters_graph_rewrites(tmp_path, monkeypatch):
    """A folder from an exporter with other rewrites (older cache) is re-exported, not benchmarked."""
    import types

    import invsr_runtime.manifest as manifest_mod
    from benchmarks.engines import matches

    def fake_manifest(rewrites):
        prov = {} if rewrites is None else {"graph_rewrites": rewrites}
        return types.SimpleNamespace(backend="onnxruntime", precision="fp32", tile=128, batch=1, provenance=prov)

    for rewrites, want in ((["fused_attention", "phase_split_upsample"], True), (None, False),
                           (["fused_attention"], False)):
        monkeypatch.setattr(manifest_mod, "load_manifest", lambda folder, r=rewrites: fake_manifest(r))
        assert matches(tmp_path, "onnxruntime", "fp32", 128, 1) is want, rewrites
        assert not matches(tmp_path, "onnxruntime", "fp32", 128, 8)  # other batch: never


def test_a_runner_is_a_tile_chain_for_whole_images(tiny_pipeline, one_thread):
    """runner.tile_chain(B) plugs a benchmarked backend into the runtime's tile loop: same image as the reference."""
    from benchmarks.runners import RunnerOptions, make_runner
    from invsr_runtime.pnp import upscale_rgb
    from invsr_runtime.tile_chain import TileChain

    runner = make_runner(RunnerOptions(backend="torch-eager", precision="fp32", base="synthetic:tiny",
                                       predictor="synthetic", device="cpu", tile=32))
    runner.setup()
    chain = runner.tile_chain(2)
    assert isinstance(chain, TileChain) and chain.fixed_batch and (chain.tile, chain.scale) == (32, 4)
    image = np.random.default_rng(0).random((40, 56, 3), dtype=np.float32)  # 3 tiles: the last batch is padded
    schedule = tiny_pipeline.schedule(2)
    got = upscale_rgb(chain, image, schedule, seed=5)
    np.testing.assert_allclose(got, tiny_pipeline.upscale(image, steps=2, seed=5, tile=32), atol=1e-5)
    chain.close()


def test_image_mode_times_the_default_seed_and_a_drawn_one(tmp_path):
    """`invsr-bench --image --simulate-device-ms`: a null row for seed 0 (noise table) and one for seed 1
    (noise drawn per tile), then one row per device speed and count, in report.json and report.md."""
    import subprocess
    import sys

    from invsr_runtime.tiling import plan_tiles

    out = tmp_path / "img"
    res = subprocess.run([sys.executable, "-m", "benchmarks.cli", "--image", "150x100", "--simulate-device-ms", "1",
                          "--devices", "1,2", "--no-memory", "--iters", "2", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "report.json").read_text())
    null, drawn, *simulated = report["rows"]
    tiles = plan_tiles(100, 150).num_tiles
    assert (null["seed"], drawn["seed"]) == (0, 1) and null["tiles"] == drawn["tiles"] == tiles == 2
    assert null["host_ms_per_tile"] > 0 and drawn["host_ms_per_tile"] > 0
    assert [(r["device_ms_per_tile"], r["devices"]) for r in simulated] == [(1.0, 1), (1.0, 2)]
    assert all(0 < r["efficiency"] <= 1.05 and r["host_ms_per_tile"] == null["host_ms_per_tile"] for r in simulated)
    markdown = (out / "report.md").read_text()
    assert "| null, seed 1 (noise drawn per tile) | 1 | 2 |" in markdown
    assert report["command"].startswith("invsr-bench --image 150x100") and report["command"] in markdown


def test_simulated_device_fresh_outputs_and_the_memory_rows():
    """`fresh_outputs=True` returns a new array per call (as a real backend's download), the default the
    canned one; the image mode's memory row says which it measured."""
    from benchmarks.image_mode import peak_bytes
    from invsr_runtime.backends.simulated import SimulatedDevice
    from invsr_runtime.schedule import SD_TURBO_SCHEDULER, alphas_cumprod, make_schedule

    schedule = make_schedule((200,), alphas_cumprod(**SD_TURBO_SCHEDULER))
    lr, noise = np.zeros((2, 3, 16, 16), np.float32), np.zeros((2, 4, 8, 8), np.float32)
    canned, fresh = (SimulatedDevice(16, 4, 2, echo=False, fresh_outputs=f) for f in (False, True))
    a, b = canned.run_chain(lr, noise, noise, schedule), fresh.run_chain(lr, noise, noise, schedule)
    np.testing.assert_array_equal(a, b)
    assert np.shares_memory(a, canned._canned[0]) and not np.shares_memory(b, fresh._canned[0])
    row = peak_bytes("64x48", "none", fresh_outputs=True)
    assert row["fresh_outputs"] is True and row["output_pixels"] == 256 * 192 and row["peak_bytes"] >= 0

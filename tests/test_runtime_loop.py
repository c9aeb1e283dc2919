"""The PnP loop and the backends on toy engines: chain feeds, batching, sizes, API types, TensorRT helpers."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from invsr_runtime import Upscaler
from invsr_runtime.backends import BackendError, open_backend
from invsr_runtime.backends.cuda import GpuInfo
from invsr_runtime.backends.tensorrt import chain_bindings, check_provenance, schedule_uploads
from invsr_runtime.manifest import load_manifest
from invsr_runtime.pnp import engine_batches, round_tile_batch

from test_runtime_toyengine import build_toy_engine, toy_chain  # noqa: E402


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("toys")
    return {b: build_toy_engine(root / f"b{b}", tile=16, batch=b) for b in (1, 2, 3)}


@pytest.fixture(scope="module")
def up(engines) -> Upscaler:
    return Upscaler(engines[2])


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w, 3), dtype=np.float32)


@pytest.mark.parametrize("steps", [1, 3, 5])
def test_chain_feeds_match_the_contract(up, steps):
    """The ORT chain equals the toy graphs' arithmetic done by hand: right sigma / timestep per stage."""
    rng = np.random.default_rng(steps)
    lr = rng.random((2, 3, 16, 16), dtype=np.float32)
    vn, pn = (rng.standard_normal((2, 4, 8, 8), dtype=np.float32) for _ in range(2))
    schedule = up.schedule(steps)
    got = up.backend.run_chain(lr, vn, pn, schedule)
    np.testing.assert_allclose(got, toy_chain(lr, vn, pn, schedule, up.backend.prompt_embeds), atol=1e-5)


def test_engine_batches_pad_by_repeating():
    assert list(engine_batches([0, 1, 2, 3, 4], 2)) == [([0, 1], 2), ([2, 3], 2), ([4, 4], 1)]
    assert list(engine_batches([7], 3)) == [([7, 7, 7], 1)]


def test_tile_batch_rounds_up_to_engine_batch():
    assert round_tile_batch(None, 4) == 4
    assert round_tile_batch(1, 4) == 4 and round_tile_batch(5, 4) == 8 and round_tile_batch(8, 4) == 8
    with pytest.raises(ValueError):
        round_tile_batch(0, 4)


def test_result_independent_of_engine_batch_and_tile_batch(engines):
    img = _image(45, 61)
    ref = Upscaler(engines[2]).upscale(img, steps=2, seed=9)
    for b in (1, 3):
        np.testing.assert_allclose(Upscaler(engines[b]).upscale(img, steps=2, seed=9), ref, atol=1e-6)
    np.testing.assert_allclose(Upscaler(engines[2], tile_batch=5).upscale(img, steps=2, seed=9), ref, atol=1e-6)


@pytest.mark.parametrize("h, w", [(1, 1), (3, 200), (16, 16), (17, 33), (64, 9)])
def test_any_size(up, h, w):
    out = up.upscale(_image(h, w), seed=1)
    assert out.shape == (4 * h, 4 * w, 3) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0


def test_seed_and_color_fix(up):
    img = _image(20, 24)
    a = up.upscale(img, seed=3)
    np.testing.assert_array_equal(a, up.upscale(img, seed=3))
    assert not np.array_equal(a, up.upscale(img, seed=4))
    for fix in ("wavelet", "ycbcr"):
        fixed = up.upscale(img, seed=3, color_fix=fix)
        assert fixed.shape == a.shape and not np.array_equal(fixed, a)
    with pytest.raises(ValueError):
        up.upscale(img, color_fix="sepia")


def test_custom_timesteps(up):
    img = _image(20, 24)
    np.testing.assert_array_equal(up.upscale(img, timesteps="200,100"), up.upscale(img, steps=2))
    assert up.schedule(timesteps=[250, 120]).timesteps == (250, 120)
    from invsr_runtime.schedule import ScheduleError

    with pytest.raises(ScheduleError):
        up.upscale(img, timesteps="100,200")
    with pytest.raises(ScheduleError):
        up.upscale(img, steps=6)


@pytest.mark.parametrize("shape, dtype", [
    ((10, 12), np.uint8), ((10, 12, 1), np.uint16), ((10, 12, 2), np.float32),
    ((10, 12, 3), np.uint8), ((10, 12, 4), np.float64),
])
def test_numpy_in_numpy_out(up, shape, dtype):
    rng = np.random.default_rng(0)
    arr = (rng.random(shape) * (255 if dtype == np.uint8 else 65535 if dtype == np.uint16 else 1)).astype(dtype)
    out = up.upscale(arr)
    assert out.dtype == dtype and out.shape == (40, 48) + shape[2:]


def test_numpy_alpha_is_bicubic_of_alpha(up):
    arr = np.zeros((10, 12, 4), np.float32)
    arr[..., 3] = np.linspace(0, 1, 12)[None, :]
    from invsr_runtime.resize import bicubic_resize

    expected = np.clip(bicubic_resize(arr[..., 3], 40, 48, antialias=False), 0, 1)
    np.testing.assert_allclose(up.upscale(arr)[..., 3], expected, atol=1e-6)


def test_pil_in_pil_out(up):
    im = Image.fromarray((_image(10, 12) * 255).astype(np.uint8))
    for mode in ("RGB", "L", "LA", "RGBA", "P", "CMYK", "I;16"):
        src = im.convert(mode) if mode != "I;16" else Image.fromarray(np.full((10, 12), 40000, np.uint16))
        res = up.upscale(src)
        want = {"P": "RGB", "CMYK": "RGB"}.get(mode, mode)
        assert res.mode == want and res.size == (48, 40)
    with pytest.raises(TypeError):
        up.upscale("photo.png")


def test_gray_in_gray_out_is_luma_of_rgb_result(up):
    gray = (np.random.default_rng(2).random((10, 12)) * 255).astype(np.uint8)
    out = up.upscale(gray)
    rgb = up.upscale(np.repeat(gray[..., None], 3, axis=2))
    luma = np.asarray(Image.fromarray(rgb).convert("L"))
    assert np.abs(out.astype(int) - luma.astype(int)).max() <= 1


# ----------------------------------------------------------------------------------- backend choice
def test_backend_choice(engines):
    manifest = load_manifest(engines[2])
    with pytest.raises(BackendError, match="onnxruntime"):
        open_backend(engines[2], manifest, "tensorrt")
    with pytest.raises(BackendError, match="unknown backend"):
        open_backend(engines[2], manifest, "openvino")
    backend = open_backend(engines[2], manifest, "auto")
    assert backend.name == "onnxruntime" and "CPUExecutionProvider" in backend.providers


def test_ort_provider_override(engines, monkeypatch):
    manifest = load_manifest(engines[2])
    monkeypatch.setenv("INVSR_ORT_PROVIDERS", "CUDAExecutionProvider")
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu installed")
    with pytest.raises(BackendError, match="not available"):
        open_backend(engines[2], manifest, "onnxruntime")


# ------------------------------------------------------------------------------- TensorRT (no GPU)
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5])
def test_trt_chain_bindings_link_stages(steps):
    """Each stage reads exactly the buffer the previous stage wrote (buffer-to-buffer chaining)."""
    stages = chain_bindings(steps)
    assert [c for c, _ in stages] == ["vae_encoder", "predictor"] + ["unet"] * steps + ["vae_decoder"]
    assert stages[0][1]["latent_lr"] == stages[1][1]["latent_lr"]
    written = stages[1][1]["latent"]
    for _, binding in stages[2:-1]:
        assert binding["latent"] == written and binding["latent_next"] != written
        written = binding["latent_next"]
    assert stages[-1][1]["latent"] == written
    timesteps = [b["timestep"] for c, b in stages if c == "unet"]
    assert len(set(timesteps)) == steps  # one buffer per step: one CUDA graph serves any schedule


def test_trt_schedule_uploads(up):
    values = schedule_uploads(up.schedule(3), 2, up.backend.prompt_embeds)
    assert values["t0"].tolist() == [199, 199] and values["t2"].tolist() == [49, 49]
    assert values["sn2"].tolist() == [0.0, 0.0] and values["pred_sigma"][0] == values["s0"][0]


H200 = GpuInfo(name="NVIDIA H200", compute_capability="9.0", device=0)


def _built(version: str, gpu: str = "NVIDIA H200", cc: str = "9.0", **rest) -> dict:
    """Provenance as invsr-export writes it: one `tensorrt` record."""
    return dict(rest, tensorrt={"tensorrt_version": version, "gpu_name": gpu, "compute_capability": cc})


@pytest.mark.parametrize("provenance, words", [
    (_built("10.13.0.35"), "TensorRT 10.13"),
    (_built("11.4.0.106", "NVIDIA A100-SXM4-40GB", "8.0"), "8.0"),
    (_built("11.4.0.106", "NVIDIA H100"), "H100"),
    ({}, "does not say"),
    # the old top-level copies are not read: one record, one reader
    ({"tensorrt_version": "11.4.0.106", "gpu_name": "NVIDIA H200", "gpu_compute_capability": "9.0"}, "does not say"),
])
def test_trt_refuses_other_version_or_gpu(tmp_path, provenance, words):
    with pytest.raises(BackendError, match=words) as info:
        check_provenance(provenance, "11.4.0.106", H200, tmp_path)
    assert "invsr-export" in str(info.value)


def test_trt_accepts_same_or_compatible_builds(tmp_path):
    check_provenance(_built("11.4.0.106"), "11.4.0.106", H200, tmp_path)
    check_provenance(_built("11.4.0"), "11.4.0.106", H200, tmp_path)  # same major.minor.patch
    with pytest.raises(BackendError, match="compute capability 8.0"):
        check_provenance(_built("11.4.0.106", cc="8.0"), "11.4.0.106", H200, tmp_path)
    check_provenance(_built("11.3.0.1", build_flags=["version_compatible"]), "11.4.0.106", H200, tmp_path)
    check_provenance(_built("11.4.0.106", "NVIDIA A100", "8.0", build_flags="hardware_compatible"),
                     "11.4.0.106", H200, tmp_path)


def test_trt_backend_without_tensorrt_or_gpu_is_a_clean_error(engines, tmp_path):
    import json
    import shutil

    folder = tmp_path / "plans"
    shutil.copytree(engines[2], folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["backend"] = "tensorrt"
    for comp in manifest["components"].values():
        (folder / comp["file"]).rename(folder / comp["file"].replace(".onnx", ".plan"))
        comp["file"] = comp["file"].replace(".onnx", ".plan")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    try:
        import tensorrt  # noqa: F401
        from cuda.bindings import runtime

        if runtime.cudaGetDeviceCount()[1]:
            pytest.skip("a GPU with TensorRT is present")
    except ImportError:
        pass
    with pytest.raises(BackendError, match="TensorRT|CUDA|cuda-python"):
        Upscaler(folder)


# ------------------------------------------------------------------------------------ lean import
def test_import_is_light():
    code = ("import sys, invsr_runtime, invsr_runtime.manifest, invsr_runtime.backends;"
            "heavy = [m for m in ('torch', 'onnxruntime', 'PIL', 'tensorrt', 'cuda', 'invsr_train', 'tqdm')"
            " if m in sys.modules]; print(heavy)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr


class _RecordingChain:
    """A plain class with the TileChain members (no subclassing): nearest-neighbour x`scale` tiles."""

    tile, scale = 16, 4

    def __init__(self, batch: int, fixed_batch: bool) -> None:
        self.batch, self.fixed_batch, self.calls = batch, fixed_batch, []

    def run_chain(self, lr, vae_noise, pred_noise, schedule):
        self.calls.append(lr.shape[0])
        assert vae_noise.shape == pred_noise.shape == (lr.shape[0], 4, 8, 8)
        return lr.repeat(self.scale, axis=2).repeat(self.scale, axis=3) * 0.5

    def close(self) -> None:
        pass


def test_tile_chain_contract_decides_padding(up):
    """The loop reads `fixed_batch` from the chain: pad the last batch (engines) or send it short."""
    from invsr_runtime.pnp import upscale_rgb
    from invsr_runtime.tile_chain import TileChain

    assert isinstance(up.backend, TileChain) and up.backend.fixed_batch
    image, schedule = _image(20, 40), up.schedule(1)  # 3 x 5 = 15 tiles of 16 px
    fixed, loose = _RecordingChain(4, True), _RecordingChain(4, False)
    assert isinstance(fixed, TileChain)  # structurally, without subclassing
    out_fixed, out_loose = upscale_rgb(fixed, image, schedule), upscale_rgb(loose, image, schedule)
    assert fixed.calls == [4, 4, 4, 4] and loose.calls == [4, 4, 4, 3]
    np.testing.assert_array_equal(out_fixed, out_loose)
    assert out_fixed.shape == (80, 160, 3)


def test_an_upscalers_schedulers_share_one_noise_table(engines):
    """The default seed's noise is drawn once per Upscaler, not once per image (each `upscale` call runs
    its own scheduler); a replaced backend of other latents gets a table of its own."""
    up = Upscaler(engines[2])
    with up.scheduler() as first, up.scheduler() as second:
        assert first._noise is second._noise is up.noise_table()
    assert up.noise_table().latent_hw == (8, 8)  # 16 px tiles x4 / 8
    img = _image(20, 30, 4)
    np.testing.assert_array_equal(up.upscale(img, seed=0), Upscaler(engines[1]).upscale(img, seed=0))
    from invsr_runtime.backends.simulated import SimulatedDevice

    up.backend = SimulatedDevice(tile=32, batch=2)
    assert up.noise_table().latent_hw == (16, 16)
    up.close()

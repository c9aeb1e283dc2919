"""bicubic_resize must reproduce torch.nn.functional.interpolate(mode="bicubic", align_corners=False)."""
import numpy as np
import pytest

from invsr_runtime.resize import bicubic_resize, resize_weights

torch = pytest.importorskip("torch")
F = torch.nn.functional


def torch_resize(img_hwc, out_h, out_w, antialias):
    x = torch.from_numpy(np.ascontiguousarray(img_hwc.transpose(2, 0, 1)))[None]
    y = F.interpolate(x, size=(out_h, out_w), mode="bicubic", align_corners=False, antialias=antialias)
    return y[0].permute(1, 2, 0).numpy()


IN_SIZES = [(1, 1), (1, 5), (7, 3), (13, 17), (32, 32)]
OUT_SIZES = [
    lambda h, w: (4 * h, 4 * w),  # the x4 upsample of the pipeline
    lambda h, w: (h, w),  # identity
    lambda h, w: (max(1, h // 3), max(2, w // 2)),  # downscale
    lambda h, w: (29, 7),  # odd, mixed
    lambda h, w: (2, 3),
]


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("in_hw", IN_SIZES)
@pytest.mark.parametrize("out_fn", OUT_SIZES)
def test_matches_torch(in_hw, out_fn, antialias):
    rng = np.random.default_rng(hash((in_hw, antialias)) % 2**32)
    img = rng.random((*in_hw, 3), dtype=np.float32)
    out_h, out_w = out_fn(*in_hw)
    ours = bicubic_resize(img, out_h, out_w, antialias)
    assert ours.shape == (out_h, out_w, 3) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, torch_resize(img, out_h, out_w, antialias), atol=1e-5, rtol=0)


@pytest.mark.parametrize("antialias", [False, True])
def test_large_downscale_and_upscale(antialias):
    rng = np.random.default_rng(1)
    img = rng.random((60, 45, 3), dtype=np.float32)
    for out_h, out_w in [(7, 5), (11, 44), (240, 180)]:
        ours = bicubic_resize(img, out_h, out_w, antialias)
        np.testing.assert_allclose(ours, torch_resize(img, out_h, out_w, antialias), atol=1e-5, rtol=0)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_any_channel_count(channels):
    rng = np.random.default_rng(channels)
    img = rng.random((9, 11, channels), dtype=np.float32)
    for antialias in (False, True):
        ours = bicubic_resize(img, 36, 44, antialias)
        assert ours.shape == (36, 44, channels)
        np.testing.assert_allclose(ours, torch_resize(img, 36, 44, antialias), atol=1e-5, rtol=0)


def test_two_dimensional_input():
    img = np.random.default_rng(0).random((6, 5), dtype=np.float32)
    ours = bicubic_resize(img, 24, 20, False)
    assert ours.shape == (24, 20)
    np.testing.assert_allclose(ours, bicubic_resize(img[..., None], 24, 20, False)[..., 0], atol=0)


def test_kernels_differ():
    """Without antialias the kernel is a=-0.75, with it a=-0.5: upscaling must give different results."""
    img = np.random.default_rng(2).random((8, 8, 1), dtype=np.float32)
    assert np.abs(bicubic_resize(img, 32, 32, False) - bicubic_resize(img, 32, 32, True)).max() > 1e-3


@pytest.mark.parametrize("antialias", [False, True])
def test_rows_sum_to_one(antialias):
    for n_in, n_out in [(1, 4), (5, 20), (20, 5), (7, 7)]:
        np.testing.assert_allclose(resize_weights(n_in, n_out, antialias).sum(axis=1), 1.0, atol=1e-12)


def test_constant_image_stays_constant():
    img = np.full((5, 7, 3), 0.3, dtype=np.float32)
    for antialias in (False, True):
        np.testing.assert_allclose(bicubic_resize(img, 13, 3, antialias), 0.3, atol=1e-6)


def test_bad_input_rejected():
    with pytest.raises(ValueError, match="HWC"):
        bicubic_resize(np.zeros((1, 3, 4, 4), np.float32), 8, 8, False)
    with pytest.raises(ValueError, match="sizes"):
        bicubic_resize(np.zeros((4, 4, 3), np.float32), 0, 8, False)

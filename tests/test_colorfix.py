"""Colour fix: wavelet band swap, YCbCr chroma swap, the antialiased reference."""
import numpy as np
import pytest

from invsr_runtime.colorfix import COLOR_FIXES, apply_color_fix, color_reference, wavelet_decompose

torch = pytest.importorskip("torch")
F = torch.nn.functional


def smooth_image(seed, h=40, w=36, c=3, lo=0.3, hi=0.7):
    """Mid-range image (no clipping after a fix) with both smooth and fine structure."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = lo + (hi - lo) * (0.5 + 0.3 * np.sin(3 * yy[..., None] + 2 * xx[..., None] + rng.random(c)))
    return (base + 0.05 * (rng.random((h, w, c)) - 0.5)).astype(np.float32)


def torch_low_band(img_hwc, levels=5):
    """Independent low band: dilated [1,2,1]x[1,2,1]/16 conv with replicate padding, via torch."""
    c = img_hwc.shape[2]
    k1 = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    kernel = (torch.outer(k1, k1) / 16).expand(c, 1, 3, 3)
    x = torch.from_numpy(img_hwc.astype(np.float64).transpose(2, 0, 1))[None]
    for i in range(levels):
        d = 2**i
        x = F.conv2d(F.pad(x, (d, d, d, d), mode="replicate"), kernel, dilation=d, groups=c)
    return x[0].permute(1, 2, 0).numpy()


def luma_chroma(rgb):
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 0.5 + (b - y) / 1.772
    cr = 0.5 + (r - y) / 1.402
    return y, cb, cr


def test_names():
    assert COLOR_FIXES == ("none", "wavelet", "ycbcr")


@pytest.mark.parametrize("channels", [1, 3])
def test_wavelet_keeps_output_high_and_reference_low(channels):
    out = smooth_image(0, c=channels)
    ref = smooth_image(1, c=channels, lo=0.35, hi=0.6)
    fixed = apply_color_fix(out, ref, "wavelet")
    assert fixed.shape == out.shape and fixed.dtype == np.float32
    out_high = out.astype(np.float64) - torch_low_band(out)
    np.testing.assert_allclose(fixed, out_high + torch_low_band(ref), atol=1e-6)


def test_wavelet_decompose_matches_torch_and_sums_back():
    img = smooth_image(2)
    high, low = wavelet_decompose(img)
    np.testing.assert_allclose(low, torch_low_band(img), atol=1e-12)
    np.testing.assert_allclose(high + low, img, atol=1e-6)


def test_wavelet_removes_a_colour_cast():
    """A constant colour offset is pure low frequency: the fix must restore the reference exactly."""
    ref = smooth_image(3)
    out = ref + np.array([0.1, -0.05, 0.08], np.float32)
    np.testing.assert_allclose(apply_color_fix(out, ref, "wavelet"), ref, atol=1e-6)


def test_ycbcr_keeps_output_luma_and_reference_chroma():
    out = smooth_image(4)
    ref = smooth_image(5, lo=0.4, hi=0.6)
    fixed = apply_color_fix(out, ref, "ycbcr")
    y_fixed, cb_fixed, cr_fixed = luma_chroma(fixed)
    y_out, _, _ = luma_chroma(out)
    _, cb_ref, cr_ref = luma_chroma(ref)
    assert np.abs(fixed - out).max() > 1e-2  # it did change something
    np.testing.assert_allclose(y_fixed, y_out, atol=1e-5)
    np.testing.assert_allclose(cb_fixed, cb_ref, atol=1e-5)
    np.testing.assert_allclose(cr_fixed, cr_ref, atol=1e-5)


def test_ycbcr_clips_and_keeps_alpha():
    out = np.concatenate([np.full((4, 4, 3), 0.95, np.float32), np.full((4, 4, 1), 0.3, np.float32)], -1)
    ref = np.zeros((4, 4, 4), np.float32)
    ref[..., 0] = 1.0  # saturated red chroma pushes some channels past 1
    fixed = apply_color_fix(out, ref, "ycbcr")
    assert fixed.min() >= 0.0 and fixed.max() <= 1.0 and fixed.max() == 1.0
    np.testing.assert_array_equal(fixed[..., 3], out[..., 3])


def test_ycbcr_grayscale_is_unchanged():
    out = smooth_image(6, c=1)
    assert apply_color_fix(out, smooth_image(7, c=1), "ycbcr") is out


def test_none_is_identity():
    out = smooth_image(8)
    np.testing.assert_array_equal(apply_color_fix(out, smooth_image(9), "none"), out)


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError, match="none, wavelet, ycbcr"):
        apply_color_fix(smooth_image(0), smooth_image(0), "histogram")


def test_shape_mismatch_rejected():
    with pytest.raises(ValueError, match="same shape"):
        apply_color_fix(smooth_image(0, h=8), smooth_image(0, h=9), "wavelet")


@pytest.mark.parametrize("channels", [1, 3])
def test_reference_is_antialiased_bicubic_x4(channels):
    lr = np.random.default_rng(channels).random((7, 9, channels), dtype=np.float32)
    ref = color_reference(lr)
    assert ref.shape == (28, 36, channels)
    x = torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1)))[None]
    expected = F.interpolate(x, size=(28, 36), mode="bicubic", align_corners=False, antialias=True)
    np.testing.assert_allclose(ref, expected[0].permute(1, 2, 0).numpy(), atol=1e-5)
    assert color_reference(lr, scale=2).shape == (14, 18, channels)

"""Tiling geometry and Gaussian blending, checked with an identity "model" (nearest x4 upsample)."""
import numpy as np
import pytest

from invsr_runtime.tiling import TileBlender, extract_tiles, gaussian_weight, pad_image, plan_tiles


def nearest_up(tiles_nhwc, scale):
    return tiles_nhwc.repeat(scale, axis=1).repeat(scale, axis=2)


def run_identity(img, tile, scale=4, batch=3):
    """Pad, cut, 'upscale' each tile with nearest neighbour, blend: the whole runtime path minus networks."""
    plan = plan_tiles(img.shape[0], img.shape[1], tile=tile, scale=scale)
    padded = pad_image(img, plan)
    blender = TileBlender(plan, img.shape[2])
    indices = list(range(plan.num_tiles))
    for start in range(0, len(indices), batch):
        chunk = indices[start:start + batch]
        for index, out in zip(chunk, nearest_up(extract_tiles(padded, plan, chunk), scale)):
            blender.add(index, out)
    return plan, blender.result()


SIZES = [(1, 1), (1, 7), (2, 3), (31, 200), (128, 128), (129, 300), (300, 129), (1, 500)]


@pytest.mark.parametrize("hw", SIZES)
def test_constant_image_round_trips(hw):
    img = np.full((*hw, 3), 0.42, dtype=np.float32)
    _, out = run_identity(img, tile=128)
    assert out.shape == (4 * hw[0], 4 * hw[1], 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.42, atol=1e-6)


@pytest.mark.parametrize("hw", SIZES + [(33, 70), (65, 64), (17, 45)])
@pytest.mark.parametrize("channels", [1, 3])
def test_content_lands_in_the_right_place(hw, channels):
    """Random content: every output pixel must equal the nearest upsample of the original (proves offsets)."""
    img = np.random.default_rng(hw[0] * 1000 + hw[1]).random((*hw, channels), dtype=np.float32)
    _, out = run_identity(img, tile=32)
    np.testing.assert_allclose(out, nearest_up(img[None], 4)[0], atol=1e-6)


def test_content_with_real_tile_size():
    img = np.random.default_rng(0).random((150, 140, 3), dtype=np.float32)
    plan, out = run_identity(img, tile=128)
    assert plan.num_tiles == 4
    np.testing.assert_allclose(out, nearest_up(img[None], 4)[0], atol=1e-6)


def test_exact_tile_is_one_tile():
    plan = plan_tiles(128, 128)
    assert plan.origins == [(0, 0)] and plan.pad == ((0, 0), (0, 0))
    assert (plan.padded_h, plan.padded_w, plan.stride, plan.scale) == (128, 128, 64, 4)
    assert plan_tiles(32, 32, tile=32).origins == [(0, 0)]


def test_small_image_is_one_centred_tile():
    plan = plan_tiles(2, 3)
    assert plan.num_tiles == 1 and (plan.padded_h, plan.padded_w) == (128, 128)
    (top, bottom), (left, right) = plan.pad
    assert top + bottom == 126 and left + right == 125
    assert abs(top - bottom) <= 1 and abs(left - right) <= 1


def test_short_side_padded_centred_long_side_to_multiple_of_16():
    plan = plan_tiles(31, 200)
    assert (plan.padded_h, plan.padded_w) == (128, 208)
    (top, bottom), (left, right) = plan.pad
    assert top + bottom == 97 and abs(top - bottom) <= 1
    assert (left, right) == (0, 8)


def test_pull_back_and_tile_count():
    # padded 144 x 304: rows start 0 then the pulled-back 16; columns 0, 64, 128, then 304-128=176.
    plan = plan_tiles(129, 300)
    assert (plan.padded_h, plan.padded_w) == (144, 304)
    ys = sorted({y for y, _ in plan.origins})
    xs = sorted({x for _, x in plan.origins})
    assert ys == [0, 16] and xs == [0, 64, 128, 176]
    assert plan.num_tiles == 8 and plan.origins[:4] == [(0, 0), (0, 64), (0, 128), (0, 176)]


@pytest.mark.parametrize("hw", [(200, 200), (256, 257), (129, 1000), (500, 130)])
def test_origins_cover_and_stay_inside(hw):
    plan = plan_tiles(*hw)
    assert plan.padded_h % 16 == 0 and plan.padded_w % 16 == 0
    covered = np.zeros((plan.padded_h, plan.padded_w), bool)
    for y, x in plan.origins:
        assert 0 <= y <= plan.padded_h - 128 and 0 <= x <= plan.padded_w - 128
        covered[y:y + 128, x:x + 128] = True
    assert covered.all()
    for axis_starts in ({y for y, _ in plan.origins}, {x for _, x in plan.origins}):
        starts = sorted(axis_starts)
        assert all(0 < b - a <= 64 for a, b in zip(starts, starts[1:]))


def test_reflect_padding_values():
    img = np.arange(3 * 5, dtype=np.float32).reshape(3, 5, 1)
    plan = plan_tiles(3, 5, tile=8)
    padded = pad_image(img, plan)
    (top, _), (left, _) = plan.pad
    np.testing.assert_array_equal(padded[top:top + 3, left:left + 5], img)
    # reflection excludes the edge pixel: the row above the image is the image's second row
    np.testing.assert_array_equal(padded[top - 1, left:left + 5], img[1])
    np.testing.assert_array_equal(padded[top:top + 3, left - 1], img[:, 1])


def test_one_pixel_pads_to_constant():
    img = np.full((1, 1, 3), 0.7, np.float32)
    padded = pad_image(img, plan_tiles(1, 1))
    assert padded.shape == (128, 128, 3)
    np.testing.assert_array_equal(padded, np.float32(0.7))


def _opencv_gaussian(n, sigma):
    """cv2.getGaussianKernel(n, sigma, CV_64F) written out (OpenCV's documented formula)."""
    x = np.arange(n) - (n - 1) * 0.5
    g = np.exp(-0.5 / sigma**2 * x * x)
    return g / g.sum()


def _invsr_kernel_1d(k):
    """InvSR's ImageSpliterTh.generate_kernel_1d: even k -> getGaussianKernel(k + 1)[1:]."""
    sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
    return _opencv_gaussian(k + 1, sigma)[1:] if k % 2 == 0 else _opencv_gaussian(k, sigma)


@pytest.mark.parametrize("size", [512, 128, 64, 7])
def test_gaussian_weight_is_invsrs(size):
    w = gaussian_weight(size)
    assert w.shape == (size, size) and w.dtype == np.float64
    np.testing.assert_allclose(w, np.outer(_invsr_kernel_1d(size), _invsr_kernel_1d(size)), rtol=1e-12, atol=0)


def test_gaussian_weight_sigma_and_peak():
    size = 512
    w = gaussian_weight(size)
    np.testing.assert_allclose(w, w.T)
    # InvSR drops the first tap of a 513-tap kernel: the peak is at 255, not at the geometric centre 255.5.
    assert np.argmax(w[255]) == 255 and w[255, 255] > w[255, 256] == pytest.approx(w[255, 254])
    row = w[255]  # 1-D profile up to a constant factor; x measured from the peak 255
    x_i, x_j = 256.0, 1.0  # columns 511 and 256
    sigma = np.sqrt((x_i**2 - x_j**2) / (2 * np.log(row[256] / row[511])))
    assert sigma == pytest.approx(77.15, abs=1e-6)


def test_blend_is_weighted_average():
    """Tiles of different constants: pixels covered once keep their tile's value, overlaps lie between."""
    plan = plan_tiles(32, 48, tile=32, scale=2)
    assert plan.origins == [(0, 0), (0, 16)]
    blender = TileBlender(plan, 1)
    blender.add(0, np.zeros((64, 64, 1), np.float32))
    blender.add(1, np.ones((64, 64, 1), np.float32))
    out = blender.result()[..., 0]
    assert out.shape == (64, 96)
    np.testing.assert_allclose(out[:, :32], 0.0)
    np.testing.assert_allclose(out[:, 64:], 1.0)
    overlap = out[:, 32:64]
    assert np.all(np.diff(overlap, axis=1) > 0)  # moves from tile 0's value towards tile 1's
    g = _invsr_kernel_1d(64)
    np.testing.assert_allclose(overlap, np.broadcast_to(g[:32] / (g[32:] + g[:32]), overlap.shape), atol=1e-6)


def test_blender_errors():
    plan = plan_tiles(64, 64, tile=32)
    blender = TileBlender(plan, 3)
    with pytest.raises(ValueError, match="expected"):
        blender.add(0, np.zeros((32, 32, 3), np.float32))
    blender.add(0, np.zeros((128, 128, 3), np.float32))
    with pytest.raises(ValueError, match="never added"):
        blender.result()


def test_pad_image_rejects_wrong_shape():
    with pytest.raises(ValueError, match="does not match"):
        pad_image(np.zeros((10, 10, 3), np.float32), plan_tiles(12, 10))


def test_plan_rejects_empty():
    with pytest.raises(ValueError, match="at least 1x1"):
        plan_tiles(0, 5)

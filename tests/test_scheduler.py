"""The tile scheduler, the streaming blender and the band-by-band colour fix.

The oracles are the whole-image definitions (`tiling.TileBlender` in float64, `colorfix.apply_color_fix`,
`pnp.upscale_rgb`); the device is the simulated one (`backends.simulated.SimulatedDevice`, echo mode),
whose output depends on each tile's pixels, noise and schedule, so any mix-up changes the bytes.
"""
from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

from invsr_runtime.backends.simulated import SimulatedDevice
from invsr_runtime.blend import ImageAssembler, StreamingBlender, blend_tiles
from invsr_runtime.colorfix import WAVELET_HALO, ColorFixStream, ReferenceRows, apply_color_fix, color_reference
from invsr_runtime.imageio import to_uint8, to_uint16
from invsr_runtime.pnp import upscale_rgb
from invsr_runtime.resize import resize_taps, resize_weights
from invsr_runtime.schedule import SD_TURBO_SCHEDULER, alphas_cumprod, make_schedule
from invsr_runtime.scheduler import TileScheduler
from invsr_runtime.tiling import TileBlender, plan_tiles

ODD_SIZES = [(1, 1), (2, 3), (17, 45), (33, 70), (65, 64), (1, 500), (500, 1), (3, 200), (300, 129)]


@pytest.fixture(scope="module")
def schedule():
    return make_schedule((200,), alphas_cumprod(**SD_TURBO_SCHEDULER))


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed * 7919 + h * 31 + w).random((h, w, 3), dtype=np.float32)


# ------------------------------------------------------------------------------------------ blending
@pytest.mark.parametrize("hw", ODD_SIZES)
def test_streaming_blend_equals_whole_image_blend(hw):
    plan = plan_tiles(*hw, tile=32)
    tiles = np.random.default_rng(hw[0] + hw[1]).random((plan.num_tiles, 3, 128, 128), dtype=np.float32)
    whole = TileBlender(plan, 3)
    for index, tile in enumerate(tiles):
        whole.add(index, tile.transpose(1, 2, 0))
    got = blend_tiles(plan, tiles).transpose(1, 2, 0)
    assert got.shape == (4 * hw[0], 4 * hw[1], 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, whole.result(), rtol=0, atol=4e-7)


def test_streaming_blend_emits_rows_early_and_in_order():
    """Rows leave as soon as a tile row is complete; any arrival order gives the same bytes."""
    plan = plan_tiles(100, 40, tile=32)  # padded 112 x 48: 6 tile rows x 2 tile columns
    tiles = np.random.default_rng(0).random((plan.num_tiles, 3, 128, 128), dtype=np.float32)
    emitted: list[int] = []
    blender = StreamingBlender(plan, lambda rows: emitted.append(rows.shape[1]))
    blender.add(0, tiles[0])
    assert emitted == []
    blender.add(1, tiles[1])
    assert emitted == [64 * 1]  # rows above the second tile row's top (16 LR px * 4)
    order = list(range(plan.num_tiles))
    rng = np.random.default_rng(1)
    rng.shuffle(order)
    shuffled: list[np.ndarray] = []
    other = StreamingBlender(plan, lambda rows: shuffled.append(rows.copy()))
    for index in order:
        other.add(index, tiles[index])
    np.testing.assert_array_equal(np.concatenate(shuffled, axis=1), blend_tiles(plan, tiles))
    with pytest.raises(ValueError, match="added twice"):
        other.add(0, tiles[0])


def test_assembler_rounds_like_imageio():
    rows = np.random.default_rng(3).uniform(-0.2, 1.2, (3, 5, 7)).astype(np.float32)
    for dtype, convert in (("uint8", to_uint8), ("uint16", to_uint16)):
        out = ImageAssembler(5, 7, 3, dtype)
        out(rows[:, :2].copy(), 0)
        out(rows[:, 2:, :3].copy(), 2, 0)
        out(rows[:, 2:, 3:].copy(), 2, 3)
        np.testing.assert_array_equal(out.image, convert(rows.transpose(1, 2, 0)))
    with pytest.raises(ValueError, match="not supported"):
        ImageAssembler(1, 1, 3, "int32")


# --------------------------------------------------------------------------------------- colour fix
@pytest.mark.parametrize("in_size, out_size", [(1, 4), (7, 28), (128, 512), (10, 3), (5, 5)])
@pytest.mark.parametrize("antialias", [True, False])
def test_resize_taps_are_the_dense_weights(in_size, out_size, antialias):
    index, weight = resize_taps(in_size, out_size, antialias)
    dense = np.zeros((out_size, in_size))
    np.add.at(dense, (np.arange(out_size)[:, None].repeat(index.shape[1], 1), index), weight)
    np.testing.assert_allclose(dense, resize_weights(in_size, out_size, antialias), atol=1e-15)


@pytest.mark.parametrize("hw, band, block", [((1, 1), 4, 512), ((5, 7), 3, 512), ((40, 56), 17, 512),
                                             ((40, 56), 160, 16), ((64, 9), 1, 5), ((33, 200), 256, 100)])
@pytest.mark.parametrize("method", ["wavelet", "ycbcr", "none"])
def test_colour_fix_by_bands_equals_whole_image(hw, band, block, method):
    """Bands of any height, column blocks of any width (halo on all four sides) = the whole-image fix."""
    lr = _image(*hw)
    out = np.random.default_rng(9).random((4 * hw[0], 4 * hw[1], 3), dtype=np.float32)
    want = np.clip(apply_color_fix(out, color_reference(lr, 4), method), 0, 1)
    canvas = np.full((3, *out.shape[:2]), np.nan, dtype=np.float32)

    def sink(block_chw: np.ndarray, row: int, col: int) -> None:
        canvas[:, row:row + block_chw.shape[1], col:col + block_chw.shape[2]] = block_chw

    stream = ColorFixStream(lr, 4, method, sink, block=block)
    planar = out.transpose(2, 0, 1)
    for start in range(0, out.shape[0], band):
        stream.push(np.ascontiguousarray(planar[:, start:start + band]))
    stream.finish()
    np.testing.assert_allclose(np.clip(canvas, 0, 1).transpose(1, 2, 0), want, atol=5e-7)


def test_wavelet_halo_and_reference_rows():
    assert WAVELET_HALO == 1 + 2 + 4 + 8 + 16
    lr = _image(13, 11)
    rows = ReferenceRows(lr, 4)
    np.testing.assert_allclose(rows.rows(10, 37).transpose(1, 2, 0), color_reference(lr, 4)[10:37], atol=3e-7)


@pytest.mark.parametrize("hw", [(1, 1), (3, 200), (37, 23), (64, 64)])
@pytest.mark.parametrize("band", [5, 256])
def test_alpha_by_bands_equals_the_dense_bicubic(hw, band):
    """upscale_alpha (sparse taps, band by band, in the RGB's dtype) == the dense bicubic resize, clipped."""
    from invsr_runtime.imageio import to_uint16
    from invsr_runtime.resize import bicubic_resize
    from invsr_runtime.upscaler import upscale_alpha

    alpha = np.random.default_rng(hw[0]).random(hw, dtype=np.float32)
    want = np.clip(bicubic_resize(alpha, 4 * hw[0], 4 * hw[1], antialias=False), 0.0, 1.0)
    got = upscale_alpha(alpha, 4, "float32", band=band)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-6)
    for dtype, convert in (("uint8", to_uint8), ("uint16", to_uint16)):
        rounded = upscale_alpha(alpha, 4, dtype, band=band)
        assert rounded.dtype == dtype and rounded.shape == want.shape
        assert np.abs(rounded.astype(np.int64) - convert(want)).max() <= 1  # float32 vs float64 sums only


def test_colour_fix_refuses_missing_rows():
    stream = ColorFixStream(_image(4, 4), 4, "wavelet", lambda block, row, col: None)
    stream.push(np.zeros((3, 8, 16), np.float32))
    with pytest.raises(ValueError, match="push every row"):
        stream.finish()


# ------------------------------------------------------------------------------------------ scheduler
@pytest.mark.parametrize("color_fix", ["none", "wavelet", "ycbcr"])
@pytest.mark.parametrize("hw", [(1, 1), (17, 45), (40, 56), (3, 200)])
def test_scheduler_matches_the_reference_loop(schedule, color_fix, hw):
    """Same noise, same tiles, float32 streaming blend vs the float64 whole-image loop (pnp.upscale_rgb)."""
    device = SimulatedDevice(tile=32, batch=3)
    img = _image(*hw)
    want = upscale_rgb(device, img, schedule, color_fix=color_fix, seed=5)
    with TileScheduler([device]) as scheduler:
        got = scheduler.submit(img, schedule, color_fix=color_fix, seed=5).result()
        got8 = scheduler.submit(img, schedule, color_fix=color_fix, seed=5, out_dtype="uint8").result()
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=5e-7)
    np.testing.assert_array_equal(got8, to_uint8(got))


def _run(devices, images, schedule, order=None, **options):
    """Upscale `images` (in `order`) on a scheduler over `devices`; results by original position."""
    order = list(range(len(images))) if order is None else order
    with TileScheduler(devices, queue_depth=options.pop("queue_depth", 2)) as scheduler:
        pairs = scheduler.map(order, lambda i: scheduler.request(images[i], schedule, seed=i, **options))
        return {i: future.result() for i, future in pairs}


def test_same_bytes_for_any_batch_device_count_order_and_sharing(schedule):
    images = [_image(40, 56, 1), _image(17, 45, 2), _image(64, 70, 3), _image(1, 1, 4)]
    want = _run([SimulatedDevice(tile=32, batch=1)], images, schedule, out_dtype="uint8")
    variants = {
        "batch 3": [SimulatedDevice(tile=32, batch=3)],
        "batch 8, no padding": [SimulatedDevice(tile=32, batch=8, fixed_batch=False)],
        "3 devices": [SimulatedDevice(tile=32, batch=2, ms_per_tile=ms) for ms in (0.0, 1.0, 3.0)],
    }
    for name, devices in variants.items():
        got = _run(devices, images, schedule, out_dtype="uint8")
        for i in want:
            np.testing.assert_array_equal(got[i], want[i], err_msg=name)
    shuffled = _run([SimulatedDevice(tile=32, batch=4)], images, schedule, order=[2, 0, 3, 1], out_dtype="uint8")
    for i in want:
        np.testing.assert_array_equal(shuffled[i], want[i], err_msg="folder order")
    with TileScheduler([SimulatedDevice(tile=32, batch=4)]) as scheduler:  # one at a time: no sharing
        alone = [scheduler.submit(img, schedule, seed=i, out_dtype="uint8").result() for i, img in enumerate(images)]
    for i in want:
        np.testing.assert_array_equal(alone[i], want[i], err_msg="no batch sharing")


def test_stream_shares_batches_and_pads_only_the_last(schedule):
    images = [_image(40, 56, k) for k in range(3)]  # 6 tiles each: 18 tiles
    device = SimulatedDevice(tile=32, batch=4)
    with TileScheduler([device]) as scheduler:
        list(scheduler.map(images, lambda img: scheduler.request(img, schedule)))
        stats = scheduler.stats
    assert device.calls == 5 and stats.padded_tiles == 2 and stats.tiles == 18 and stats.images == 3


def test_several_devices_share_the_work(schedule):
    devices = [SimulatedDevice(tile=32, batch=2, ms_per_tile=2.0) for _ in range(3)]
    with TileScheduler(devices) as scheduler:
        scheduler.submit(_image(120, 120), schedule).result()
    assert all(d.calls > 0 for d in devices) and sum(d.calls for d in devices) == 25  # 49 tiles in batches of 2


def test_progress_and_concurrent_submits(schedule):
    seen: list[tuple[int, int]] = []
    device = SimulatedDevice(tile=32, batch=4, ms_per_tile=0.5)
    with TileScheduler([device]) as scheduler:
        futures: list = []

        def client(k: int) -> None:
            futures.append((k, scheduler.submit(_image(30, 30, k), schedule, seed=k)))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        results = {k: f.result() for k, f in futures}
        scheduler.submit(_image(40, 56), schedule, on_tiles=lambda d, t: seen.append((d, t))).result()
    for k, out in results.items():
        np.testing.assert_allclose(out, upscale_rgb(device, _image(30, 30, k), schedule, seed=k), atol=5e-7)
    assert seen[-1] == (6, 6) and [d for d, _ in seen] == sorted(d for d, _ in seen)


class _Broken(SimulatedDevice):
    def run_chain(self, lr, vae_noise, pred_noise, schedule):
        if lr[0, 0, 0, 0] > 0.5:
            raise RuntimeError("device lost")
        return super().run_chain(lr, vae_noise, pred_noise, schedule)


def test_errors_reach_their_image_only(schedule):
    with TileScheduler([_Broken(tile=32, batch=1)]) as scheduler:
        bad = scheduler.submit(np.ones((20, 20, 3), np.float32), schedule)
        good = scheduler.submit(np.zeros((20, 20, 3), np.float32), schedule)
        with pytest.raises(RuntimeError, match="device lost"):
            bad.result()
        assert good.result().shape == (80, 80, 3)
        with pytest.raises(ValueError, match="HxWx3"):
            scheduler.submit(np.zeros((4, 4)), schedule)
        with pytest.raises(ValueError, match="colour fix"):
            scheduler.submit(np.zeros((4, 4, 3)), schedule, color_fix="sepia")
        items = list(scheduler.map([1, 2], lambda i: 1 / 0 if i == 1 else scheduler.request(np.zeros((4, 4, 3)), schedule)))
        with pytest.raises(ZeroDivisionError):
            items[0][1].result()
        assert items[1][1].result().shape == (16, 16, 3)
    with pytest.raises(RuntimeError, match="closed"):
        scheduler.submit(np.zeros((4, 4, 3)), schedule)
    with pytest.raises(ValueError, match="differ"):
        TileScheduler([SimulatedDevice(tile=32, batch=2), SimulatedDevice(tile=32, batch=3)])


def test_channel_lanes_run_in_order_survive_errors_and_drain_on_close():
    from invsr_runtime.lanes import ChannelLanes

    lanes, seen = ChannelLanes(2, depth=2), {0: [], 1: []}
    for k in range(20):
        lanes.put(k % 2, lambda k=k: seen[k % 2].append(k))
    lanes.put(0, lambda: 1 / 0)  # logged; the lane goes on
    lanes.put(0, lambda: seen[0].append("after"))
    lanes.close()
    assert seen == {0: list(range(0, 20, 2)) + ["after"], 1: list(range(1, 20, 2))}
    lanes.close()  # idempotent


def test_blend_threads_use_short_ufunc_buffers_and_leave_other_threads_alone(schedule):
    """The blend thread and the lanes iterate strided tile rows without numpy's buffer copies (a buffer of
    half a tile row); the caller's thread keeps numpy's default."""
    from invsr_runtime.lanes import ChannelLanes

    default = np.getbufsize()
    lanes, seen = ChannelLanes(2, depth=2, initializer=lambda: np.setbufsize(64)), []
    lanes.put(1, lambda: seen.append(np.getbufsize()))
    lanes.close()
    assert seen == [64]
    on_blend_thread: list[int] = []
    with TileScheduler([SimulatedDevice(tile=128, batch=1)]) as scheduler:  # 512-px tiles: half a row = 256
        scheduler.submit(_image(8, 8), schedule, color_fix="ycbcr",
                         on_tiles=lambda done, total: on_blend_thread.append(np.getbufsize())).result(30)
        lane_sizes = [np.getbufsize()]
        scheduler._lanes.put(0, lambda: lane_sizes.append(np.getbufsize()))
    assert on_blend_thread == [256] and lane_sizes == [default, 256] and np.getbufsize() == default


def test_tile_weights_are_built_once_per_distinct_weight_and_shared():
    """The normalised weight of every tile, built once per distinct (row class, column class) in float32
    from the float64 product, and the same object for every tile (and every channel) that shares it."""
    from invsr_runtime.blend import TileWeights

    plan = plan_tiles(300, 250, tile=32)  # 19 x 16 tiles
    weights = TileWeights(plan)
    kernel = TileBlender(plan, 1)._kernel  # the whole-image blender's float64 2-D Gaussian
    total = np.zeros((plan.padded_h * 4, plan.padded_w * 4))
    for y, x in plan.origins:
        total[y * 4:y * 4 + 128, x * 4:x * 4 + 128] += kernel
    rows, cols = len(weights.ys), len(weights.xs)
    assert rows * cols == plan.num_tiles
    got = {}
    for index, (y, x) in enumerate(plan.origins):
        r, c = divmod(index, cols)
        w = weights(r, c)
        expected = (kernel / total[y * 4:y * 4 + 128, x * 4:x * 4 + 128]).astype(np.float32)
        np.testing.assert_allclose(w, expected, rtol=2e-7, atol=0)
        assert w.dtype == np.float32 and not w.flags.writeable
        got.setdefault(id(w), w)
    assert len(got) == weights.builds <= 25 < plan.num_tiles  # in tile order, each weight is built once
    assert len(weights._built) <= weights.keep == 3  # a tile row's left edge, interior and right edge
    assert weights(5, 5) is weights(6, 7)  # interior tiles share one array
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(TileWeights.__call__(fresh, 0, 0)))
               for fresh in [TileWeights(plan)] for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(w) for w in results}) == 1  # concurrent first use builds it once


def test_noise_table_changes_no_byte_and_is_shared_or_refused(schedule):
    """Seed 0's tiles come from the scheduler's noise table: the same bytes as drawing every tile (a table
    smaller than the image, and none at all); a table for other latents is refused."""
    from invsr_runtime.noise import NoiseTable

    img = _image(70, 90)  # 12 tiles of 32
    outs = []
    for tiles in (0, 5, 256):
        with TileScheduler([SimulatedDevice(tile=32, batch=3)], noise_tiles=tiles) as scheduler:
            outs.append(scheduler.submit(img, schedule, out_dtype="uint8").result(30))
            assert scheduler._noise.vae.shape[0] == tiles
    assert all(np.array_equal(outs[0], o) for o in outs[1:])
    table = NoiseTable((16, 16), tiles=4)
    with TileScheduler([SimulatedDevice(tile=32, batch=3)], noise=table) as scheduler:
        assert np.array_equal(scheduler.submit(img, schedule, out_dtype="uint8").result(30), outs[0])
        assert scheduler._noise is table
    with pytest.raises(ValueError, match="noise table"):
        TileScheduler([SimulatedDevice(tile=16, batch=3)], noise=table)
    with pytest.raises(ValueError, match="noise_tiles"):
        TileScheduler([SimulatedDevice(tile=32, batch=3)], noise_tiles=-1)


def test_no_memory_for_the_noise_table_draws_every_tile(schedule, monkeypatch, caplog):
    """A table that cannot be allocated is skipped with a warning; the images come out the same."""
    from invsr_runtime import noise as noise_module

    img = _image(40, 40)
    with TileScheduler([SimulatedDevice(tile=32, batch=3)]) as scheduler:
        want = scheduler.submit(img, schedule, out_dtype="uint8").result(30)
    real = noise_module.NoiseTable.__init__

    def init(self, latent_hw, tiles=noise_module.TABLE_TILES, seed=0, channels=4):
        if tiles:
            raise MemoryError
        real(self, latent_hw, tiles, seed, channels)

    monkeypatch.setattr(noise_module.NoiseTable, "__init__", init)
    with TileScheduler([SimulatedDevice(tile=32, batch=3)]) as scheduler:
        got = scheduler.submit(img, schedule, out_dtype="uint8").result(30)
        assert len(scheduler._noise.vae) == 0
    assert np.array_equal(got, want) and "no memory for the noise table" in caplog.text


def test_lane_blending_counts_images_and_keeps_ycbcr_on_the_blend_thread(schedule):
    """none / wavelet images are blended channel by channel on the lanes, ycbcr (mixes channels) on the
    blend thread; all finish, are counted, and match the reference loop."""
    device = SimulatedDevice(tile=32, batch=3)
    img = _image(40, 56)
    with TileScheduler([device]) as scheduler:
        outs = {fix: scheduler.submit(img, schedule, color_fix=fix, seed=2) for fix in ("none", "wavelet", "ycbcr")}
        got = {fix: f.result(30) for fix, f in outs.items()}
    assert scheduler.stats.images == 3
    for fix, out in got.items():
        np.testing.assert_allclose(out, upscale_rgb(device, img, schedule, color_fix=fix, seed=2), atol=5e-7)


def test_a_device_faster_than_the_host_waits_instead_of_piling_up_outputs(schedule):
    """Device outputs are fresh arrays (as a real backend's download); however fast the device, no more
    than `output_slots` of them are alive at once, and the image is unchanged."""
    import weakref

    alive, most = [0], [0]
    lock = threading.Lock()

    def gone() -> None:
        with lock:
            alive[0] -= 1

    class FreshOutputs(SimulatedDevice):
        def run_chain(self, *args):
            out = super().run_chain(*args).copy()
            with lock:
                alive[0] += 1
                most[0] = max(most[0], alive[0])
            weakref.finalize(out, gone)
            return out

    img = _image(150, 170)  # 9 x 10 tiles of 32: 23 batches of 4; wavelet keeps the lanes busy
    with TileScheduler([FreshOutputs(tile=32, batch=4)]) as scheduler:
        got = scheduler.submit(img, schedule, color_fix="wavelet", seed=3).result(60)
    assert 2 <= most[0] <= scheduler.output_slots == 4
    with TileScheduler([SimulatedDevice(tile=32, batch=4)]) as scheduler:
        want = scheduler.submit(img, schedule, color_fix="wavelet", seed=3).result(60)
    np.testing.assert_array_equal(got, want)


def test_a_cancelled_image_stops_using_the_device(schedule):
    """Cancelling an image's future (a client gone) skips its remaining tiles; the next image is unaffected."""
    device = SimulatedDevice(tile=32, batch=1, ms_per_tile=20)
    big = _image(32 * 12, 32 * 12)  # 23 x 23 = 529 tiles: ~10 s on this device
    with TileScheduler([device], queue_depth=1) as scheduler:
        started = threading.Event()
        future = scheduler.submit(big, schedule, on_tiles=lambda done, total: started.set())
        assert started.wait(30)
        assert future.cancel()
        small = scheduler.submit(_image(20, 20), schedule).result(30)
    assert small.shape == (80, 80, 3) and future.cancelled()
    total = plan_tiles(*big.shape[:2], tile=32).num_tiles
    assert sum(device.batches) < total // 10, f"{sum(device.batches)} of {total} tiles ran after the cancel"


def test_a_large_image_stays_within_8_bytes_per_output_pixel():
    """Peak RSS growth (subprocess) of a 1500x1000 LR image -> 24 MP uint8, the returned image and the
    input's float copy included, stays under 8 bytes per output pixel."""
    code = """
import resource, sys
import numpy as np, psutil
from invsr_runtime.backends.simulated import SimulatedDevice
from invsr_runtime.schedule import SD_TURBO_SCHEDULER, alphas_cumprod, make_schedule
from invsr_runtime.scheduler import TileScheduler
schedule = make_schedule((200,), alphas_cumprod(**SD_TURBO_SCHEDULER))
lr8 = np.random.default_rng(0).integers(0, 256, (1500, 1000, 3), dtype=np.uint8)
scheduler = TileScheduler([SimulatedDevice(tile=128, batch=8, echo=False)])
scheduler.submit(np.zeros((8, 8, 3), np.float32), schedule).result()   # warm: threads, canned outputs
base = max(psutil.Process().memory_info().rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
out = scheduler.submit(np.divide(lr8, 255, dtype=np.float32), schedule, color_fix=sys.argv[1], out_dtype="uint8").result()
if sys.argv[2] == "alpha":  # an RGBA photo: the alpha plane as Upscaler.finish_picture upscales it
    from invsr_runtime.upscaler import upscale_alpha
    alpha = upscale_alpha(np.divide(lr8[..., 0], 255, dtype=np.float32), 4, "uint8")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
scheduler.close()
print((peak - base) / (out.shape[0] * out.shape[1]))
"""
    for fix, alpha in (("none", "-"), ("wavelet", "-"), ("wavelet", "alpha")):
        res = subprocess.run([sys.executable, "-c", code, fix, alpha], capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr
        per_pixel = float(res.stdout.strip().splitlines()[-1])
        print(f"colour fix {fix}, {alpha}: {per_pixel:.2f} bytes per output pixel above the loaded runtime")
        assert per_pixel <= 8.0


# ------------------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def toy_engine(tmp_path_factory):
    from test_runtime_toyengine import build_toy_engine

    return build_toy_engine(tmp_path_factory.mktemp("toy") / "engine", tile=16, batch=3)


def test_folder_run_streams_with_the_same_bytes_as_single_runs(toy_engine, tmp_path):
    """invsr-run on a folder (batches shared across images, decode/encode overlapped) writes the same
    files as one run per image, in any order."""
    from PIL import Image

    from invsr_runtime.cli import run

    src = tmp_path / "in"
    src.mkdir()
    for k, (h, w) in enumerate([(20, 24), (9, 40), (33, 17)]):
        Image.fromarray((_image(h, w, k) * 255).astype(np.uint8)).save(src / f"{k}.png")
    assert run([str(toy_engine), str(src), "-o", str(tmp_path / "all"), "--seed", "3"]) == 0
    for name in ("2.png", "0.png", "1.png"):
        assert run([str(toy_engine), str(src / name), "-o", str(tmp_path / "one"), "--seed", "3"]) == 0
        assert (tmp_path / "all" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name


def test_devices_option(toy_engine, tmp_path, capsys):
    from invsr_runtime.cli import EXIT_USAGE, run

    (tmp_path / "a.png").write_bytes(b"")
    assert run([str(toy_engine), str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--devices", "0,x"]) == EXIT_USAGE
    assert "--devices" in capsys.readouterr().err
    assert run([str(toy_engine), str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--devices", "1,1"]) == EXIT_USAGE
    assert "distinct" in capsys.readouterr().err
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert run([str(toy_engine), str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--devices", "0"]) == EXIT_USAGE
        assert "onnxruntime-gpu" in capsys.readouterr().err


@pytest.mark.parametrize("max_wait_s, expected", [(0.0, [1, 1]), (2.0, [2])])
def test_partial_batch_waits_for_later_submissions_only_as_long_as_max_wait(schedule, max_wait_s, expected):
    """A service's concurrent requests: a lone tile waits up to max_wait_s (devices idle) for company."""
    device = SimulatedDevice(tile=16, scale=4, batch=4, fixed_batch=False)
    with TileScheduler([device], max_wait_s=max_wait_s) as scheduler:
        first = scheduler.submit(_image(16, 16, 1), schedule, seed=1)
        threading.Event().wait(0.3)  # the second request arrives 0.3 s later
        second = scheduler.submit(_image(16, 16, 2), schedule, seed=2)
        first.result(timeout=10), second.result(timeout=10)
    assert device.batches == expected

"""Seeded per-tile noise: deterministic, distinct per tile and seed, independent of order."""
import numpy as np
import pytest

from invsr_runtime.noise import tile_noise


def test_shapes_and_dtype():
    vae, pred = tile_noise(0, 0, (16, 24), channels=4)
    for arr in (vae, pred):
        assert arr.shape == (4, 16, 24) and arr.dtype == np.float32
    assert tile_noise(0, 0, (8, 8), channels=3)[0].shape == (3, 8, 8)


def test_deterministic():
    a = tile_noise(7, 3, (8, 8))
    b = tile_noise(7, 3, (8, 8))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_drawn_from_documented_generator():
    """Other languages/backends reproduce the noise from default_rng((seed, tile)): vae first, then predictor."""
    vae, pred = tile_noise(11, 5, (4, 6))
    rng = np.random.default_rng((11, 5))
    np.testing.assert_array_equal(vae, rng.standard_normal((4, 4, 6), dtype=np.float32))
    np.testing.assert_array_equal(pred, rng.standard_normal((4, 4, 6), dtype=np.float32))


def test_differs_across_tiles_seeds_and_streams():
    base_vae, base_pred = tile_noise(0, 0, (8, 8))
    assert not np.array_equal(base_vae, base_pred)
    assert not np.array_equal(base_vae, tile_noise(0, 1, (8, 8))[0])
    assert not np.array_equal(base_vae, tile_noise(1, 0, (8, 8))[0])
    # (seed, tile) is a pair, not a sum: (1, 0) and (0, 1) must differ.
    assert not np.array_equal(tile_noise(1, 0, (8, 8))[0], tile_noise(0, 1, (8, 8))[0])


def test_independent_of_call_order():
    forward = [tile_noise(3, i, (8, 8)) for i in range(4)]
    backward = [tile_noise(3, i, (8, 8)) for i in reversed(range(4))][::-1]
    for (fv, fp), (bv, bp) in zip(forward, backward):
        np.testing.assert_array_equal(fv, bv)
        np.testing.assert_array_equal(fp, bp)


def test_is_standard_normal():
    vae, pred = tile_noise(0, 0, (128, 128))
    for arr in (vae, pred):
        assert abs(float(arr.mean())) < 0.02 and abs(float(arr.std()) - 1.0) < 0.02


def test_negative_seed_rejected():
    with pytest.raises(ValueError, match="seed"):
        tile_noise(-1, 0, (4, 4))


def test_noise_table_gives_tile_noise_values():
    """The table's tiles are tile_noise's, read-only; other seeds and later tiles are drawn as before."""
    from invsr_runtime.noise import NoiseTable

    table = NoiseTable((8, 6), tiles=5, seed=3)
    assert table.nbytes == 2 * 5 * 4 * 8 * 6 * 4
    for seed, index in [(3, 0), (3, 4), (3, 5), (3, 99), (0, 0), (4, 2)]:
        got, want = table(seed, index), tile_noise(seed, index, (8, 6))
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    kept = table(3, 1)[0]
    assert not kept.flags.writeable
    assert np.shares_memory(kept, table.vae) and not np.shares_memory(table(3, 5)[0], table.vae)
    empty = NoiseTable((8, 6), tiles=0)
    np.testing.assert_array_equal(empty(0, 0)[1], tile_noise(0, 0, (8, 6))[1])
    with pytest.raises(ValueError, match="tiles"):
        NoiseTable((8, 6), tiles=-1)

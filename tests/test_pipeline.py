"""The reference pipeline does exactly INVSR.md's sampling: identities, timesteps, noise, sizes, colour fix."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from invsr_runtime.colorfix import apply_color_fix, color_reference
from invsr_runtime.noise import tile_noise
from invsr_runtime.schedule import ScheduleError

RNG = np.random.default_rng(1234)


def _tiles(pipe, n=2):
    t = pipe.base.tile
    lat = t * 4 // 8
    lr = torch.from_numpy(RNG.random((n, 3, t, t), dtype=np.float32))
    noises = [tile_noise(7, i, (lat, lat)) for i in range(n)]
    vae = torch.from_numpy(np.stack([v for v, _ in noises]))
    pred = torch.from_numpy(np.stack([p for _, p in noises]))
    return lr, vae, pred


class _Recorder:
    """Wraps the UNet to record the (scaled input, timestep) it is called with."""

    def __init__(self, unet):
        self.unet, self.calls = unet, []

    def __call__(self, sample, t, encoder_hidden_states):
        self.calls.append((sample.clone(), t.clone()))
        return self.unet(sample, t, encoder_hidden_states=encoder_hidden_states)


def test_one_step_identity(tiny_pipeline):
    """One step reduces to x0 = z_lr + sigma (eps_np - eps), decoded."""
    pipe = tiny_pipeline
    lr, vae, pred = _tiles(pipe)
    sched = pipe.schedule(1)
    sigma = float(sched.sigmas[0])
    z_lr = pipe.encode(lr, vae)
    eps_np = pipe.predict_noise(lr, 199, pred)
    eps = pipe.unet_eps(z_lr + sigma * eps_np, sigma, 199)
    expected = pipe.decode(z_lr + sigma * (eps_np - eps))
    got = pipe.upscale_tiles(lr, sched, vae, pred)
    assert got.shape == (2, 3, 4 * pipe.base.tile, 4 * pipe.base.tile)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("steps,net_ts", [(1, [199]), (3, [199, 99, 49]), (5, [249, 199, 149, 99, 49])])
def test_unet_sees_network_timesteps_and_scaled_input(tiny_pipeline, monkeypatch, steps, net_ts):
    """Catches an off-by-one timestep or a wrong sigma in the input scaling."""
    pipe = tiny_pipeline
    rec = _Recorder(pipe.base.unet)
    lr, vae, pred = _tiles(pipe, 1)
    sched = pipe.schedule(steps)
    monkeypatch.setattr(pipe.base, "unet", rec)
    pipe.upscale_tiles(lr, sched, vae, pred)
    assert [int(t[0]) for _, t in rec.calls] == net_ts
    # First call: input = (z_lr + sigma * eps_np) / sqrt(sigma^2 + 1), sigma of paper timestep t1.
    monkeypatch.undo()
    sigma = float(sched.sigmas[0])
    assert sigma == pytest.approx({1: 0.5693, 3: 0.5693, 5: 0.6932}[steps], abs=1e-4)
    z = pipe.encode(lr, vae) + sigma * pipe.predict_noise(lr, net_ts[0], pred)
    torch.testing.assert_close(rec.calls[0][0], z / np.sqrt(sigma**2 + 1), atol=1e-6, rtol=0)


def test_multi_step_is_deterministic_euler(tiny_pipeline):
    """Two steps = the Euler/DDIM(eta=0) update by hand, no fresh noise between steps."""
    pipe = tiny_pipeline
    lr, vae, pred = _tiles(pipe, 1)
    sched = pipe.schedule(None, "200,100")
    s1, s2 = (float(s) for s in sched.sigmas)
    z = pipe.encode(lr, vae) + s1 * pipe.predict_noise(lr, 199, pred)
    eps1 = pipe.unet_eps(z, s1, 199)
    z = (z - s1 * eps1) + s2 * eps1
    eps2 = pipe.unet_eps(z, s2, 99)
    expected = pipe.decode(z - s2 * eps2)
    torch.testing.assert_close(pipe.upscale_tiles(lr, sched, vae, pred), expected, atol=1e-5, rtol=0)


def test_noise_is_an_input(tiny_pipeline):
    pipe = tiny_pipeline
    lr, vae, pred = _tiles(pipe, 1)
    sched = pipe.schedule(1)
    a = pipe.upscale_tiles(lr, sched, vae, pred)
    assert torch.equal(a, pipe.upscale_tiles(lr, sched, vae, pred))
    assert not torch.allclose(a, pipe.upscale_tiles(lr, sched, vae, pred * 0.5))
    assert not torch.allclose(a, pipe.upscale_tiles(lr, sched, vae * 0.5, pred))


@pytest.mark.parametrize("h,w", [(1, 1), (13, 37), (40, 33), (32, 32)])
def test_output_is_four_times_the_input(tiny_pipeline, h, w):
    img = RNG.random((h, w, 3), dtype=np.float32)
    out = tiny_pipeline.upscale(img, steps=1)
    assert out.shape == (4 * h, 4 * w, 3) and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0


def test_seed_determines_the_output(tiny_pipeline):
    img = RNG.random((40, 70, 3), dtype=np.float32)
    a = tiny_pipeline.upscale(img, seed=3)
    assert np.array_equal(a, tiny_pipeline.upscale(img, seed=3))
    assert not np.array_equal(a, tiny_pipeline.upscale(img, seed=4))


def test_tile_batch_does_not_change_the_result(tiny_pipeline):
    img = RNG.random((48, 80, 3), dtype=np.float32)
    a = tiny_pipeline.upscale(img, tile_batch=1)
    b = tiny_pipeline.upscale(img, tile_batch=8)
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_color_fix_keeps_the_references_low_frequencies(tiny_pipeline):
    from invsr_train.samples import sample_lr

    lr = sample_lr("chelsea")[:40, :56]
    raw = tiny_pipeline.upscale(lr, color_fix="none")
    fixed = tiny_pipeline.upscale(lr, color_fix="wavelet")
    np.testing.assert_allclose(fixed, np.clip(apply_color_fix(raw, color_reference(lr), "wavelet"), 0, 1), atol=1e-6)
    # The mean colour (lowest frequency) follows the LR image, not the (random-weight) model's output.
    ref_mean = color_reference(lr).mean(axis=(0, 1))
    assert np.abs(fixed.mean(axis=(0, 1)) - ref_mean).max() < 0.02
    assert np.abs(fixed.mean(axis=(0, 1)) - ref_mean).max() < np.abs(raw.mean(axis=(0, 1)) - ref_mean).max()


def test_bad_schedule_is_refused(tiny_pipeline):
    img = RNG.random((8, 8, 3), dtype=np.float32)
    with pytest.raises(ScheduleError):
        tiny_pipeline.upscale(img, steps=6)
    with pytest.raises(ScheduleError):
        tiny_pipeline.upscale(img, timesteps="100,200")


def test_encode_is_plain_bicubic_then_posterior_sample(tiny_pipeline):
    """z_lr = 0.18215 * (mean + std * noise) of VAE(2 * bicubic_x4_without_antialias(lr) - 1)."""
    from invsr_runtime.resize import bicubic_resize

    pipe = tiny_pipeline
    lr, vae_noise, _ = _tiles(pipe, 1)
    t = pipe.base.tile

    def posterior_sample(antialias):
        up = bicubic_resize(lr[0].permute(1, 2, 0).numpy(), 4 * t, 4 * t, antialias=antialias)
        x = torch.from_numpy(up).permute(2, 0, 1)[None] * 2 - 1
        with torch.no_grad():
            dist = pipe.base.vae.encode(x).latent_dist
        return 0.18215 * (dist.mean + torch.exp(0.5 * dist.logvar) * vae_noise)

    got = pipe.encode(lr, vae_noise)
    assert pipe.scaling_factor == pytest.approx(0.18215)
    torch.testing.assert_close(got, posterior_sample(False), atol=1e-5, rtol=0)
    assert (got - posterior_sample(True)).abs().max() > 1e-4  # the antialiased kernel would be caught


def test_predictor_sees_the_lr_tile_at_its_own_size(tiny_pipeline, monkeypatch):
    """Predictor input: the LR tile itself (not upsampled), in [0, 1]; its timestep is the network one."""
    pipe = tiny_pipeline
    lr, vae, pred = _tiles(pipe, 2)
    seen = []
    real = pipe.predictor.forward

    def spy(x, t):
        seen.append((x.clone(), t))
        return real(x, t)

    monkeypatch.setattr(pipe.predictor, "forward", spy)
    pipe.upscale_tiles(lr, pipe.schedule(None, "150,50"), vae, pred)
    assert len(seen) == 1 and seen[0][1] == 149
    torch.testing.assert_close(seen[0][0], lr, atol=0, rtol=0)
    monkeypatch.undo()
    with torch.no_grad():
        moments = pipe.predictor(lr, 149)
    want = moments[:, :4] + torch.exp(0.5 * moments[:, 4:]) * pred
    torch.testing.assert_close(pipe.predict_noise(lr, 149, pred), want, atol=1e-6, rtol=0)


def test_reference_chain_is_a_tile_chain_of_variable_batch(tiny_pipeline):
    from invsr_runtime.tile_chain import TileChain
    from invsr_train.pipeline import ReferenceChain

    chain = ReferenceChain(tiny_pipeline, tile=16, batch=3)
    assert isinstance(chain, TileChain) and not chain.fixed_batch
    assert (chain.tile, chain.scale, chain.batch) == (16, 4, 3)
    lr = RNG.random((2, 3, 16, 16), dtype=np.float32)  # a short batch is fine: nothing is padded
    noise = np.zeros((2, 4, 8, 8), dtype=np.float32)
    assert chain.run_chain(lr, noise, noise, tiny_pipeline.schedule(1)).shape == (2, 3, 64, 64)

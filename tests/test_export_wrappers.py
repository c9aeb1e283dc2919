"""The four graph wrappers implement docs/INTERFACES.md exactly: checked against ReferencePipeline's stages."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from invsr_export.chain import flush_denormals, run_chain, torch_runner
from invsr_export.wrappers import build_wrappers, graph_specs
from invsr_runtime.manifest import COMPONENTS

TILE, LATENT = 32, 16


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from threads; one thread keeps the suite fast on busy 2-core machines."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with flush_denormals():
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def wrappers(tiny_base, tiny_predictor):
    return build_wrappers(tiny_base, tiny_predictor)


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(3)
    return {
        "lr": torch.rand(2, 3, TILE, TILE, generator=gen),
        "vae_noise": torch.randn(2, 4, LATENT, LATENT, generator=gen),
        "pred_noise": torch.randn(2, 4, LATENT, LATENT, generator=gen),
    }


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 2e-6) -> None:
    err = (a - b).abs().max().item() / max(b.abs().max().item(), 1.0)
    assert err < tol, err


def test_specs_follow_the_contract():
    specs = graph_specs(batch=2, tile=TILE, embed_dim=32)
    assert tuple(specs) == COMPONENTS
    assert specs["vae_encoder"].input_names == ["lr", "noise"]
    assert specs["predictor"].input_names == ["lr", "timestep", "noise", "latent_lr", "sigma"]
    assert specs["unet"].input_names == ["latent", "timestep", "sigma", "sigma_next", "encoder_hidden_states"]
    assert specs["unet"].inputs[-1].shape == [2, 77, 32]
    assert specs["vae_decoder"].outputs[0].shape == [2, 3, 4 * TILE, 4 * TILE]
    assert all(t.dtype == "float32" for s in specs.values() for t in s.inputs + s.outputs)


def test_encoder_matches_reference(wrappers, tiny_pipeline, inputs):
    with torch.no_grad():
        got = wrappers["vae_encoder"](inputs["lr"], inputs["vae_noise"])
    _close(got, tiny_pipeline.encode(inputs["lr"], inputs["vae_noise"]))


def test_predictor_matches_reference(wrappers, tiny_pipeline, inputs):
    sched = tiny_pipeline.schedule(1)
    z_lr = tiny_pipeline.encode(inputs["lr"], inputs["vae_noise"])
    sigma = float(sched.sigmas[0])
    with torch.no_grad():
        got = wrappers["predictor"](inputs["lr"], torch.full((2,), 199.0), inputs["pred_noise"], z_lr,
                                    torch.full((2,), sigma))
    want = z_lr + sigma * tiny_pipeline.predict_noise(inputs["lr"], 199, inputs["pred_noise"])
    _close(got, want)


@pytest.mark.parametrize("sigma_next", [0.0, 0.3417])
def test_unet_step_matches_reference(wrappers, tiny_pipeline, tiny_base, sigma_next):
    z = torch.randn(2, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(5))
    sigma, t = 0.5693, 199
    with torch.no_grad():
        got = wrappers["unet"](z, torch.full((2,), float(t)), torch.full((2,), sigma), torch.full((2,), sigma_next),
                               tiny_base.prompt_embeds.expand(2, -1, -1))
    eps = tiny_pipeline.unet_eps(z, sigma, t)
    _close(got, z - sigma * eps + sigma_next * eps)


def test_decoder_matches_reference(wrappers, tiny_pipeline):
    z = torch.randn(1, 4, LATENT, LATENT, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        got = wrappers["vae_decoder"](z)
    _close(got, tiny_pipeline.decode(z))
    assert got.min() >= 0 and got.max() <= 1


@pytest.mark.parametrize("steps", [1, 3])
def test_chain_of_wrappers_is_upscale_tiles(wrappers, tiny_pipeline, tiny_base, inputs, steps):
    sched = tiny_pipeline.schedule(steps)
    want = tiny_pipeline.upscale_tiles(inputs["lr"], sched, inputs["vae_noise"], inputs["pred_noise"]).numpy()
    got = run_chain(torch_runner(wrappers), inputs["lr"].numpy(), inputs["vae_noise"].numpy(),
                    inputs["pred_noise"].numpy(), sched, tiny_base.prompt_embeds.numpy())
    assert np.abs(got - want).max() < 2e-5

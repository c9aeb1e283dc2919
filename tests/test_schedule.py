"""The sampling schedule: alphas_cumprod, published sigma table, timestep validation."""
import numpy as np
import pytest

from invsr_runtime.schedule import (
    DEFAULT_TIMESTEPS,
    Schedule,
    ScheduleError,
    alphas_cumprod,
    make_schedule,
    resolve_timesteps,
    sigma,
)

# Published in INVSR.md: sigma at network timesteps 249/199/149/99/49 (paper 250/200/150/100/50).
PUBLISHED_SIGMAS = {250: 0.6932, 200: 0.5693, 150: 0.4538, 100: 0.3417, 50: 0.2230}


def test_alphas_cumprod_matches_diffusers():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    expected = sched.alphas_cumprod.double().numpy()
    ours = alphas_cumprod()
    assert ours.dtype == np.float64 and ours.shape == (1000,)
    np.testing.assert_allclose(ours, expected, atol=1e-6, rtol=0)


def test_linear_betas_match_diffusers_and_bad_schedule_rejected():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.EulerDiscreteScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear")
    ours = alphas_cumprod(0.0001, 0.02, beta_schedule="linear")
    np.testing.assert_allclose(ours, sched.alphas_cumprod.double().numpy(), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="beta_schedule"):
        alphas_cumprod(beta_schedule="cosine")


@pytest.mark.parametrize("t", sorted(PUBLISHED_SIGMAS))
def test_sigma_matches_published_table(t):
    assert round(sigma(t, alphas_cumprod()), 4) == pytest.approx(PUBLISHED_SIGMAS[t], abs=1e-9)


@pytest.mark.parametrize("t", sorted(PUBLISHED_SIGMAS))
def test_table_would_catch_off_by_one(t):
    """Indexing abar[t] instead of abar[t-1] changes sigma at 4 decimals, so the table test is sensitive."""
    a = alphas_cumprod()
    wrong = float(np.sqrt((1 - a[t]) / a[t]))
    assert round(wrong, 4) != PUBLISHED_SIGMAS[t]


def test_make_schedule_five_steps():
    a = alphas_cumprod()
    s = make_schedule((250, 200, 150, 100, 50), a)
    assert isinstance(s, Schedule) and s.steps == 5
    assert s.timesteps == (250, 200, 150, 100, 50)
    assert s.net_timesteps == (249, 199, 149, 99, 49)
    assert s.sigmas.dtype == np.float64 and s.sigmas_next.dtype == np.float64
    np.testing.assert_allclose(s.sigmas, [PUBLISHED_SIGMAS[t] for t in s.timesteps], atol=5e-5)
    np.testing.assert_array_equal(s.sigmas_next[:-1], s.sigmas[1:])
    assert s.sigmas_next[-1] == 0.0


def test_make_schedule_one_step_and_string():
    s = make_schedule("200", alphas_cumprod())
    assert s.timesteps == (200,) and s.net_timesteps == (199,)
    assert s.sigmas_next.tolist() == [0.0]


def test_make_schedule_validates():
    with pytest.raises(ScheduleError):
        make_schedule((100, 200), alphas_cumprod())


def test_default_timesteps_are_the_papers():
    assert DEFAULT_TIMESTEPS == {
        1: (200,),
        2: (200, 100),
        3: (200, 100, 50),
        4: (200, 150, 100, 50),
        5: (250, 200, 150, 100, 50),
    }


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 5])
def test_resolve_from_steps(steps):
    assert resolve_timesteps(steps) == DEFAULT_TIMESTEPS[steps]


def test_resolve_defaults_to_one_step():
    assert resolve_timesteps() == (200,)


@pytest.mark.parametrize("given", ["200,100", " 200 , 100 ", [200, 100], (200, 100), np.array([200, 100])])
def test_resolve_accepts_strings_and_sequences(given):
    assert resolve_timesteps(timesteps=given) == (200, 100)
    assert resolve_timesteps(2, given) == (200, 100)


@pytest.mark.parametrize("steps", [0, 6, -1, True, 2.5])
def test_bad_step_count(steps):
    with pytest.raises(ScheduleError, match=r"steps must be 1\.\.5, got"):
        resolve_timesteps(steps)


def test_bad_step_count_message():
    with pytest.raises(ScheduleError, match=r"^steps must be 1\.\.5, got 6$"):
        resolve_timesteps(6)


@pytest.mark.parametrize(
    "steps, given, match",
    [
        (2, "200", "exactly 2"),
        (1, (200, 100), "exactly 1"),
        (None, (100, 200), "strictly decreasing"),
        (None, (200, 200), "strictly decreasing"),
        (None, (100, 0), "0 is invalid"),
        (None, "0", "0 is invalid"),
        (None, (251,), "1..250"),
        (None, (-5,), "1..250"),
        (None, "200,abc", "not an integer"),
        (None, (200.5,), "not an integer"),
        (None, "", "not an integer|empty"),
        (None, (), "empty"),
        (None, (250, 200, 150, 100, 50, 25), "1 to 5 steps"),
        (None, "6,5,4,3,2,1", "1 to 5 steps"),
    ],
)
def test_bad_timesteps(steps, given, match):
    with pytest.raises(ScheduleError, match=match):
        resolve_timesteps(steps, given)


def test_schedule_error_is_value_error():
    assert issubclass(ScheduleError, ValueError)


def test_sigma_rejects_out_of_table():
    with pytest.raises(ScheduleError):
        sigma(0, alphas_cumprod())

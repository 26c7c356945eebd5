"""Samplers on a Gaussian data distribution, whose exact denoiser and ODE solution are known.

Data x0 ~ N(mu, s^2 I). At VE noise level sigma, x = x0 + sigma eps ~ N(mu, (s^2 + sigma^2) I) and
    E[x0 | x] = mu + s^2 / (s^2 + sigma^2) (x - mu),
and the probability-flow ODE carries x at sigma_max to mu + s / sqrt(s^2 + sigma_max^2) (x - mu) at 0.
"""

import itertools

import pytest
import torch

from t2i.diffusion import (
    OBJECTIVES,
    SAMPLERS,
    SCHEDULES,
    Denoiser,
    Schedule,
    get_sampler,
    karras_sigmas,
    sample,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_euler,
    sample_heun,
    schedule_sigmas,
)
from t2i.errors import UserError

MU = torch.tensor([1.0, -2.0])
S = 0.5
N = 4000


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    mu = MU.to(x.dtype)
    return mu + S**2 / (S**2 + sigma[:, None] ** 2) * (x - mu)


def ode_solution(x_start: torch.Tensor, sigma_max: float) -> torch.Tensor:
    mu = MU.to(x_start.dtype)
    return mu + S / (S**2 + sigma_max**2) ** 0.5 * (x_start - mu)


def exact_net(schedule: Schedule, objective: str):
    """The exact network for the Gaussian data, in the schedule's own (x_t, t) and target."""

    def net(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = schedule.alpha(t)[:, None], schedule.sigma(t)[:, None]
        x0 = gaussian_denoiser(x_t / alpha, (sigma / alpha)[:, 0])
        eps = (x_t - alpha * x0) / sigma
        return {"eps": eps, "x0": x0, "v": alpha * eps - sigma * x0, "flow": eps - x0}[objective]

    return net


def start_noise(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(N, 2, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize(
    ("name", "steps", "kwargs"),
    [
        ("euler", 100, {}),
        ("ddim", 100, {}),
        ("ddim", 100, {"eta": 0.5}),
        ("heun", 30, {}),
        ("dpmpp-2m", 30, {}),
        ("dpmpp-2m-sde", 60, {}),
        ("ddpm", 200, {}),
    ],
)
def test_sampler_reproduces_the_gaussian(name, steps, kwargs):
    g = torch.Generator().manual_seed(0)
    x = sample(gaussian_denoiser, (N, 2), karras_sigmas(steps, 0.002, 80.0), name, g, disable=True, **kwargs)
    assert (x.mean(0) - MU).abs().max() < 0.05
    assert (x.std(0) - S).abs().max() < 0.05


@pytest.mark.parametrize(
    ("schedule_name", "objective", "sampler", "steps", "spacing"),
    [
        ("cosine", "v", "dpmpp-2m", 50, "uniform"),
        ("flow", "flow", "euler", 100, "uniform"),
        ("linear", "eps", "ddpm", 200, "uniform"),
        ("linear", "x0", "heun", 30, "karras"),
    ],
)
def test_wrapped_schedule_models_reproduce_the_gaussian(schedule_name, objective, sampler, steps, spacing):
    schedule = Schedule.from_name(schedule_name)
    denoiser = Denoiser(exact_net(schedule, objective), schedule, objective)
    sigmas = schedule_sigmas(schedule, steps, spacing)
    x = sample(denoiser, (N, 2), sigmas, sampler, torch.Generator().manual_seed(0), disable=True)
    assert (x.mean(0) - MU).abs().max() < 0.05
    assert (x.std(0) - S).abs().max() < 0.05


def test_stable_diffusion_schedule_keeps_its_terminal_snr_bias():
    """sigma_max ~= 14.6 is not pure noise: starting from randn * sigma_max shifts the mean by the closed form."""
    schedule = Schedule.from_name("scaled-linear")
    sigmas = schedule_sigmas(schedule, 40, "karras")
    denoiser = Denoiser(exact_net(schedule, "eps"), schedule, "eps")
    x = sample(denoiser, (N, 2), sigmas, "heun", torch.Generator().manual_seed(0), disable=True)
    expected_mean = MU * (1 - S / (S**2 + float(sigmas[0]) ** 2) ** 0.5)
    assert (expected_mean - MU).abs().max() > 0.06  # the bias is real ...
    assert (x.mean(0) - expected_mean).abs().max() < 0.025  # ... and exactly what the process predicts


@pytest.mark.parametrize(("sampler", "order"), [(sample_euler, 1), (sample_heun, 2), (sample_dpmpp_2m, 2)])
def test_deterministic_samplers_converge_at_their_order(sampler, order):
    z = start_noise(dtype=torch.float64)[:500]
    errors = []
    for steps in (20, 40, 80):
        x = sampler(gaussian_denoiser, z * 80.0, karras_sigmas(steps, 0.002, 80.0), disable=True)
        errors.append(float((x - ode_solution(z * 80.0, 80.0)).abs().max()))
    for coarse, fine in itertools.pairwise(errors):
        assert 0.8 * 2**order < coarse / fine < 1.3 * 2**order


def test_dpmpp_2m_in_20_steps_matches_a_many_step_heun_solve():
    z = start_noise() * 80.0
    reference = sample_heun(gaussian_denoiser, z, karras_sigmas(400, 0.002, 80.0), disable=True)
    fast = sample_dpmpp_2m(gaussian_denoiser, z, karras_sigmas(20, 0.002, 80.0), disable=True)
    euler = sample_euler(gaussian_denoiser, z, karras_sigmas(20, 0.002, 80.0), disable=True)
    torch.testing.assert_close(reference, ode_solution(z, 80.0), rtol=0, atol=1e-3)
    gap = (fast - reference).abs().mean()
    assert gap < 0.03 * S * 2  # 3% of the data's spread
    assert gap < 0.5 * (euler - reference).abs().mean()


def test_ddim_interpolates_between_euler_and_ddpm():
    sigmas = karras_sigmas(15, 0.01, 20.0)
    z = start_noise() * 20.0
    torch.testing.assert_close(
        sample_ddim(gaussian_denoiser, z, sigmas, disable=True),
        sample_euler(gaussian_denoiser, z, sigmas, disable=True),
    )
    ddim1 = sample_ddim(
        gaussian_denoiser, z, sigmas, disable=True, generator=torch.Generator().manual_seed(4), eta=1.0
    )
    ddpm = sample_ddpm(gaussian_denoiser, z, sigmas, disable=True, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(ddim1, ddpm)


@pytest.mark.parametrize(("sampler", "eta"), [(sample_ddpm, 1.0), (sample_ddim, 1.0), (sample_ddim, 0.5),
                                             (sample_dpmpp_2m_sde, 1.0)])
def test_stochastic_step_is_the_ve_posterior(sampler, eta):
    """One step with a constant denoiser c from x at sigma to sigma':

    the fresh noise has std eta * sqrt(s'^2 (1 - s'^2 / s^2)) (the posterior's at eta = 1), and the
    remaining noise level sqrt(s'^2 - std^2) is kept along the predicted eps = (x - c) / sigma.
    """
    c, x_val, sigma, sigma_next = 0.3, 1.5, 2.0, 0.5
    x = torch.full((200_000, 1), x_val, dtype=torch.float64)
    kwargs = {"eta": eta} if sampler in (sample_ddim, sample_dpmpp_2m_sde) else {}
    out = sampler(
        lambda x, s: torch.full_like(x, c),
        x,
        torch.tensor([sigma, sigma_next], dtype=torch.float64),
        disable=True,
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )
    noise_std = eta * (sigma_next**2 * (1 - (sigma_next / sigma) ** 2)) ** 0.5
    mean = c + (sigma_next**2 - noise_std**2) ** 0.5 * (x_val - c) / sigma
    assert abs(float(out.mean()) - mean) < 0.005
    assert abs(float(out.std()) - noise_std) < 0.005


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_same_seed_same_samples_and_no_global_rng(name):
    sigmas = karras_sigmas(10, 0.01, 20.0)
    state = torch.get_rng_state()
    a = sample(gaussian_denoiser, (64, 2), sigmas, name, torch.Generator().manual_seed(7), disable=True)
    assert torch.equal(torch.get_rng_state(), state)
    b = sample(gaussian_denoiser, (64, 2), sigmas, name, torch.Generator().manual_seed(7), disable=True)
    c = sample(gaussian_denoiser, (64, 2), sigmas, name, torch.Generator().manual_seed(8), disable=True)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_callback_runs_once_per_step_and_extra_args_reach_the_model(name):
    sigmas = karras_sigmas(6, 0.01, 20.0)
    calls, seen = [], []

    def model(x, sigma, *, offset):
        calls.append(sigma)
        return gaussian_denoiser(x, sigma) + offset

    sample(
        model,
        (8, 2),
        sigmas,
        name,
        torch.Generator().manual_seed(0),
        extra_args={"offset": 0.0},
        callback=seen.append,
        disable=True,
    )
    assert [info["i"] for info in seen] == list(range(6))
    assert all(info["sigma"] == sigmas[info["i"]] for info in seen)
    assert all(info["x"].shape == info["denoised"].shape == (8, 2) for info in seen)
    assert all(s.shape == (8,) for s in calls)
    assert len(calls) == (2 * 6 - 1 if name == "heun" else 6)


def test_get_sampler_names_the_valid_choices():
    assert get_sampler("heun") is sample_heun
    with pytest.raises(UserError, match="ddpm, ddim, euler, heun, dpmpp-2m"):
        get_sampler("dpm++2m")


@pytest.mark.parametrize("schedule_name", list(SCHEDULES))
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_denoiser_wrapper_is_exact_for_every_schedule_and_target(objective, schedule_name):
    schedule = Schedule.from_name(schedule_name)
    denoiser = Denoiser(exact_net(schedule, objective), schedule, objective)
    sigmas = torch.cat([schedule_sigmas(schedule, 12)[:-1], schedule_sigmas(schedule, 12, "karras")[:-1]])
    z = start_noise(dtype=torch.float64)[:64]
    for sigma in sigmas:
        x = MU.double() + (S**2 + sigma**2) ** 0.5 * z
        s_in = sigma.expand(64)
        torch.testing.assert_close(denoiser(x, s_in), gaussian_denoiser(x, s_in), rtol=1e-9, atol=1e-9)


def test_denoiser_wrapper_in_float32():
    schedule = Schedule.from_name("linear")
    denoiser = Denoiser(exact_net(schedule, "v"), schedule, "v")
    z = start_noise()[:64]
    for sigma in (0.02, 0.5, 3.0, 80.0):
        x = MU + (S**2 + sigma**2) ** 0.5 * z
        s_in = torch.full((64,), sigma)
        torch.testing.assert_close(denoiser(x, s_in), gaussian_denoiser(x, s_in), rtol=1e-4, atol=1e-4)


def test_dpmpp_2m_sde_without_noise_is_dpmpp_2m():
    """eta = 0 removes the noise and the extra decay: the SDE solver must reduce to the ODE solver exactly."""
    z = start_noise(3, torch.float64) * 80.0
    sigmas = karras_sigmas(12, 0.002, 80.0).double()
    ode = sample_dpmpp_2m(gaussian_denoiser, z, sigmas, disable=True)
    sde = sample_dpmpp_2m_sde(gaussian_denoiser, z, sigmas, disable=True, eta=0.0,
                              generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sde, ode)


def test_per_item_generators_make_each_sample_independent_of_its_batch():
    from t2i.diffusion.samplers import get_sampler

    def denoiser(x, sigma):
        return 0.5 * x

    sigmas = torch.tensor([2.0, 1.0, 0.5, 0.0])
    x = torch.ones(3, 2, 4, 4)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    for name in SAMPLERS:  # the stochastic ones draw noise every step
        both = get_sampler(name)(denoiser, x, sigmas, generator=gens([1, 2, 3]), disable=True)
        alone = get_sampler(name)(denoiser, x[1:2], sigmas, generator=gens([2]), disable=True)
        assert torch.equal(both[1:2], alone)

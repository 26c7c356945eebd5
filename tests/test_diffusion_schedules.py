"""Schedules against their closed forms and the published discrete beta schedules."""

import math

import pytest
import torch

from t2i.diffusion import (
    SCHEDULES,
    CosineSchedule,
    FlowSchedule,
    LinearSchedule,
    ScaledLinearSchedule,
    Schedule,
    karras_sigmas,
    schedule_sigmas,
)
from t2i.errors import UserError

VP_NAMES = ["linear", "scaled-linear", "cosine"]
F64 = torch.float64


def grid(lo: float = 1e-3, hi: float = 0.999, n: int = 999) -> torch.Tensor:
    return torch.linspace(lo, hi, n, dtype=F64)


def discrete_alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    return torch.cumprod(1 - betas, 0)


@pytest.mark.parametrize("name", VP_NAMES)
def test_vp_schedules_preserve_variance(name):
    s = Schedule.from_name(name)
    t = torch.linspace(0, 1, 1001, dtype=F64)
    torch.testing.assert_close(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones_like(t), rtol=0, atol=1e-12)
    assert s.alpha(torch.tensor(0.0, dtype=F64)) == 1 and s.sigma(torch.tensor(0.0, dtype=F64)) == 0


def test_flow_schedule_is_the_straight_path():
    s = FlowSchedule()
    t = grid()
    torch.testing.assert_close(s.alpha(t), 1 - t)
    torch.testing.assert_close(s.sigma(t), t)
    torch.testing.assert_close(s.sigma_ve(t), t / (1 - t))


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_log_snr_is_strictly_decreasing_and_matches_alpha_sigma(name):
    s = Schedule.from_name(name)
    t = grid()
    lam = s.log_snr(t)
    assert torch.all(lam[1:] < lam[:-1])
    torch.testing.assert_close(lam, torch.log(s.alpha(t) ** 2 / s.sigma(t) ** 2), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_time_round_trips_through_log_snr_and_sigma_ve(name):
    s = Schedule.from_name(name)
    t = grid(0.0, 0.999)
    torch.testing.assert_close(s.t_from_log_snr(s.log_snr(t)), t, rtol=0, atol=1e-9)
    torch.testing.assert_close(s.t_from_sigma_ve(s.sigma_ve(t)), t, rtol=0, atol=1e-9)
    # The direct sigma_ve -> (alpha, sigma) map agrees with going through t.
    alpha, sigma = s.alpha_sigma_from_sigma_ve(s.sigma_ve(t[1:]))
    torch.testing.assert_close(alpha, s.alpha(t[1:]), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(sigma, s.sigma(t[1:]), rtol=1e-9, atol=1e-12)


def test_linear_matches_ddpm_discrete_schedule():
    ac = discrete_alphas_cumprod(torch.linspace(1e-4, 0.02, 1000, dtype=F64))
    t = torch.arange(1, 1001, dtype=F64) / 1000
    cont = LinearSchedule().alpha(t) ** 2
    assert (cont - ac).abs().max() < 1e-3
    # Song et al.'s VP-SDE closed form: alpha^2(1) = exp(-(0.1 + 19.9 / 2)).
    assert math.isclose(float(cont[-1]), math.exp(-(0.1 + 19.9 / 2)), rel_tol=1e-12)


def test_scaled_linear_matches_stable_diffusion_schedule():
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=F64) ** 2
    ac = discrete_alphas_cumprod(betas)
    t = torch.arange(1, 1001, dtype=F64) / 1000
    cont = ScaledLinearSchedule().alpha(t) ** 2
    assert (cont - ac).abs().max() < 1e-3
    assert math.isclose(float(cont[-1]), float(ac[-1]), rel_tol=0.05)  # SD's final alphas_cumprod 0.0047


def test_cosine_matches_improved_ddpm_schedule_with_clipping():
    s_off, steps = 0.008, 1000

    def f(t: torch.Tensor) -> torch.Tensor:
        return torch.cos((t + s_off) / (1 + s_off) * math.pi / 2) ** 2

    t = torch.arange(0, steps + 1, dtype=F64) / steps
    abar = f(t) / f(torch.zeros((), dtype=F64))
    betas = (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    ac = discrete_alphas_cumprod(betas)
    cont = CosineSchedule().alpha(t[1:]) ** 2
    assert (cont - ac).abs().max() < 1e-6
    # The clipped last step and the continuous clamp both leave alpha^2(1) ~ e^-20, not 0.
    assert -20.0 <= math.log(float(cont[-1])) < -19.5 and -20.0 <= math.log(float(ac[-1])) < -19.5


def test_from_name_rejects_typos_with_the_valid_names():
    with pytest.raises(UserError, match="linear, scaled-linear, cosine, flow"):
        Schedule.from_name("cosin")


def test_karras_sigmas_endpoints_and_monotonicity():
    sig = karras_sigmas(10, 0.002, 80.0)
    assert sig.shape == (11,) and sig[-1] == 0
    assert math.isclose(float(sig[0]), 80.0, rel_tol=1e-12)
    assert math.isclose(float(sig[-2]), 0.002, rel_tol=1e-12)
    assert torch.all(sig[1:] < sig[:-1])
    # Uniform in sigma^(1/rho): rho = 1 is plain linear spacing.
    torch.testing.assert_close(
        karras_sigmas(5, 1.0, 5.0, rho=1.0)[:-1], torch.tensor([5.0, 4, 3, 2, 1], dtype=F64)
    )


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedule_sigmas_are_the_ve_noise_levels(name):
    s = Schedule.from_name(name)
    uniform = schedule_sigmas(s, 8)
    t = torch.linspace(s.t_max, s.t_min, 8, dtype=F64)
    torch.testing.assert_close(uniform[:-1], s.sigma(t) / s.alpha(t))
    assert uniform[-1] == 0 and torch.all(uniform[1:] < uniform[:-1])
    karras = schedule_sigmas(s, 8, spacing="karras")
    torch.testing.assert_close(karras[[0, -2]], uniform[[0, -2]])
    assert karras[-1] == 0 and torch.all(karras[1:] < karras[:-1])
    with pytest.raises(UserError, match="uniform or karras"):
        schedule_sigmas(s, 8, spacing="linear")


def test_flow_sigma_ve_has_its_closed_form_inverse():
    s = FlowSchedule()
    sig = torch.tensor([0.0, 0.5, 1.0, 999.0], dtype=F64)
    torch.testing.assert_close(s.t_from_sigma_ve(sig), sig / (1 + sig))

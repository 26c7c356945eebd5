"""Prediction targets, loss weights, timestep densities and the training loss, against closed forms."""

import math

import pytest
import torch

from t2i.diffusion import (
    OBJECTIVES,
    SCHEDULES,
    FlowSchedule,
    Schedule,
    TimeDensity,
    loss_weight,
    prediction_target,
    snr,
    to_x0_eps,
    training_loss,
)
from t2i.errors import UserError

F64 = torch.float64


def noisy_batch(schedule: Schedule, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(64, 3, 4, 4, generator=g, dtype=F64)
    eps = torch.randn(64, 3, 4, 4, generator=g, dtype=F64)
    t = torch.rand(64, generator=g, dtype=F64) * 0.98 + 0.01
    alpha, sigma = schedule.alpha(t)[:, None, None, None], schedule.sigma(t)[:, None, None, None]
    return x0, eps, alpha, sigma


@pytest.mark.parametrize("schedule_name", list(SCHEDULES))
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_target_round_trips_to_x0_and_eps_exactly(objective, schedule_name):
    x0, eps, alpha, sigma = noisy_batch(Schedule.from_name(schedule_name))
    x_t = alpha * x0 + sigma * eps
    out = prediction_target(objective, x0, eps, alpha, sigma)
    x0_hat, eps_hat = to_x0_eps(objective, out, x_t, alpha, sigma)
    torch.testing.assert_close(x0_hat, x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(eps_hat, eps, rtol=0, atol=1e-12)


def test_targets_match_their_definitions():
    x0, eps, alpha, sigma = noisy_batch(Schedule.from_name("cosine"))
    x_t = alpha * x0 + sigma * eps
    v = prediction_target("v", x0, eps, alpha, sigma)
    torch.testing.assert_close(v, alpha * eps - sigma * x0)
    # VP identities from Salimans & Ho: x0 = alpha x_t - sigma v, eps = sigma x_t + alpha v.
    torch.testing.assert_close(alpha * x_t - sigma * v, x0)
    torch.testing.assert_close(sigma * x_t + alpha * v, eps)
    # On the rectified-flow path the flow target is d x_t / dt (exact: the path is linear in t).
    flow = FlowSchedule()
    t, dt = 0.3, 0.25
    x_at = [
        flow.alpha(torch.tensor(u, dtype=F64)) * x0 + flow.sigma(torch.tensor(u, dtype=F64)) * eps
        for u in (t, t + dt)
    ]
    torch.testing.assert_close((x_at[1] - x_at[0]) / dt, prediction_target("flow", x0, eps, alpha, sigma))


def test_unknown_objective_is_a_user_error():
    x = torch.zeros(2)
    with pytest.raises(UserError, match="eps, v, x0, flow"):
        prediction_target("score", x, x, x, x)


@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_weights_match_the_published_formulas(gamma):
    s = Schedule.from_name("linear")
    t = torch.linspace(0.01, 0.99, 50, dtype=F64)
    alpha, sigma = s.alpha(t), s.sigma(t)
    r = alpha**2 / sigma**2
    clipped = torch.minimum(r, torch.full_like(r, gamma))
    torch.testing.assert_close(loss_weight("min-snr", "x0", alpha, sigma, gamma), clipped)
    torch.testing.assert_close(loss_weight("min-snr", "eps", alpha, sigma, gamma), clipped / r)
    torch.testing.assert_close(loss_weight("min-snr", "v", alpha, sigma, gamma), clipped / (r + 1))
    assert torch.all(loss_weight("uniform", "eps", alpha, sigma) == 1)
    # Both regimes are exercised: some snr above gamma, some below.
    assert (r > gamma).any() and (r < gamma).any()


# The x0-error weight each weighting stands for: min(snr, gamma = 5) for min-snr, and for velocity the squared
# velocity error the x0 error implies (JiT's v-loss), capped where sigma is tiny.
X0_WEIGHTS = {
    "min-snr": lambda a, s: torch.clamp(snr(a, s), max=5.0),
    "velocity": lambda a, s: torch.clamp(((a + s) / s) ** 2, max=400.0),
}


@pytest.mark.parametrize("weighting", list(X0_WEIGHTS))
@pytest.mark.parametrize("schedule_name", list(SCHEDULES))
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_weighting_is_the_same_x0_weight_for_every_target(objective, schedule_name, weighting):
    """w_target * |output error|^2 == the weighting's x0 weight * |x0 error|^2 for the x0 error that output error
    causes."""
    x0, eps, alpha, sigma = noisy_batch(Schedule.from_name(schedule_name))
    x_t = alpha * x0 + sigma * eps
    delta = 1e-3 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    out = prediction_target(objective, x0, eps, alpha, sigma) + delta
    x0_err = to_x0_eps(objective, out, x_t, alpha, sigma)[0] - x0
    a, s = alpha.flatten(), sigma.flatten()
    lhs = loss_weight(weighting, objective, a, s) * delta.square().flatten(1).sum(1)
    rhs = X0_WEIGHTS[weighting](a, s) * x0_err.square().flatten(1).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-9, atol=1e-15)


def test_velocity_weight_is_uniform_flow_training_away_from_clean():
    t = torch.linspace(0.05, 0.99, 20, dtype=F64)
    flow = Schedule.from_name("flow")
    alpha, sigma = flow.alpha(t), flow.sigma(t)
    torch.testing.assert_close(loss_weight("velocity", "flow", alpha, sigma), torch.ones_like(t))
    torch.testing.assert_close(loss_weight("velocity", "x0", alpha, sigma), 1 / t**2)
    near_clean = torch.tensor([1e-4], dtype=F64)
    assert loss_weight("velocity", "x0", flow.alpha(near_clean), flow.sigma(near_clean)).item() == 400.0


def test_min_snr_weights_are_finite_at_the_ends():
    alpha = torch.tensor([1.0, 0.0], dtype=F64)
    sigma = torch.tensor([0.0, 1.0], dtype=F64)
    for objective in OBJECTIVES:
        w = loss_weight("min-snr", objective, alpha, sigma)
        assert torch.isfinite(w).all(), objective
    torch.testing.assert_close(
        loss_weight("min-snr", "eps", alpha, sigma), torch.tensor([0.0, 1.0], dtype=F64)
    )


def test_logit_normal_density_has_the_right_median_and_spread():
    g = torch.Generator().manual_seed(0)
    t = TimeDensity("logit-normal", mean=0.5, std=0.8).sample(20000, g, dtype=F64)
    assert ((t > 0) & (t < 1)).all()
    assert abs(float(t.median()) - 1 / (1 + math.exp(-0.5))) < 0.01
    logit = torch.log(t / (1 - t))
    assert abs(float(logit.std()) - 0.8) < 0.02
    u = TimeDensity().sample(20000, torch.Generator().manual_seed(0), dtype=F64)
    assert abs(float(u.median()) - 0.5) < 0.01 and ((u >= 0) & (u < 1)).all()


def test_densities_draw_only_from_the_generator():
    density = TimeDensity("logit-normal")
    a = density.sample(8, torch.Generator().manual_seed(3))
    torch.manual_seed(123)
    b = density.sample(8, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    with pytest.raises(UserError, match="uniform, logit-normal"):
        TimeDensity("beta")


def dirac_net(c: torch.Tensor, schedule: Schedule, objective: str, seen: list):
    """Exact network for data that is always the image c: x0_hat = c, eps_hat = (x_t - alpha c) / sigma."""

    def net(x_t, t, **cond):
        seen.append((t, cond))
        alpha, sigma = schedule.alpha(t)[:, None, None, None], schedule.sigma(t)[:, None, None, None]
        x0 = c.expand_as(x_t)
        return prediction_target(objective, x0, (x_t - alpha * x0) / sigma, alpha, sigma)

    return net


@pytest.mark.parametrize("schedule_name", list(SCHEDULES))
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_training_loss_is_zero_for_the_exact_network(objective, schedule_name):
    schedule = Schedule.from_name(schedule_name)
    c = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    seen: list = []
    net = dirac_net(c, schedule, objective, seen)
    cond = {"context": torch.zeros(16, 4, dtype=F64)}
    loss = training_loss(
        net,
        c.expand(16, -1, -1, -1),
        cond,
        schedule,
        objective,
        "min-snr",
        generator=torch.Generator().manual_seed(1),
    )
    assert loss.shape == (16,)
    assert loss.abs().max() < 1e-12
    t, passed = seen[0]
    assert passed.keys() == {"context"}
    assert t.shape == (16,) and (t >= schedule.t_min).all() and (t <= schedule.t_max).all()


def test_training_loss_of_a_zero_eps_network_is_the_noise_power():
    schedule = Schedule.from_name("cosine")
    x0 = torch.randn(4096, 8, dtype=F64, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(2)
    loss = training_loss(lambda x, t: torch.zeros_like(x), x0, None, schedule, "eps", generator=g)
    assert abs(float(loss.mean()) - 1.0) < 0.04  # E|eps|^2 per element; 5 standard errors
    again = training_loss(
        lambda x, t: torch.zeros_like(x),
        x0,
        None,
        schedule,
        "eps",
        generator=torch.Generator().manual_seed(2),
    )
    assert torch.equal(loss, again)


class EndpointDensity(TimeDensity):
    """Draws only the ends of [0, 1], to check where training_loss puts them."""

    def sample(self, n, generator=None, device=None, dtype=None):
        return torch.tensor([0.0, 1.0], device=device, dtype=dtype)


@pytest.mark.parametrize("schedule_name", list(SCHEDULES))
def test_training_times_span_the_schedules_sampling_range(schedule_name):
    schedule = Schedule.from_name(schedule_name)
    seen = []

    def net(x_t, t):
        seen.append(t)
        return torch.zeros_like(x_t)

    training_loss(net, torch.zeros(2, 3, dtype=F64), None, schedule, t_density=EndpointDensity())
    torch.testing.assert_close(seen[0], torch.tensor([schedule.t_min, schedule.t_max], dtype=F64))


def test_self_conditioning_trains_half_the_batch_on_the_nets_own_first_guess():
    schedule = FlowSchedule()
    calls: list = []

    def net(x, t, self_cond, context):
        calls.append((x.clone(), self_cond.clone(), context.clone(), torch.is_grad_enabled()))
        return 0.5 * x + context[:, :1, None, None]  # an x0 guess that depends on the rows it is given

    x0 = torch.randn(64, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    context = torch.arange(64, dtype=F64)[:, None].expand(64, 4).clone()
    loss = training_loss(net, x0, {"context": context}, schedule, "x0", generator=torch.Generator().manual_seed(1),
                         self_cond=True)
    assert loss.shape == (64,) and len(calls) == 2
    (x_first, sc_first, ctx_first, grad_first), (x_t, sc, ctx, grad) = calls
    assert not grad_first and grad  # the first guess carries no gradient
    assert (sc_first == 0).all()  # it is made as a sampler's first step is: from x_t alone
    kept = ctx_first[:, 0].long()  # the rows the first pass saw, told apart by their context
    assert 16 < len(kept) < 48  # about half of the batch
    assert torch.equal(x_first, x_t[kept]) and torch.equal(ctx, context)
    assert torch.allclose(sc[kept], 0.5 * x_t[kept] + ctx[kept, :1, None, None])  # the guess is the second input
    others = torch.ones(64, dtype=torch.bool)
    others[kept] = False
    assert (sc[others] == 0).all()
    # Off (the default), the net is called once and never given a guess.
    calls.clear()
    training_loss(lambda x, t, context: x, x0, {"context": context}, schedule, "x0")
    assert calls == []


def test_a_self_conditioned_denoiser_gets_its_previous_guess():
    from t2i.diffusion.objectives import Denoiser

    seen: list = []

    def net(x, t, self_cond):
        seen.append(self_cond.clone())
        return x + 1.0  # x0 objective: the output is the guess

    den = Denoiser(net, FlowSchedule(), "x0", self_cond=True)
    x = torch.zeros(2, 3, 4, 4)
    first = den(x, 1.0)
    second = den(x + 0.5, 0.5)
    assert (seen[0] == 0).all() and torch.equal(seen[1], first)
    assert not torch.equal(first, second)
    assert den(torch.zeros(4, 3, 4, 4), 1.0).shape == (4, 3, 4, 4)  # another batch: starts from zeros
    assert (seen[2] == 0).all()

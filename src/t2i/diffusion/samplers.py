"""Samplers in k-diffusion's style: pure functions over a denoiser in the VE form.

Every sampler has the signature::

    sample_x(model, x, sigmas, extra_args=None, callback=None, disable=None, generator=None) -> x0

* ``model(x, sigma, **extra_args)`` returns the denoised image x0_hat for ``x = x0 + sigma * eps``,
  with sigma of shape [B] (wrap a network with `t2i.diffusion.objectives.Denoiser`).
* ``sigmas`` is the decreasing sequence of VE noise levels, ending with 0 (`schedules.karras_sigmas`,
  `schedules.schedule_sigmas`); ``x`` starts at noise level ``sigmas[0]``.
* all randomness comes from ``generator`` (never the global RNG), so a seed fixes the sample; a sequence of
  generators, one per batch item, makes each item depend on its own seed alone, whatever batch it is in.
* ``callback({"i", "x", "sigma", "denoised"})`` runs once per step, before the step updates x.

The deterministic ones integrate the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma``;
the stochastic ones (DDPM, DDIM with eta > 0) sample the reverse Markov chain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import trange

from t2i.errors import OptionError

Model = Callable[..., Tensor]
Callback = Callable[[dict[str, Any]], None]
Generators = torch.Generator | Sequence[torch.Generator] | None


def _noise(x: Tensor, generator: Generators) -> Tensor:
    if isinstance(generator, Sequence):
        return torch.stack([torch.randn(x.shape[1:], generator=g, device=x.device, dtype=x.dtype) for g in generator])
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


@torch.no_grad()
def sample_euler(
    model: Model,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    generator: Generators = None,
) -> Tensor:
    """Euler steps on the probability-flow ODE: one model call per step, first order.

    In the VE form this is exactly DDIM with eta = 0: x_next = D + sigma_next * (x - D) / sigma.
    Deterministic; `generator` is accepted for the shared signature and unused.
    """
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "denoised": denoised})
        d = (x - denoised) / sigma
        x = x + d * (sigma_next - sigma)
    return x


@torch.no_grad()
def sample_heun(
    model: Model,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    generator: Generators = None,
) -> Tensor:
    """EDM's 2nd-order Heun steps (Karras et al. 2022, Alg. 1): Euler, then average the two slopes.

    The correction needs D at sigma_next; at sigma_next = 0 the slope (x - D) / sigma is undefined, so
    the last step stays Euler. Costs 2n - 1 model calls for n steps. Deterministic.
    """
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "denoised": denoised})
        d = (x - denoised) / sigma
        x_euler = x + d * (sigma_next - sigma)
        if sigma_next == 0:
            x = x_euler
        else:
            d_next = (x_euler - model(x_euler, sigma_next * s_in, **extra_args)) / sigma_next
            x = x + (d + d_next) / 2 * (sigma_next - sigma)
    return x


@torch.no_grad()
def sample_ddpm(
    model: Model,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    generator: Generators = None,
) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020): draw x_next from the posterior q(x_next | x, x0 = D).

    For the VE process x = x0 + sigma eps the posterior is Gaussian with
    mean ``D + (sigma_next^2 / sigma^2) (x - D)`` and variance ``sigma_next^2 (1 - sigma_next^2 / sigma^2)``;
    dividing DDPM's VP posterior by alpha_next gives the same, so on the schedule's sigmas this *is*
    DDPM, and it equals k-diffusion's Euler-ancestral step with eta = 1. Stochastic: needs many steps
    (~100+), since each step's noise is only corrected by later ones.
    """
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "denoised": denoised})
        ratio = sigma_next**2 / sigma**2
        x = denoised + ratio * (x - denoised)
        if sigma_next > 0:
            x = x + torch.sqrt(sigma_next**2 * (1 - ratio)) * _noise(x, generator)
    return x


@torch.no_grad()
def sample_ddim(
    model: Model,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    generator: Generators = None,
    eta: float = 0.0,
) -> Tensor:
    """DDIM (Song et al. 2021): x_next = D + sigma_down * eps_hat + sigma_up * z.

    eta scales the fresh noise between deterministic (0: the ODE's first-order step, same as Euler) and
    DDPM (1). ``sigma_up = eta * sqrt(posterior variance)`` and ``sigma_down`` makes the total noise
    level exactly sigma_next: the VE form of DDIM's sigma_t(eta).
    """
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in trange(len(sigmas) - 1, disable=disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "denoised": denoised})
        eps = (x - denoised) / sigma
        sigma_up = eta * torch.sqrt(sigma_next**2 * (1 - sigma_next**2 / sigma**2))
        sigma_down = torch.sqrt((sigma_next**2 - sigma_up**2).clamp(min=0))
        x = denoised + sigma_down * eps
        if sigma_up > 0:
            x = x + sigma_up * _noise(x, generator)
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    model: Model,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    generator: Generators = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022): second order from one model call per step.

    Works in lambda = -log sigma, where the ODE's linear part is solved exactly:
    ``x_next = (sigma_next / sigma) x - expm1(-h) D`` with h = lambda_next - lambda. Multistep: D is
    replaced by a linear extrapolation through the previous step's denoised, weighted by the step-size
    ratio r. The first step (no history) and the last (to sigma = 0, where x_next = D) are first order.
    Deterministic; ~20 steps match a many-step ODE solve.
    """
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    old_denoised = None
    for i in trange(len(sigmas) - 1, disable=disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "denoised": denoised})
        if sigma_next == 0:
            x = denoised
        else:
            h = torch.log(sigma / sigma_next)
            d = denoised
            if old_denoised is not None:
                r = torch.log(sigmas[i - 1] / sigma) / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_next / sigma) * x - torch.expm1(-h) * d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(
    model: Model,
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    generator: Generators = None,
    eta: float = 1.0,
) -> Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022, k-diffusion's midpoint form): the stochastic variant.

    With h = log(sigma / sigma_next), a first-order step is
    ``x_next = (sigma_next / sigma) e^{-eta h} x + (1 - e^{-(1 + eta) h}) D + sigma_next sqrt(1 - e^{-2 eta h}) z``;
    at eta = 1 that is exactly the DDPM posterior step of `sample_ddpm`, and eta = 0 gives the ODE solver.
    The second-order part adds ``0.5 (1 - e^{-(1 + eta) h}) (D - D_prev) / r``. Why it exists: the noise
    injected at each step corrects errors in the learned denoiser that an ODE solver carries to the end --
    on the shapes models, 20 ancestral steps beat 20 deterministic ones (docs/ldm.md) -- while the
    multistep correction keeps 20 steps close to a many-step DDPM run.
    """
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    old_denoised, h_last = None, None
    for i in trange(len(sigmas) - 1, disable=disable):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma * s_in, **extra_args)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "denoised": denoised})
        if sigma_next == 0:
            x = denoised
        else:
            h = torch.log(sigma / sigma_next)
            eta_h = eta * h
            x = (sigma_next / sigma) * torch.exp(-eta_h) * x - torch.expm1(-h - eta_h) * denoised
            if old_denoised is not None and h_last is not None:
                r = h_last / h
                x = x - 0.5 * torch.expm1(-h - eta_h) * (denoised - old_denoised) / r
            if eta > 0:
                x = x + sigma_next * torch.sqrt(-torch.expm1(-2 * eta_h)) * _noise(x, generator)
            h_last = h
        old_denoised = denoised
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp-2m": sample_dpmpp_2m,
    "dpmpp-2m-sde": sample_dpmpp_2m_sde,
}


def get_sampler(name: str) -> Callable[..., Tensor]:
    """The sampler function registered under `name`; a `UserError` naming the valid ones otherwise."""
    if name not in SAMPLERS:
        raise OptionError("sampler", f"{name!r} is unknown; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def sample(
    denoiser: Model,
    shape: Sequence[int],
    sigmas: Tensor,
    sampler: str = "dpmpp-2m",
    generator: torch.Generator | None = None,
    extra_args: dict[str, Any] | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    **sampler_kwargs: Any,
) -> Tensor:
    """Draw samples of `shape`: start from ``x = randn * sigmas[0]`` and run the named sampler.

    The start ignores the data's own spread (it should be x0 + sigma_max eps); at sigma_max >> data
    scale that is negligible, but with a small sigma_max (Stable Diffusion's ~14.6) samples keep a small
    pull toward zero. `generator` (on `device`) supplies the start noise and any sampler noise.
    `sampler_kwargs` go to the sampler (e.g. ``eta`` for ddim).
    """
    fn = get_sampler(sampler)
    sigmas = sigmas.to(device)
    x = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype) * sigmas[0]
    return fn(
        denoiser,
        x,
        sigmas,
        extra_args=extra_args,
        callback=callback,
        disable=disable,
        generator=generator,
        **sampler_kwargs,
    )

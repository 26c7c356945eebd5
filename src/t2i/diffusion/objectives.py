"""What a diffusion network predicts, how it is trained, and how it becomes a k-diffusion denoiser.

A network ``net(x_t, t, **cond)`` sees ``x_t = alpha x0 + sigma eps`` (see `schedules`) and predicts one
of four targets, all linear in (x0, eps):

* ``eps``  -- the noise (DDPM, LDM, GLIDE).
* ``x0``   -- the clean image (DALL-E 2's prior and decoder, EDM's raw output).
* ``v``    -- ``alpha eps - sigma x0`` (Salimans & Ho 2022; Imagen Video, SD 2): well scaled at every t.
* ``flow`` -- the velocity ``eps - x0``, which is ``d x_t / dt`` on the rectified-flow path.

Because x_t and the target are two independent linear combinations of (x0, eps), each target converts
back to (x0_hat, eps_hat) exactly given x_t, alpha and sigma (`to_x0_eps`). The samplers only need
x0_hat; `Denoiser` packages that, so samplers never know which target or schedule a model used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from t2i.diffusion.schedules import Schedule
from t2i.errors import UserError

OBJECTIVES = ("eps", "v", "x0", "flow")
WEIGHTINGS = ("uniform", "min-snr", "velocity")
VELOCITY_CAP = 400.0  # JiT divides by max(t, 0.05)
T_DENSITIES = ("uniform", "logit-normal")


def _check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise UserError(f"unknown prediction target {objective!r}; choose one of {', '.join(OBJECTIVES)}")


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """A per-sample value of shape [B] reshaped to [B, 1, 1, ...] (ndim dims) to broadcast against x."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def prediction_target(objective: str, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The tensor a network trained on `objective` should output for this (x0, eps) at (alpha, sigma)."""
    _check_objective(objective)
    if objective == "eps":
        return eps
    if objective == "x0":
        return x0
    if objective == "v":
        return alpha * eps - sigma * x0
    return eps - x0


def to_x0_eps(
    objective: str, out: Tensor, x_t: Tensor, alpha: Tensor, sigma: Tensor
) -> tuple[Tensor, Tensor]:
    """(x0_hat, eps_hat) from a network output of any target, by solving x_t = alpha x0 + sigma eps.

    The formulas hold for any (alpha, sigma), VP or not: for ``v`` the 2x2 system has determinant
    alpha^2 + sigma^2 (= 1 for VP), for ``flow`` x_t = (alpha + sigma) x0 + sigma * out.
    Division by alpha (eps) or sigma (x0) is where that target carries no information: t = 1 / t = 0.
    """
    _check_objective(objective)
    if objective == "eps":
        return (x_t - sigma * out) / alpha, out
    if objective == "x0":
        return out, (x_t - alpha * out) / sigma
    if objective == "v":
        norm = alpha**2 + sigma**2
        return (alpha * x_t - sigma * out) / norm, (sigma * x_t + alpha * out) / norm
    x0 = (x_t - sigma * out) / (alpha + sigma)
    return x0, out + x0


def snr(alpha: Tensor, sigma: Tensor) -> Tensor:
    """Signal-to-noise ratio alpha^2 / sigma^2 (inf at sigma = 0)."""
    return alpha**2 / sigma**2


def _x0_gain(objective: str, alpha: Tensor, sigma: Tensor) -> Tensor:
    """How much `objective`'s squared output error magnifies the x0 error it causes, at fixed x_t."""
    if objective == "x0":
        return torch.ones_like(alpha)
    if objective == "eps":
        return snr(alpha, sigma)  # eps error = -(alpha/sigma) x0 error
    if objective == "v":
        return (alpha**2 + sigma**2) ** 2 / sigma**2
    return ((alpha + sigma) / sigma) ** 2


def loss_weight(weighting: str, objective: str, alpha: Tensor, sigma: Tensor, gamma: float = 5.0) -> Tensor:
    """Per-sample weight for the squared error on `objective`'s output.

    Every weighting is a weight on the *x0* error, expressed for the target trained on by dividing by how much
    that target magnifies an x0 error at fixed x_t (`_x0_gain`):

    * x0:   1
    * eps:  snr                          (eps error = -(alpha/sigma) x0 error)
    * v:    (alpha^2 + sigma^2)^2 / sigma^2   (snr + 1 for VP)
    * flow: ((alpha + sigma) / sigma)^2

    ``min-snr`` (Hang et al. 2023) weights the x0 error by min(SNR, gamma): it stops low-noise steps, whose
    x0 error is tiny but whose eps error is huge, from dominating. ``velocity`` weights it as the velocity
    (flow) error it implies, capped at 400 (t >= 0.05 on the flow path): JiT's "x-prediction, v-loss"
    (Li & He 2025), which keeps the x0 output that suits high-dimensional pixel patches while still training
    the low-noise steps, where edges are drawn, that a uniform x0 loss barely sees.
    """
    _check_objective(objective)
    if weighting == "uniform":
        return torch.ones_like(alpha)
    if weighting not in WEIGHTINGS:
        raise UserError(f"unknown loss weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
    if weighting == "velocity":
        return torch.clamp(_x0_gain("flow", alpha, sigma), max=VELOCITY_CAP) / _x0_gain(objective, alpha, sigma)
    s = snr(alpha, sigma)
    if objective == "eps":
        return torch.clamp(gamma / s, max=1.0)  # = min(snr, gamma) / snr, finite at snr = 0 and inf
    return torch.clamp(s, max=gamma) / _x0_gain(objective, alpha, sigma)


@dataclass(frozen=True)
class TimeDensity:
    """How training draws t in [0, 1].

    ``uniform`` is DDPM's choice. ``logit-normal`` (Esser et al. 2024, SD3) draws
    ``t = sigmoid(mean + std * n)``, n ~ N(0, 1): it concentrates training on middle times, where the
    prediction is hardest; its median is sigmoid(mean).
    """

    name: str = "uniform"
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in T_DENSITIES:
            raise UserError(f"unknown timestep density {self.name!r}; choose one of {', '.join(T_DENSITIES)}")
        if self.std <= 0:
            raise UserError(f"logit-normal std must be positive, got {self.std}")

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """n times in [0, 1], all randomness from `generator`."""
        if self.name == "uniform":
            return torch.rand(n, generator=generator, device=device, dtype=dtype)
        z = torch.randn(n, generator=generator, device=device, dtype=dtype)
        return torch.sigmoid(self.mean + self.std * z)


def training_loss(
    net: Callable[..., Tensor],
    x0: Tensor,
    cond: dict[str, Any] | None,
    schedule: Schedule,
    objective: str = "eps",
    weighting: str = "uniform",
    t_density: TimeDensity | None = None,
    generator: torch.Generator | None = None,
    gamma: float = 5.0,
    self_cond: bool = False,
) -> Tensor:
    """Per-sample diffusion loss, shape [B]: noise x0 at a random t, score the net's `objective` output.

    t is drawn from `t_density` on [0, 1] and mapped affinely onto the schedule's [t_min, t_max], the
    same range the samplers visit. The net is called as ``net(x_t, t, **cond)`` with t of shape [B].
    Returning per-sample values lets callers average, or bin the loss by t.

    `self_cond` (Chen et al. 2022, "Analog Bits"): for a random half of the batch the net first guesses x0
    from x_t alone, without gradient, and is then trained with that guess as its `self_cond` input; the
    other half gets zeros, which is what a sampler's first step gives it. While sampling, `Denoiser` passes
    the previous step's guess, so the net refines a layout instead of deciding it again at every step.
    """
    t_density = t_density or TimeDensity()
    u = t_density.sample(x0.shape[0], generator, device=x0.device, dtype=x0.dtype)
    t = schedule.t_min + (schedule.t_max - schedule.t_min) * u
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    alpha, sigma = schedule.alpha(t), schedule.sigma(t)
    a, s = append_dims(alpha, x0.ndim), append_dims(sigma, x0.ndim)
    x_t = a * x0 + s * eps
    cond = dict(cond or {})
    if self_cond:
        keep = torch.rand(x0.shape[0], generator=generator, device=x0.device) < 0.5
        guess = torch.zeros_like(x0)
        if keep.any():
            rows = {k: v[keep] if isinstance(v, Tensor) and v.ndim and v.shape[0] == x0.shape[0] else v
                    for k, v in cond.items()}
            with torch.no_grad():
                first = net(x_t[keep], t[keep], self_cond=guess[keep], **rows)
                guess[keep] = to_x0_eps(objective, first, x_t[keep], a[keep], s[keep])[0].to(guess.dtype)
        cond["self_cond"] = guess
    out = net(x_t, t, **cond)
    target = prediction_target(objective, x0, eps, a, s)
    weight = loss_weight(weighting, objective, alpha, sigma, gamma)
    return weight * (out - target).square().flatten(1).mean(1)


class Denoiser(nn.Module):
    """Turns ``net(x_t, t, **cond) -> target`` into k-diffusion's ``denoiser(x_ve, sigma_ve, **cond) -> x0``.

    The sampler's state is ``x_ve = x0 + sigma_ve eps``. For the network we find the time t with
    ``sigma(t) / alpha(t) = sigma_ve``, rescale to the process it was trained on, ``x_t = alpha x_ve``
    (``= alpha x0 + sigma eps``), and convert its output to x0_hat with `to_x0_eps`. This is EDM's
    preconditioning idea: the sampler only ever sees the VE process; schedule and target live here.
    """

    def __init__(self, net: Callable[..., Tensor], schedule: Schedule, objective: str, self_cond: bool = False) -> None:
        super().__init__()
        _check_objective(objective)
        self.net = net
        self.schedule = schedule
        self.objective = objective
        # A self-conditioned net (`training_loss(self_cond=True)`) is given its own previous x0 guess. One
        # Denoiser serves one sampling run, so the guess it keeps is that run's; CFG's doubled batch keeps
        # each branch's own guess in its own rows.
        self.self_cond = self_cond
        self.guess: Tensor | None = None

    def forward(self, x: Tensor, sigma: Tensor | float, **extra: Any) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        t = self.schedule.t_from_sigma_ve(sigma)
        alpha, sig = self.schedule.alpha_sigma_from_sigma_ve(sigma)
        alpha, sig = append_dims(alpha, x.ndim), append_dims(sig, x.ndim)
        x_t = alpha * x
        if self.self_cond:
            fits = self.guess is not None and self.guess.shape == x.shape
            extra = {**extra, "self_cond": self.guess if fits else torch.zeros_like(x)}
        out = self.net(x_t, t, **extra)
        x0 = to_x0_eps(self.objective, out, x_t, alpha, sig)[0]
        if self.self_cond:
            self.guess = x0.detach()
        return x0

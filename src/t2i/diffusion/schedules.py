"""Noise schedules as continuous-time functions of t in [0, 1], and the sigma sequences samplers walk.

Conventions (used by every module in `t2i.diffusion`):

* A schedule defines the forward process ``x_t = alpha(t) * x0 + sigma(t) * eps`` with ``eps ~ N(0, I)``,
  t = 0 clean and t = 1 (almost) pure noise. Networks are trained and called on ``(x_t, t)`` with t a float
  in [0, 1]; a model trained on DDPM's integer steps 0..999 corresponds to ``t = (k + 1) / 1000``.
* Variance-preserving (VP) schedules -- ``linear``, ``scaled-linear``, ``cosine`` -- have
  ``alpha^2 + sigma^2 = 1``. The ``flow`` schedule (rectified flow) is the straight path
  ``alpha = 1 - t, sigma = t`` and is not VP.
* ``logSNR(t) = log(alpha^2 / sigma^2)`` decreases in t. It is the schedule-free coordinate: two schedules
  at equal logSNR have the same information about x0, differing only by an overall scale of x_t.
* The samplers (`t2i.diffusion.samplers`, in k-diffusion's style) work in the *variance-exploding* (VE)
  form: ``x_ve = x_t / alpha = x0 + sigma_ve * eps`` with ``sigma_ve = sigma / alpha = exp(-logSNR / 2)``.
  Dividing by alpha removes the schedule: every schedule becomes the same VE process and differs only
  in which sigma_ve values it visits. A VP model at time t therefore sees ``x_t = alpha * x_ve``, where t
  solves ``sigma_ve(t) = sigma_ve`` (`Schedule.t_from_sigma_ve`); `t2i.diffusion.objectives.Denoiser` does
  that conversion.

The VP schedules are defined through ``log alpha^2(t)`` (``log alphas_cumprod``), which keeps
``sigma^2 = -expm1(log alpha^2)`` accurate near t = 0, and each one inverts it in closed form.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from t2i.errors import UserError

TensorLike = Tensor | float


def _t(x: TensorLike) -> Tensor:
    """Floats become 0-dim tensors of the default dtype; tensors pass through untouched."""
    return x if isinstance(x, Tensor) else torch.tensor(float(x), dtype=torch.get_default_dtype())


class Schedule(ABC):
    """A forward process ``x_t = alpha(t) x0 + sigma(t) eps`` over t in [0, 1].

    `t_min` and `t_max` bound the times used for training and sampling: t = 0 is noise-free (logSNR
    infinite) and the flow path's t = 1 has alpha = 0 (sigma_ve infinite), so both ends are kept off.
    """

    name: ClassVar[str] = ""
    t_min: float = 1e-3
    t_max: float = 1.0

    @abstractmethod
    def alpha(self, t: TensorLike) -> Tensor:
        """Scale of the signal x0 in x_t."""

    @abstractmethod
    def sigma(self, t: TensorLike) -> Tensor:
        """Scale of the noise eps in x_t."""

    @abstractmethod
    def log_snr(self, t: TensorLike) -> Tensor:
        """log(alpha^2 / sigma^2): +inf at t = 0, decreasing in t."""

    @abstractmethod
    def t_from_log_snr(self, log_snr: TensorLike) -> Tensor:
        """The inverse of `log_snr`, clamped to [0, 1]."""

    @abstractmethod
    def alpha_sigma_from_sigma_ve(self, sigma_ve: TensorLike) -> tuple[Tensor, Tensor]:
        """(alpha, sigma) at the time where sigma / alpha = sigma_ve, computed without going through t.

        Going straight from sigma_ve keeps ``sigma / alpha == sigma_ve`` to rounding, which is what makes
        the `Denoiser` wrapper exact.
        """

    def sigma_ve(self, t: TensorLike) -> Tensor:
        """The VE noise level sigma / alpha the samplers use (0 at t = 0)."""
        return self.sigma(t) / self.alpha(t)

    def t_from_sigma_ve(self, sigma_ve: TensorLike) -> Tensor:
        """The time whose VE noise level is sigma_ve: logSNR = -2 log sigma_ve, then invert logSNR."""
        return self.t_from_log_snr(-2.0 * torch.log(_t(sigma_ve)))

    @staticmethod
    def from_name(name: str) -> Schedule:
        """A schedule by name: one of `SCHEDULES` (linear, scaled-linear, cosine, flow)."""
        if name not in SCHEDULES:
            raise UserError(f"unknown noise schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
        return SCHEDULES[name]()


class VPSchedule(Schedule):
    """A variance-preserving schedule given by ``log alpha^2(t)`` and its inverse."""

    @abstractmethod
    def log_alpha2(self, t: TensorLike) -> Tensor:
        """log alpha^2(t) = log of DDPM's alphas_cumprod, 0 at t = 0 and decreasing."""

    @abstractmethod
    def t_from_log_alpha2(self, log_alpha2: Tensor) -> Tensor:
        """The inverse of `log_alpha2`."""

    def alpha(self, t: TensorLike) -> Tensor:
        return torch.exp(0.5 * self.log_alpha2(t))

    def sigma(self, t: TensorLike) -> Tensor:
        return torch.sqrt(-torch.expm1(self.log_alpha2(t)))

    def log_snr(self, t: TensorLike) -> Tensor:
        la = self.log_alpha2(t)
        return la - torch.log(-torch.expm1(la))

    def t_from_log_snr(self, log_snr: TensorLike) -> Tensor:
        # alpha^2 = sigmoid(logSNR) for a VP process, so log alpha^2 = -softplus(-logSNR).
        la = -torch.nn.functional.softplus(-_t(log_snr))
        return self.t_from_log_alpha2(la).clamp(0.0, 1.0)

    def alpha_sigma_from_sigma_ve(self, sigma_ve: TensorLike) -> tuple[Tensor, Tensor]:
        s = _t(sigma_ve)
        alpha = torch.rsqrt(1.0 + s**2)
        return alpha, s * alpha


@dataclass(frozen=True)
class LinearSchedule(VPSchedule):
    """DDPM (Ho et al. 2020): betas linear from 1e-4 to 0.02 over 1000 steps, made continuous.

    The per-step betas become a rate ``beta(t) = N * (beta_start + t (beta_end - beta_start))``, i.e. Song
    et al.'s VP-SDE with beta_min = 0.1, beta_max = 20, and ``log alpha^2(t) = -integral_0^t beta``.
    The discrete alphas_cumprod at step k agree with alpha^2(k / N) within 1e-3 (the gap is the
    ``log(1 - beta) ~= -beta`` approximation).
    """

    beta_start: float = 1e-4
    beta_end: float = 0.02
    n_steps: int = 1000
    name: ClassVar[str] = "linear"

    def log_alpha2(self, t: TensorLike) -> Tensor:
        b0, d = self.n_steps * self.beta_start, self.n_steps * (self.beta_end - self.beta_start)
        t = _t(t)
        return -(b0 * t + 0.5 * d * t**2)

    def t_from_log_alpha2(self, log_alpha2: Tensor) -> Tensor:
        # Solve 0.5 d t^2 + b0 t - u = 0 for t >= 0, in the cancellation-free form 2u / (b0 + sqrt(...)).
        b0, d = self.n_steps * self.beta_start, self.n_steps * (self.beta_end - self.beta_start)
        u = -log_alpha2
        return 2.0 * u / (b0 + torch.sqrt(b0**2 + 2.0 * d * u))


@dataclass(frozen=True)
class ScaledLinearSchedule(VPSchedule):
    """Stable Diffusion's schedule: sqrt(beta) linear from sqrt(0.00085) to sqrt(0.012) over 1000 steps.

    Continuous rate ``beta(t) = N (a + (c - a) t)^2`` with a, c the square-root endpoints, so
    ``log alpha^2(t) = -N ((a + (c - a) t)^3 - a^3) / (3 (c - a))``, inverted with a cube root.
    Its final sigma_ve is only ~14.6: the terminal SNR is not zero, so samples started from pure noise
    carry a small bias toward zero mean (Lin et al. 2023).
    """

    beta_start: float = 0.00085
    beta_end: float = 0.012
    n_steps: int = 1000
    name: ClassVar[str] = "scaled-linear"

    def _coef(self) -> tuple[float, float]:
        a, c = math.sqrt(self.beta_start), math.sqrt(self.beta_end)
        return a, c - a

    def log_alpha2(self, t: TensorLike) -> Tensor:
        a, k = self._coef()
        return -self.n_steps * ((a + k * _t(t)) ** 3 - a**3) / (3.0 * k)

    def t_from_log_alpha2(self, log_alpha2: Tensor) -> Tensor:
        a, k = self._coef()
        cube = a**3 - 3.0 * k * log_alpha2 / self.n_steps
        return (cube ** (1.0 / 3.0) - a) / k


@dataclass(frozen=True)
class CosineSchedule(VPSchedule):
    """Improved DDPM (Nichol & Dhariwal 2021): alpha^2(t) = f(t) / f(0), f(t) = cos^2((t + s)/(1 + s) pi/2).

    The offset s = 0.008 keeps beta from being vanishingly small near t = 0. At t = 1, f = 0 (alpha = 0,
    infinite sigma_ve); the paper clips betas at 0.999, which leaves the last step at
    log alpha^2 ~= -19.8. The continuous analogue clamps log alpha^2 at `log_alpha2_min` = -20, which
    only touches t > 0.99997 and keeps every sigma_ve finite (max e^10 ~= 22026).
    """

    s: float = 0.008
    log_alpha2_min: float = -20.0
    name: ClassVar[str] = "cosine"

    def _angle(self, t: TensorLike) -> Tensor:
        return (_t(t) + self.s) / (1.0 + self.s) * (math.pi / 2)

    def log_alpha2(self, t: TensorLike) -> Tensor:
        log_f0 = 2.0 * math.log(math.cos(self.s / (1.0 + self.s) * math.pi / 2))
        la = 2.0 * torch.log(torch.cos(self._angle(t))) - log_f0
        return la.clamp(min=self.log_alpha2_min, max=0.0)

    def t_from_log_alpha2(self, log_alpha2: Tensor) -> Tensor:
        cos0 = math.cos(self.s / (1.0 + self.s) * math.pi / 2)
        angle = torch.acos((torch.exp(0.5 * log_alpha2) * cos0).clamp(max=1.0))
        return angle * (2.0 / math.pi) * (1.0 + self.s) - self.s


@dataclass(frozen=True)
class FlowSchedule(Schedule):
    """Rectified flow / flow matching's straight path: x_t = (1 - t) x0 + t eps (Liu et al.; Lipman et al.).

    Not variance preserving. logSNR = 2 log((1 - t) / t), sigma_ve = t / (1 - t), so t = sigma_ve /
    (1 + sigma_ve). alpha(1) = 0 makes sigma_ve infinite, hence `t_max` < 1 (sigma_ve = 999 there).
    """

    name: ClassVar[str] = "flow"
    t_max: float = 0.999

    def alpha(self, t: TensorLike) -> Tensor:
        return 1.0 - _t(t)

    def sigma(self, t: TensorLike) -> Tensor:
        return _t(t).clone()

    def log_snr(self, t: TensorLike) -> Tensor:
        t = _t(t)
        return 2.0 * (torch.log1p(-t) - torch.log(t))

    def t_from_log_snr(self, log_snr: TensorLike) -> Tensor:
        return torch.sigmoid(-0.5 * _t(log_snr))

    def alpha_sigma_from_sigma_ve(self, sigma_ve: TensorLike) -> tuple[Tensor, Tensor]:
        s = _t(sigma_ve)
        alpha = 1.0 / (1.0 + s)
        return alpha, s * alpha


SCHEDULES: dict[str, type[Schedule]] = {
    "linear": LinearSchedule,
    "scaled-linear": ScaledLinearSchedule,
    "cosine": CosineSchedule,
    "flow": FlowSchedule,
}


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """EDM's (Karras et al. 2022) n noise levels, uniform in sigma^(1/rho), followed by a final 0.

    rho = 7 spends most steps at low noise, where detail is decided; rho = 1 would be uniform in sigma.
    Returns n + 1 float64 values, strictly decreasing from sigma_max to sigma_min, then 0.
    """
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def schedule_sigmas(
    schedule: Schedule,
    n: int,
    spacing: str = "uniform",
    t_min: float | None = None,
    t_max: float | None = None,
    rho: float = 7.0,
) -> Tensor:
    """The n VE noise levels ``sigma_ve = sigma / alpha`` a sampler visits for this schedule, then 0.

    ``uniform`` takes times evenly spaced from t_max down to t_min (DDPM/DDIM's choice, and rectified
    flow's); ``karras`` takes `karras_sigmas` between the schedule's sigma_ve at t_min and t_max.
    Defaults for the range are the schedule's own `t_min` / `t_max`. Karras spacing over cosine's full
    range (sigma_ve up to ~2e4) spends many steps at useless noise levels; pass a smaller t_max there.
    Returns n + 1 float64 values.
    """
    t_min = schedule.t_min if t_min is None else t_min
    t_max = schedule.t_max if t_max is None else t_max
    if spacing == "uniform":
        t = torch.linspace(t_max, t_min, n, dtype=torch.float64)
        sigmas = schedule.sigma_ve(t)
        return torch.cat([sigmas, sigmas.new_zeros(1)])
    if spacing == "karras":
        ends = schedule.sigma_ve(torch.tensor([t_min, t_max], dtype=torch.float64))
        return karras_sigmas(n, float(ends[0]), float(ends[1]), rho)
    raise UserError(f"unknown sigma spacing {spacing!r}; choose uniform or karras")

"""The shared diffusion core: schedules, training objectives, samplers and guidance.

One implementation serves every diffusion family (LDM, GLIDE, Imagen, DALL-E 2). The process is kept
apart from the network, as in EDM: a network ``net(x_t, t, **cond)`` predicting eps, v, x0 or flow on
``x_t = alpha(t) x0 + sigma(t) eps`` is wrapped by `Denoiser` into k-diffusion's
``denoiser(x, sigma, **cond) -> x0_hat`` on the VE process ``x = x0 + sigma eps``
(``sigma = sigma(t) / alpha(t)``), and every sampler works on that.

Typical use::

    schedule = Schedule.from_name("cosine")
    loss = training_loss(net, x0, {"context": emb}, schedule, objective="v").mean()
    ...
    denoiser = CFGDenoiser(Denoiser(net, schedule, "v"), scale=3.0)
    sigmas = schedule_sigmas(schedule, 25, spacing="karras")
    images = sample(denoiser, (4, 3, 32, 32), sigmas, "dpmpp-2m", generator=g,
                    extra_args={"cond": {"context": emb}, "uncond": {"context": null_emb}})
"""

from t2i.diffusion.guidance import CFGDenoiser, apply_null_condition, drop_condition, dynamic_threshold
from t2i.diffusion.objectives import (
    OBJECTIVES,
    WEIGHTINGS,
    Denoiser,
    TimeDensity,
    append_dims,
    loss_weight,
    prediction_target,
    snr,
    to_x0_eps,
    training_loss,
)
from t2i.diffusion.samplers import (
    SAMPLERS,
    get_sampler,
    sample,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_euler,
    sample_heun,
)
from t2i.diffusion.schedules import (
    SCHEDULES,
    CosineSchedule,
    FlowSchedule,
    LinearSchedule,
    ScaledLinearSchedule,
    Schedule,
    VPSchedule,
    karras_sigmas,
    schedule_sigmas,
)

__all__ = [
    "OBJECTIVES",
    "SAMPLERS",
    "SCHEDULES",
    "WEIGHTINGS",
    "CFGDenoiser",
    "CosineSchedule",
    "Denoiser",
    "FlowSchedule",
    "LinearSchedule",
    "ScaledLinearSchedule",
    "Schedule",
    "TimeDensity",
    "VPSchedule",
    "append_dims",
    "apply_null_condition",
    "drop_condition",
    "dynamic_threshold",
    "get_sampler",
    "karras_sigmas",
    "loss_weight",
    "prediction_target",
    "sample",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_euler",
    "sample_heun",
    "schedule_sigmas",
    "snr",
    "to_x0_eps",
    "training_loss",
]

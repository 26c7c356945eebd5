"""Classifier-free guidance, dynamic thresholding and caption dropout."""

import numpy as np
import pytest
import torch

from t2i.diffusion import (
    CFGDenoiser,
    apply_null_condition,
    drop_condition,
    dynamic_threshold,
    karras_sigmas,
    sample,
)


class RecordingDenoiser:
    """A nonlinear conditional denoiser that records the batch size of every call."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, x, sigma, *, context, scale):
        self.batches.append(x.shape[0])
        return torch.tanh(x * context[:, :1]) + sigma[:, None] * scale[:, None] ** 2

    def single(self, x, sigma, cond):
        """Reference: one branch evaluated on its own, without recording."""
        return torch.tanh(x * cond["context"][:, :1]) + sigma[:, None] * cond["scale"][:, None] ** 2


def batch(seed: int = 0, b: int = 5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 3, generator=g)
    sigma = torch.rand(b, generator=g) + 0.1
    cond = {"context": torch.randn(b, 4, generator=g), "scale": torch.randn(b, generator=g)}
    uncond = {"context": torch.randn(1, 4, generator=g), "scale": torch.randn(1, generator=g)}
    return x, sigma, cond, uncond


def expand(cond, b):
    return {k: v.expand(b, *v.shape[1:]) for k, v in cond.items()}


def test_scale_one_is_the_conditional_model_in_one_call():
    x, sigma, cond, uncond = batch()
    inner = RecordingDenoiser()
    out = CFGDenoiser(inner, 1.0)(x, sigma, cond=cond, uncond=uncond)
    torch.testing.assert_close(out, inner.single(x, sigma, cond))
    assert inner.batches == [5]


def test_scale_zero_is_the_unconditional_model_in_one_call():
    x, sigma, cond, uncond = batch()
    inner = RecordingDenoiser()
    out = CFGDenoiser(inner, 0.0)(x, sigma, cond=cond, uncond=uncond)
    torch.testing.assert_close(out, inner.single(x, sigma, expand(uncond, 5)))
    assert inner.batches == [5]


@pytest.mark.parametrize("scale", [3.0, 7.5, -1.0])
def test_guided_output_in_one_batched_call(scale):
    x, sigma, cond, uncond = batch()
    inner = RecordingDenoiser()
    out = CFGDenoiser(inner, scale)(x, sigma, cond=cond, uncond=uncond)
    c, u = inner.single(x, sigma, cond), inner.single(x, sigma, expand(uncond, 5))
    torch.testing.assert_close(out, u + scale * (c - u))
    assert inner.batches == [10]


def test_bare_tensor_condition_is_passed_as_cond():
    calls = []

    def inner(x, sigma, cond):
        calls.append(x.shape[0])
        return x * cond

    x = torch.ones(2, 3)
    out = CFGDenoiser(inner, 2.0)(x, torch.ones(2), cond=torch.full((2, 3), 3.0), uncond=torch.zeros(1, 3))
    torch.testing.assert_close(out, torch.full((2, 3), 6.0))  # 0 + 2 (3 - 0)
    assert calls == [4]


def test_mismatched_condition_keys_are_rejected():
    x, sigma, cond, _ = batch()
    with pytest.raises(ValueError, match="same keys"):
        CFGDenoiser(RecordingDenoiser(), 2.0)(x, sigma, cond=cond, uncond={"context": cond["context"]})


def test_guided_gaussians_sample_the_extrapolated_mean():
    """For two Gaussian classes with equal spread, guidance at scale w samples N(mu_u + w (mu_c - mu_u), s^2)."""
    s = 0.5

    def inner(x, sigma, *, mu):
        return mu + s**2 / (s**2 + sigma[:, None] ** 2) * (x - mu)

    mu_c, mu_u = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    x = sample(
        CFGDenoiser(inner, 3.0),
        (4000, 2),
        karras_sigmas(30, 0.002, 80.0),
        "heun",
        torch.Generator().manual_seed(0),
        extra_args={"cond": {"mu": mu_c.expand(4000, 2)}, "uncond": {"mu": mu_u}},
        disable=True,
    )
    assert (x.mean(0) - torch.tensor([3.0, 0.0])).abs().max() < 0.05
    assert (x.std(0) - s).abs().max() < 0.05


def test_dynamic_threshold_matches_imagen():
    g = torch.Generator().manual_seed(0)
    inside = torch.rand(1, 3, 8, 8, generator=g) * 1.8 - 0.9  # all |x| < 1: s = 1, untouched
    outside = torch.randn(1, 3, 8, 8, generator=g) * 3.0  # 99.5th percentile of |x| well above 1
    x0 = torch.cat([inside, outside])
    out = dynamic_threshold(x0, 0.995)
    torch.testing.assert_close(out[0], inside[0])
    s = float(np.quantile(np.abs(outside.numpy()).ravel(), 0.995))
    assert s > 1
    torch.testing.assert_close(out[1], outside[0].clamp(-s, s) / s)
    assert out.abs().max() <= 1.0
    # A sample whose percentile is below 1 is clipped to [-1, 1], not stretched.
    small = torch.tensor([[0.2, -0.5, 0.1, 3.0] + [0.0] * 396])
    torch.testing.assert_close(dynamic_threshold(small, 0.5), small.clamp(-1, 1))


def test_cfg_applies_thresholding_after_guidance():
    x, sigma, cond, uncond = batch()
    inner = RecordingDenoiser()
    out = CFGDenoiser(inner, 9.0, threshold=0.9)(x * 10, sigma, cond=cond, uncond=uncond)
    c, u = inner.single(x * 10, sigma, cond), inner.single(x * 10, sigma, expand(uncond, 5))
    guided = u + 9.0 * (c - u)
    assert guided.abs().max() > 1.5  # thresholding has something to do
    torch.testing.assert_close(out, dynamic_threshold(guided, 0.9))


def test_drop_condition_rate_and_reproducibility():
    mask = drop_condition(batch=100_000, generator=torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and mask.shape == (100_000,)
    assert abs(float(mask.float().mean()) - 0.1) < 0.005
    again = drop_condition(batch=100_000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)
    assert drop_condition(0.0, batch=50).sum() == 0 and drop_condition(1.0, batch=50).all()
    assert (
        abs(
            float(
                drop_condition(0.5, batch=100_000, generator=torch.Generator().manual_seed(1)).float().mean()
            )
            - 0.5
        )
        < 0.01
    )


def test_apply_null_condition_replaces_dropped_rows():
    cond = torch.arange(12.0).reshape(3, 2, 2)
    null = torch.full((1, 2, 2), -1.0)
    out = apply_null_condition(cond, null, torch.tensor([False, True, False]))
    torch.testing.assert_close(out[[0, 2]], cond[[0, 2]])
    torch.testing.assert_close(out[1], null[0])


def test_denoise_precision_runs_the_network_in_bf16_but_returns_fp32():
    """`SampleConfig.precision` decides the network's autocast dtype; the sampler's state stays fp32."""
    from t2i.diffusion import Schedule
    from t2i.diffusion.generate import SampleConfig, denoise
    from t2i.errors import UserError

    seen: list[torch.dtype] = []
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 4)

    def net(x, t, *, w):
        out = lin(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        seen.append(out.dtype)
        return out * w[:, None, None, None].to(out.dtype)

    cond, uncond = {"w": torch.ones(3)}, {"w": torch.zeros(1)}
    args = (net, Schedule.from_name("cosine"), "v", [0, 1, 2], (4, 2, 2), cond, uncond)
    lo = denoise(*args, SampleConfig(steps=4, guidance=2.0, precision="bf16"))
    assert set(seen) == {torch.bfloat16} and lo.dtype == torch.float32
    seen.clear()
    hi = denoise(*args, SampleConfig(steps=4, guidance=2.0, precision="fp32"))
    assert set(seen) == {torch.float32}
    # bf16 keeps ~3 significant digits, so the two agree relatively (values reach ~10 on some devices)
    assert torch.allclose(lo, hi, rtol=0.05, atol=0.05) and not torch.equal(lo, hi)
    with pytest.raises(UserError, match="precision"):
        denoise(*args, SampleConfig(steps=4, precision="fp16"))

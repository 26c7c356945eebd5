"""The KL autoencoder: latent geometry, the Gaussian posterior's math, and that it actually learns."""

import numpy as np
import torch

from t2i.codecs import AutoencoderConfig, AutoencoderKL, DiagonalGaussian
from t2i.data.shapes import iter_samples


def shapes_batch(n: int, size: int) -> torch.Tensor:
    arrays = [np.array(s.image, dtype=np.float32) for s in iter_samples(n, seed=0, size=size)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0


def test_f8_gives_8x8_latents_for_64px_images():
    torch.manual_seed(0)
    ae = AutoencoderKL(AutoencoderConfig(channels=8))  # default channel_mult (1, 2, 2, 4)
    assert ae.downsample_factor == 8
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    posterior = ae.encode(x)
    assert posterior.mean.shape == posterior.logvar.shape == (2, 4, 8, 8)
    assert ae.decode(posterior.sample()).shape == x.shape


def test_bf16_autocast_channels_last():
    torch.manual_seed(0)
    ae = AutoencoderKL(AutoencoderConfig(channels=8, channel_mult=(1, 2))).to(memory_format=torch.channels_last)
    x = (torch.rand(2, 3, 16, 16) * 2 - 1).to(memory_format=torch.channels_last)
    ref = ae.decode(ae.encode(x).mode())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ae.decode(ae.encode(x).mode())
        losses = ae.loss(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert (out.float() - ref).norm() / ref.norm() < 0.05
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())


def test_diagonal_gaussian_kl_sample_and_clamp():
    zeros = torch.zeros(2, 4, 3, 3)
    torch.testing.assert_close(DiagonalGaussian(zeros, zeros).kl(), torch.zeros(2))
    # mean 1, var 1: 0.5 nat per element; mean 0, var e: 0.5 (e - 1 - 1) per element.
    torch.testing.assert_close(DiagonalGaussian(zeros + 1, zeros).kl(), torch.full((2,), 0.5 * 36))
    torch.testing.assert_close(DiagonalGaussian(zeros, zeros + 1).kl(), torch.full((2,), 0.5 * (np.e - 2) * 36))
    torch.manual_seed(0)
    for _ in range(5):
        assert (DiagonalGaussian(torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3) * 3).kl() >= 0).all()

    g = DiagonalGaussian(torch.full((1000, 4, 1, 1), 2.0), torch.full((1000, 4, 1, 1), np.log(0.25)))
    z = g.sample(torch.Generator().manual_seed(1))
    torch.testing.assert_close(z, g.sample(torch.Generator().manual_seed(1)))
    assert abs(z.mean().item() - 2.0) < 0.05 and abs(z.std().item() - 0.5) < 0.05
    assert torch.equal(g.mode(), g.mean)
    assert DiagonalGaussian(zeros, zeros + 100).logvar.max() == 20.0


def test_loss_is_reconstruction_plus_weighted_kl():
    torch.manual_seed(0)
    ae = AutoencoderKL(AutoencoderConfig(channels=8, channel_mult=(1, 2), kl_weight=0.01))
    out = ae.loss(torch.rand(2, 3, 8, 8) * 2 - 1, generator=torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "rec", "kl"}
    torch.testing.assert_close(out["loss"], out["rec"] + 0.01 * out["kl"])
    assert out["rec"] > 0 and out["kl"] >= 0


def test_tiny_autoencoder_overfits_a_batch_of_shapes():
    torch.manual_seed(0)
    x = shapes_batch(4, size=32)
    ae = AutoencoderKL(AutoencoderConfig(channels=16, channel_mult=(1, 2)))
    opt = torch.optim.Adam(ae.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        out = ae.loss(x, gen)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0] / 5
    # Better than any decoder that ignores its latent could be (the batch's mean image): z carries the scene.
    mean_image = x - x.mean(dim=0, keepdim=True)
    blind = mean_image.abs().mean() + mean_image.pow(2).mean()
    assert out["rec"] < 0.5 * blind

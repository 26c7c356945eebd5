"""The KL-regularised autoencoder of Latent Diffusion: images in [-1, 1] <-> latents f times smaller.

Diffusion in pixel space spends most of its capacity on imperceptible detail; LDM first trains this
autoencoder to compress an image by f = 2**(levels - 1) per side into a few latent channels, then runs
diffusion on the latents. The encoder outputs a diagonal Gaussian per latent position; a very small KL
penalty towards N(0, I) keeps the latent space smooth and its scale bounded without making it lossy
(LDM's "KL-reg" variant, as opposed to VQ).

Differences from LDM's f=8 KL model, chosen for CPU scale: no attention in the middle block (a pure
conv net, so `channels_last` + bf16 speed it up), no separate 1x1 quant convs (the encoder's output conv
does that job), and no perceptual/adversarial losses -- reconstruction is L1 + MSE.

Loss scaling: reconstruction is a per-pixel mean while `kl()` is a per-sample sum, so `kl_weight` weighs
the KL about (number of pixel values) times more than the same number in LDM, whose reconstruction is a
per-sample sum. 1e-6 still leaves the latents nearly deterministic; raise it for a smoother latent space.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from t2i.nn.blocks import Downsample, ResBlock, Upsample, group_norm


@dataclass
class AutoencoderConfig:
    in_channels: int = 3
    latent_channels: int = 4
    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)  # downsampling factor f = patch * 2**(len - 1)
    num_res_blocks: int = 1
    kl_weight: float = 1e-6
    # Space-to-depth before the first conv (and depth-to-space after the last): patch=4 with two levels
    # gives f=8 while no conv runs at full resolution, which is most of an f=8 conv AE's cost on a CPU.
    patch: int = 1

    @property
    def downsample_factor(self) -> int:
        """f: latents are (H / f, W / f) for (H, W) images (known before any weights exist, for the
        denoiser's shape)."""
        return self.patch * 2 ** (len(self.channel_mult) - 1)


def reconstruction_loss(x: Tensor, rec: Tensor) -> Tensor:
    """L1 + MSE in float32 (bf16 would round away small errors): what this autoencoder, the VQ tokenizer and
    its decoder fine-tuning all minimise."""
    diff = x.float() - rec.float()
    return diff.abs().mean() + diff.pow(2).mean()


class DiagonalGaussian:
    """The encoder's posterior q(z|x) = N(mean, exp(logvar)), per latent element (B, C, h, w)."""

    def __init__(self, mean: Tensor, logvar: Tensor):
        self.mean = mean
        # Clamped as in LDM: a runaway logvar would make exp() overflow or the KL explode.
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """z = mean + std * eps (reparameterised, so gradients flow); `generator` must be on mean's device."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) per sample (B,), summed over latent elements, in nats."""
        kl = 0.5 * (self.mean.float() ** 2 + self.logvar.float().exp() - 1.0 - self.logvar.float())
        return kl.flatten(1).sum(dim=1)


class Encoder(nn.Module):
    """Conv stack: ResBlocks per level, stride-2 downsample between levels, -> 2 * latent channels."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mult]
        self.patch = nn.PixelUnshuffle(cfg.patch) if cfg.patch > 1 else nn.Identity()
        self.conv_in = nn.Conv2d(cfg.in_channels * cfg.patch**2, widths[0], 3, padding=1)
        layers: list[nn.Module] = []
        width = widths[0]
        for level, w in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(width, w))
                width = w
            if level < len(widths) - 1:
                layers.append(Downsample(width))
        layers += [ResBlock(width, width), ResBlock(width, width), group_norm(width), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(width, 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_out(self.body(self.conv_in(self.patch(x))))


class Decoder(nn.Module):
    """The mirror image: latent -> widest level, ResBlocks per level with nearest+conv upsampling."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        widths = [cfg.channels * m for m in cfg.channel_mult]
        width = widths[-1]
        self.conv_in = nn.Conv2d(cfg.latent_channels, width, 3, padding=1)
        layers: list[nn.Module] = [ResBlock(width, width), ResBlock(width, width)]
        for level in reversed(range(len(widths))):
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResBlock(width, widths[level]))
                width = widths[level]
            if level > 0:
                layers.append(Upsample(width))
        layers += [group_norm(width), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(width, cfg.in_channels * cfg.patch**2, 3, padding=1)
        self.unpatch = nn.PixelShuffle(cfg.patch) if cfg.patch > 1 else nn.Identity()

    def forward(self, z: Tensor) -> Tensor:
        return self.unpatch(self.conv_out(self.body(self.conv_in(z))))


class AutoencoderKL(nn.Module):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    @property
    def downsample_factor(self) -> int:
        """f: latents are (H / f, W / f) for (H, W) images."""
        return self.cfg.downsample_factor

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """Images (B, C, H, W) in [-1, 1] -> posterior over latents (B, latent_channels, H / f, W / f)."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar)

    def decode(self, z: Tensor) -> Tensor:
        """Latents -> images in (roughly) [-1, 1]; not clamped, so callers see what the model produced."""
        return self.decoder(z)

    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Training loss on a batch of images in [-1, 1]: dict(loss, rec, kl), each a scalar.

        rec = mean |x - x_hat| + mean (x - x_hat)^2 with x_hat decoded from a posterior *sample*; kl is
        the batch mean of the per-sample KL; loss = rec + kl_weight * kl.
        """
        posterior = self.encode(x)
        x_hat = self.decode(posterior.sample(generator))
        rec = reconstruction_loss(x, x_hat)
        kl = posterior.kl().mean()
        return {"loss": rec + self.cfg.kl_weight * kl, "rec": rec, "kl": kl}


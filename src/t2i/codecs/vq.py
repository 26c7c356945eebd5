"""A VQ image tokenizer (VQ-VAE / VQGAN's "visual codebook"): images <-> a grid of discrete codes.

Token families (DALL-E, Parti, MaskGIT) model images as sequences of codebook indices, so their first stage
must turn a 64x64 image into 8x8 = 64 integers and back. The encoder and decoder are the KL autoencoder's
parts (`t2i.codecs.autoencoder`), used with space-to-depth by 8 so every conv runs at 8x8 -- the
configuration that trained fastest on a CPU for LDM; only the bottleneck differs.

The quantizer carries the fixes that decide whether a codebook works at small scale (VQ-VAE-2, ViT-VQGAN,
"Straightening out the straight-through estimator"):

* **l2-normalised low-dimensional lookup** (ViT-VQGAN's factorised codes): a 1x1 conv projects the encoder's
  features to `code_dim` (e.g. 16) dimensions and both they and the codes are l2-normalised, so the lookup is
  a cosine similarity. Codes cannot drift in norm and a low dimension makes nearest neighbours meaningful.
* **EMA codebook updates** (VQ-VAE's appendix): codes move to the running mean of the vectors assigned to
  them instead of being learned by a codebook loss, which is faster and steadier.
* **k-means initialisation** after an autoencoder warm-up: for the first `warmup_steps` training calls the
  quantizer passes the (normalised) encoder output through unquantised, then the codebook starts as
  spherical k-means centroids (k-means++ seeding) of that batch's encoder outputs (or of the last
  `kmeans_batches` warm-up batches': one batch of 32 images is only 2,048 vectors for 1,024 codes), so every
  code starts where data is. k-means on
  a *random* encoder's outputs (step 0) did not work: the first optimiser steps moved all outputs into a
  narrow cone away from the codes, the codebook collapsed to 1-8 codes, and it recovered only slowly.
* **dead-code restart**: a code whose recent usage (an EMA with a short, ~10-step memory) falls below
  `dead_threshold` is moved onto an encoder output of the current batch, drawn with probability proportional
  to its quantisation error (k-means++ style, so restarts go where the codebook is worst, not onto the
  background that most patches show). Without it the codebook collapsed to 1-8 codes within the first
  steps: the encoder's outputs move away from the k-means codes faster than the EMA can follow.
* **commitment loss** 0.25 * ||z_e - sg(z_q)||^2 on the encoder term only (the EMA update replaces the
  codebook term); gradients pass the quantizer by the straight-through estimator.

No perceptual or adversarial loss: shapes are flat colours on a flat background, and L1 + MSE reconstruct
them exactly enough for ShapesBench; a hinge GAN term tried in the decoder fine-tuning phase made the
candidates worse (docs/tokens.md has the measurements).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from t2i.codecs.autoencoder import AutoencoderConfig, Decoder, Encoder, reconstruction_loss
from t2i.errors import UserError


@dataclass
class VQConfig:
    in_channels: int = 3
    channels: int = 192
    channel_mult: tuple[int, ...] = (1,)  # downsampling factor f = patch * 2**(len - 1)
    num_res_blocks: int = 2
    patch: int = 8  # space-to-depth before the first conv: 64x64 -> 8x8 tokens with patch 8 and one level
    codebook_size: int = 1024
    code_dim: int = 16  # the low-dimensional lookup space
    ema_decay: float = 0.99
    commitment: float = 0.25
    dead_threshold: float = 0.03  # recent assignments per batch below which a code is restarted
    kmeans_iters: int = 10
    warmup_steps: int = 100  # training steps as a plain autoencoder before k-means init and quantisation
    kmeans_batches: int = 1  # the last warm-up batches whose encoder outputs k-means clusters (1: the init batch)

    def autoencoder(self) -> AutoencoderConfig:
        """The encoder/decoder shape, as the KL autoencoder's config (latent_channels = code_dim)."""
        return AutoencoderConfig(in_channels=self.in_channels, latent_channels=self.code_dim,
                                 channels=self.channels, channel_mult=self.channel_mult,
                                 num_res_blocks=self.num_res_blocks, patch=self.patch)


RECENT_DECAY = 0.9  # memory of the dead-code test: a code unused for ~30 steps after one use is restarted


def _all_reduce(t: Tensor) -> Tensor:
    """Sum over DDP ranks, so every rank's codebook sees every rank's batch and they stay identical."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t


class VectorQuantizer(nn.Module):
    """Nearest-code lookup on the unit sphere with an EMA-updated codebook (all state is buffers).

    Buffers, not parameters: the optimizer never touches the codebook, and the trainer's EMA copy and its
    checkpoints carry it along like BatchNorm statistics.
    """

    def __init__(self, size: int, dim: int, decay: float = 0.99, dead_threshold: float = 0.03,
                 kmeans_iters: int = 10, warmup_steps: int = 0, kmeans_batches: int = 1):
        super().__init__()
        if kmeans_batches < 1:
            raise UserError(f"vq.kmeans_batches must be at least 1 (1: k-means on the first quantised batch alone), "
                            f"got {kmeans_batches}")
        self.size, self.dim, self.decay, self.warmup_steps = size, dim, decay, warmup_steps
        self.kmeans_batches = kmeans_batches
        self._pool: list[Tensor] = []  # the last warm-up batches' vectors, for k-means (not saved)
        self.dead_threshold, self.kmeans_iters = dead_threshold, kmeans_iters
        self.register_buffer("codebook", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("cluster_size", torch.zeros(size))  # EMA of assignments per batch
        self.register_buffer("embed_sum", self.codebook.clone())  # EMA of the sum of assigned vectors
        self.register_buffer("recent", torch.zeros(size))  # short-memory EMA of assignments: dead-code test
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("steps_seen", torch.tensor(0))  # training calls so far (for the warm-up)
        self.restarts = 0  # codes restarted in the last training call (a diagnostic, not saved)

    def lookup(self, flat: Tensor) -> Tensor:
        """l2-normalised vectors (N, dim) -> nearest code index (N,) by cosine similarity."""
        return (flat @ self.codebook.t()).argmax(dim=1)

    @torch.no_grad()
    def kmeans_init(self, flat: Tensor, generator: torch.Generator | None = None) -> None:
        """Spherical k-means on a batch of normalised vectors: the starting codebook and EMA statistics."""
        centroids = self._kmeans_plus_plus(flat, generator)
        counts = torch.zeros(self.size, device=flat.device)
        sums = centroids.clone()
        for _ in range(max(self.kmeans_iters, 1)):
            assign = (flat @ centroids.t()).argmax(dim=1)
            counts = torch.bincount(assign, minlength=self.size).float()
            sums = torch.zeros_like(centroids).index_add_(0, assign, flat)
            used = counts > 0
            centroids[used] = F.normalize(sums[used], dim=1)
        self.codebook.copy_(centroids)
        self.cluster_size.copy_(counts)
        self.recent.copy_(counts)
        self.embed_sum.copy_(torch.where((counts > 0)[:, None], sums, centroids))
        self.initialized.fill_(True)

    def _kmeans_plus_plus(self, flat: Tensor, generator: torch.Generator | None) -> Tensor:
        """k-means++ seeding: each next centre drawn with probability ~ squared distance to the nearest one
        so far, so clusters get a centre each (uniform picks put several on the dominant background)."""
        first = torch.randint(flat.shape[0], (1,), generator=generator, device=flat.device)
        centres = [flat[first[0]]]
        best = flat @ centres[0]  # cosine to the nearest centre so far
        for _ in range(self.size - 1):
            weights = (1 - best).clamp(min=0).pow(2) + 1e-12
            i = torch.multinomial(weights, 1, generator=generator)[0]
            centres.append(flat[i])
            best = torch.maximum(best, flat @ flat[i])
        return torch.stack(centres).clone()

    @torch.no_grad()
    def ema_update(self, flat: Tensor, codes: Tensor, generator: torch.Generator | None = None) -> None:
        """Move each code to the running mean of its assigned vectors, then restart the dead ones."""
        error = 1 - (flat * self.codebook[codes]).sum(dim=1)  # cosine distance to the assigned code
        counts = _all_reduce(torch.bincount(codes, minlength=self.size).float())
        sums = _all_reduce(torch.zeros(self.size, self.dim, device=flat.device).index_add_(0, codes, flat))
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        self.recent.mul_(RECENT_DECAY).add_(counts, alpha=1 - RECENT_DECAY)
        alive = self.recent >= self.dead_threshold
        self.codebook.copy_(torch.where(alive[:, None], F.normalize(self.embed_sum, dim=1), self.codebook))
        dead = (~alive).nonzero().flatten()
        self.restarts = len(dead)
        if len(dead):
            # Same picks on every rank (the generators are seeded per rank, so take rank 0's choice).
            weights = error.clamp(min=0) + 1e-6
            pick = torch.multinomial(weights, len(dead), replacement=True, generator=generator)
            fresh = flat[pick]
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.broadcast(fresh, 0)
            self.codebook[dead] = fresh
            self.embed_sum[dead] = fresh
            self.cluster_size[dead] = 1.0
            self.recent[dead] = 1.0  # a grace period (~30 steps) before it can be declared dead again

    def forward(self, z: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """z (B, dim, h, w) -> (z_q with straight-through gradients, codes (B, h, w), commitment loss).

        In training mode: unquantised for `warmup_steps` calls, then the codebook is k-means-initialised and
        EMA-updated on every call.
        Runs in float32 whatever the autocast state: bf16 cannot tell near-identical cosines apart.
        """
        b, d, h, w = z.shape
        with torch.autocast(z.device.type, enabled=False):
            flat = F.normalize(z.float().permute(0, 2, 3, 1).reshape(-1, d), dim=1)
            if self.training:
                self.steps_seen += 1
                if int(self.steps_seen) <= self.warmup_steps:  # autoencoder warm-up: no quantisation yet
                    if int(self.steps_seen) > self.warmup_steps - (self.kmeans_batches - 1):
                        self._pool.append(flat.detach())
                    codes = self.lookup(flat.detach()).reshape(b, h, w)
                    return z.float() / z.float().norm(dim=1, keepdim=True).clamp(min=1e-12), codes, flat.sum() * 0
                if not bool(self.initialized):
                    self.kmeans_init(torch.cat([*self._pool, flat.detach()]), generator)
                    self._pool.clear()
            codes = self.lookup(flat.detach())
            if self.training:
                self.ema_update(flat.detach(), codes, generator)
            q = self.codebook[codes]
            commit = (flat - q).pow(2).sum(dim=1).mean()  # q is a buffer: gradient reaches the encoder only
            q = flat + (q - flat).detach()
        return q.reshape(b, h, w, d).permute(0, 3, 1, 2), codes.reshape(b, h, w), commit


class ImageTokenizer(nn.Module):
    """Images (B, 3, H, W) in [-1, 1] <-> codes (B, H/f, W/f) in [0, codebook_size)."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.cfg = cfg
        ae = cfg.autoencoder()
        self.encoder = Encoder(ae)  # outputs 2 * code_dim channels (the KL encoder's mean/logvar width)
        self.to_code = nn.Conv2d(2 * cfg.code_dim, cfg.code_dim, 1)  # the factorised low-dim projection
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.code_dim, cfg.ema_decay, cfg.dead_threshold,
                                         cfg.kmeans_iters, cfg.warmup_steps, cfg.kmeans_batches)
        self.decoder = Decoder(ae)

    @property
    def downsample_factor(self) -> int:
        return self.cfg.patch * 2 ** (len(self.cfg.channel_mult) - 1)

    def grid(self, resolution: int) -> int:
        """Tokens per side for images of `resolution` pixels."""
        return resolution // self.downsample_factor

    def encode(self, x: Tensor) -> Tensor:
        """Images -> codes (B, h, w) long."""
        return self.quantizer(self.to_code(self.encoder(x)))[1]

    def decode(self, codes: Tensor) -> Tensor:
        """Codes (B, h, w) or (B, h*w) for a square grid -> images in (roughly) [-1, 1]."""
        if codes.ndim == 2:
            side = math.isqrt(codes.shape[1])
            codes = codes.reshape(codes.shape[0], side, side)
        q = self.quantizer.codebook[codes].permute(0, 3, 1, 2)
        return self.decoder(q.to(self.decoder.conv_in.weight.dtype))

    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """rec (L1 + MSE, as the KL autoencoder) + commitment * ||z_e - sg(z_q)||^2, plus diagnostics."""
        q, codes, commit = self.quantizer(self.to_code(self.encoder(x)), generator)
        rec = reconstruction_loss(x, self.decoder(q.to(x.dtype)))
        used = torch.tensor(float(codes.unique().numel()) / self.cfg.codebook_size)
        return {"loss": rec + self.cfg.commitment * commit, "rec": rec, "commit": commit,
                "batch_usage": used, "restarts": torch.tensor(float(self.quantizer.restarts))}


@torch.no_grad()
def codebook_usage(vq: ImageTokenizer, images: Iterable[Tensor]) -> dict[str, float]:
    """Codes used over a whole pass of `images` (batches in [-1, 1]): the fraction of the codebook that is
    ever used, and the perplexity of the pooled code histogram. Unlike batch perplexity, this counts a
    code that one image in the epoch needs."""
    counts = torch.zeros(vq.cfg.codebook_size)
    for x in images:
        counts += torch.bincount(vq.encode(x.to(vq.quantizer.codebook.device)).flatten().cpu(),
                                 minlength=vq.cfg.codebook_size).float()
    p = counts / counts.sum().clamp(min=1)
    perplexity = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
    used = int((counts > 0).sum())
    return {"codes_used": used, "usage": used / vq.cfg.codebook_size, "perplexity": perplexity}


@torch.no_grad()
def reconstruction_error(vq: ImageTokenizer, images: Iterable[Tensor]) -> float:
    """Mean absolute error per pixel value in [0, 255] units over a pass of `images`."""
    total, n = 0.0, 0
    for x in images:
        x = x.to(vq.quantizer.codebook.device)
        rec = vq.decode(vq.encode(x)).float().clamp(-1, 1)
        total += float((rec - x.float()).abs().sum()) * 127.5
        n += x.numel()
    return total / max(n, 1)


class ReconstructionPipe:
    """A 'generator' that renders each prompt exactly and returns its VQ reconstruction: scoring it with
    ShapesBench (`quick_score(ReconstructionPipe(vq))`) gives the tokenizer's ceiling, the best score any
    token model decoding through it can reach."""

    def __init__(self, vq: ImageTokenizer, resolution: int = 64):
        self.vq, self.resolution = vq, resolution

    @torch.no_grad()
    def __call__(self, prompts: list[str], seed: int = 0, seeds: list[int] | None = None,
                 **_: object) -> list[Image.Image]:
        from t2i.data.shapes import render_prompt
        from t2i.images import images_to_tensor, tensor_to_images

        seeds = seeds if seeds is not None else [seed + i for i in range(len(prompts))]
        out: list[Image.Image] = []
        for i in range(0, len(prompts), 64):
            ims = [render_prompt(p, seed=s, size=self.resolution)[0]
                   for p, s in zip(prompts[i:i + 64], seeds[i:i + 64], strict=True)]
            x = images_to_tensor(ims).to(self.vq.quantizer.codebook.device)
            out += tensor_to_images(self.vq.decode(self.vq.encode(x)))
        return out

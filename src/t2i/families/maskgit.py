"""MaskGIT / Muse (Chang et al. 2022, 2023): a masked-token model over VQ codes, decoded in parallel.

Why a family of its own rather than a decoding mode of Parti: parallel decoding needs a model *trained*
for it -- a bidirectional transformer that predicts masked codes from the visible ones -- while an
autoregressive model only ever learns p(next | previous). The two objectives give different weights for
the same architecture, so a run is one or the other; making it a family keeps each run self-describing
(`t2i generate` picks the decoder from the run) and the Parti file free of a second objective. Everything
else is shared (`t2i.families.tokens`): the same text encoder, VQ tokenizer, stages and pipeline, so Parti
and MaskGIT runs of the same width are the "comparable models" the parallel-vs-AR benchmark compares.

Paper choices followed (Muse's text-conditional variant of MaskGIT): a bidirectional text encoder whose
states the image transformer cross-attends to; training masks a fraction cos(pi/2 u), u ~ U(0, 1), of the
image codes (MaskGIT's cosine schedule) with a [MASK] token and takes cross-entropy on the masked ones only;
caption dropout 10% for classifier-free guidance on logits; decoding in ~8 steps with the cosine schedule
and confidence-based re-masking with annealed Gumbel noise (`t2i.tokens.decoding.sample_parallel`).

Stages: tokenizer -> vq -> (vq_decoder) -> transformer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2i.families import base, tokens
from t2i.families.tokens import IMAGE_TOKENIZER, STAGES, TokenOptions, TokenPipeline, train_stages
from t2i.nn.gpt import TokenTransformer
from t2i.nn.transformer import TextEncoder, TextEncoderConfig
from t2i.tokens.patches import PatchEmbedding, PatchHead, to_patches

NAME = "maskgit"
__all__ = ["FAMILY", "NAME", "STAGES", "Config", "MaskGitTransformer", "Pipeline", "train"]


@dataclass
class NetConfig(tokens.NetConfig):
    text_depth: int = 2


@dataclass
class Config(tokens.TokenConfig):
    family: str = NAME
    net: NetConfig = field(default_factory=NetConfig)
    sample: tokens.DecodeConfig = field(default_factory=lambda: tokens.DecodeConfig(sampler="parallel", steps=8))


class MaskGitTransformer(nn.Module):
    """Bidirectional transformer over image codes (some replaced by [MASK]), cross-attending to the text."""

    parallel = True

    def __init__(self, cfg: NetConfig, text_vocab: int, text_len: int, codebook_size: int, n_tokens: int,
                 codebook: Tensor | None = None):
        super().__init__()
        self.mask_id, self.patch = codebook_size, cfg.patch  # [MASK] is the id after the codebook
        self.slots, self.positions = cfg.patch ** 2, n_tokens // cfg.patch ** 2
        self.encoder = TextEncoder(TextEncoderConfig(text_vocab, text_len, cfg.dim, cfg.text_depth, cfg.heads))
        # special 0: [MASK]
        self.image_emb = PatchEmbedding(codebook_size, self.slots, cfg.dim, codebook=codebook)
        self.image_pos = nn.Parameter(torch.randn(self.positions, cfg.dim) * 0.02)
        self.body = TokenTransformer(cfg.dim, cfg.depth, cfg.heads, causal=False, context_dim=cfg.dim)
        self.head = PatchHead(cfg.dim, codebook_size, self.slots, codebook)

    def prepare(self, ids: Tensor, mask: Tensor) -> dict[str, Tensor]:
        return {"context": self.encoder(ids, mask)[0], "context_mask": mask.bool()}

    def masked_state(self, cond: dict[str, Tensor], patches: Tensor) -> Tensor:
        """patches (B, positions, slots), masked positions [MASK] in every slot -> states (B, positions, dim)."""
        x = self.image_emb(patches) + self.image_pos
        return self.body(x, cond["context"], cond["context_mask"])

    def loss(self, ids: Tensor, mask: Tensor, codes: Tensor, generator: torch.Generator | None = None
             ) -> dict[str, Tensor]:
        patches = to_patches(codes, self.patch)
        b, n, _ = patches.shape
        u = torch.rand(b, generator=generator, device=codes.device)
        n_masked = (torch.cos(math.pi / 2 * u) * n).ceil().clamp(1, n)  # at least one target per image
        order = torch.rand(b, n, generator=generator, device=codes.device).argsort(dim=1).argsort(dim=1)
        masked = order < n_masked[:, None]  # a random subset of n_masked positions per image
        h = self.masked_state(self.prepare(ids, mask), patches.masked_fill(masked[..., None], self.mask_id))
        logits = self.head(h[masked], patches[masked])  # (targets, slots, codebook)
        return {"loss": F.cross_entropy(logits.float().flatten(0, 1), patches[masked].flatten())}


class Pipeline(TokenPipeline):
    """Text -> images in `steps` parallel steps: ``pipe(["a red circle"], steps=8, guidance=3, seed=0)``."""

    family = NAME
    net_class = MaskGitTransformer


def train(cfg: Config, run: Path, progress: bool = True) -> dict[str, Any]:
    return train_stages(cfg, run, progress, Pipeline)


FAMILY = base.Family(NAME, "generator", Config, tuple(STAGES), train, Pipeline.load, TokenOptions,
                     uses=(IMAGE_TOKENIZER,), legacy=tokens.LEGACY, summary="MaskGIT-style parallel decoding of masked image tokens (Muse-like, text-conditioned)")

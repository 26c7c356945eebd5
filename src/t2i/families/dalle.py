"""DALL-E (Ramesh et al. 2021), from scratch: one decoder-only transformer over [text tokens, image tokens].

Paper choices followed: a discrete image tokenizer trained first (here the VQ tokenizer of
`t2i.codecs.vq`, 8x8 = 64 codes per 64x64 image, instead of the dVAE's 32x32 -- the same role at this
scale); text and image tokens concatenated into one stream with separate learned position embeddings for
each modality; causal attention over the whole stream; a loss on both modalities weighted towards the image
(text 1/8, image 7/8, as in the paper); the text padded to a fixed length with pad tokens that the model
reads like any token (DALL-E's learned padding), so every image token sits at a fixed position. Sampling
with a KV cache, temperature, top-k, top-p, and reranking of N candidates by CLIP when a lab CLIP run is
given. Departure: 10% caption dropout so classifier-free guidance on logits (a later idea, from
Make-A-Scene / Parti) can be used; the original relied on reranking alone.

Stages: tokenizer -> vq -> (vq_decoder) -> transformer (shared with Parti and MaskGIT, `t2i.families.tokens`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2i.families import base, tokens
from t2i.families.tokens import IMAGE_TOKENIZER, STAGES, TokenOptions, TokenPipeline, train_stages
from t2i.nn.attention import KVCache
from t2i.nn.gpt import TokenTransformer
from t2i.tokens.patches import PatchEmbedding, PatchHead, to_patches

NAME = "dalle"
__all__ = ["FAMILY", "NAME", "STAGES", "Config", "DalleTransformer", "Pipeline", "train"]


@dataclass
class NetConfig(tokens.NetConfig):
    text_loss_weight: float = 0.125  # DALL-E: 1/8 text, 7/8 image


@dataclass
class Config(tokens.TokenConfig):
    family: str = NAME
    net: NetConfig = field(default_factory=NetConfig)
    sample: tokens.DecodeConfig = field(default_factory=lambda: tokens.DecodeConfig(candidates=4))


class DalleTransformer(nn.Module):
    """GPT over [text (max_len, padded), <start-of-image>, image codes]; output i predicts token i + 1."""

    parallel = False

    def __init__(self, cfg: NetConfig, text_vocab: int, text_len: int, codebook_size: int, n_tokens: int,
                 codebook: Tensor | None = None):
        super().__init__()
        self.text_len, self.codebook_size, self.patch = text_len, codebook_size, cfg.patch
        self.slots, self.positions = cfg.patch ** 2, n_tokens // cfg.patch ** 2
        self.text_weight, self.layers = cfg.text_loss_weight, cfg.depth
        self.text_emb = nn.Embedding(text_vocab, cfg.dim)
        self.text_pos = nn.Parameter(torch.randn(text_len, cfg.dim) * 0.02)
        # special 0: <start-of-image>
        self.image_emb = PatchEmbedding(codebook_size, self.slots, cfg.dim, codebook=codebook)
        self.image_pos = nn.Parameter(torch.randn(self.positions, cfg.dim) * 0.02)
        self.body = TokenTransformer(cfg.dim, cfg.depth, cfg.heads, causal=True)
        self.text_head = nn.Linear(cfg.dim, text_vocab)
        self.image_head = PatchHead(cfg.dim, codebook_size, self.slots, codebook)

    @property
    def head(self) -> PatchHead:
        """The image head under the name the shared decoding reads (`image_head` beside `text_head`)."""
        return self.image_head

    def embed(self, ids: Tensor, patches: Tensor) -> Tensor:
        """ids (B, text_len), image patches so far (B, i, slots) -> (B, text_len + 1 + i, dim)."""
        sos = patches.new_full((patches.shape[0], 1, self.slots), self.codebook_size)
        image = torch.cat([sos, patches], dim=1)
        return torch.cat([self.text_emb(ids) + self.text_pos, self.image_emb(image) + self.image_pos[:image.shape[1]]],
                         dim=1)

    def loss(self, ids: Tensor, mask: Tensor, codes: Tensor, generator: torch.Generator | None = None
             ) -> dict[str, Tensor]:
        patches = to_patches(codes, self.patch)
        h = self.body(self.embed(ids, patches[:, :-1]))
        image_logits = self.image_head(h[:, self.text_len:], patches)
        image = F.cross_entropy(image_logits.float().flatten(0, 2), patches.flatten())
        text_logits = self.text_head(h[:, :self.text_len - 1])
        target = ids[:, 1:].masked_fill(~mask[:, 1:], -100)  # no loss on predicting padding
        text = F.cross_entropy(text_logits.float().flatten(0, 1), target.flatten(), ignore_index=-100)
        return {"loss": self.text_weight * text + (1 - self.text_weight) * image, "image": image, "text": text}

    def prepare(self, ids: Tensor, mask: Tensor) -> dict[str, Tensor]:
        return {"ids": ids}  # padding is read as tokens, so the mask is not needed

    def next_state(self, cond: dict[str, Tensor], patches: Tensor, caches: list[KVCache] | None = None) -> Tensor:
        """The state (B, dim) that predicts the patch after `patches` (B, i, slots); with caches only the
        uncached positions run."""
        x = self.embed(cond["ids"], patches)
        start = caches[0].length if caches else 0
        return self.body(x[:, start:], caches=caches)[:, -1]


class Pipeline(TokenPipeline):
    """Text -> images: ``pipe(["a red circle"], guidance=3, top_k=64, seed=0)``; see `TokenPipeline`."""

    family = NAME
    net_class = DalleTransformer


def train(cfg: Config, run: Path, progress: bool = True) -> dict[str, Any]:
    return train_stages(cfg, run, progress, Pipeline)


FAMILY = base.Family(NAME, "generator", Config, tuple(STAGES), train, Pipeline.load, TokenOptions,
                     uses=(IMAGE_TOKENIZER,), legacy=tokens.LEGACY, summary="DALL-E: VQ image tokens after the caption, one decoder-only transformer")

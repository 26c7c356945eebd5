"""DALL-E 2 / unCLIP (Ramesh et al. 2022), from scratch: a CLIP, a diffusion prior from the caption to a CLIP
image embedding, and a decoder that turns that embedding back into an image.

Paper choices followed:
* CLIP: the lab's (`t2i.families.clip`), trained as this run's `clip` stage, or an existing CLIP run given
  with `--clip RUN`. The preset trains it on counterfactual minimal pairs with flattened text states, the
  reranking CLIP's recipe, so its embeddings tell "left of" from "right of".
* Prior: a causal transformer over [the CLIP text tower's token states, the CLIP text embedding, the
  timestep, the noised image embedding, a query]; the query's output is the clean image embedding (x0
  objective, MSE). Embeddings are unit vectors scaled by `prior.scale` (0 = sqrt(d), DALLE2-pytorch's; the
  paper's 17.2 is the other choice the benchmark measures). The caption is dropped 10% of the time for
  classifier-free guidance; sampling draws `prior_candidates` (2) embeddings and keeps the one closer to the
  text embedding.
* Decoder: the image embedding is projected and added to the timestep embedding and projected into 4 extra
  context tokens after the caption's; the embedding is dropped 10% and the caption 50% of the time.
  `decoder.space: pixel` (the paper's, a modified GLIDE) is the pixel cascade (`t2i.families.cascade`): a
  32 px base, then the shared 32 -> 64 px super-resolution stage (text-conditional, as in the cascade; the
  paper's upsamplers saw no caption). `decoder.space: latent` is Stable unCLIP's: the decoder diffuses in
  the latents of a KL autoencoder trained as a stage (LDM's), at 64 px, with no SR stage. `decoder.condition:
  text` trains the decoder on CLIP text embeddings instead: the paper's "no prior" ablation.

What unCLIP adds: variations (`--task variation`: CLIP-encode an image and decode new samples; the prompt
is not shown to the model), interpolation (`t2i interpolate`: slerp two images' embeddings, the noise fixed
or slerped) and text diffs (`--text-diff A B`: slerp the image embedding towards norm(z_B - z_A)).

Which decoder the quick preset uses, and why: docs/unclip.md (measured: the pixel cascade reached ShapesBench
0.06 at its base after 11 CPU-minutes, as GLIDE's did, while latent diffusion learns shapes in that time).

Stages: tokenizer -> clip -> prior -> autoencoder (latent decoder) -> base (the decoder) -> sr (pixel
decoder); a stage the chosen decoder does not have is recorded as skipped. Each resumes on its own.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from t2i import runtime
from t2i.codecs.autoencoder import AutoencoderConfig, AutoencoderKL
from t2i.config import require
from t2i.data.tokenizer import Tokenizer
from t2i.diffusion import Schedule, drop_condition
from t2i.diffusion.generate import SampleConfig, check_sampling, denoise, noise
from t2i.errors import OptionError, UserError
from t2i.eval.shapesbench import quick_score
from t2i.families import base
from t2i.families import clip as lab_clip
from t2i.families.cascade import (
    AugConfig,
    CascadeOptions,
    CascadePipeline,
    CascadeStages,
    PixelModelConfig,
    build_net,
    sides,
    train_cascade,
)
from t2i.families.diffusion import (
    BPEText,
    DiffusionConfig,
    TextDenoiser,
    TextDiffusionStage,
    autoencoder_stage,
)
from t2i.images import grid
from t2i.nn.embeddings import TimestepEmbedding
from t2i.nn.gpt import TokenTransformer
from t2i.nn.transformer import TextEncoder
from t2i.text.pretrained import sha256
from t2i.train.data import DataConfig, batches, generator_data
from t2i.train.rundir import load_part, require_complete
from t2i.train.stages import PREVIEW_PROMPTS, Stages, TextConfig, stage_data, take, tokenizer_stage
from t2i.train.trainer import TrainConfig, param_count

NAME = "unclip"
STAGES = ["tokenizer", "clip", "prior", "autoencoder", "base", "sr"]
CLIP_RUN = base.Use("clip", "clip.run", "build on this lab CLIP run (t2i train --family clip) instead of training one")


@dataclass
class ClipPart:
    """The CLIP stage: its towers (the BPE is the run's), or `run`, an existing lab CLIP run used as is."""

    run: str = ""
    text: TextConfig = field(default_factory=lambda: TextConfig(max_len=16))
    image: lab_clip.ImageConfig = field(default_factory=lambda: lab_clip.ImageConfig(patch=2, channels=(32, 64, 128)))
    embed_dim: int = 128
    counterfactuals: bool = True
    text_pool: str = "flatten"

    def validate(self, where: str) -> None:
        if self.run:
            _clip_run(self.run)


@dataclass
class PriorConfig:
    dim: int = 128
    depth: int = 3
    heads: int = 4
    scale: float = 0.0  # embeddings are unit vectors times this; 0 = sqrt(embed_dim)
    cache: int = 20000  # training samples CLIP-encoded once (0 = encode every batch, as the images stream)
    candidates: int = 2  # embeddings drawn per caption, the one closest to the text embedding kept
    diffusion: DiffusionConfig = field(default_factory=lambda: DiffusionConfig(
        schedule="flow", objective="x0", weighting="uniform", cond_drop=0.1))
    sample: SampleConfig = field(default_factory=lambda: SampleConfig(steps=16, guidance=2.0, sigma_max=None,
                                                                      precision="fp32"))

    def validate(self, where: str) -> None:
        require(self.scale >= 0 and math.isfinite(self.scale), where, "scale", "must be >= 0 (0 = sqrt(d))", self.scale)
        require(self.candidates >= 1, where, "candidates", "must be >= 1", self.candidates)


@dataclass
class DecoderConfig:
    space: str = "pixel"  # pixel (the cascade: base 32 px + SR) | latent (an autoencoder's latents, 64 px)
    condition: str = "image"  # what the base decoder reads: image (unCLIP) | text (the no-prior ablation)
    emb_drop: float = 0.1  # the embedding's dropout for guidance (the caption's is base.diffusion.cond_drop)
    tokens: int = 4  # context tokens the embedding is projected into

    def validate(self, where: str) -> None:
        require(self.space in ("pixel", "latent"), where, "space", "must be pixel or latent", self.space)
        require(self.condition in ("image", "text"), where, "condition", "must be image or text", self.condition)
        require(0 <= self.emb_drop < 1, where, "emb_drop", "must be in [0, 1)", self.emb_drop)


@dataclass
class UnclipStages:
    clip: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1000, batch_size=64, lr=2e-3, warmup=50,
                                                                  weight_decay=0.05, resolution=32))
    prior: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1500, batch_size=256, lr=5e-4, warmup=50,
                                                                   resolution=32))
    autoencoder: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1000, batch_size=32, lr=3e-3,
                                                                         warmup=20))
    base: TrainConfig = field(default_factory=lambda: CascadeStages().base)
    sr: TrainConfig = field(default_factory=lambda: CascadeStages().sr)


@dataclass
class Config:
    family: str = NAME
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    text: TextConfig = field(default_factory=lambda: TextConfig(pool="last"))  # the BPE and the decoder's encoder
    clip: ClipPart = field(default_factory=ClipPart)
    prior: PriorConfig = field(default_factory=PriorConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)  # the latent decoder's codec
    base: PixelModelConfig = field(default_factory=lambda: PixelModelConfig(diffusion=DiffusionConfig(cond_drop=0.5)))
    sr: PixelModelConfig = field(default_factory=lambda: PixelModelConfig(diffusion=DiffusionConfig(cond_drop=0.1)))
    aug: AugConfig = field(default_factory=AugConfig)
    stages: UnclipStages = field(default_factory=UnclipStages)


# ------------------------------------------------------------------------------------------------ CLIP
def _clip_run(path: str) -> Path:
    from t2i.families import run_family

    p = Path(path)
    if not (p / "run.json").is_file():
        raise UserError(f"the CLIP run {p} is not there; train one with `t2i train --family clip --out {p}`")
    if run_family(p).kind != "scorer":
        raise UserError(f"--clip {p} is a {run_family(p).name!r} run, not a lab CLIP run (t2i train --family clip)")
    return p


def _clip_config(cfg: Config) -> lab_clip.Config:
    c = cfg.clip
    return lab_clip.Config(data=cfg.data, text=c.text, image=c.image, embed_dim=c.embed_dim,
                           counterfactuals=c.counterfactuals, text_pool=c.text_pool,
                           stages=lab_clip.StageConfigs(clip=cfg.stages.clip))


def _load_clip(cfg: Config, run: Path, tokenizer: Tokenizer, want: dict[str, Any]) -> lab_clip.Scorer:
    """The run's CLIP, frozen: its own stage's, or the used run's, which must be the one it was trained with
    (`want`: what run.json recorded of it, empty before the clip stage has finished)."""
    from t2i.families import load_run

    if not cfg.clip.run:
        ccfg = _clip_config(cfg)
        scorer = lab_clip.Scorer(ccfg, tokenizer, load_part(lab_clip.CLIP(ccfg, tokenizer.vocab_size), run, "clip"))
    else:
        scorer = load_run(_clip_run(cfg.clip.run))
        if want.get("embed_dim") not in (None, scorer.embed_dim):
            raise UserError(f"the CLIP run {cfg.clip.run} embeds in {scorer.embed_dim} dimensions, but {run} was "
                            f"trained on a {want['embed_dim']}-dimensional CLIP; give it back its own CLIP run")
        got = sha256(Path(cfg.clip.run) / "clip.safetensors")
        if want.get("sha256") not in (None, got):
            raise UserError(f"the CLIP run {cfg.clip.run} has changed since {run} was trained on it (sha256 "
                            f"{got[:12]}..., was {want['sha256'][:12]}...); give it back its own CLIP run")
    scorer.model.requires_grad_(False)
    return scorer


# ----------------------------------------------------------------------------------------------- prior
class PriorText:
    """The prior's text side: the frozen CLIP's token states and text embedding of each caption."""

    def __init__(self, clip: lab_clip.Scorer, scale: float):
        self.clip, self.scale, self.max_len = clip, scale, clip.cfg.text.max_len

    @torch.no_grad()
    def encode(self, captions: list[str]) -> dict[str, Tensor]:
        ids, mask = self.clip.tokenizer.encode(captions, self.max_len)
        return self.from_batch({"ids": ids, "mask": mask})

    @torch.no_grad()
    def from_batch(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """From the cache's CLIP token ids, or by tokenizing the batch's captions."""
        if "ids" not in batch:
            return self.encode(batch["caption"])
        ids, mask = batch["ids"].to(self.clip.device), batch["mask"].to(self.clip.device)
        states, temb = self.clip.model.encode_text_states(ids, mask)
        return {"mask": mask, "states": states.float(), "temb": temb * self.scale}


class PriorNet(nn.Module):
    """net(z_t, t, mask=, states=, temb=) -> the clean embedding (scaled), read off the final query token."""

    def __init__(self, cfg: PriorConfig, embed_dim: int, text_dim: int, max_len: int):
        super().__init__()
        d = cfg.dim
        self.text_in, self.temb_in, self.x_in = nn.Linear(text_dim, d), nn.Linear(embed_dim, d), nn.Linear(embed_dim, d)
        self.time = TimestepEmbedding(d)
        self.query = nn.Parameter(torch.randn(d) * 0.02)
        self.pos = nn.Parameter(torch.randn(max_len + 4, d) * 0.02)
        self.body = TokenTransformer(d, cfg.depth, cfg.heads, causal=True)
        self.out = nn.Linear(d, embed_dim)

    def forward(self, x: Tensor, t: Tensor, mask: Tensor, states: Tensor, temb: Tensor) -> Tensor:
        text = self.text_in(states * mask[..., None].to(states.dtype))  # padding reads as zeros
        rest = [self.temb_in(temb), self.time(t), self.x_in(x), self.query.expand(len(x), -1)]
        h = torch.cat([text, torch.stack([r.to(text.dtype) for r in rest], dim=1)], dim=1)
        return self.out(self.body(h + self.pos[: h.shape[1]])[:, -1])


class PriorStage(TextDiffusionStage):
    """x0 is the training image's CLIP embedding, scaled; the caption is the CLIP's view of it."""

    def x0(self, batch: dict[str, Tensor]) -> Tensor:
        z = batch["latent"] if "latent" in batch else self.text.clip.encode_image(batch["image"])
        return z * self.text.scale


# --------------------------------------------------------------------------------------------- decoder
class EmbeddingText(nn.Module):
    """The decoder's text module: its own text encoder over the caption, plus the CLIP embedding added to
    the pooled vector (which joins the time embedding) and projected into `n` more context tokens."""

    def __init__(self, text: nn.Module, embed_dim: int, dim: int, n: int):
        super().__init__()
        self.text, self.n = text, n
        self.to_pooled, self.to_tokens = nn.Linear(embed_dim, dim), nn.Linear(embed_dim, n * dim)

    def forward(self, mask: Tensor, ids: Tensor, emb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        states, pooled = self.text(ids, mask)
        extra = self.to_tokens(emb.to(states.dtype)).view(len(emb), self.n, -1)
        full = torch.cat([mask.bool(), mask.new_ones(len(emb), self.n, dtype=torch.bool)], dim=1)
        return torch.cat([states, extra], dim=1), pooled + self.to_pooled(emb.to(pooled.dtype)), full


class DecoderStage(TextDiffusionStage):
    """The decoder's training: caption dropout as usual, and the embedding dropped to zeros on its own; with
    an autoencoder, on its scaled latents (from the encoded cache, with the CLIP embeddings beside them)."""

    def __init__(self, net: TextDenoiser, cfg: Config, text: BPEText, clip: lab_clip.Scorer,
                 autoencoder: AutoencoderKL | None = None, scale: float = 1.0):
        super().__init__(net, cfg.base.diffusion, text)
        self.clip, self.condition, self.emb_drop = clip, cfg.decoder.condition, cfg.decoder.emb_drop
        self.ae, self.scale = autoencoder, scale

    def x0(self, batch: dict[str, Tensor]) -> Tensor:
        if "latent" in batch:
            return batch["latent"] * self.scale
        if self.ae is None:
            return batch["image"]
        with torch.no_grad():
            return self.ae.encode(batch["image"]).mode() * self.scale

    def extra(self, batch: dict[str, Any], x0: Tensor, generator: torch.Generator | None) -> dict[str, Tensor]:
        if self.condition == "text":
            z = batch["temb"] if "temb" in batch else self.clip.encode_text(batch["caption"])
        else:
            z = batch["emb"] if "emb" in batch else self.clip.encode_image(batch["image"])
        z = z.to(x0.device)
        keep = ~drop_condition(self.emb_drop, batch=len(z), generator=generator, device=x0.device)
        return {"emb": z * keep[:, None]}


def _net_factory(cfg: Config, vocab_size: int, embed_dim: int):
    latent = cfg.decoder.space == "latent"

    def make(stage: str) -> TextDenoiser:
        text: nn.Module = TextEncoder(cfg.text.encoder(vocab_size))
        if stage == "sr":
            return build_net(cfg.sr, sides(cfg)[1], text, cfg.text.dim, cfg.text.dim, extra_in=3, aug=True)
        text = EmbeddingText(text, embed_dim, cfg.text.dim, cfg.decoder.tokens)
        side = sides(cfg)[0] // cfg.autoencoder.downsample_factor if latent else sides(cfg)[0]
        return build_net(cfg.base, side, text, cfg.text.dim, cfg.text.dim,
                         channels=cfg.autoencoder.latent_channels if latent else 3)
    return make


def _scale(cfg: Config, embed_dim: int) -> float:
    return cfg.prior.scale or math.sqrt(embed_dim)


# ----------------------------------------------------------------------------------------------- train
def train(cfg: Config, run: Path, progress: bool = True) -> dict[str, Any]:
    stages = Stages(run, cfg.seed)
    tokenizer = tokenizer_stage(stages, cfg.data, cfg.text.tokenizer_captions, cfg.text.vocab_size)
    if stages.todo("clip"):
        if not cfg.clip.run:
            tc, ccfg = cfg.stages.clip, _clip_config(cfg)
            stage = lab_clip.CLIPStage(ccfg, tokenizer.vocab_size)

            def clip_data(start: int) -> Any:
                return batches(stage_data(cfg.data, tc), tc.batch_size // runtime.world_size(), start, tokenizer,
                               cfg.clip.text.max_len, counterfactuals=cfg.clip.counterfactuals, seed=cfg.seed)

            stages.fit("clip", stage, tc, {"clip": "clip"}, clip_data, None, progress)
            stages.meta.setdefault("params", {})["clip"] = param_count(stage.clip)
        clip = _load_clip(cfg, run, tokenizer, {})
        stages.finish("clip", clip={"run": cfg.clip.run, "embed_dim": clip.embed_dim,
                                    "sha256": sha256(Path(cfg.clip.run or run) / "clip.safetensors")})
    else:
        clip = _load_clip(cfg, run, tokenizer, stages.meta.get("clip", {}))
    prior = Prior(cfg, clip, train_prior(cfg, stages, clip, progress))
    text = BPEText(tokenizer, cfg.text.max_len)
    make_net = _net_factory(cfg, tokenizer.vocab_size, clip.embed_dim)
    if cfg.decoder.space == "pixel":
        if stages.todo("autoencoder"):
            stages.finish("autoencoder", autoencoder=False)
        train_cascade(cfg, stages, text, make_net, lambda b, s, **_: Pipeline(cfg, text, b, s, prior=prior),
                      progress, base_stage=lambda net: DecoderStage(net, cfg, text, clip))
        return stages.meta
    tc = cfg.stages.base
    ae, scale = autoencoder_stage(stages, cfg.autoencoder, cfg.stages.autoencoder,
                                  stage_data(cfg.data, cfg.stages.autoencoder), stage_data(cfg.data, tc), cfg.seed,
                                  progress)
    if stages.todo("base"):
        stage = DecoderStage(make_net("base"), cfg, text, clip, ae, scale)
        text_emb = (lambda captions: {"temb": clip.encode_text(captions)}) if cfg.decoder.condition == "text" else None
        data = generator_data(stage_data(cfg.data, tc), tc.batch_size // runtime.world_size(), tokenizer,
                              cfg.text.max_len, lambda x: {"latent": ae.encode(x).mode(), "emb": clip.encode_image(x)},
                              progress, cfg.seed, encode_captions=text_emb)
        pipe_of = lambda model: Pipeline(cfg, text, model.net, None, prior, autoencoder=ae, scale=scale)  # noqa: E731
        stages.fit("base", stage, tc, {"base": "net"}, data,
                   lambda model, step: grid(pipe_of(model)(PREVIEW_PROMPTS, seed=0), PREVIEW_PROMPTS), progress,
                   evaluate=lambda model, step: quick_score(pipe_of(model)))
        stages.meta.setdefault("params", {}).update(base=param_count(stage.net), autoencoder=param_count(ae))
        stages.finish("base")
    if stages.todo("sr"):
        stages.finish("sr", sr=False)
    return stages.meta


def train_prior(cfg: Config, stages: Stages, clip: lab_clip.Scorer, progress: bool = True) -> PriorNet:
    """The prior stage (or its trained weights when done): on `prior.cache` training images CLIP-encoded once,
    probed by `prior_fit` on held-out samples."""
    prior_text = PriorText(clip, _scale(cfg, clip.embed_dim))
    net = PriorNet(cfg.prior, clip.embed_dim, clip.cfg.text.dim, prior_text.max_len)
    if not stages.todo("prior"):
        return load_part(net, stages.run, "prior")
    tc = cfg.stages.prior
    stage = PriorStage(net, cfg.prior.diffusion, prior_text)
    held_out = take(stage_data(cfg.data, tc), 256, cfg.seed)
    data = generator_data(dataclasses.replace(stage_data(cfg.data, tc), cache=cfg.prior.cache),
                          tc.batch_size // runtime.world_size(), clip.tokenizer, prior_text.max_len,
                          clip.encode_image, progress, cfg.seed)
    stages.fit("prior", stage, tc, {"prior": "net"}, data, None, progress,
               evaluate=lambda model, step: prior_fit(Prior(cfg, clip, model.net), held_out))
    stages.meta.setdefault("params", {})["prior"] = param_count(net)
    net = load_part(net, stages.run, "prior")  # the saved (EMA) weights, which are what sampling uses
    stages.finish("prior", prior_fit=prior_fit(Prior(cfg, clip, net), held_out))
    return net


# ------------------------------------------------------------------------------------------------- use
def slerp(a: Tensor, b: Tensor, w: Tensor | float) -> Tensor:
    """Spherical interpolation from the rows of `a` (w = 0) to those of `b` (w = 1), `w` one number or one per
    row: along the great circle of their directions, the norm interpolated linearly, so unit vectors stay
    unit and Gaussian noise keeps its scale."""
    shape = (-1,) + (1,) * (a.ndim - 1)
    w = torch.as_tensor(w, dtype=a.dtype, device=a.device).expand(len(a)).reshape(shape)
    na, nb = a.flatten(1).norm(dim=1).reshape(shape), b.flatten(1).norm(dim=1).reshape(shape)
    ua, ub = a / na.clamp(min=1e-12), b / nb.clamp(min=1e-12)
    omega = torch.arccos((ua * ub).flatten(1).sum(1).clamp(-1 + 1e-7, 1 - 1e-7)).reshape(shape)
    return (torch.sin((1 - w) * omega) * ua + torch.sin(w * omega) * ub) / torch.sin(omega) * ((1 - w) * na + w * nb)


class Prior:
    """Captions -> CLIP image embeddings (unit vectors): the prior's guided sampling, best of `candidates`."""

    def __init__(self, cfg: Config, clip: lab_clip.Scorer, net: PriorNet):
        self.cfg, self.clip, self.net = cfg, clip, net.to(clip.device).eval()
        self.text = PriorText(clip, _scale(cfg, clip.embed_dim))
        self.schedule = Schedule.from_name(cfg.prior.diffusion.schedule)

    @torch.no_grad()
    def __call__(self, prompts: list[str], seeds: list[int], steps: int | None = None, guidance: float | None = None,
                 candidates: int | None = None) -> Tensor:
        k = candidates or self.cfg.prior.candidates
        sc = dataclasses.replace(self.cfg.prior.sample, steps=steps or self.cfg.prior.sample.steps,
                                 guidance=self.cfg.prior.sample.guidance if guidance is None else guidance)
        cond = self.text.encode([p for p in prompts for _ in range(k)])
        z = denoise(self.net, self.schedule, self.cfg.prior.diffusion.objective,
                    [(s + 1) * 7_000_003 + j for s in seeds for j in range(k)], (self.clip.embed_dim,), cond,
                    self.text.encode([""]), sc, device=self.clip.device)
        z = F.normalize(z.float(), dim=-1).view(len(prompts), k, -1)
        best = (z * F.normalize(cond["temb"].view(len(prompts), k, -1)[:, 0], dim=-1)[:, None]).sum(-1).argmax(1)
        return z[torch.arange(len(prompts)), best]


@torch.no_grad()
def prior_fit(prior: Prior, samples: list, seed: int = 0) -> dict[str, float]:
    """On held-out samples: the mean cosine of the sampled embedding with the true image's, against the
    baseline of the caption's CLIP text embedding itself (what the "no prior" decoder is given)."""
    true = prior.clip.encode_image([s.image for s in samples])
    captions = [s.caption for s in samples]
    sampled = prior(captions, list(range(seed, seed + len(samples))))
    return {"prior_cosine": float((sampled * true).sum(-1).mean()),
            "text_cosine": float((prior.clip.encode_text(captions) * true).sum(-1).mean())}


@dataclass
class UnclipOptions(CascadeOptions):
    """`steps` and `guidance` are the base decoder's; the prior's and the SR stage's are set apart."""

    prior_steps: int | None = base.option(None, "unclip runs: the prior's sampler steps", int)
    prior_guidance: float | None = base.option(None, "unclip runs: the prior's classifier-free guidance", float)
    prior_candidates: int | None = base.option(None, "unclip runs: image embeddings drawn per caption, the one "
                                               "closest to the caption's CLIP embedding kept", int)
    embedding: str | None = base.option(None, "unclip runs: what the decoder reads for a caption: prior (a "
                                        "sampled image embedding) or text (the caption's CLIP text embedding)")
    text_diff: tuple[str, ...] | None = base.option(None, "unclip runs, task variation: move the image's embedding "
                                              "along the difference of two captions' (FROM -> TO)",
                                              metavar=("FROM", "TO"), nargs=2)
    diff_amount: float | None = base.option(None, "unclip runs: how far --text-diff slerps, 0..1 (default 0.5)",
                                            float)
    interp_noise: str | None = base.option(None, "unclip runs, interpolation: fixed (one seed's noise throughout) "
                                           "or slerp (from the seed's noise to seed+1's)")

    def check(self) -> None:
        super().check()
        if self.prior_candidates is not None and self.prior_candidates < 1:
            raise OptionError("prior_candidates", f"must be at least 1, got {self.prior_candidates}")
        if self.embedding is not None and self.embedding not in ("prior", "text"):
            raise OptionError("embedding", f"must be prior or text, got {self.embedding!r}")
        if self.text_diff and (not isinstance(self.text_diff, list | tuple) or len(self.text_diff) != 2
                               or not all(isinstance(t, str) for t in self.text_diff)):
            raise OptionError("text_diff", f"takes two captions, FROM and TO, got {self.text_diff!r}", "--text-diff")
        if self.diff_amount is not None and not (math.isfinite(self.diff_amount) and 0 <= self.diff_amount <= 1):
            raise OptionError("diff_amount", f"must be in [0, 1], got {self.diff_amount}")
        if self.interp_noise is not None and self.interp_noise not in ("fixed", "slerp"):
            raise OptionError("interp_noise", f"must be fixed or slerp, got {self.interp_noise!r}")


class Pipeline(CascadePipeline):
    """`pipe(["a red circle"], seed=0)` -> 64 px images through prior, decoder and SR;
    `pipe([""], inputs=[Input("variation", image)])` -> a variation of `image`."""

    family = NAME
    Options = UnclipOptions
    tasks = ("img2img", "variation")

    def __init__(self, cfg: Config, text: BPEText, base_net: TextDenoiser, sr_net: TextDenoiser | None,
                 prior: Prior, device: torch.device | None = None, autoencoder: AutoencoderKL | None = None,
                 scale: float = 1.0):
        super().__init__(cfg, text, base_net, sr_net, device)
        self.prior, self.clip, self.scale = prior, prior.clip, scale
        self.ae = autoencoder.to(self.device).eval() if autoencoder is not None else None

    @classmethod
    def load(cls, run: str | Path, cfg: Config) -> Pipeline:
        run = Path(run)
        meta = require_complete(run, NAME, STAGES)
        tokenizer = Tokenizer.load(run / "tokenizer.json")
        clip = _load_clip(cfg, run, tokenizer, meta.get("clip", {}))
        net = load_part(PriorNet(cfg.prior, clip.embed_dim, clip.cfg.text.dim, clip.cfg.text.max_len), run, "prior")
        make = _net_factory(cfg, tokenizer.vocab_size, clip.embed_dim)
        ae = load_part(AutoencoderKL(cfg.autoencoder), run, "autoencoder") if meta.get("autoencoder", True) else None
        sr = load_part(make("sr"), run, "sr") if meta.get("sr", True) else None
        return cls(cfg, BPEText(tokenizer, cfg.text.max_len), load_part(make("base"), run, "base"), sr,
                   Prior(cfg, clip, net), autoencoder=ae, scale=meta.get("latent_scale", 1.0))

    def base_shape(self) -> tuple[int, ...]:
        if self.ae is None:
            return super().base_shape()
        side = sides(self.cfg)[0] // self.ae.downsample_factor
        return (self.cfg.autoencoder.latent_channels, side, side)

    def encode(self, x: Tensor) -> Tensor:
        return x if self.ae is None else self.ae.encode(x).mode() * self.scale

    def decode(self, x0: Tensor) -> Tensor:
        return x0 if self.ae is None else self.ae.decode(x0 / self.scale)

    def defaults(self) -> dict[str, Any]:
        p = self.cfg.prior
        return {**super().defaults(), "prior_steps": p.sample.steps, "prior_guidance": p.sample.guidance,
                "prior_candidates": p.candidates, "embedding": "text" if self.cfg.decoder.condition == "text" else "prior",
                "text_diff": (), "diff_amount": 0.5, "interp_noise": "fixed"}

    def check(self, options: base.Options, given: dict[str, Any]) -> base.Options:
        options = super().check(options, given)
        try:
            check_sampling(options.prior_steps, options.prior_guidance, "euler")
        except OptionError as e:
            raise OptionError("prior_" + e.name, e.detail) from None
        return options

    def phases(self, options: base.Options) -> int:
        return super().phases(options) + int(options.embedding == "prior")

    def generate(self, prompts: list[str], seeds: list[int], options: base.Options,
                 inputs: list[base.Input | None]) -> list:
        # a variation is made from its image alone: its prompt (kept in the output's index) is not shown
        prompts = ["" if i is not None and i.task in base.PROMPTLESS_TASKS else p
                   for p, i in zip(prompts, inputs, strict=True)]
        return super().generate(prompts, seeds, options, inputs)

    def base_condition(self, prompts: list[str], seeds: list[int], options: base.Options,
                       inputs: list[base.Input | None]) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor | None]:
        z = torch.zeros(len(prompts), self.clip.embed_dim, device=self.clip.device)
        var = [i for i, inp in enumerate(inputs) if inp is not None and inp.task == "variation"]
        text = sorted(set(range(len(prompts))) - set(var))
        if options.text_diff and not var:
            raise UserError("--text-diff edits an image: give --init-image (task variation)")
        if text:
            rows = [prompts[i] for i in text]
            z[text] = (self.clip.encode_text(rows) if options.embedding == "text" else
                       self.prior(rows, [seeds[i] for i in text], options.prior_steps, options.prior_guidance,
                                  options.prior_candidates))
        start = None
        if var:
            z[var] = self.clip.encode_image([inputs[i].image.convert("RGB") for i in var])
            ends = [i for i in var if inputs[i].toward is not None]
            if ends:
                mix = torch.tensor([inputs[i].mix for i in ends])
                z[ends] = slerp(z[ends], self.clip.encode_image([inputs[i].toward.convert("RGB") for i in ends]), mix)
                if options.interp_noise == "slerp":
                    shape = self.base_shape()
                    start = noise(shape, seeds, self.device)
                    start[ends] = slerp(start[ends], noise(shape, [seeds[i] + 1 for i in ends], self.device), mix)
            if options.text_diff:
                a, b = self.clip.encode_text(list(options.text_diff))
                d = F.normalize(b - a, dim=-1).expand(len(var), -1)
                z[var] = F.normalize(slerp(z[var], d, float(options.diff_amount)), dim=-1)
        return {"emb": z.to(self.device)}, {"emb": torch.zeros(1, z.shape[1], device=self.device)}, start


FAMILY = base.Family(NAME, "generator", Config, tuple(STAGES), train, Pipeline.load, UnclipOptions,
                     tasks=("img2img", "variation"), uses=(CLIP_RUN,),
                     summary="DALL-E 2 / unCLIP: a CLIP, a prior to its image embedding, a decoder from that (pixel cascade or latent)")

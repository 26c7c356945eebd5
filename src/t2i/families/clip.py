"""CLIP (Radford et al. 2021) for the lab: a contrastive image-text model trained from scratch on the run's data.

Pretrained CLIP weights cannot be downloaded here, yet four later uses need one: CLIP score, DALL-E
reranking, the DALL-E 2 prior/decoder and GLIDE's CLIP guidance. So the lab trains its own, and its API is
deliberately plain and stable:

    clip = t2i.load("runs/clip")
    img = clip.encode_image(images)          # list of PIL images, or (B, 3, H, W) floats in [-1, 1]
    txt = clip.encode_text(["a red circle"])  # both (N, embed_dim), L2-normalised, float32
    sims = clip.similarity(images, prompts)   # (N_images, N_prompts) cosine similarities

Paper choices followed: two towers projected (linearly) into one space, L2-normalised, a symmetric InfoNCE
loss (image->text and text->image cross-entropy over the batch) with a learnable temperature initialised
at 0.07 and clamped so the logit scale stays <= 100. Text tower: the lab's `TextEncoder` over the run's
BPE, mask-aware mean pooled (CLIP takes the EOS token; the mean is what the shared encoder already gives), or
with `text_pool: flatten` its states concatenated, which keeps word order (see `minimal_pairs`).
Image tower: a small conv net rather than a ViT, because at 64x64 on a CPU convolutions learn the shapes
data fastest per second; its last 4x4 feature map is flattened, not average-pooled, so "left of" and
"above" survive into the embedding.

Stages: tokenizer -> clip.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from t2i import runtime
from t2i.data.sources import is_shapes
from t2i.data.tokenizer import Tokenizer
from t2i.errors import UserError
from t2i.families import base
from t2i.images import images_to_tensor
from t2i.nn.blocks import group_norm
from t2i.nn.transformer import TextEncoder
from t2i.train.data import DataConfig, batches
from t2i.train.rundir import load_part, require_complete
from t2i.train.stages import Stages, TextConfig, stage_data, tokenizer_stage
from t2i.train.trainer import TrainConfig, param_count

NAME = "clip"
STAGES = ["tokenizer", "clip"]
RETRIEVAL_SEED = 7_777_777  # held-out shapes samples for retrieval: a seed no training run uses


@dataclass
class ImageConfig:
    """Conv tower: a `patch`x`patch` stride-`patch` stem, then per width one 3x3 conv and a stride-2 3x3 conv."""

    patch: int = 4
    channels: tuple[int, ...] = (32, 64, 128)


@dataclass
class StageConfigs:
    clip: TrainConfig = field(default_factory=lambda: TrainConfig(steps=1500, batch_size=128, lr=2e-3, warmup=50,
                                                                  weight_decay=0.05))


@dataclass
class Config:
    """Everything that rebuilds a CLIP run; the `clip` stage's resolution is the one images are scored at."""

    family: str = NAME
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    text: TextConfig = field(default_factory=TextConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    embed_dim: int = 128
    init_temperature: float = 0.07
    # Pair each shapes sample in a batch with its counterfactual (the scene with one attribute changed,
    # re-rendered and re-captioned): hard negatives both ways, what teaches a reranker relations and counts.
    # A batch then holds up to 2 x batch_size image-caption rows.
    counterfactuals: bool = False
    # How the text tower's token states become one vector: "mean" (mask-aware average) or "flatten" (the
    # states at every position, padded to text.max_len, concatenated before the projection). Averaging keeps
    # too little word order: "A left of B" and "A right of B" then embed at cosine 0.999, since "B right of
    # A" is a training paraphrase of the first. Flattening keeps order, as the image tower's flattened map
    # keeps layout.
    text_pool: str = "mean"
    stages: StageConfigs = field(default_factory=StageConfigs)

    @property
    def resolution(self) -> int:
        return stage_data(self.data, self.stages.clip).resolution


# ------------------------------------------------------------------------------------------------ model
def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), group_norm(cout), nn.SiLU())


class ImageTower(nn.Module):
    """(B, 3, R, R) in [-1, 1] -> (B, embed_dim), unnormalised."""

    def __init__(self, cfg: ImageConfig, resolution: int, embed_dim: int):
        super().__init__()
        side = resolution // cfg.patch
        for _ in cfg.channels:
            side = (side + 1) // 2
        if resolution % cfg.patch or side < 1:
            raise UserError(f"image.patch={cfg.patch} with {len(cfg.channels)} stages does not fit "
                            f"data.resolution={resolution}; use a patch that divides it and fewer stages")
        layers: list[nn.Module] = [nn.Conv2d(3, cfg.channels[0], cfg.patch, stride=cfg.patch),
                                   group_norm(cfg.channels[0]), nn.SiLU()]
        cin = cfg.channels[0]
        for c in cfg.channels:
            layers += [_conv(cin, c), _conv(c, c, stride=2)]
            cin = c
        self.net = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(cin * side * side)
        self.proj = nn.Linear(cin * side * side, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.norm(self.net(x).flatten(1)))


class CLIP(nn.Module):
    """Both towers and the temperature. `logit_scale` is log(1 / temperature), as in the paper."""

    def __init__(self, cfg: Config, vocab_size: int):
        super().__init__()
        t = cfg.text
        self.image = ImageTower(cfg.image, cfg.resolution, cfg.embed_dim)
        if cfg.text_pool not in ("mean", "flatten"):
            raise UserError(f"text_pool={cfg.text_pool!r} is not a pooling; use 'mean' or 'flatten'")
        self.text = TextEncoder(t.encoder(vocab_size))
        self.max_len = t.max_len
        self.flatten = cfg.text_pool == "flatten"
        self.text_proj = nn.Linear(t.dim * (t.max_len if self.flatten else 1), cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))

    def encode_image(self, x: Tensor) -> Tensor:
        return F.normalize(self.image(x).float(), dim=-1)

    def encode_text(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.encode_text_states(ids, mask)[1]

    def encode_text_states(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """The text tower's token states and the caption's embedding, from one pass (unCLIP's prior reads both)."""
        states, pooled = self.text(ids, mask)
        if self.flatten:
            pooled = F.pad(states * mask[..., None].to(states.dtype), (0, 0, 0, self.max_len - states.shape[1])).flatten(1)
        return states, F.normalize(self.text_proj(pooled).float(), dim=-1)

    def loss(self, images: Tensor, ids: Tensor, mask: Tensor) -> dict[str, Tensor]:
        return info_nce(self.encode_image(images), self.encode_text(ids, mask), self.logit_scale)


def info_nce(img: Tensor, txt: Tensor, logit_scale: Tensor) -> dict[str, Tensor]:
    """Symmetric InfoNCE: image i's positive is caption i, every other caption in the batch a negative."""
    scale = logit_scale.clamp(max=math.log(100.0)).exp()
    with torch.autocast(img.device.type, enabled=False):  # bf16 logits would blur cosines x 100
        logits = scale.float() * img.float() @ txt.float().t()
    target = torch.arange(len(logits), device=logits.device)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    acc = (logits.argmax(dim=1) == target).float().mean()
    return {"loss": loss, "acc": acc.detach(), "temperature": (1 / scale).detach()}


class CLIPStage(nn.Module):
    def __init__(self, cfg: Config, vocab_size: int):
        super().__init__()
        self.clip = CLIP(cfg, vocab_size)

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return self.clip.loss(batch["image"], batch["ids"], batch["mask"])


# --------------------------------------------------------------------------------------------- train
def train(cfg: Config, run: Path, progress: bool = True) -> dict[str, Any]:
    """Tokenizer, then the contrastive stage; each resumes on its own."""
    stages = Stages(run, cfg.seed)
    tokenizer = tokenizer_stage(stages, cfg.data, cfg.text.tokenizer_captions, cfg.text.vocab_size)
    tc = cfg.stages.clip

    if stages.todo("clip"):
        stage = CLIPStage(cfg, tokenizer.vocab_size)
        per_rank = tc.batch_size // runtime.world_size()

        def data(start: int) -> Iterator[dict[str, Any]]:
            return batches(stage_data(cfg.data, tc), per_rank, start, tokenizer, cfg.text.max_len,
                           counterfactuals=cfg.counterfactuals, seed=cfg.seed)

        def quick_eval(model: nn.Module, step: int) -> dict[str, float]:
            if not is_shapes(cfg.data.source):
                return {}
            pipe = Scorer(cfg, tokenizer, model.clip)
            return {"retrieval_top1": zero_shot_retrieval(pipe, groups=2)["top1"],
                    "minimal_pairs": minimal_pairs(pipe, n=200)["text"]}

        stages.fit("clip", stage, tc, {"clip": "clip"}, data, None, progress, evaluate=quick_eval)
        stages.finish("clip", params={"clip": param_count(stage.clip)})
    return stages.meta


# ------------------------------------------------------------------------------------------------- use
ImageInput = list[Image.Image] | Tensor


class Scorer:
    """A trained CLIP: `encode_image`, `encode_text`, `similarity`. It scores images; it does not make them.

    Embeddings are float32, L2-normalised, on `self.device`, so `a @ b.T` is cosine similarity.
    """

    family = NAME

    def __init__(self, cfg: Config, tokenizer: Tokenizer, model: CLIP, device: torch.device | None = None):
        self.cfg, self.tokenizer = cfg, tokenizer
        self.device = device or runtime.device()
        self.model = model.to(self.device).eval()
        self.resolution = cfg.resolution
        self.embed_dim = cfg.embed_dim

    @classmethod
    def load(cls, run: str | Path, cfg: Config) -> Scorer:
        run = Path(run)
        require_complete(run, NAME, STAGES)
        tokenizer = Tokenizer.load(run / "tokenizer.json")
        return cls(cfg, tokenizer, load_part(CLIP(cfg, tokenizer.vocab_size), run, "clip"))

    def to_tensor(self, images: ImageInput) -> Tensor:
        """PIL images or (B, 3, H, W) floats in [-1, 1] -> (B, 3, R, R) at the model's resolution.

        Every input goes through the same bilinear, antialiased resize, so a PIL image and its tensor give
        the same embedding."""
        if isinstance(images, Tensor):
            x = images
            if x.ndim != 4 or x.shape[1] != 3:
                raise UserError(f"encode_image takes (B, 3, H, W) tensors in [-1, 1], got shape {tuple(x.shape)}")
            x = x.float()
        else:
            if len(images) == 0:
                raise UserError("encode_image got no images")
            sizes = {im.size for im in images}
            if len(sizes) > 1:
                return torch.cat([self.to_tensor([im]) for im in images])
            x = images_to_tensor(list(images))
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution,) * 2, mode="bilinear", align_corners=False, antialias=True)
        return x

    @torch.no_grad()
    def encode_image(self, images: ImageInput, batch_size: int = 256) -> Tensor:
        """(N, embed_dim) unit vectors for PIL images or a (N, 3, H, W) tensor in [-1, 1].

        PIL images are converted a batch at a time, so reranking thousands of candidates never holds them all
        as one float tensor."""
        if isinstance(images, Tensor):
            chunks = iter(self.to_tensor(images).split(batch_size))
        else:  # range(0, 1) for an empty list, so to_tensor still says what was wrong
            chunks = (self.to_tensor(images[i:i + batch_size]) for i in range(0, max(len(images), 1), batch_size))
        return torch.cat([self.model.encode_image(c.to(self.device)) for c in chunks])

    @torch.no_grad()
    def encode_text(self, prompts: list[str], batch_size: int = 256) -> Tensor:
        """(N, embed_dim) unit vectors for captions (truncated to text.max_len tokens, with a warning)."""
        if isinstance(prompts, str):
            raise UserError("encode_text takes a list of prompts, not a single string")
        if len(prompts) == 0:
            raise UserError("encode_text got no prompts")
        out = []
        for i in range(0, len(prompts), batch_size):
            ids, mask = self.tokenizer.encode(prompts[i:i + batch_size], self.cfg.text.max_len)
            out.append(self.model.encode_text(ids.to(self.device), mask.to(self.device)))
        return torch.cat(out)

    @torch.no_grad()
    def best_of(self, prompts: list[str], images: list[Image.Image], n: int) -> list[int]:
        """For each prompt, which of its `n` consecutive candidate images this CLIP rates closest to it."""
        img = self.encode_image(images).float().cpu()
        txt = self.encode_text(prompts).float().cpu()
        return (img.reshape(len(prompts), n, -1) * txt[:, None]).sum(-1).argmax(dim=1).tolist()

    def similarity(self, images: ImageInput, prompts: list[str]) -> Tensor:
        """(N_images, N_prompts) cosine similarities: rows rank prompts for an image, columns images for a prompt."""
        return self.encode_image(images) @ self.encode_text(prompts).t()

    def cosine(self, images: ImageInput, prompts: list[str]) -> Tensor:
        """(N,) cosine of each image with its own prompt (pairs in order): what CLIP scores average."""
        img, txt = self.encode_image(images), self.encode_text(prompts)
        if len(img) != len(txt):
            raise UserError(f"got {len(img)} images and {len(prompts)} prompts; pair them one to one")
        return (img * txt).sum(dim=-1)


# ------------------------------------------------------------------------------------------ retrieval
def retrieval_pool(n: int, seed: int = RETRIEVAL_SEED, split: str = "train", resolution: int = 64) -> list:
    """`n` held-out shapes samples with distinct canonical captions, so each caption has one right image."""
    from t2i.data.shapes import make_sample

    out, seen, i = [], set(), 0
    while len(out) < n:
        s = make_sample(i, seed=seed, size=resolution, split=split)
        i += 1
        if s.meta["canonical"] not in seen:
            seen.add(s.meta["canonical"])
            out.append(s)
    return out


def zero_shot_retrieval(pipe: Scorer, candidates: int = 100, groups: int = 10, seed: int = RETRIEVAL_SEED,
                        split: str = "train") -> dict[str, Any]:
    """Caption -> image among `candidates` held-out images, `groups` times: top-1 and top-5 accuracy.

    Each group draws `candidates` samples with distinct canonical captions (two images that both satisfy "a
    red circle" would make the right answer ambiguous); the query is each sample's own training-style
    caption (canonical or a paraphrase), and a hit means the caption's own image ranks first.
    """
    hits1 = hits5 = total = 0
    per_kind: dict[str, list[int]] = {}
    for g in range(groups):
        pool = retrieval_pool(candidates, seed=seed + g, split=split, resolution=pipe.resolution)
        sims = pipe.similarity([s.image for s in pool], [s.caption for s in pool]).t()  # (texts, images)
        rank = sims.argsort(dim=1, descending=True)
        target = torch.arange(len(pool), device=rank.device)
        top1 = (rank[:, 0] == target).cpu()
        hits1 += int(top1.sum())
        hits5 += int((rank[:, :5] == target[:, None]).any(dim=1).sum())
        total += len(pool)
        for s, ok in zip(pool, top1.tolist(), strict=True):
            k = per_kind.setdefault(s.meta["kind"], [0, 0])
            k[0] += int(ok)
            k[1] += 1
    return {"top1": hits1 / total, "top5": hits5 / total, "queries": total, "candidates": candidates,
            "split": split, "kinds": {k: c / n for k, (c, n) in sorted(per_kind.items())}}


def edit_name(before: str, after: str) -> str:
    """Which attribute tells two canonical captions of one kind apart: 'relation', 'count', 'size',
    'colour swap' (the pair's colours exchanged), 'colour' or 'shape'."""
    from t2i.data.shapes import parse_prompt

    a, b = parse_prompt(before), parse_prompt(after)
    if a.relation != b.relation:
        return "relation"
    if a.count != b.count:
        return "count"
    if a.size != b.size:
        return "size"
    if a.color2 is not None and (a.color, a.color2) == (b.color2, b.color):
        return "colour swap"
    return "colour" if (a.color, a.color2) != (b.color, b.color2) else "shape"


def minimal_pairs(pipe: Scorer, n: int = 400, seed: int = RETRIEVAL_SEED, split: str = "train") -> dict[str, Any]:
    """Does CLIP see what changed? On `n` held-out scenes and their counterfactuals (one attribute changed,
    `shapes.counterfactual`), with canonical captions:

    - text: the scene prefers its own caption to the counterfactual's (what reranking asks of CLIP);
    - image: its caption prefers the scene to the counterfactual image;

    overall and per edit ('relation', 'count', ...). Chance is 0.5. Retrieval among 100 random captions hides
    a bag-of-words model, since random captions differ in several words; these pairs differ in one
    (ARO and Winoground probe pretrained CLIPs the same way)."""
    import random

    from t2i.data.shapes import counterfactual, make_sample

    real, fake = [], []
    for i in range(n):
        s = make_sample(i, seed=seed, size=pipe.resolution, split=split)
        c = counterfactual(s, random.Random(f"minimal-pairs:{seed}:{i}"))
        if c is not None:
            real.append(s)
            fake.append(c)
    img_r, img_f = pipe.encode_image([s.image for s in real]), pipe.encode_image([c.image for c in fake])
    txt_r = pipe.encode_text([s.meta["canonical"] for s in real])
    txt_f = pipe.encode_text([c.meta["canonical"] for c in fake])
    own = (img_r * txt_r).sum(-1)
    text_ok = (own > (img_r * txt_f).sum(-1)).cpu().tolist()
    image_ok = (own > (img_f * txt_r).sum(-1)).cpu().tolist()
    per: dict[str, list[int]] = {}
    for s, c, ok in zip(real, fake, text_ok, strict=True):
        e = per.setdefault(edit_name(s.meta["canonical"], c.meta["canonical"]), [0, 0])
        e[0] += int(ok)
        e[1] += 1
    return {"text": sum(text_ok) / len(real), "image": sum(image_ok) / len(real), "pairs": len(real),
            "edits": {k: hits / total for k, (hits, total) in sorted(per.items())}}


FAMILY = base.Family(NAME, "scorer", Config, tuple(STAGES), train, Scorer.load,
                     summary="the lab's CLIP: CLIP score, FID features, reranking", legacy={"train": "clip"})

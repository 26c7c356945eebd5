"""NUWA (Wu et al. 2022), from scratch: one encoder-decoder over a 3D grid of VQ tokens, with 3D nearby
attention, for text-to-image, text-to-video, video prediction, sketch-to-image and image completion.

Paper choices followed:
* **tokens**: a per-frame 2D VQ shared by images and clips (`t2i.codecs.vq`, 8x8 codes per 64 px frame; a
  token run's with `--image-tokenizer RUN`); a clip of T frames is the grid T x 8 x 8, an image is T = 1;
* **encoder-decoder**: the encoder (bidirectional) reads the condition -- the caption's BPE tokens, plus the
  sketch's VQ tokens for sketch-to-image, or only the empty caption for video prediction; the decoder
  generates the target grid frame by frame, in raster order within a frame, cross-attending to it;
* **positions** are separate per axis (frame, row, column), summed: each input carries where its code was and
  where the position it predicts is (a shifted AR model would otherwise give a key the location of the code
  after its own);
* **3D nearby attention** (3DNA): a position attends, causally, to the codes within a neighbourhood of
  extents (frames, rows, cols) centred on it -- `net.extent`, (3, 3, 3) by default: the previous and the
  current frame, one row and one column either side -- and its cross-attention to a sketch sees the matching
  neighbourhood of the sketch's grid (text is seen whole). `net.attention: full | axial` are the paper's
  ablation (axial: the same row, column or pixel track). All three are patterns (masks) on the one
  `Attention`, so the KV cache works unchanged; a mask saves no FLOPs, which the benchmark reports;
* **one multi-task run**: every step draws one task (`tasks.t2i`, `t2v`, `predict`, `sketch` weights):
  captioned images, captioned clips, clips with the empty caption and the loss on the frames after the
  given ones, sketches with captions. Image completion is never trained: it is text-to-image with the top
  half's codes as the decoder's prefix (zero-shot, as in the paper);
* classifier-free guidance on logits with 10% caption dropout, sampled with the KV cache, top-k, temperature.

Departures: small widths for a CPU budget; sketches go through the image VQ (NUWA trained a separate VQ-GAN
on sketches); the given frames of a prediction and the given half of a completion are pasted back into the
output, which is what the request gave.

Stages: tokenizer (BPE on image and clip captions) -> vq -> (vq_decoder) -> transformer, the first three
shared with DALL-E and Parti (`t2i.families.tokens`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from t2i import runtime
from t2i.config import require
from t2i.data.video import FRAMES, sketch
from t2i.diffusion.guidance import apply_null_condition, drop_condition
from t2i.errors import UserError
from t2i.families import base, tokens
from t2i.families.tokens import IMAGE_TOKENIZER, STAGES, TokenOptions, TokenPipeline
from t2i.families.tokens.stages import codec_stages, image_side
from t2i.images import Clip, grid, images_to_tensor, resize_media, tensor_to_images
from t2i.nn.attention import KVCache
from t2i.nn.gpt import TokenTransformer
from t2i.tokens.decoding import DecodeOptions, sample_autoregressive
from t2i.tokens.patches import PatchHead
from t2i.train.data import DataConfig, cached_batches, encode_samples
from t2i.train.stages import PREVIEW_PROMPTS, stage_data
from t2i.train.trainer import param_count

NAME = "nuwa"
TASKS = ("t2i", "t2v", "predict", "sketch")  # what a run trains; `complete` is text-to-image with a prefix
ATTENTION = ("nearby", "full", "axial")
__all__ = ["FAMILY", "NAME", "STAGES", "Config", "NuwaNet", "Pipeline", "train"]


@dataclass
class NetConfig(tokens.NetConfig):
    text_depth: int = 2  # encoder blocks (depth: decoder blocks)
    attention: str = "nearby"  # nearby | full | axial
    extent: tuple[int, int, int] = (3, 3, 3)  # the nearby neighbourhood: frames, rows, cols (odd, centred)


@dataclass
class TaskConfig:
    """The multi-task mix: a weight per task (0 = not trained) and the clips the video tasks read."""

    t2i: float = 1.0
    t2v: float = 1.0
    predict: float = 0.5
    sketch: float = 0.5
    video: str = "shapes-video"  # the clip source (frames from its spec: 'shapes-video:frames=N')
    frames: int = FRAMES  # clip length the run trains and generates
    context: int = 2  # frames a prediction is given
    clip_cache: int = 8000  # clips encoded once for the video tasks (data.cache: images for the image tasks)

    def validate(self, where: str) -> None:
        weights = [getattr(self, t) for t in TASKS]
        require(all(w >= 0 for w in weights) and sum(weights) > 0, where, "t2i", "task weights must be >= 0 with "
                "at least one > 0", weights)
        require(2 <= self.frames <= 14, where, "frames", "must be 2..14", self.frames)
        require(1 <= self.context < self.frames, where, "context", "must be 1..frames-1", self.context)
        require(self.clip_cache >= 1, where, "clip_cache", "must be >= 1", self.clip_cache)

    def trained(self) -> list[str]:
        """The tasks a run can do: those it trained, and completion wherever text-to-image was."""
        done = [t for t in TASKS if getattr(self, t) > 0]
        return done + (["complete"] if "t2i" in done else [])


@dataclass
class Config(tokens.TokenConfig):
    family: str = NAME
    net: NetConfig = field(default_factory=NetConfig)
    tasks: TaskConfig = field(default_factory=TaskConfig)

    def validate(self, where: str) -> None:
        super().validate(where)
        require(self.net.attention in ATTENTION, where, "net.attention", f"must be one of {', '.join(ATTENTION)}",
                self.net.attention)
        require(all(e >= 1 and e % 2 for e in self.net.extent), where, "net.extent", "must be 3 odd sizes >= 1 "
                "(frames, rows, cols)", self.net.extent)
        require(self.net.patch == 1, where, "net.patch", "must be 1 for nuwa (one code per position)", self.net.patch)


# -------------------------------------------------------------------------------------------- network
def grid_index(frames: int, side: int) -> Tensor:
    """(frames * side * side, 3) the (frame, row, col) of every position, in decoding order."""
    f, r, c = torch.meshgrid(torch.arange(frames), torch.arange(side), torch.arange(side), indexing="ij")
    return torch.stack([f.flatten(), r.flatten(), c.flatten()], dim=1)


def attention_pattern(kind: str, extent: tuple[int, int, int], frames: int, side: int) -> Tensor:
    """(n, n) bool: which inputs the query at position i may read. Input 0 is <start>; input j >= 1 holds the
    code of position j - 1. A query reads <start>, its own input, and the inputs of earlier codes that its
    pattern allows: nearby -- within extent // 2 frames back and extent // 2 rows and columns either side;
    axial -- the same row, the same column, or the same pixel in an earlier frame; full -- every one."""
    pos = grid_index(frames, side)
    n = len(pos)
    q, k = pos[:, None, :], pos[None, :-1, :]  # queries i, codes p = j - 1 for j = 1..n-1
    earlier = torch.arange(n)[:, None] > torch.arange(n - 1)[None, :]
    if kind == "full":
        near = torch.ones_like(earlier)
    elif kind == "axial":
        same = q == k
        near = (same[..., 0] & same[..., 1]) | (same[..., 0] & same[..., 2]) | (same[..., 1] & same[..., 2])
    else:
        half = torch.tensor(extent) // 2
        d = (q - k).abs()
        near = (d <= half).all(-1)
    out = torch.zeros(n, n, dtype=torch.bool)
    out[:, 0] = True
    out[:, 1:] = earlier & near
    out.fill_diagonal_(True)
    return out


def sketch_pattern(kind: str, extent: tuple[int, int, int], frames: int, side: int, text_len: int) -> Tensor:
    """(n, text_len + side^2) bool: the cross-attention of sketch-to-image -- all of the text, and the matching
    neighbourhood (nearby), row and column (axial) or all (full) of the sketch's grid."""
    q, s = grid_index(frames, side)[:, None, 1:], grid_index(1, side)[None, :, 1:]
    if kind == "full":
        near = torch.ones(q.shape[0], s.shape[1], dtype=torch.bool)
    elif kind == "axial":
        near = (q == s).any(-1)
    else:
        near = ((q - s).abs() <= torch.tensor(extent[1:]) // 2).all(-1)
    return torch.cat([torch.ones(len(near), text_len, dtype=torch.bool), near], dim=1)


class AxisPositions(nn.Module):
    """A learned vector per frame, per row and per column, summed (NUWA's separate per-axis embeddings)."""

    def __init__(self, frames: int, side: int, dim: int):
        super().__init__()
        self.frame, self.row, self.col = (nn.Parameter(torch.randn(n, dim) * 0.02) for n in (frames, side, side))

    def forward(self, idx: Tensor) -> Tensor:
        return self.frame[idx[:, 0]] + self.row[idx[:, 1]] + self.col[idx[:, 2]]


class NuwaNet(nn.Module):
    """Encoder([caption; sketch codes]) -> states; decoder over [<start>, codes] of a T x side x side grid."""

    parallel = False

    def __init__(self, cfg: NetConfig, text_vocab: int, text_len: int, codebook_size: int, side: int,
                 frames: int):
        super().__init__()
        self.codebook_size, self.depth, self.side, self.frames = codebook_size, cfg.depth, side, frames
        self.slots, self.patch, self.text_len = 1, 1, text_len
        self.positions = frames * side * side  # of a clip; an image is its first side * side
        self.layers = 2 * cfg.depth  # caches: one per self-attention, then one per cross-attention
        self.text_emb = nn.Embedding(text_vocab, cfg.dim)
        self.text_pos = nn.Parameter(torch.randn(text_len, cfg.dim) * 0.02)
        self.sketch_emb = nn.Embedding(codebook_size, cfg.dim)
        self.sketch_pos = AxisPositions(1, side, cfg.dim)
        self.encoder = TokenTransformer(cfg.dim, cfg.text_depth, cfg.heads, causal=False)
        self.code_emb = nn.Embedding(codebook_size + 1, cfg.dim)  # + <start>
        self.code_pos, self.query_pos = AxisPositions(frames, side, cfg.dim), AxisPositions(frames, side, cfg.dim)
        self.decoder = TokenTransformer(cfg.dim, cfg.depth, cfg.heads, causal=True, context_dim=cfg.dim)
        self.head = PatchHead(cfg.dim, codebook_size, 1)
        self.register_buffer("index", grid_index(frames, side), persistent=False)
        self.register_buffer("pattern", attention_pattern(cfg.attention, cfg.extent, frames, side), persistent=False)
        self.register_buffer("sketch_cross", sketch_pattern(cfg.attention, cfg.extent, frames, side, text_len),
                             persistent=False)

    def prepare(self, ids: Tensor, mask: Tensor, sketch_codes: Tensor | None = None) -> dict[str, Tensor]:
        """The encoder's states, once per request: the caption, and the sketch's codes after it."""
        x, keep = self.text_emb(ids) + self.text_pos[:ids.shape[1]], mask.bool()
        if sketch_codes is not None:
            x = torch.cat([x, self.sketch_emb(sketch_codes) + self.sketch_pos(self.index[:self.side ** 2])], dim=1)
            keep = torch.cat([keep, keep.new_ones(sketch_codes.shape)], dim=1)
        return {"context": self.encoder(x, mask=keep), "context_mask": keep}

    def embed(self, codes: Tensor) -> Tensor:
        """Codes so far (B, i) -> inputs (B, 1 + i, dim): <start>, then each code with where it was, each input
        plus where the position it predicts is."""
        start = codes.new_full((codes.shape[0], 1), self.codebook_size)
        n = codes.shape[1] + 1
        x = self.code_emb(torch.cat([start, codes], dim=1)) + self.query_pos(self.index[:n])
        return torch.cat([x[:, :1], x[:, 1:] + self.code_pos(self.index[:n - 1])], dim=1)

    def _cross(self, cond: dict[str, Tensor], rows: slice) -> Tensor | None:
        return None if cond["context"].shape[1] == self.text_len else self.sketch_cross[rows]

    def states(self, cond: dict[str, Tensor], codes: Tensor, caches: list[KVCache] | None = None) -> Tensor:
        """Decoder states for the inputs after the cached ones (all of them without caches)."""
        x = self.embed(codes)
        start, n = (0 if caches is None else caches[0].length), x.shape[1]
        return self.decoder(x[:, start:], cond["context"], cond["context_mask"],
                            caches=None if caches is None else caches[:self.depth],
                            context_caches=None if caches is None else caches[self.depth:],
                            attn_mask=self.pattern[start:n, :n], context_attn_mask=self._cross(cond, slice(start, n)))

    def loss(self, cond: dict[str, Tensor], codes: Tensor, skip: int = 0) -> Tensor:
        """Cross-entropy of every code after the first `skip` (the given frames of a prediction)."""
        h = self.states(cond, codes[:, :-1])[:, skip:]
        logits = self.head(h, codes[:, skip:, None])
        return F.cross_entropy(logits.float().flatten(0, 2), codes[:, skip:].flatten())

    def next_state(self, cond: dict[str, Tensor], patches: Tensor, caches: list[KVCache] | None = None) -> Tensor:
        """The state (B, dim) that predicts the code after `patches` (B, i, 1); `t2i.tokens.decoding`'s model."""
        return self.states(cond, patches[..., 0], caches)[:, -1]


# ------------------------------------------------------------------------------------------ training
class NuwaStage(nn.Module):
    """One task per batch: its condition (caption with dropout, empty caption, or caption + sketch), its codes."""

    def __init__(self, net: NuwaNet, null: tuple[Tensor, Tensor], cond_drop: float, context: int):
        super().__init__()
        self.net, self.cond_drop, self.skip = net, cond_drop, context * net.side ** 2
        self.register_buffer("null_ids", null[0][0], persistent=False)
        self.register_buffer("null_mask", null[1][0], persistent=False)

    def forward(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Tensor]:
        ids, mask, task = batch["ids"], batch["mask"].bool(), batch["task"]
        b = ids.shape[0]
        drop = torch.ones(b, dtype=torch.bool, device=ids.device) if task == "predict" else \
            drop_condition(self.cond_drop, batch=b, generator=generator, device=ids.device)
        ids, mask = apply_null_condition(ids, self.null_ids, drop), apply_null_condition(mask, self.null_mask, drop)
        cond = self.net.prepare(ids, mask, batch["sketch"].long() if task == "sketch" else None)
        loss = self.net.loss(cond, batch["codes"].long(), self.skip if task == "predict" else 0)
        return {"loss": loss}


def task_schedule(cfg: TaskConfig, seed: int, step: int) -> str:
    """The task of training batch `step`: a pure function of the seed and step, so a resumed run draws the
    same sequence."""
    weights = [getattr(cfg, t) for t in TASKS]
    return random.Random(f"nuwa-task:{seed}:{step}").choices(TASKS, weights)[0]


def _encoder(vq: Any, tokenizer: Any, max_len: int, sketches: bool) -> Any:
    """samples -> {codes, ids, mask[, sketch]}: every frame through the VQ encoder, in fp32 and channels_last
    (on this CPU 985 images/s, against 568 under bf16 autocast: 2026-12-02, the 128-channel VQ)."""
    def codes_of(x: Tensor, rows: int) -> Tensor:
        x = x.to(vq.quantizer.codebook.device).contiguous(memory_format=torch.channels_last)
        return vq.encode(x).reshape(rows, -1).to(torch.int16).cpu()

    def encode(samples: list[Any]) -> dict[str, Tensor]:
        x = images_to_tensor([s.image for s in samples])
        with torch.no_grad():
            out = {"codes": codes_of(x.flatten(0, 1) if x.dim() == 5 else x, len(samples))}
            if sketches:
                out["sketch"] = codes_of(images_to_tensor([sketch(s.meta, x.shape[-1]) for s in samples]),
                                         len(samples))
        out["ids"], out["mask"] = tokenizer.encode([s.caption for s in samples], max_len)
        return out
    return encode


def task_data(cfg: Config, tokenizer: Any, vq: Any, progress: bool) -> Any:
    """The data factory of the transformer stage: a cache of encoded images (with sketches) and one of clips,
    and per step the scheduled task's batch (clips per batch = batch_size, images = batch_size x frames, so
    every step costs about the same)."""
    tc, per_rank = cfg.tasks, cfg.stages.transformer.batch_size // runtime.world_size()
    img_data = stage_data(cfg.data, cfg.stages.transformer)
    caches: dict[str, dict[str, Tensor]] = {}
    if tc.t2i > 0 or tc.sketch > 0:
        caches["image"] = encode_samples(img_data, cfg.data.cache, _encoder(vq, tokenizer, cfg.text.max_len,
                                         tc.sketch > 0), progress=progress, seed=cfg.seed, desc="encoding images")
    if tc.t2v > 0 or tc.predict > 0:
        clips = DataConfig(source=tc.video if ":" in tc.video else f"{tc.video}:frames={tc.frames}",
                           resolution=img_data.resolution)
        caches["clip"] = encode_samples(clips, tc.clip_cache, _encoder(vq, tokenizer, cfg.text.max_len, False),
                                        chunk=64, progress=progress, seed=cfg.seed, desc="encoding clips")
    rows = {t: per_rank if t in ("t2v", "predict") else per_rank * tc.frames for t in TASKS}
    source = {"t2i": "image", "sketch": "image", "t2v": "clip", "predict": "clip"}

    def factory(start: int) -> Any:
        step = start // per_rank
        drawn = dict.fromkeys(TASKS, 0)
        for s in range(step):
            drawn[task_schedule(tc, cfg.seed, s)] += 1
        its = {t: cached_batches(caches[source[t]], rows[t], drawn[t] * rows[t], cfg.seed * 7 + i)
               for i, t in enumerate(TASKS) if getattr(tc, t) > 0}
        while True:
            task = task_schedule(tc, cfg.seed, step)
            yield {**next(its[task]), "task": task}
            step += 1
    return factory


# ------------------------------------------------------------------------------------------ pipeline
@dataclass
class NuwaOptions(TokenOptions):
    frames: int | None = base.option(None, "nuwa runs: frames to generate (1 = an image; default: a clip for a "
                                     "caption that describes motion, an image otherwise)", int)


class Pipeline(TokenPipeline):
    """Text -> images or clips, and the conditional tasks: ``pipe(["a red circle moving left"], seed=0)``."""

    family = NAME
    Options = NuwaOptions

    def __init__(self, cfg: Config, tokenizer: Any, vq: Any, net: nn.Module, device: torch.device | None = None):
        super().__init__(cfg, tokenizer, vq, net, device)
        self.tasks = tuple(t for t in cfg.tasks.trained() if t in base.TASKS)

    @classmethod
    def build_net(cls, cfg: Any, tokenizer: Any, vq: Any) -> nn.Module:
        return NuwaNet(cfg.net, tokenizer.vocab_size, cfg.text.max_len, cfg.vq.codebook_size,
                       vq.grid(image_side(cfg)), cfg.tasks.frames)

    def defaults(self) -> dict[str, Any]:
        return {**super().defaults(), "frames": 0}

    def check(self, options: NuwaOptions, given: dict[str, Any]) -> NuwaOptions:
        frames = self.cfg.tasks.frames
        if options.frames is not None and not 0 <= options.frames <= frames:
            raise UserError(f"--frames {options.frames}: this run generates 1..{frames} frames (0 = by the caption)")
        return super().check(options, given)

    def suites(self) -> dict[str, dict[str, int]]:
        trained = self.cfg.tasks.trained()
        return {t: {"frames": self.cfg.tasks.frames, "size": image_side(self.cfg)}
                for t in ("t2v", "predict", "sketch", "complete") if t in trained}

    def _frames(self, prompt: str, options: NuwaOptions) -> int:
        from t2i.data.video import parse_video_prompt

        if options.frames:
            return options.frames
        try:
            parse_video_prompt(prompt)
            return self.cfg.tasks.frames
        except UserError:
            return 1

    def check_inputs(self, inputs: Any, n: int) -> list[base.Input | None]:
        given = list(inputs) if inputs is not None else []
        for inp in given:
            if inp is not None and inp.task in FAMILY.tasks and inp.task not in self.tasks:
                raise UserError(f"this nuwa run was not trained for task {inp.task}; it was trained for "
                                f"{', '.join(self.cfg.tasks.trained())}")
        inputs = super().check_inputs(inputs, n)
        side, frames, context = image_side(self.cfg), self.cfg.tasks.frames, self.cfg.tasks.context
        for inp in inputs:
            if inp is not None and inp.task == "predict" and not context <= len(inp.image) < frames:
                raise UserError(f"a prediction continues {context}..{frames - 1} given frames (this run's context "
                                f"is {context}, its clips {frames} frames); got {len(inp.image)}")
            if inp is not None and inp.task == "sketch" and inp.image.size != (side, side):
                raise UserError(f"the sketch is {inp.image.size[0]}x{inp.image.size[1]}; this run draws {side}x{side} "
                                "sketches (t2i.data.video.sketch)")
        return inputs

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds: list[int], options: NuwaOptions,
                 inputs: list[base.Input | None]) -> list[Any]:
        """Rows grouped by what they decode (frames, task, frames given), each group one batched decoding."""
        groups: dict[tuple[int, str, int], list[int]] = {}
        for i, (p, inp) in enumerate(zip(prompts, inputs, strict=True)):
            task = inp.task if inp is not None else "text"
            frames = self.cfg.tasks.frames if task == "predict" else 1 if inp is not None else self._frames(p, options)
            groups.setdefault((frames, task, len(inp.image) if task == "predict" else 0), []).append(i)
        out: list[Any] = [None] * len(prompts)
        for (frames, task, _), rows in groups.items():
            media = self._decode(task, frames, [prompts[i] for i in rows], [seeds[i] for i in rows],
                                 [inputs[i] for i in rows], options)
            for i, m in zip(rows, media, strict=True):
                out[i] = m
        return out

    def _codes(self, images: list[Image.Image]) -> Tensor:
        side = image_side(self.cfg)
        x = images_to_tensor([resize_media(im, side) for im in images]).to(self.device)
        return self.vq.encode(x).flatten(1)

    def _decode(self, task: str, frames: int, prompts: list[str], seeds: list[int], inputs: list[Any],
                options: NuwaOptions) -> list[Any]:
        o, net, size = options, self.net, image_side(self.cfg)
        per_frame = self.vq.grid(size) ** 2
        text = [""] * len(prompts) if task == "predict" else prompts
        ids, mask = self.tokenizer.encode(text, self.cfg.text.max_len)
        sketch_codes = self._codes([x.image for x in inputs]) if task == "sketch" else None
        cond = net.prepare(ids.to(self.device), mask.to(self.device), sketch_codes)
        uncond = None
        if o.guidance != 1.0 and task != "predict":
            null_ids, null_mask = self.tokenizer.encode([""] * len(prompts), self.cfg.text.max_len)
            uncond = net.prepare(null_ids.to(self.device), null_mask.to(self.device), sketch_codes)
        prefix = None
        if task == "predict":
            given = [list(x.image.frames) for x in inputs]
            prefix = torch.stack([self._codes(g).flatten() for g in given])
        elif task == "complete":
            prefix = self._codes([x.image for x in inputs])[:, :per_frame // 2]
        decode = DecodeOptions(o.temperature, o.top_k, o.top_p, o.guidance)
        codes = sample_autoregressive(net.next_state, net.head.slot_logits, cond, uncond, frames * per_frame, 1,
                                      seeds, decode, net.layers, use_cache=self.use_cache, device=self.device,
                                      prefix=None if prefix is None else prefix[..., None])[..., 0]
        pixels = self.vq.decode(codes.reshape(-1, per_frame)).reshape(len(prompts), frames, 3, size, size)
        media = tensor_to_images(pixels if frames > 1 else pixels[:, 0])
        if task == "predict":  # the given frames are the request's own
            media = [Clip(tuple(resize_media(f, size) for f in x.image.frames) + m.frames[len(x.image):])
                     for x, m in zip(inputs, media, strict=True)]
        if task == "complete":  # the given top half is the request's own
            for x, m in zip(inputs, media, strict=True):
                top = resize_media(x.image, m.size[0]).crop((0, 0, m.size[0], m.size[1] // 2))
                m.paste(top, (0, 0))
        return media


def quick_video_score(pipe: Any, tasks: list[str], n: int = 24, seed: int = 0, frames: int = FRAMES,
                      size: int = 64) -> dict[str, float]:
    """The training-time probe: each trained task on `n` requests at the run's clip length and side, in
    memory (text-to-image on ShapesBench's spread of 2n prompts)."""
    import t2i.eval.videobench as vb
    from t2i.eval.shapesbench import quick_score, spread

    out: dict[str, float] = {}
    if "t2v" in tasks:
        prompts = spread(vb.video_prompts(), n)
        clips = pipe(prompts, seed=seed, candidates=1)
        out["t2v"] = sum(vb.score_clip(c, p)[0] for c, p in zip(clips, prompts, strict=True)) / len(prompts)
    if "t2i" in tasks:
        out["t2i"] = quick_score(lambda ps, seed: pipe(ps, seed=seed, candidates=1, frames=1), n=2 * n)["shapesbench"]
    for task in ("predict", "sketch"):
        if task in tasks:
            reqs = vb.task_requests(task, n, seed, frames, size)
            media = pipe([r["prompt"] for r in reqs], seed=seed, candidates=1,
                         inputs=[base.Input(task, r["image"]) for r in reqs])
            out[task] = sum(vb.score_media(task, m, r)[0] for m, r in zip(media, reqs, strict=True)) / len(reqs)
    return out


def train(cfg: Config, run: Path, progress: bool = True) -> dict[str, Any]:
    clips = DataConfig(source=cfg.tasks.video, resolution=cfg.data.resolution)
    stages, tokenizer, vq = codec_stages(cfg, run, progress, captions=[cfg.data, clips])
    if stages.todo("transformer"):
        net = Pipeline.build_net(cfg, tokenizer, vq)
        null = tokenizer.encode([""], cfg.text.max_len)
        stage = NuwaStage(net, null, cfg.net.cond_drop, cfg.tasks.context)
        prompts = ["a red circle moving left", "a blue square moving up and a green triangle moving right",
                   *PREVIEW_PROMPTS[:4]]

        def preview(model: nn.Module, step: int) -> Image.Image:
            media = Pipeline(cfg, tokenizer, vq, model.net)(prompts, seed=0, candidates=1)
            return grid(media, prompts)

        def quick_eval(model: nn.Module, step: int) -> dict[str, float]:
            return quick_video_score(Pipeline(cfg, tokenizer, vq, model.net), cfg.tasks.trained(),
                                     frames=cfg.tasks.frames, size=image_side(cfg))

        stages.fit("transformer", stage, cfg.stages.transformer, {"transformer": "net"},
                   task_data(cfg, tokenizer, vq, progress), preview, progress, evaluate=quick_eval)
        stages.finish("transformer", params={"vq": param_count(vq), "transformer": param_count(net)})
    return stages.meta


def load(run: str | Path, cfg: Config) -> Pipeline:
    return Pipeline.load(run, cfg)


FAMILY = base.Family(NAME, "generator", Config, tuple(STAGES), train, load, NuwaOptions,
                     tasks=("predict", "sketch", "complete"), uses=(IMAGE_TOKENIZER,), legacy=tokens.LEGACY,
                     summary="NUWA: a 3D token encoder-decoder with nearby attention, for images and clips")

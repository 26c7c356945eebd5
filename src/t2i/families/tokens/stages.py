"""The token families' training: the VQ, its optional decoder fine-tuning and the transformer stage, through the
shared `Stages` and trainer."""

from __future__ import annotations

import dataclasses
import functools
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch import Tensor, nn

from t2i import runtime
from t2i.codecs.autoencoder import reconstruction_loss
from t2i.codecs.vq import ImageTokenizer, codebook_usage
from t2i.data.tokenizer import Tokenizer
from t2i.diffusion.guidance import apply_null_condition, drop_condition
from t2i.families.tokens.config import tokenizer_source
from t2i.images import grid, images_to_tensor, tensor_to_images
from t2i.train.data import DataConfig, batches, generator_data
from t2i.train.rundir import load_part, read_meta
from t2i.train.stages import PREVIEW_PROMPTS, Stages, stage_data, take, tokenizer_stage
from t2i.train.trainer import param_count

if TYPE_CHECKING:
    from t2i.families.tokens.pipeline import TokenPipeline


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

    src, other = tokenizer_source(cfg)
    if runtime.is_main():
        shutil.copy(src / "tokenizer.json", run / "tokenizer.json")
        shutil.copy(src / "vq.safetensors", run / "vq.safetensors")
        cfg.vq = other.vq
        cfg.text.vocab_size, cfg.text.tokenizer_captions = other.text.vocab_size, other.text.tokenizer_captions
        save_yaml(cfg, run / "config.yaml")  # the run's config must rebuild the tokenizer it uses
    runtime.barrier()
    cfg.vq = other.vq
    return src


def codec_stages(cfg: Any, run: Path, progress: bool, captions: list[DataConfig] | None = None
                 ) -> tuple[Stages, Tokenizer, ImageTokenizer]:
    """The stages before the transformer, each resumable: the BPE (on `cfg.data`'s captions, or on those of
    `captions`' sources), the VQ and its optional decoder fine-tuning, or both copied from `tokenizer_run`.
    Returns the stage record and the two tokenizers, loaded."""
    stages = Stages(run, cfg.seed)
    if cfg.tokenizer_run and stages.todo("tokenizer"):
        src = _reuse_tokenizer(cfg, run)
        stages.finish("tokenizer", tokenizer_from=str(src))
        report = read_meta(src).get("vq", {})
        for copied in ("vq", "vq_decoder"):  # the copied VQ is final: its decoder is not fine-tuned again
            stages.todo(copied)
            stages.finish(copied, vq=report)
    tokenizer = tokenizer_stage(stages, captions or cfg.data, cfg.text.tokenizer_captions, cfg.text.vocab_size)
    vq_cfg, dec_cfg = cfg.stages.vq, cfg.stages.vq_decoder
    vq_data, dec_data = (stage_data(cfg.data, c) for c in (vq_cfg, dec_cfg))
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
        stages.fit("vq", VQStage(ImageTokenizer(cfg.vq)), vq_cfg, {"vq": "vq"},
                   lambda start: batches(vq_data, vq_cfg.batch_size // runtime.world_size(), start, seed=cfg.seed),
                   recon_of(vq_data), progress)
        stages.finish("vq", **({} if decoder_phase else {"vq": _vq_report(cfg, run)}))
    if decoder_phase and stages.todo("vq_decoder"):
        # Batches from past the VQ stage's samples, so the decoder also sees images the encoder never did.
        skip = vq_cfg.steps * vq_cfg.batch_size // runtime.world_size()
        stages.fit("vq_decoder", DecoderStage(load_part(ImageTokenizer(cfg.vq), run, "vq")), dec_cfg, {"vq": "vq"},
                   lambda start: batches(dec_data, dec_cfg.batch_size // runtime.world_size(), skip + start,
                                         seed=cfg.seed),
                   recon_of(dec_data), progress)
        stages.finish("vq_decoder", vq=_vq_report(cfg, run))
    vq = load_part(ImageTokenizer(cfg.vq), run, "vq")
    return stages, tokenizer, vq


def train_stages(cfg: Any, run: Path, progress: bool, pipeline: type[TokenPipeline]) -> dict[str, Any]:
    """Run every stage not yet done; each one checkpoints and resumes on its own (as the LDM family).

    `pipeline` is the family's `TokenPipeline` subclass: its `build_net` (from `net_class`) makes the network
    to train, and an instance of it draws the previews and the training-time probe."""
    stages, tokenizer, vq = codec_stages(cfg, run, progress)
    tf_cfg = cfg.stages.transformer
    tf_data = stage_data(cfg.data, tf_cfg)

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
        stages.fit("transformer", stage, tf_cfg, {"transformer": "net"}, data, preview, progress,
                   evaluate=quick_eval)
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

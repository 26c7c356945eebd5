"""Training batches from any data source, shared by every family."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import torch
from tqdm import tqdm

from t2i import runtime
from t2i.config import require
from t2i.data.shapes import counterfactual
from t2i.data.sources import is_generated, open_source
from t2i.data.tokenizer import Tokenizer
from t2i.errors import UserError
from t2i.images import images_to_tensor

log = logging.getLogger("t2i.data")


@dataclass
class DataConfig:
    """Where a run's images come from. Which of them it sees, in what order, follows the run's `seed`, passed
    to every reader below (so one number reproduces a run)."""

    source: str = "shapes"
    resolution: int = 64
    shuffle: int = 0  # shuffle buffer for web data; shapes needs none
    # > 0: pass this many samples (per run, split over ranks) through the frozen first stage once and train
    # on shuffled epochs of the result. Encoding every batch anew costs as much as a small denoiser's step.
    cache: int = 0
    # Prompt-kind weights for training on the embedded shapes source, e.g. "position=3,counting=2" ("" =
    # uniform). A field rather than part of `source` so that `--data shapes` keeps a preset's recipe; other
    # sources have no kinds and ignore it, and an explicit 'shapes:...' source wins.
    kind_weights: str = ""

    def validate(self, where: str) -> None:
        require(8 <= self.resolution <= 4096, where, "resolution", "must be 8..4096 px", self.resolution)
        require(self.shuffle >= 0, where, "shuffle", "must be >= 0 (0 = off)", self.shuffle)
        require(self.cache >= 0, where, "cache", "must be >= 0 (0 = encode every batch)", self.cache)
        open_source(self.train_spec(), resolution=self.resolution, n=0)  # the spec parses (kind weights too)

    def train_spec(self) -> str:
        """The source spec training batches read: `source` with the kind weights applied."""
        return f"shapes:{self.kind_weights}" if self.kind_weights and self.source == "shapes" else self.source


def check_readable(cfg: DataConfig, want: int = 8) -> None:
    """The source yields captioned samples at all: checked before a run folder is made, so a folder of
    images without captions, or shards that are all corrupt, is one line now, not a traceback after the
    tokenizer stage."""
    from t2i.data.sources import SkipStats

    stats = SkipStats()
    got = len(list(islice(open_source(cfg.train_spec(), resolution=cfg.resolution, stats=stats, log_skips=False),
                          want)))
    if got == 0:
        raise UserError(f"data {cfg.source!r} yields no usable samples ({stats}); every image needs a caption "
                        "(a same-name .txt beside it, or a .txt member in its shard) and must decode")


def batches(cfg: DataConfig, batch_size: int, start: int = 0, tokenizer: Tokenizer | None = None,
            max_len: int = 32, counterfactuals: bool = False, seed: int = 0) -> Iterator[dict[str, Any]]:
    """Endless per-rank batches {image, ids, mask, caption}, beginning after `start` samples of this rank.

    Finite sources repeat with a new shuffle seed per epoch; shapes is endless and index-addressed, so a
    resumed run gets exactly the batches it would have had. With `counterfactuals`, each sample that has
    shapes ground truth brings its minimal pair (`shapes.counterfactual`, seeded by the sample's key so a
    resumed run sees the same ones) after the `batch_size` read ones: up to twice as many rows.
    """
    rank, world = runtime.rank(), runtime.world_size()
    spec = cfg.train_spec()
    endless = is_generated(spec)
    epoch, skip = 0, start
    warned = False
    while True:
        stream = open_source(spec, resolution=cfg.resolution, seed=seed + epoch, shuffle=cfg.shuffle,
                             rank=rank, world_size=world, start=skip if endless else 0,
                             log_skips=epoch == 0)  # the same bad samples every epoch: said once
        if not endless and skip:
            stream = islice(stream, skip, None)
        got = 0
        while True:
            chunk = list(islice(stream, batch_size))
            if len(chunk) < batch_size:
                break
            got += len(chunk)
            if counterfactuals:
                pairs = (counterfactual(s, random.Random(f"counterfactual:{seed + epoch}:{s.key}")) for s in chunk)
                found = [p for p in pairs if p is not None]
                if not found and not warned:
                    log.warning("counterfactuals are on but %s's samples carry no shapes ground truth (a canonical "
                                "caption and objects): training on plain batches", cfg.source)
                    warned = True
                chunk += found
            batch: dict[str, Any] = {"image": images_to_tensor([s.image for s in chunk]),
                                     "caption": [s.caption for s in chunk]}
            if tokenizer is not None:
                batch["ids"], batch["mask"] = tokenizer.encode(batch["caption"], max_len)
            yield batch
        if got == 0 and skip == 0:
            raise UserError(f"data source {cfg.source!r} has fewer than {batch_size} readable samples per rank; "
                            "use a bigger dataset or a smaller batch_size")
        skip = max(skip - got, 0) if not endless else 0
        epoch += 1


def captions(cfg: DataConfig, n: int, seed: int = 0) -> list[str]:
    """The first n captions of the source (for training the tokenizer)."""
    return [s.caption for s in open_source(cfg.source, resolution=cfg.resolution, seed=seed, n=n)]


def encode_cache(cfg: DataConfig, encode: Callable[[torch.Tensor], Any], tokenizer: Tokenizer,
                 max_len: int, chunk: int = 256, progress: bool = True, seed: int = 0,
                 encode_captions: Callable[[list[str]], dict[str, torch.Tensor]] | None = None
                 ) -> dict[str, torch.Tensor]:
    """This rank's share of `cfg.cache` samples, encoded once: {"latent", "ids", "mask"} tensors (`encode`
    returns the latents, or a dict of tensors cached under their own keys: unCLIP's latents and CLIP
    embeddings; `encode_captions`, more tensors from the captions, which the cache does not keep).

    Encoding runs under bf16 autocast with channels_last inputs where the device supports bf16 (as the
    codecs trained): 2x faster on this CPU (VQ encoder: 1,348 against 662 images/s), which is what makes
    caches large enough not to be memorised affordable."""
    n = cfg.cache // runtime.world_size()
    if n < 1:
        raise UserError(f"data.cache={cfg.cache} leaves no samples for each of {runtime.world_size()} ranks")
    parts: dict[str, list[torch.Tensor]] = {"ids": [], "mask": []}
    src = batches(cfg, min(chunk, n), 0, tokenizer, max_len, seed=seed)
    done = 0  # counted here: a disabled tqdm bar does not count
    with torch.no_grad(), tqdm(total=n, desc="encoding cache", unit="img", disable=not progress) as bar:
        while done < n:
            b = next(src)
            x = b["image"]
            with runtime.autocast(x.device):
                z = encode(x.contiguous(memory_format=torch.channels_last))
                z = z if isinstance(z, dict) else {"latent": z}
                if encode_captions is not None:
                    z = {**z, **encode_captions(b["caption"])}
            for k, v in z.items():
                parts.setdefault(k, []).append(v.float())
            parts["ids"].append(b["ids"])
            parts["mask"].append(b["mask"])
            done += len(b["ids"])
            bar.update(len(b["ids"]))
    return {k: torch.cat(v)[:n] for k, v in parts.items()}


def encode_samples(cfg: DataConfig, n: int, encode: Callable[[list[Any]], dict[str, torch.Tensor]],
                   chunk: int = 256, progress: bool = True, seed: int = 0, desc: str = "encoding cache"
                   ) -> dict[str, torch.Tensor]:
    """This rank's share of `n` samples of the source, passed once through `encode(samples) -> tensors`.

    `encode_cache` for stages that need more of a sample than its image and caption (NUWA renders each
    scene's sketch from its metadata, and encodes clips and images into one cache each)."""
    world = runtime.world_size()
    if n // world < 1:
        raise UserError(f"a cache of {n} samples leaves none for each of {world} ranks")
    parts: dict[str, list[torch.Tensor]] = {}
    stream = open_source(cfg.train_spec(), resolution=cfg.resolution, seed=seed, n=n)
    with torch.no_grad(), tqdm(total=n // world, desc=desc, unit="sample",
                               disable=not (progress and runtime.is_main())) as bar:
        while chunk_ := list(islice(stream, chunk)):
            for k, v in encode(chunk_).items():
                parts.setdefault(k, []).append(v)
            bar.update(len(chunk_))
    return {k: torch.cat(v) for k, v in parts.items()}


def cached_batches(cache: dict[str, torch.Tensor], batch_size: int, start: int = 0,
                   seed: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches from an encoded cache, one seeded permutation per epoch; `start` (samples already
    consumed by this rank) resumes at exactly the next batch."""
    n = len(cache["ids"])
    if n < batch_size:
        raise UserError(f"the cache holds {n} samples per rank, fewer than a batch of {batch_size}; raise data.cache")
    per_epoch = n // batch_size
    step = start // batch_size
    while True:
        epoch, i = divmod(step, per_epoch)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        idx = order[i * batch_size:(i + 1) * batch_size]
        yield {k: v[idx] for k, v in cache.items()}
        step += 1


def generator_data(cfg: DataConfig, batch_size: int, tokenizer: Tokenizer, max_len: int,
                   encode: Callable[[torch.Tensor], Any], progress: bool = True, seed: int = 0,
                   encode_captions: Callable[[list[str]], dict[str, torch.Tensor]] | None = None
                   ) -> Callable[[int], Iterator[dict[str, Any]]]:
    """The data factory of a stage that trains on a frozen codec's outputs (latents, codes).

    With `data.cache > 0` the images are encoded once (what makes small generators fast: encoding each
    batch costs as much as their own step) and batches are drawn from the cache under key "latent";
    otherwise images stream and the stage encodes them itself. Either way `factory(start)` resumes exactly.
    """
    if not cfg.cache:
        return lambda start: batches(cfg, batch_size, start, tokenizer, max_len, seed=seed)
    cache = encode_cache(cfg, encode, tokenizer, max_len, progress=progress and runtime.is_main(), seed=seed,
                         encode_captions=encode_captions)
    return lambda start: cached_batches(cache, batch_size, start, seed)

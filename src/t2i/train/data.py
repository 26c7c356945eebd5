"""Training batches from any data source, shared by every family."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

from t2i.data.sources import open_source
from t2i.data.tokenizer import Tokenizer
from t2i.errors import UserError
from t2i.train import dist
from t2i.train.run import images_to_tensor


@dataclass
class DataConfig:
    source: str = "shapes"
    resolution: int = 64
    seed: int = 0
    shuffle: int = 0  # shuffle buffer for web data; shapes needs none


def batches(cfg: DataConfig, batch_size: int, start: int = 0, tokenizer: Tokenizer | None = None,
            max_len: int = 32) -> Iterator[dict[str, Any]]:
    """Endless per-rank batches {image, ids, mask, caption}, beginning after `start` samples of this rank.

    Finite sources repeat with a new shuffle seed per epoch; shapes is endless and index-addressed, so a
    resumed run gets exactly the batches it would have had.
    """
    rank, world = dist.rank(), dist.world_size()
    epoch, skip = 0, start
    while True:
        stream = open_source(cfg.source, resolution=cfg.resolution, seed=cfg.seed + epoch, shuffle=cfg.shuffle,
                             rank=rank, world_size=world, start=skip if cfg.source == "shapes" else 0)
        if cfg.source != "shapes" and skip:
            stream = islice(stream, skip, None)
        got = 0
        while True:
            chunk = list(islice(stream, batch_size))
            if len(chunk) < batch_size:
                break
            got += len(chunk)
            batch: dict[str, Any] = {"image": images_to_tensor([s.image for s in chunk]),
                                     "caption": [s.caption for s in chunk]}
            if tokenizer is not None:
                batch["ids"], batch["mask"] = tokenizer.encode(batch["caption"], max_len)
            yield batch
        if got == 0 and skip == 0:
            raise UserError(f"data source {cfg.source!r} has fewer than {batch_size} readable samples per rank; "
                            "use a bigger dataset or a smaller batch_size")
        skip = max(skip - got, 0) if cfg.source != "shapes" else 0
        epoch += 1


def captions(cfg: DataConfig, n: int) -> list[str]:
    """The first n captions of the source (for training the tokenizer)."""
    return [s.caption for s in open_source(cfg.source, resolution=cfg.resolution, seed=cfg.seed, n=n)]

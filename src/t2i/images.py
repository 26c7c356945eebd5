"""Media at the bottom of the stack: images and clips, PIL <-> tensors, resizing without distortion, strips, GIFs
and captioned contact sheets.

A medium is a PIL image or a `Clip` of T square frames. A clip is stored as one PNG strip of its frames, left to
right, with its frame count beside it (a `frames` field in the sample's JSON or the folder's index.jsonl): a
2:1 web photo must not be mistaken for a two-frame clip, so the count is never guessed from the shape. An
image is a clip of one frame wherever that makes code simpler (`frames_of`).

Every layer needs these (data sources resize, codecs and pipelines convert, trainers and the CLI draw grids),
so they live below all of them and import nothing of t2i but its errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from t2i.errors import UserError


def to_rgb(im: Image.Image) -> Image.Image:
    """Flatten transparency onto white: logos and PNG cut-outs turn into black blobs with a plain convert."""
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return im.convert("RGB")


def center_square(im: Image.Image, size: int) -> Image.Image:
    """Resize the short side to `size` and centre-crop: squashing would distort the shapes the captions
    describe. Cropping first (not `resize(box=...)`) keeps the filter from pulling in colour from outside."""
    w, h = im.size
    if (w, h) == (size, size):
        return im
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    square = im.crop((left, top, left + side, top + side))
    return square.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)


@dataclass(frozen=True, eq=False)
class Clip:
    """T square RGB frames of one size: a video sample, or a generated one."""

    frames: tuple[Image.Image, ...]

    def __post_init__(self) -> None:
        if not self.frames:
            raise UserError("a clip needs at least one frame")
        sizes = {im.size for im in self.frames}
        if len(sizes) != 1 or self.frames[0].width != self.frames[0].height:
            raise UserError(f"a clip's frames must be squares of one size, got sizes {sorted(sizes)}")

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def size(self) -> int:
        return self.frames[0].width

    def strip(self) -> Image.Image:
        """The frames side by side, left to right: how a clip is stored (one PNG any viewer can open)."""
        out = Image.new("RGB", (self.size * len(self), self.size))
        for i, im in enumerate(self.frames):
            out.paste(to_rgb(im), (i * self.size, 0))
        return out

    @classmethod
    def from_strip(cls, strip: Image.Image, frames: int) -> Clip:
        """Cut a stored strip back into `frames` frames; a strip of another shape is an error, not a guess."""
        w, h = strip.size
        if frames < 1 or w != frames * h:
            raise UserError(f"a {frames}-frame clip is stored as a strip {frames * h}x{h} px, got {w}x{h}")
        strip = to_rgb(strip)
        return cls(tuple(strip.crop((i * h, 0, (i + 1) * h, h)) for i in range(frames)))

    def save_gif(self, path: str | Path, fps: float = 4.0) -> None:
        """An animated GIF beside the strip, to watch the motion (the strip stays the lossless record)."""
        first, *rest = [to_rgb(im) for im in self.frames]
        first.save(path, save_all=True, append_images=rest, duration=round(1000 / fps), loop=0)


Media = Image.Image | Clip


def frames_of(media: Media) -> list[Image.Image]:
    """The frames of a medium: an image is a clip of one frame."""
    return list(media.frames) if isinstance(media, Clip) else [media]


def frame_count(media: Media) -> int:
    return len(media) if isinstance(media, Clip) else 1


def as_stored(media: Media) -> Image.Image:
    """The one PIL image a medium is written as: itself, or a clip's strip."""
    return media.strip() if isinstance(media, Clip) else to_rgb(media)


def from_stored(image: Image.Image, frames: int | None) -> Media:
    """Read back what `as_stored` wrote; `frames` (from the sample's metadata) says whether it is a clip."""
    return Clip.from_strip(image, frames) if frames and frames > 1 else to_rgb(image)


def stored_frames(meta: dict | None) -> int | None:
    """The frame count a sample's metadata declares (`frames`), checked: a clip's strip is cut by it."""
    frames = (meta or {}).get("frames")
    if frames is None:
        return None
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise UserError(f"`frames` must be a positive whole number of frames, got {frames!r}")
    return frames


def save_media(media: Media, path: str | Path, gif: bool = False) -> None:
    """Write a medium as a PNG (a clip as its strip); `gif` also writes PATH.gif for a clip."""
    as_stored(media).save(path)
    if gif and isinstance(media, Clip):
        media.save_gif(Path(path).with_suffix(".gif"))


def resize_media(media: Media, size: int) -> Media:
    """`center_square` of every frame: a clip is resized frame by frame, never cropped as one wide image."""
    if isinstance(media, Clip):
        return Clip(tuple(center_square(to_rgb(im), size) for im in media.frames))
    return center_square(to_rgb(media), size)


def images_to_tensor(images: list[Any]) -> torch.Tensor:
    """PIL RGB images -> float (B, 3, H, W) in [-1, 1]; clips -> (B, T, 3, H, W)."""
    if images and isinstance(images[0], Clip):
        if any(not isinstance(c, Clip) or len(c) != len(images[0]) for c in images):
            raise UserError("a batch of clips needs clips of one frame count, and no still images among them")
        return torch.stack([images_to_tensor(list(c.frames)) for c in images])
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def tensor_to_images(x: torch.Tensor) -> list[Any]:
    """float (B, 3, H, W) in [-1, 1] -> PIL RGB images; (B, T, 3, H, W) -> clips."""
    if x.dim() == 5:
        return [Clip(tuple(tensor_to_images(c))) for c in x]
    arr = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a, "RGB") for a in arr]


def _fit_prefix(text: str, font: Any, width: int) -> int:
    cut = 1
    while cut < len(text) and font.getlength(text[: cut + 1]) <= width:
        cut += 1
    return cut


def _wrap(text: str, font: Any, width: int, max_lines: int) -> list[str]:
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        line = word
        while font.getlength(line) > width:  # a word wider than the cell: break it
            cut = _fit_prefix(line, font, width)
            lines.append(line[:cut])
            line = line[cut:]
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and font.getlength(last + "...") > width:
            last = last[:-1]
        lines = [*lines[: max_lines - 1], last + "..."]
    return lines


def grid(images: Sequence[Media], captions: Sequence[str], cols: int = 8, cell: int = 128) -> Image.Image:
    """A contact sheet of media with their captions, to eyeball whether captions match pictures before
    spending hours training on them. A clip takes a row of cells, one per frame, so motion reads left to
    right; `cols` then counts frames, keeping the sheet about as wide as one of images."""
    if not images:
        raise UserError("nothing to preview: the source yielded no samples")
    font = ImageFont.load_default()
    line_h, max_lines, pad = font.getbbox("Ag")[3] + 2, 3, 4
    span = max(frame_count(m) for m in images)  # cells per item
    cols = max(1, min(cols // span if span > 1 else cols, len(images)))
    rows = -(-len(images) // cols)
    cell_w, cell_h = span * cell, cell + 2 + max_lines * line_h
    sheet = Image.new("RGB", (pad + cols * (cell_w + pad), pad + rows * (cell_h + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (media, caption) in enumerate(zip(images, captions, strict=True)):
        x, y = pad + (i % cols) * (cell_w + pad), pad + (i // cols) * (cell_h + pad)
        for f, frame in enumerate(frames_of(media)):
            im = to_rgb(frame)
            if im.width == im.height and cell % im.width == 0:  # small renders stay crisp instead of blurred
                im = im.resize((cell, cell), Image.Resampling.NEAREST)
            sheet.paste(center_square(im, cell), (x + f * cell, y))
        for j, text in enumerate(_wrap(caption, font, cell_w, max_lines)):
            draw.text((x, y + cell + 2 + j * line_h), text, fill="black", font=font)
    return sheet


def preview_grid(samples: Sequence[Any], cols: int = 8, cell: int = 128) -> Image.Image:
    """`grid` of samples (anything with `.image` and `.caption`)."""
    return grid([s.image for s in samples], [s.caption for s in samples], cols, cell)

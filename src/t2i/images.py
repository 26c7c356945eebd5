"""Images at the bottom of the stack: PIL <-> tensors, resizing without distortion, captioned contact sheets.

Every layer needs these (data sources resize, codecs and pipelines convert, trainers and the CLI draw grids),
so they live below all of them and import nothing of t2i but its errors.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def images_to_tensor(images: list[Any]) -> torch.Tensor:
    """PIL RGB images -> float (B, 3, H, W) in [-1, 1]."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def tensor_to_images(x: torch.Tensor) -> list[Any]:
    """float (B, 3, H, W) in [-1, 1] -> PIL RGB images."""
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


def grid(images: Sequence[Image.Image], captions: Sequence[str], cols: int = 8, cell: int = 128) -> Image.Image:
    """A contact sheet of images with their captions, to eyeball whether captions match pictures before
    spending hours training on them."""
    if not images:
        raise UserError("nothing to preview: the source yielded no samples")
    font = ImageFont.load_default()
    line_h, max_lines, pad = font.getbbox("Ag")[3] + 2, 3, 4
    cols = max(1, min(cols, len(images)))
    rows = -(-len(images) // cols)
    cell_h = cell + 2 + max_lines * line_h
    sheet = Image.new("RGB", (pad + cols * (cell + pad), pad + rows * (cell_h + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
        x, y = pad + (i % cols) * (cell + pad), pad + (i // cols) * (cell_h + pad)
        im = to_rgb(image)
        if im.width == im.height and cell % im.width == 0:  # small renders stay crisp instead of blurred
            im = im.resize((cell, cell), Image.Resampling.NEAREST)
        sheet.paste(center_square(im, cell), (x, y))
        for j, text in enumerate(_wrap(caption, font, cell, max_lines)):
            draw.text((x, y + cell + 2 + j * line_h), text, fill="black", font=font)
    return sheet


def preview_grid(samples: Sequence[Any], cols: int = 8, cell: int = 128) -> Image.Image:
    """`grid` of samples (anything with `.image` and `.caption`)."""
    return grid([s.image for s in samples], [s.caption for s in samples], cols, cell)

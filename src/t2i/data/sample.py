"""The one record every data source yields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from t2i.images import Media


@dataclass
class Sample:
    """An (image, caption, metadata) triple; the image is a `t2i.images.Clip` when the sample is a video.

    `meta` holds ground truth where the source has it (the shapes dataset always does: kind, canonical
    caption, objects); web data usually has none. `key` identifies the sample in its source so a skipped or
    corrupt one can be reported by name.
    """

    image: Media
    caption: str
    meta: dict[str, Any] | None = None
    key: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

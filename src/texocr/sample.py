"""The one record that crosses every boundary: an image of math and its LaTeX."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image


@dataclass
class Sample:
    image: Image.Image
    """RGB image of the formula (a `DeferredImage` from `Source.deferred()`)."""
    latex: str
    """Target LaTeX (normalized by the LaTeX core where the source says so)."""
    id: str
    """Stable identifier within its source (file path, row index, seed:index)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Source-specific extras: `source`, `split`, original label, style, ..."""


@dataclass
class Skipped:
    """A row a source could not turn into a Sample, and why (written to skipped.jsonl)."""

    id: str
    reason: str
    """Short machine-readable reason: `missing_image`, `corrupt_image`, `empty_label`, ..."""
    detail: str = ""


@dataclass(frozen=True)
class DeferredImage:
    """An image a source has found but not read. `load()` reads it as the source would have (a TexocrError with a
    `.reason` when unusable). `loader` is a `functools.partial` of a module-level function, so a DeferredImage
    pickles: a worker process reads it instead of the caller (`texocr eval` on a GPU, `Source.deferred`)."""

    loader: partial[Any]

    def load(self) -> Image.Image:
        return self.loader()

    @property
    def source(self) -> Any:
        """What the loader reads (its first argument: a path, bytes, strokes), or None."""
        return self.loader.args[0] if self.loader.args else None

    @property
    def path(self) -> Path | None:
        """The file it reads, when the loader reads one; else None."""
        return Path(self.source) if isinstance(self.source, (str, os.PathLike)) else None


def read_image(image: Image.Image | DeferredImage | Any) -> Any:
    """`image` itself, or a DeferredImage read."""
    return image.load() if isinstance(image, DeferredImage) else image


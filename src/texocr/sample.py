"""The one record that crosses every boundary: an image of math and its LaTeX."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image


@dataclass
class Sample:
    image: Image.Image
    """RGB image of the formula."""
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

"""texocr: images of mathematics to LaTeX.

    from texocr import Recognizer
    ocr = Recognizer.load("default")
    ocr("formula.png")  # -> "\\frac{a}{b}"
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from texocr.infer import Recognizer
    from texocr.sample import Sample


def __getattr__(name: str) -> Any:
    # Heavy modules (torch, transformers) load only when asked for, so `texocr --help` stays fast.
    if name == "Recognizer":
        from texocr.infer import Recognizer

        return Recognizer
    if name == "Sample":
        from texocr.sample import Sample

        return Sample
    raise AttributeError(f"module 'texocr' has no attribute {name!r}")


__all__ = ["Recognizer", "Sample", "__version__"]

"""Try a renderer once before using it: a few formulas of every kind texocr asks for, with each font it will use.

    probe_renderer(renderer)                      # the default font; raises RendererUnusable, naming what is missing
    probe_renderer(renderer, ["euler", "cm"])     # fonts that fail are dropped (one warning each); the default stays

A partly installed TeX fails on every formula in the same way (`File 'preview.sty' not found`, then `Emergency
stop`), and texocr would otherwise find out one formula at a time: 1,280 failed renders for a demo, a training
stream that never yields. One probe per renderer kind and font and process (the outcome is kept for forked workers).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from texocr.errors import TexocrError

log = logging.getLogger("texocr.render")

PROBE_FORMULAS = (
    r"\frac { a } { b } + \sqrt { x ^ { 2 } } - \sum _ { i = 1 } ^ { n } \alpha _ { i }",
    r"{ \textstyle \int _ { 0 } ^ { 1 } f ( x ) d x }",  # text style (the synthetic stream uses both)
    r"\left( \begin{matrix} a & b \\ c & d \end{matrix} \right) \begin{cases} 1 & x > 0 \\ 0 & x \leq 0 \end{cases}",
    r"\bm { x } \in \mathbb { R } ^ { n } , \mathrm { d } \mathcal { L }",
)
"""Every construct the synthetic formulas and predictions use a package for: amsmath, amssymb, bm, environments."""

PACKAGE_HINTS = {
    "preview.sty": "preview-latex-style",
    "euler.sty": "texlive-latex-recommended",
    "amsmath.sty": "texlive-latex-base",
    "bm.sty": "texlive-latex-base",
    "amssymb.sty": "texlive-base",
}
"""TeX file -> the Debian package that holds it (for the error message)."""

_MISSING = re.compile(r"File [`']([^']+)' not found")
_OUTCOMES: dict[tuple[str, str], str | None] = {}
"""(renderer name, font) -> None when the probe rendered everything, else why not."""
_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    """Log `message` as a warning the first time in this process (every worker and source would repeat it)."""
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning("texocr: %s", message)


class RendererUnusable(TexocrError):
    """The renderer cannot render the probe formulas with its default font; `.missing` names a missing file."""

    def __init__(self, message: str, missing: str | None = None) -> None:
        super().__init__(message)
        self.missing = missing


def missing_file(detail: str) -> str | None:
    """`preview.sty` from TeX's `LaTeX Error: File `preview.sty' not found.`, else None."""
    m = _MISSING.search(detail)
    return m.group(1) if m else None


def why_not(renderer: Any, font: str) -> str | None:
    """None when `renderer` renders every probe formula in `font`, else the first failure (kept per process)."""
    key = (renderer.name, font)
    if key not in _OUTCOMES:
        results = renderer.render_detailed(list(PROBE_FORMULAS), font=font, dpi=100)
        bad = next((r for r in results if r.image is None), None)
        _OUTCOMES[key] = None if bad is None else f"{bad.reason}: {bad.detail}".strip()
        renderer.failures.clear()  # the probe's renders are not the caller's
        renderer.rendered = 0
    return _OUTCOMES[key]


def describe(renderer: Any, font: str, why: str) -> tuple[str, str | None]:
    """A one-line explanation of a failed probe, and the missing file when TeX named one."""
    missing = missing_file(why)
    if missing:
        hint = PACKAGE_HINTS.get(missing)
        where = f" (Debian package {hint})" if hint else ""
        return f"the {renderer.name} renderer lacks {missing}{where} (font {font})", missing
    return f"the {renderer.name} renderer fails on a test formula (font {font}: {why[:160]})", None


def probe_renderer(renderer: Any, fonts: Sequence[str] | None = None) -> list[str]:
    """Probe the default font and `fonts`; drop the fonts that fail (a warning each); the fonts that work.

    Raises `RendererUnusable` when the default font fails: then nothing this renderer would draw can be trusted.
    """
    default = renderer.fonts()[0]
    why = why_not(renderer, default)
    if why is not None:
        raise RendererUnusable(*describe(renderer, default, why))
    for font in dict.fromkeys(f for f in fonts or () if f != default and f in renderer.fonts()):
        why = why_not(renderer, font)
        if why is not None:
            warn_once(f"{describe(renderer, font, why)[0]}; leaving that font out")
            renderer.drop_font(font)
    return renderer.fonts()

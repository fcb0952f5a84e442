"""Render LaTeX formulas to images: TeX (latex + dvipng, batched) or pure pip (ziamath + resvg).

    from texocr.data.render import get_renderer
    r = get_renderer("auto")                      # TeX when `latex` and `dvipng` are installed, else pip
    images = r.render_batch([r"\\frac{a}{b}", r"\\bad{"], dpi=200)   # [Image, None]: None = failed, never a crash
    r.failures                                    # Counter of failure reasons (`forbidden`, `tex_error`, ...)

`render_detailed` gives each formula's failure reason and detail. Images are RGB, black ink on white,
cropped to the ink.

TeX renders many formulas in one document (one `preview` environment, hence one page, per formula), which is
what makes it fast (hundreds of formulas/s per core) compared with one document per formula (~6/s). A formula
that TeX rejects only loses itself: errors are attributed to formulas by line number (`-file-line-error`,
each formula on its own line); when the log cannot be trusted (an error outside any formula, a page count that
does not match), the batch is re-run without the culprits, then bisected.

Untrusted LaTeX must not read files or run commands: formulas with file, definition, catcode or output
primitives are refused before TeX sees them (`check_formula`), and TeX runs with `-no-shell-escape`, paranoid
file access (`openin_any=p`, `openout_any=p`), no font generation, in a fresh temporary directory.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from texocr.errors import TexocrError
from texocr.latex import typeset_source

MAX_SIDE = 4000
"""Renders longer than this (e.g. `\\hspace{100cm}`) are failures (`too_large`), not giant images."""
MAX_FORMULA_CHARS = 4000

# Control words that read or write files, run commands, redefine things or change how TeX reads its input.
_FORBIDDEN = frozenset(["input", "include", "includeonly", "InputIfFileExists", "IfFileExists", "openin", "openout", "closein", "closeout", "read", "readline", "write", "write18", "immediate", "newwrite", "newread", "endinput", "catcode", "lccode", "uccode", "mathcode", "delcode", "sfcode", "csname", "endcsname", "def", "edef", "gdef", "xdef", "let", "futurelet", "global", "long", "outer", "newcommand", "renewcommand", "providecommand", "DeclareRobustCommand", "DeclareMathOperator", "newenvironment", "renewenvironment", "newcount", "newtoks", "newdimen", "newskip", "newbox", "usepackage", "RequirePackage", "documentclass", "LoadClass", "special", "shipout", "output", "everypar", "everymath", "everydisplay", "everyhbox", "everyvbox", "everyjob", "everycr", "everyeof", "afterassignment", "aftergroup", "expandafter", "noexpand", "scantokens", "jobname", "loop", "repeat", "lowercase", "uppercase", "directlua", "latelua", "errmessage", "message", "typeout", "batchmode", "nonstopmode", "scrollmode", "errorstopmode", "dump", "makeatletter", "font", "fontname", "includegraphics", "verbatiminput", "lstinputlisting", "patterns", "hyphenation", "showlists", "showbox", "show", "showthe"])
_FORBIDDEN_PREFIXES = ("pdf", "tracing", "write", "open", "luatex", "Input")
_FORBIDDEN_ENVS = frozenset({"document", "preview", "filecontents", "filecontents*", "verbatim", "comment"})
_CONTROL_WORD = re.compile(r"\\([A-Za-z@]+)")
_ENV = re.compile(r"\\(begin|end)\s*\{([^}]*)\}")
_NEWLINE_BRACKET = re.compile(r"\\\\\s*\[")
_LENGTH = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)\s*(pt|em|ex|mm|cm|in|bp|mu|pc|dd|sp)\s*\]")
_ERROR_LINE = re.compile(r"^\./doc\.tex:(\d+): (.*)$", re.MULTILINE)

# Sizes inside a document: relative scale -> LaTeX size command (12pt base).
_SIZES = [(0.83, r"\footnotesize"), (0.92, r"\small"), (1.0, r"\normalsize"), (1.2, r"\large"),
          (1.44, r"\Large"), (1.73, r"\LARGE")]

TEX_FONTS: dict[str, tuple[str, str]] = {
    "cm": ("", "cmmi10"),
    "cm-bold": (r"\AtBeginDocument{\boldmath}", "cmmib10"),
    "cm-sans": (r"\renewcommand{\familydefault}{\sfdefault}", "cmss10"),
    "euler": (r"\usepackage{euler}", "eurm10"),
    "times": (r"\usepackage{mathptmx}", "zptmcm7t"),
    "palatino": (r"\usepackage{mathpazo}", "pplr7t"),
    "bookman": (r"\usepackage{bookman}", "pbkl7t"),
}
"""TeX font set-ups: name -> (preamble, a font metric file it needs); `available_tex_fonts()` keeps those whose
metrics `kpsewhich` finds (the PSNFSS ones need texlive-fonts-recommended). Computer Modern is arXiv's (and
im2latex's) look; Euler is Zapf's math font modelled on handwriting."""


@dataclass
class RenderResult:
    image: Any  # PIL.Image.Image | None
    reason: str | None = None
    """None when rendered; else a short failure reason."""
    detail: str = ""


def check_formula(formula: str) -> tuple[str, str] | None:
    """Why a formula must not (or cannot) go to TeX: (reason, detail), or None when it may."""
    if not formula.strip():
        return "empty", "empty formula"
    if len(formula) > MAX_FORMULA_CHARS:
        return "too_long", f"{len(formula)} characters"
    if "^^" in formula:  # ^^5c is a backslash read at input level: a way around the word checks
        return "forbidden", "^^ character notation"
    if any(ord(c) < 32 and c not in "\t\n\r" for c in formula):
        return "forbidden", "control character"
    for m in _CONTROL_WORD.finditer(formula):
        word = m.group(1)
        if "@" in word or word in _FORBIDDEN or word.startswith(_FORBIDDEN_PREFIXES):
            return "forbidden", f"\\{word}"
    m = _NEWLINE_BRACKET.search(formula)
    if m and not _LENGTH.match(formula, m.end()):  # `\\ [x]` reads x as a length: TeX can loop forever on it
        return "unsupported", "\\\\ followed by [ that is not a length"
    depth = 0
    for m in re.finditer(r"\\.|[{}]", formula, re.DOTALL):
        t = m.group()
        depth += 1 if t == "{" else -1 if t == "}" else 0
        if depth < 0:
            return "unbalanced", "unmatched }"
    if depth:
        return "unbalanced", "unclosed {"
    stack: list[str] = []
    for kind, env in _ENV.findall(formula):
        env = env.strip()
        if env in _FORBIDDEN_ENVS:
            return "forbidden", f"{env} environment"
        if kind == "begin":
            stack.append(env)
        elif not stack or stack.pop() != env:
            return "unbalanced", f"\\end{{{env}}} without its \\begin"
    if stack:
        return "unbalanced", f"\\begin{{{stack[-1]}}} without its \\end"
    return None


class Renderer:
    """One interface for every renderer; subclasses implement `_render`."""

    name = "base"

    def __init__(self) -> None:
        self.failures: Counter[str] = Counter()
        self.rendered = 0
        self._fonts: list[str] | dict[str, str | None] = []

    def render_detailed(self, formulas: list[str], *, font: str | None = None, dpi: int = 200,
                        scales: list[float] | None = None, display: bool = True) -> list[RenderResult]:
        """Render each formula; `scales` are per-formula font-size multipliers (1.0 = 12 pt)."""
        scales = scales if scales is not None else [1.0] * len(formulas)
        if len(scales) != len(formulas):
            raise ValueError("scales and formulas differ in length")
        # the token convention's `\\hspace { 5 m m }` and `\\text { e v e n }` typeset badly: see typeset_source
        results = self._render([typeset_source(f) for f in formulas], font=font, dpi=dpi, scales=list(scales),
                               display=display)
        for r in results:
            if r.image is not None and max(r.image.size) > MAX_SIDE:
                r.image, r.reason, r.detail = None, "too_large", f"{r.image.size[0]}x{r.image.size[1]}"
            elif r.image is not None and _is_blank(r.image):
                r.image, r.reason, r.detail = None, "blank", "no ink"
            if r.reason is None:
                self.rendered += 1
            else:
                self.failures[r.reason] += 1
        return results

    def render_batch(self, formulas: list[str], *, font: str | None = None, dpi: int = 200,
                     scales: list[float] | None = None, display: bool = True) -> list[Any]:
        """Images (RGB, black on white, cropped to the ink) or None where rendering failed."""
        return [r.image for r in self.render_detailed(formulas, font=font, dpi=dpi, scales=scales,
                                                      display=display)]

    def fonts(self) -> list[str]:
        """Font names this renderer accepts for `font=` (the first is the default)."""
        return list(self._fonts)

    def drop_font(self, font: str) -> None:
        """Stop offering `font` (a probe found it broken here); the default font cannot be dropped."""
        if font == self.fonts()[0]:
            raise TexocrError(f"the default font {font!r} of the {self.name} renderer cannot be left out")
        if isinstance(self._fonts, dict):
            self._fonts.pop(font, None)
        else:
            self._fonts = [f for f in self._fonts if f != font]

    def _font(self, font: str | None) -> str:
        """`font`, or the default; a clear error for a font this renderer lacks."""
        font = font or self.fonts()[0]
        if font not in self._fonts:
            raise TexocrError(f"unknown {self.name} font {font!r}; available: {', '.join(self._fonts)}")
        return font

    def _render(self, formulas: list[str], *, font: str | None, dpi: int, scales: list[float],
                display: bool) -> list[RenderResult]:
        raise NotImplementedError


class TexRenderer(Renderer):
    """latex + dvipng, many formulas per document, each on its own page."""

    name = "tex"

    def __init__(self, timeout_s: float = 10.0) -> None:
        super().__init__()
        if not tex_available():
            raise TexocrError("the TeX renderer needs `latex` and `dvipng` on PATH "
                              "(Debian: texlive-latex-base texlive-latex-recommended dvipng preview-latex-style)")
        self.timeout_s = timeout_s
        self._fonts = available_tex_fonts()

    def _render(self, formulas: list[str], *, font: str | None, dpi: int, scales: list[float],
                display: bool) -> list[RenderResult]:
        font = self._font(font)
        results: list[RenderResult | None] = [None] * len(formulas)
        todo = []
        for i, f in enumerate(formulas):
            problem = check_formula(f)
            if problem:
                results[i] = RenderResult(None, *problem)
            else:
                todo.append(i)
        job = _TexJob(formulas, scales, font, dpi, display, self.timeout_s)
        job.solve(todo, results, retry=True)
        return [r if r is not None else RenderResult(None, "tex_error", "not rendered") for r in results]


class _TexJob:
    """One batch: run documents, attribute errors, re-run or bisect when attribution is unsure."""

    def __init__(self, formulas: list[str], scales: list[float], font: str, dpi: int, display: bool,
                 timeout_s: float) -> None:
        self.formulas, self.scales, self.font, self.dpi = formulas, scales, font, dpi
        self.display, self.timeout_s = display, timeout_s

    def solve(self, idx: list[int], results: list[RenderResult | None], retry: bool) -> None:
        """Fill `results` for the formulas `idx`; at most one re-run, then halves, when the log is unsure."""
        if not idx:
            return
        pages, errors, unattributed = self._run(idx)
        for i, msg in errors.items():
            results[i] = RenderResult(None, "tex_error", msg)
        if not unattributed and pages is not None and len(pages) == len(idx):
            for i, img in zip(idx, pages):
                if i not in errors:
                    results[i] = RenderResult(img, None)
            return
        if len(idx) == 1:
            if results[idx[0]] is None:
                results[idx[0]] = RenderResult(None, "tex_error", unattributed or "no page produced")
            return
        rest = [i for i in idx if i not in errors]
        if retry and errors:  # the log named culprits: try the others once as a whole
            self.solve(rest, results, retry=False)
            return
        half = len(rest) // 2
        if half == 0:
            self.solve(rest, results, retry=False)
            return
        self.solve(rest[:half], results, retry=False)
        self.solve(rest[half:], results, retry=False)

    def _document(self, idx: list[int]) -> tuple[str, list[tuple[int, int, int]]]:
        """The .tex source and, per formula, (first line, last line, index)."""
        lines = [r"\documentclass[12pt]{article}", r"\usepackage{amsmath,amssymb,bm}", TEX_FONTS[self.font][0],
                 r"\usepackage[active,tightpage]{preview}", r"\pagestyle{empty}", r"\begin{document}"]
        spans = []
        style = r"\displaystyle" if self.display else r"\textstyle"
        for i in idx:
            size = min(_SIZES, key=lambda s: abs(s[0] - self.scales[i]))[1]
            first = len(lines) + 1
            lines.append(rf"\begin{{preview}}{size}${style}")
            # one line per formula so that TeX's error line numbers name it; a stray % only comments out itself
            lines.append(" ".join(self.formulas[i].split()))
            lines.append(r"$\end{preview}")
            spans.append((first, len(lines), i))
        lines.append(r"\end{document}")
        return "\n".join(lines) + "\n", spans

    def _run(self, idx: list[int]) -> tuple[list[Any] | None, dict[int, str], str]:
        """Pages (in order) or None, errors by formula index, and any error no formula owns."""
        from PIL import Image

        source, spans = self._document(idx)
        env = dict(os.environ, openin_any="p", openout_any="p", shell_escape="f",
                   MKTEXTFM="0", MKTEXPK="0", MKTEXMF="0")
        timeout = self.timeout_s + 0.05 * len(idx)
        with tempfile.TemporaryDirectory(prefix="texocr-tex-") as tmp:
            (Path(tmp) / "doc.tex").write_text(source, encoding="utf-8")
            try:
                subprocess.run(["latex", "-no-shell-escape", "-interaction=nonstopmode", "-file-line-error",
                                "doc.tex"], cwd=tmp, env=env, stdin=subprocess.DEVNULL, check=False,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout)
            except subprocess.TimeoutExpired:
                return None, {}, "latex timed out"
            log = _read(Path(tmp) / "doc.log")
            errors: dict[int, str] = {}
            unattributed = ""
            for m in _ERROR_LINE.finditer(log):
                line, msg = int(m.group(1)), m.group(2).strip()
                owner = next((i for a, b, i in spans if a <= line <= b), None)
                if owner is None:
                    unattributed = unattributed or f"line {line}: {msg}"
                else:
                    errors.setdefault(owner, msg)
            if "Emergency stop" in log or "That makes 100 errors" in log:
                unattributed = unattributed or "TeX stopped early"
            if not (Path(tmp) / "doc.dvi").exists():
                return None, errors, unattributed or "no output"
            try:
                subprocess.run(["dvipng", "-q", "-T", "tight", "-D", str(int(self.dpi)), "-z", "1",
                                "-bg", "rgb 1 1 1", "-fg", "rgb 0 0 0", "-o", "p%06d.png", "doc.dvi"],
                               cwd=tmp, env=env, stdin=subprocess.DEVNULL, check=False, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=timeout)
            except subprocess.TimeoutExpired:
                return None, errors, "dvipng timed out"
            pages = []
            for f in sorted(Path(tmp).glob("p*.png")):
                with Image.open(f) as im:
                    pages.append(im.convert("RGB"))
        return pages, errors, unattributed


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="latin-1")
    except OSError:
        return ""


class PipRenderer(Renderer):
    """ziamath (LaTeX -> SVG with an OpenType math font) + resvg (SVG -> PNG): no TeX needed."""

    name = "pip"

    def __init__(self) -> None:
        super().__init__()
        try:
            import resvg_py  # noqa: F401
            import ziamath  # noqa: F401
        except ImportError as e:
            raise TexocrError(f"the pip renderer needs the `render` extra (ziamath, resvg-py): {e}") from None
        self._fonts = pip_math_fonts()

    def _render(self, formulas: list[str], *, font: str | None, dpi: int, scales: list[float],
                display: bool) -> list[RenderResult]:
        import resvg_py
        import ziamath
        from PIL import Image

        path = self._fonts[self._font(font)]  # type: ignore[index]
        out = []
        for f, scale in zip(formulas, scales):
            problem = check_formula(f)
            if problem:
                out.append(RenderResult(None, *problem))
                continue
            size = 12 * scale * dpi / 72  # 12 pt at `dpi`, in pixels (the SVG's user unit)
            try:
                math = ziamath.Latex(f, size=size, font=path, mathstyle=None if display else "text", margin=0)
                png = resvg_py.svg_to_bytes(svg_string=math.svg(), background="#ffffff", skip_system_fonts=True)
                with Image.open(io.BytesIO(bytes(png))) as im:
                    img = im.convert("RGB")
            except Exception as e:  # noqa: BLE001 -- ziamath raises bare AssertionError/KeyError/... on what it cannot parse
                out.append(RenderResult(None, "render_error", f"{type(e).__name__}: {e}"[:200]))
                continue
            img = _crop_to_ink(img)
            out.append(RenderResult(img, None) if img is not None else RenderResult(None, "blank", "no ink"))
        return out


def _crop_to_ink(img: Any) -> Any:
    """Crop to the non-white bounding box (None when blank), as dvipng's `-T tight` does."""
    from PIL import ImageOps

    box = ImageOps.invert(img.convert("L")).getbbox()
    return img.crop(box) if box else None


def _is_blank(img: Any) -> bool:
    lo, _ = img.convert("L").getextrema()
    return lo > 200


def tex_available() -> bool:
    return shutil.which("latex") is not None and shutil.which("dvipng") is not None


def available_tex_fonts() -> list[str]:
    """TeX font set-ups whose font metrics `kpsewhich` finds (Computer Modern always)."""
    if not shutil.which("kpsewhich"):
        return ["cm"]
    tfms = [tfm + ".tfm" for _, tfm in TEX_FONTS.values()]
    r = subprocess.run(["kpsewhich", *tfms], capture_output=True, text=True, check=False)
    found = {Path(line).stem for line in r.stdout.split()}
    return ["cm"] + [n for n, (_, tfm) in TEX_FONTS.items() if n != "cm" and tfm in found]


_MATH_FONT_PLACES = {
    "latinmodern": ["/usr/share/texmf/fonts/opentype/public/lm-math/latinmodern-math.otf",
                    "/usr/share/texlive/texmf-dist/fonts/opentype/public/lm-math/latinmodern-math.otf",
                    "/usr/share/fonts/opentype/lm-math/latinmodern-math.otf"],
}


def pip_math_fonts() -> dict[str, str | None]:
    """OpenType math fonts for ziamath: STIX Two (shipped with ziamath; None = its default) plus any found."""
    fonts: dict[str, str | None] = {"stix": None}
    for name, places in _MATH_FONT_PLACES.items():
        hit = next((p for p in places if os.path.exists(p)), None)
        if hit:
            fonts[name] = hit
    return fonts


def available_renderers() -> list[str]:
    """Renderer kinds that work on this machine, preferred first."""
    kinds = ["tex"] if tex_available() else []
    try:
        import resvg_py  # noqa: F401
        import ziamath  # noqa: F401

        kinds.append("pip")
    except ImportError:
        pass
    return kinds


def get_renderer(kind: str = "auto", *, fonts: Sequence[str] | None = None, probe: bool = True) -> Renderer:
    """`auto` (TeX when installed, else pip), `tex` or `pip`; a clear error when it cannot work here.

    The renderer is probed first (`texocr.data.probe`: test formulas with its default font and `fonts`, once
    per process); `fonts` that fail are left out. When TeX fails the probe (a missing package), `auto` falls back
    to the pip renderer with a one-line warning naming what is missing, or stops with that message.
    """
    renderer = _make_renderer(kind)
    if not probe:
        return renderer
    from texocr.data.probe import RendererUnusable, probe_renderer, warn_once

    try:
        probe_renderer(renderer, fonts)
    except RendererUnusable as e:
        if kind != "auto" or renderer.name == "pip" or "pip" not in available_renderers():
            other = "" if renderer.name == "pip" else "; or `pip install texocr[render]` for the pip renderer"
            raise TexocrError(f"{e}{other}") from None
        warn_once(f"{e}; using the pip renderer instead")
        renderer = PipRenderer()
        probe_renderer(renderer, fonts)
    return renderer


def _make_renderer(kind: str) -> Renderer:
    if kind == "auto":
        kinds = ["tex"] if tex_available() else available_renderers()  # skip importing ziamath when TeX is here
        if not kinds:
            raise TexocrError("no renderer available: install TeX (latex + dvipng) or `pip install texocr[render]`")
        kind = kinds[0]
    if kind == "tex":
        return TexRenderer()
    if kind == "pip":
        return PipRenderer()
    raise TexocrError(f"unknown renderer {kind!r}; choose auto, tex or pip")

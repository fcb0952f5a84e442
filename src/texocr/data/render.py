"""Formula renderers behind one interface: real TeX (latex + dvipng) and a pure-pip fallback (ziamath + resvg).

    r = get_renderer("auto")                  # TeX when `latex` and `dvipng` are installed, else pip
    images = r.render_batch([r"\\frac{a}{b}", r"\\badcommand"], dpi=200)   # [Image, None]
    r.last_errors                             # [None, "tex_error"]: why each None failed
    r.failures                                # Counter of failure reasons since the renderer was made

A formula that cannot be rendered gives `None` (its reason in `last_errors`), never an exception.
Untrusted LaTeX is screened first (`check_formula`): commands that read or write files, run programs or
change TeX's catcodes are refused; TeX itself runs with shell escape off, `openin_any=p openout_any=p`,
in a fresh temporary directory.

TeX renders many formulas per document, one `preview` page each, so its start-up cost is shared; errors are
attributed to formulas through the log's line numbers (every formula is on its own line), and only when the
log cannot be trusted (pages missing, an error without a line) is the batch bisected.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

# Commands that can read/write files, run programs, or redefine TeX itself (and so escape the screen).
FORBIDDEN = frozenset("""
input include includeonly InputIfFileExists IfFileExists openin openout closein closeout read readline write
immediate write18 catcode lccode uccode sfcode mathcode delcode csname endcsname expandafter def edef gdef xdef
let futurelet global long outer newcommand renewcommand providecommand DeclareRobustCommand newenvironment
renewenvironment usepackage RequirePackage documentclass LoadClass special shipout output scantokens
everyeof everypar everymath everydisplay everyhbox everyvbox everyjob everycr endinput jobname font
loop repeat afterassignment aftergroup batchmode nonstopmode scrollmode errorstopmode errmessage
includegraphics verbatiminput lstinputlisting openany end@document enddocument string meaning detokenize
unexpanded noexpand newread newwrite pdfprimitive directlua luaexec dump patterns hyphenation
""".split())
FORBIDDEN_ENVS = frozenset({"document", "preview", "filecontents", "filecontents*", "verbatim", "comment"})
_CS = re.compile(r"\\([A-Za-z@]+|.)")
_ENV = re.compile(r"\\(begin|end)\s*\{([^}]*)\}")
MAX_FORMULA_CHARS = 4000


def check_formula(formula: str) -> str | None:
    """Why this formula must not reach TeX (`empty`, `forbidden`, `unbalanced`, `unsupported`), or None."""
    if not formula.strip():
        return "empty"
    if len(formula) > MAX_FORMULA_CHARS:
        return "too_long"
    if "^^" in formula:  # ^^5c builds a backslash: \input spelled without one
        return "forbidden"
    depth = 0
    for m in _CS.finditer(formula):
        name = m.group(1)
        if name.startswith("pdf") or name in FORBIDDEN:
            return "forbidden"
    # braces, `$` and `%` outside control symbols (\{ \} \$ \%)
    plain = _CS.sub(lambda m: "" if len(m.group(1)) == 1 else " ", formula)
    for ch in plain:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                return "unbalanced"
        elif ch in "$%#":
            return "unsupported"
    if depth:
        return "unbalanced"
    stack: list[str] = []
    for kind, env in _ENV.findall(formula):
        if env.strip() in FORBIDDEN_ENVS:
            return "forbidden"
        if kind == "begin":
            stack.append(env)
        elif not stack or stack.pop() != env:
            return "unbalanced"
    return "unbalanced" if stack else None


class Renderer:
    """Common interface. Subclasses implement `_render(formulas, dpi, font) -> list[(image | None, reason | None)]`."""

    name = "base"
    fonts: tuple[str, ...] = ("default",)

    def __init__(self) -> None:
        self.failures: Counter[str] = Counter()
        self.last_errors: list[str | None] = []

    def render_batch(self, formulas: Sequence[str], *, dpi: int = 200, font: str | None = None,
                     pad: int = 0) -> list[Image.Image | None]:
        """Render each formula to an RGB image (black on white, cropped tight plus `pad` px), None on failure."""
        font = font or self.fonts[0]
        if font not in self.fonts:
            raise ValueError(f"{self.name} renderer: unknown font {font!r} (have {', '.join(self.fonts)})")
        results: list[tuple[Any, str | None]] = [(None, None)] * len(formulas)
        todo = []
        for i, f in enumerate(formulas):
            reason = check_formula(f)
            if reason:
                results[i] = (None, reason)
            else:
                todo.append(i)
        if todo:
            for i, res in zip(todo, self._render([formulas[i].replace("\n", " ") for i in todo], dpi, font), strict=True):
                results[i] = res
        images = []
        self.last_errors = []
        for img, reason in results:
            if img is not None and pad:
                img = _pad(img, pad)
            images.append(img)
            self.last_errors.append(None if img is not None else (reason or "failed"))
            if img is None:
                self.failures[reason or "failed"] += 1
        return images

    def render(self, formula: str, **kw: Any) -> Image.Image | None:
        return self.render_batch([formula], **kw)[0]

    def _render(self, formulas: list[str], dpi: int, font: str) -> list[tuple[Any, str | None]]:
        raise NotImplementedError


def _pad(img: Image.Image, pad: int) -> Image.Image:
    from PIL import ImageOps

    return ImageOps.expand(img, border=pad, fill=(255, 255, 255))


def _is_blank(img: Image.Image) -> bool:
    lo, _ = img.convert("L").getextrema()
    return lo > 200


# ------------------------------------------------------------------------------------------------ TeX

TEX_FONTS: dict[str, str] = {
    # name -> preamble lines; Computer Modern first (arXiv's look, im2latex's)
    "cm": "",
    "times": "\\usepackage{mathptmx}",
    "palatino": "\\usepackage{mathpazo}",
    "euler": "\\usepackage{euler}",
}
_PAGES = re.compile(r"Output written on \S+ \((\d+) pages?")
_LINE = re.compile(r"^l\.(\d+)")


def tex_available() -> bool:
    return bool(shutil.which("latex") and shutil.which("dvipng"))


def _available_tex_fonts() -> tuple[str, ...]:
    if not shutil.which("kpsewhich"):
        return ("cm",)
    names = ["cm"]
    for name, pkg in (("times", "mathptmx"), ("palatino", "mathpazo"), ("euler", "euler")):
        found = subprocess.run(["kpsewhich", f"{pkg}.sty"], capture_output=True, text=True).stdout.strip()
        if found:
            names.append(name)
    return tuple(names)


class TexRenderer(Renderer):
    """latex + dvipng, many formulas per document (one `preview` page each)."""

    name = "tex"

    def __init__(self, *, chunk: int = 256, timeout: float = 60.0, display: bool = True) -> None:
        super().__init__()
        if not tex_available():
            from texocr.errors import TexocrError

            raise TexocrError("the TeX renderer needs `latex` and `dvipng` on PATH "
                              "(Debian: texlive-latex-base texlive-latex-recommended dvipng preview-latex-style)")
        self.fonts = _available_tex_fonts()
        self.chunk = chunk
        self.timeout = timeout
        self.display = display

    def _render(self, formulas: list[str], dpi: int, font: str) -> list[tuple[Any, str | None]]:
        out: list[tuple[Any, str | None]] = []
        for s in range(0, len(formulas), self.chunk):
            out.extend(self._render_bisect(formulas[s:s + self.chunk], dpi, font))
        return out

    def _render_bisect(self, formulas: list[str], dpi: int, font: str) -> list[tuple[Any, str | None]]:
        res, trusted = self._run(formulas, dpi, font)
        if trusted:
            return res
        if len(formulas) == 1:
            return [(None, res[0][1] or "tex_error")]
        mid = len(formulas) // 2
        return self._render_bisect(formulas[:mid], dpi, font) + self._render_bisect(formulas[mid:], dpi, font)

    def _document(self, formulas: list[str], font: str) -> tuple[str, int]:
        head = ["\\documentclass[12pt]{article}", "\\usepackage{amsmath,amssymb}", TEX_FONTS[font],
                "\\usepackage[active,tightpage]{preview}", "\\pagestyle{empty}", "\\begin{document}"]
        style = "\\displaystyle " if self.display else ""
        body = [f"\\begin{{preview}}${style}{f}$\\end{{preview}}" for f in formulas]
        return "\n".join([*head, *body, "\\end{document}", ""]), len(head) + 1

    def _run(self, formulas: list[str], dpi: int, font: str) -> tuple[list[tuple[Any, str | None]], bool]:
        """Render one document; returns per-formula results and whether they can be trusted."""
        from PIL import Image

        n = len(formulas)
        text, first_line = self._document(formulas, font)
        env = {**os.environ, "openin_any": "p", "openout_any": "p", "shell_escape": "f"}
        with tempfile.TemporaryDirectory(prefix="texocr-tex-") as tmp:
            Path(tmp, "f.tex").write_text(text, encoding="utf-8")
            try:
                subprocess.run(["latex", "-no-shell-escape", "-interaction=nonstopmode", "f.tex"], cwd=tmp, env=env,
                               stdin=subprocess.DEVNULL, capture_output=True, timeout=self.timeout + 0.05 * n)
            except subprocess.TimeoutExpired:
                return [(None, "timeout")] * n, False
            log = Path(tmp, "f.log").read_text(encoding="utf-8", errors="replace") if Path(tmp, "f.log").exists() else ""
            bad, unattributed = _errors(log, first_line, n)
            m = _PAGES.search(log)
            pages = int(m.group(1)) if m else 0
            if unattributed or pages != n:
                return [(None, "tex_error")] * n, False
            try:
                subprocess.run(["dvipng", "-q", "-T", "tight", "-D", str(dpi), "-bg", "rgb 1 1 1", "-fg", "rgb 0 0 0",
                                "-z", "1", "-o", "p%d.png", "f.dvi"], cwd=tmp, env=env, stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=self.timeout + 0.05 * n)
            except subprocess.TimeoutExpired:
                return [(None, "timeout")] * n, False
            out: list[tuple[Any, str | None]] = []
            for i in range(n):
                if i in bad:
                    out.append((None, "tex_error"))
                    continue
                page = Path(tmp, f"p{i + 1}.png")
                if not page.exists():
                    out.append((None, "no_output"))
                    continue
                with Image.open(page) as im:
                    img = im.convert("RGB")
                out.append((None, "blank") if _is_blank(img) else (img, None))
            return out, True


def _errors(log: str, first_line: int, n: int) -> tuple[set[int], bool]:
    """Formula indices whose line has a TeX error, and whether some error could not be placed on a formula."""
    bad: set[int] = set()
    unattributed = False
    lines = log.splitlines()
    for k, line in enumerate(lines):
        if not line.startswith("! "):
            continue
        if line.startswith(("! Emergency stop", "! TeX capacity", "! File ended", "! Paragraph ended")) \
                or "Runaway" in lines[k - 1] if k else False:
            unattributed = True
        for nxt in lines[k + 1:k + 40]:
            m = _LINE.match(nxt)
            if m:
                idx = int(m.group(1)) - first_line
                if 0 <= idx < n:
                    bad.add(idx)
                else:
                    unattributed = True
                break
        else:
            unattributed = True
    return bad, unattributed


# ------------------------------------------------------------------------------------------------ registry


def available_renderers() -> list[str]:
    """Names of the renderers this machine can run, preferred first."""
    names = ["tex"] if tex_available() else []
    try:
        import resvg_py  # noqa: F401
        import ziamath  # noqa: F401

        names.append("pip")
    except ImportError:
        pass
    return names


def get_renderer(kind: str = "auto", **kw: Any) -> Renderer:
    """`auto` (TeX when installed, else pip), `tex` or `pip`; raises TexocrError when unavailable."""
    from texocr.errors import TexocrError

    have = available_renderers()
    if kind == "auto":
        if not have:
            raise TexocrError("no formula renderer: install TeX (latex + dvipng) or `pip install texocr[render]`")
        kind = have[0]
    if kind == "tex":
        return TexRenderer(**kw)
    if kind == "pip":
        if "pip" not in have:
            raise TexocrError("the pip renderer needs ziamath and resvg-py: pip install 'texocr[render]'")
        from texocr.data.render_pip import PipRenderer

        return PipRenderer(**kw)
    raise TexocrError(f"unknown renderer {kind!r}: auto, tex or pip")

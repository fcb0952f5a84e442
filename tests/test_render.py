"""Renderers: TeX loses only the bad formulas of a batch, refuses malicious ones, is deterministic; pip renders."""

from __future__ import annotations

import shutil
import string

import numpy as np
import pytest

from texocr.data.render import (
    TexRenderer,
    available_renderers,
    check_formula,
    get_renderer,
    pip_math_fonts,
)
from texocr.errors import TexocrError

has_tex = shutil.which("latex") is not None and shutil.which("dvipng") is not None
tex = pytest.mark.tex
needs_tex = pytest.mark.skipif(not has_tex, reason="latex/dvipng not installed")


@pytest.mark.parametrize("formula", [
    r"\input{/etc/passwd}", r"\include{x}", r"\openin5=/etc/passwd", r"\immediate\write18{ls}", r"\write18{rm}",
    r"\catcode`\@=11", r"\csname input\endcsname", r"\def\x{1}", r"\let\a\b", r"\usepackage{x}",
    r"\special{ps: x}", "^^5cinput{/etc/passwd}", r"\begin{document}x", r"\end{preview}", r"\makeatletter",
    r"\InputIfFileExists{a}{}{}", r"\pdfprimitive", r"\newcommand{\a}{b}",
])
def test_refuses_dangerous_formulas(formula: str) -> None:
    problem = check_formula(formula)
    assert problem is not None and problem[0] == "forbidden"


@pytest.mark.parametrize("formula,reason", [
    ("", "empty"), ("  ", "empty"), (r"\frac{a}{b", "unbalanced"), (r"a}", "unbalanced"),
    (r"\begin{pmatrix} a \end{bmatrix}", "unbalanced"), (r"\begin{cases} a", "unbalanced"), ("x" * 5000, "too_long"), (r"a \\ [ x , y ] b", "unsupported"),
])
def test_rejects_broken_structure(formula: str, reason: str) -> None:
    assert check_formula(formula)[0] == reason


def test_accepts_ordinary_math() -> None:
    for f in [r"\frac{a}{b}", r"\begin{pmatrix}a&b\\c&d\end{pmatrix}", r"\left\{ x \right.", r"\text{if } x",
              r"\operatorname{tr} A", r"\mathbb{R}^{n}", r"50\% \{a\}"]:
        assert check_formula(f) is None, f


@tex
@needs_tex
def test_tex_batch_loses_only_bad_formulas() -> None:
    r = TexRenderer()
    good = [rf"\frac{{a_{{{i}}}}}{{b}} + \sum_{{k=1}}^{{n}} x_k^{i}" for i in range(40)]
    batch = list(good)
    batch[5] = r"x \undefinedmacro y"           # TeX error on its own line
    batch[17] = r"\input{/etc/passwd}"          # refused before TeX
    batch[23] = r"x \left( y"                   # missing \right
    batch[31] = r"\begin{pmatrix} a & b \\ c & d \end{pmatrix}"  # fine, multi-line
    res = r.render_detailed(batch, dpi=100)
    failed = {i: x.reason for i, x in enumerate(res) if x.image is None}
    assert failed == {5: "tex_error", 17: "forbidden", 23: "tex_error"}
    assert r.failures == {"tex_error": 2, "forbidden": 1}
    # every good formula got its own page, identical to rendering it alone
    alone = r.render_batch([batch[i] for i in (4, 6, 16, 18, 22, 24, 31)], dpi=100)
    for i, img in zip((4, 6, 16, 18, 22, 24, 31), alone):
        assert np.asarray(res[i].image.convert("L")).min() < 100  # has ink
        assert np.array_equal(np.asarray(res[i].image), np.asarray(img)), i


@tex
@needs_tex
def test_tex_deterministic_and_dpi() -> None:
    r = get_renderer("tex")
    a = r.render_batch([r"\int_0^1 x^2\,dx", r"\alpha"], dpi=120)
    b = r.render_batch([r"\int_0^1 x^2\,dx", r"\alpha"], dpi=120)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    big = r.render_batch([r"\int_0^1 x^2\,dx"], dpi=240)[0]
    assert big.height > 1.7 * a[0].height
    assert set(r.fonts()) >= {"cm"}
    with pytest.raises(TexocrError, match="unknown tex font"):
        r.render_batch(["x"], font="nope")


@tex
@needs_tex
def test_tex_giant_output_is_a_failure() -> None:
    r = TexRenderer()
    assert r.render_detailed([r"x \hspace{300cm} y"], dpi=100)[0].reason == "too_large"


def test_pip_renders_simple_formulas() -> None:
    if "pip" not in available_renderers():
        pytest.skip("ziamath/resvg-py not installed")
    r = get_renderer("pip")
    res = r.render_detailed([r"\frac{a}{b}", r"x^2 + y^2 = z^2", r"\begin{pmatrix}a&b\\c&d\end{pmatrix}",
                             r"\frac{a", r"\input{x}"], dpi=100)
    assert [x.reason for x in res[:3]] == [None, None, None]
    assert res[3].reason in {"unbalanced", "render_error"} and res[4].reason == "forbidden"
    assert res[2].image.height > res[1].image.height
    again = r.render_batch([r"\frac{a}{b}"], dpi=100)[0]
    assert np.array_equal(np.asarray(again), np.asarray(res[0].image))
    assert "stix" in pip_math_fonts()


def test_unknown_renderer() -> None:
    with pytest.raises(TexocrError, match="unknown renderer"):
        get_renderer("mathjax")


@tex
@needs_tex
def test_one_bad_formula_costs_one_document(monkeypatch: pytest.MonkeyPatch) -> None:
    from texocr.data import render

    runs: list[int] = []
    real_run = render._TexJob._run

    def counting(self, idx):  # type: ignore[no-untyped-def]
        runs.append(len(idx))
        return real_run(self, idx)

    monkeypatch.setattr(render._TexJob, "_run", counting)
    batch = [rf"a_{{{i}}} + b" for i in range(200)]
    batch[120] = r"\frac{1}{2} \nosuchcommand"
    res = TexRenderer().render_detailed(batch, dpi=72)
    assert [i for i, x in enumerate(res) if x.image is None] == [120]
    assert runs == [200]  # attributed from the log: no re-run, no bisection


@needs_tex
def test_token_convention_typesets_like_the_source() -> None:
    """Tokenized formulas render as their source would: `\\text { e v e n }` like `\\text{even}` (not spaced-out
    letters), and `\\hspace { 5 m m }` (TeX rejects `5 m m` as a unit) like `\\hspace{5mm}`."""
    r = TexRenderer()
    a, b, c, d = r.render_batch([r"\text { e v e n } x", r"\text{even} x", r"a \hspace { 5 m m } b",
                                 r"a \hspace{5mm} b"], font="cm", dpi=150)
    assert a is not None and c is not None
    assert np.array_equal(np.asarray(a), np.asarray(b)) and np.array_equal(np.asarray(c), np.asarray(d))


@tex
@needs_tex
def test_standard_normalization_unwraps_only_groups_that_render_the_same() -> None:
    """Every command `normalize` unwraps from a bare group renders the same without it, before and after
    operators and under scripts; the groups it keeps (around Bin / Op / Inner atoms, stacked accents under a script)
    do change the rendering."""
    from texocr.latex import commands as C
    from texocr.latex import normalize

    def use(name: str) -> str:
        if name == "\\genfrac":
            return name + "{(}{)}{0pt}{}{a}{b}"
        arg = "{\\Pi}" if name in C.MATH_ACCENTS else "{x}"  # an accented capital: its own script rules
        return name + arg * C.SIGNATURES.get(name, "").count("A")

    def context(x: str) -> str:  # beside atoms of every class, and under scripts
        return f"a + {x} = {x}^2_k \\sum {x} ( {x} ) , {x} b"

    # source: the same without the groups
    dropped = {context(f"{{{use(n)}}}"): context(use(n)) for n in sorted(C.ORD_COMMANDS)}
    dropped[r"{x} + {{a b}} \hat{{y}} {7}_{i}"] = r"x + {a b} \hat{y} 7_{i}"
    dropped.update({f"{{{c}}} f V {{{c}}}": f"{c} f V {c}" for c in string.ascii_letters + string.digits})
    dropped.update({context(f"{{{c}}}"): context(c) for c in "./|"})
    kept = {  # source: the same without the group
        r"{\dot{\hat{\phi}}}_{2}": r"\dot{\hat{\phi}}_{2}", r"a {-} b": "a - b",
        r"{\sum}_{i=1}^{n} x_i": r"\sum_{i=1}^{n} x_i", r"a {\cdots} b": r"a \cdots b",
        r"x {\left( y \right)} z": r"x \left( y \right) z", r"{a b} c": "a b c",
    }
    sources = list(dropped) + [normalize(s) for s in dropped] + list(kept) + list(kept.values())
    images = TexRenderer().render_batch(sources, font="cm", dpi=300)
    assert all(im is not None for im in images)
    image = {s: np.asarray(im) for s, im in zip(sources, images)}

    def same(a: str, b: str) -> bool:
        return image[a].shape == image[b].shape and np.array_equal(image[a], image[b])

    for src, bare in dropped.items():
        assert normalize(src) == normalize(bare), src
        assert same(src, normalize(src)), src
    for src, bare in kept.items():
        assert normalize(src) != normalize(bare), src
        assert not same(src, bare), src


@needs_tex
def test_normalized_atop_and_brack_typeset_like_the_source() -> None:
    """`normalize` writes `\\atop` / `\\brack` as `\\genfrac { } { } { 0 p t } { } ..`: typeset, its empty and
    dimension arguments must be `{}` / `{0pt}` (TeX reads `{ }` as not empty and `0 p t` as a bad unit)."""
    from texocr.latex import normalize

    sources = [r"x + {a \atop b}", r"{n \brack k} y"]
    images = TexRenderer().render_batch(sources + [normalize(s) for s in sources], font="cm", dpi=150)
    assert all(im is not None for im in images)
    for a, b in zip(images[:2], images[2:]):
        assert np.array_equal(np.asarray(a), np.asarray(b))


@tex
@needs_tex
def test_standard_synonyms_typeset_identically() -> None:
    """Each spelling the standard level unifies (`\\le` -> `\\leq`, `\\ast` -> `*`, `\\left<` -> `\\left\\langle`,
    `\\vert` -> `|`...) renders pixel for pixel like its replacement, beside atoms of every class and in scripts."""
    from texocr.latex import commands as C
    from texocr.latex.parser import is_left, is_right

    def context(tok: str) -> str:
        if is_left(tok):
            return f"a {tok} \\frac{{x}}{{y}} \\right. b"
        if is_right(tok):
            return f"a \\left. \\frac{{x}}{{y}} {tok} b"
        if tok in ("\\sp", "\\sb", "^", "_"):
            return f"x {tok} 2 y"
        return f"a {tok} b = {tok} \\sum {tok} + {tok} ( x ) {tok} , {tok} b _ {{ a {tok} b }}"

    pairs = [(context(k), context(v)) for k, v in C.STANDARD_SYNONYMS.items()]
    images = TexRenderer().render_batch([s for p in pairs for s in p], font="cm", dpi=300)
    assert all(im is not None for im in images)
    for i, (a, b) in enumerate(pairs):
        x, y = np.asarray(images[2 * i]), np.asarray(images[2 * i + 1])
        assert x.shape == y.shape and np.array_equal(x, y), (a, b)


@tex
@needs_tex
def test_tilde_becomes_control_space_only_where_tex_spaces_them_the_same() -> None:
    """`normalize` writes `~` as `\\ ` only between atoms where the empty group of `~` changes no spacing: those
    render pixel for pixel the same, in text and script styles; the ones it keeps (`= ~ \\sum`, `= ~ -`) differ."""
    from texocr.latex import normalize

    atoms = ["a", r"\sum", "+", "=", "(", ")", ",", r"\left( b \right)", r"\frac{1}{2}", r"\mathrm{d}"]
    sources = [f"x {p} ~ {n} y" for p in atoms for n in atoms] + [f"z_{{{p} ~ {n}}}" for p in atoms for n in atoms]
    rewritten = [s for s in sources if "~" not in normalize(s)]
    kept = [r"x = ~ \sum y", "x = ~ - y", r"x \sum ~ \sum y"]
    assert len(rewritten) >= len(sources) // 2 and not any("~" not in normalize(s) for s in kept)
    images = TexRenderer().render_batch(rewritten + [normalize(s) for s in rewritten] + kept
                                        + [s.replace("~", "\\ ") for s in kept], font="cm", dpi=300)
    assert all(im is not None for im in images)
    arrays = [np.asarray(im) for im in images]
    n, m = len(rewritten), len(kept)

    def same(a: np.ndarray, b: np.ndarray) -> bool:
        return a.shape == b.shape and np.array_equal(a, b)

    for k, src in enumerate(rewritten):
        assert same(arrays[k], arrays[n + k]), src
    for k, src in enumerate(kept):
        assert not same(arrays[2 * n + k], arrays[2 * n + m + k]), src


@tex
@needs_tex
def test_standard_rewrites_of_daggers_lone_groups_spaces_and_operators_typeset_identically() -> None:
    """`\\dag` -> `{ \\dagger }`, a lone `{ atom }` -> the atom, a run of `\\ ` / `\\quad` / `\\qquad` -> its width,
    `\\operatorname { s i n }` -> `\\sin`:
    each rewritten formula renders pixel for pixel like its source (Computer Modern); the nearby spellings the
    normalizer keeps apart render differently."""
    from texocr.latex import normalize

    sources = [r"A ^ \dag B", r"( \dag x )", r"a \dag b = \dag", r"x _ { a \dag } \frac { \dag } { 2 } \ddag",
               r"\sum ^ { \dag } \dag \sum", r"x ^ { { - } } y", r"{ { = } } a", r"\sqrt { { + } } \left( { , } \right)",
               r"a \ \ \ b", r"a ~ ~ ~ b , ~ ~ c", r"a \quad \quad b \ \quad \ \ c", r"x _ { a \ \ \ b } y",
               r"\text { a \ \ \ b } \qquad \quad \ \ \ x",
               r"\operatorname { s i n } ^ { 2 } x + \operatorname* { l i m } _ { x \rightarrow 0 } \operatorname { l o g } _ { 2 } n"]
    rewritten = [normalize(s) for s in sources]
    assert all(a != b for a, b in zip(sources, rewritten))
    kept = [(r"a \dag b", r"a \dagger b"), (r"a \; \; \; b", r"a \quad b"), (r"a \, \, b", r"a \ b"),
            (r"\operatorname { l i m } _ { x } f", r"\lim _ { x } f")]
    assert all(normalize(a) != normalize(b) for a, b in kept)
    images = TexRenderer().render_batch(sources + rewritten + [s for p in kept for s in p], font="cm", dpi=300)
    assert all(im is not None for im in images)
    arrays = [np.asarray(im) for im in images]
    n = len(sources)

    def same(a: np.ndarray, b: np.ndarray) -> bool:
        return a.shape == b.shape and np.array_equal(a, b)

    for k, src in enumerate(sources):
        assert same(arrays[k], arrays[n + k]), (src, rewritten[k])
    for k, pair in enumerate(kept):
        assert not same(arrays[2 * n + 2 * k], arrays[2 * n + 2 * k + 1]), pair


@tex
@needs_tex
def test_script_order_rewrite_typesets_identically() -> None:
    """`x ^ { a } _ { b }` -> `x _ { b } ^ { a }` (one noad to TeX): every rewritten formula renders pixel for pixel
    like its source, on letters, operators with limits, groups, after `\\right)` and nested; the prime case the
    normalizer keeps (`f ' ^ { 2 } _ { b }`) would not even typeset with the subscript moved between."""
    from texocr.latex import normalize

    sources = [r"x ^ { a } _ { b }", r"\sum ^ { n } _ { i = 1 } a _ { i }", r"\int \limits ^ { 1 } _ { 0 } f",
               r"{ a b } ^ { 2 } _ { 3 } + \left( x \right) ^ { 2 } _ { t }", r"e ^ { x ^ { 2 } _ { 1 } } _ { 0 } T ^ { \mu } _ { \nu }"]
    rewritten = [normalize(s) for s in sources]
    assert all(a != b for a, b in zip(sources, rewritten))
    images = TexRenderer().render_batch(sources + rewritten + [r"f ' _ { b } ^ { 2 }"], font="cm", dpi=300)
    assert all(im is not None for im in images[:-1])
    assert images[-1] is None  # a double superscript: why primes are left alone
    n = len(sources)
    for k, src in enumerate(sources):
        a, b = np.asarray(images[k]), np.asarray(images[n + k])
        assert a.shape == b.shape and np.array_equal(a, b), (src, rewritten[k])

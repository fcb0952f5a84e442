"""texocr.data.mutate: valid, normalized, new, deterministic, length-preserving mutations; FormulaPool mixing."""

from __future__ import annotations

import hashlib
import json
import random
import statistics
from pathlib import Path

import pytest

from texocr.data.formulas import FormulaPool
from texocr.data.mutate import Mutator, columns_ok, mutate, symbol_class
from texocr.errors import TexocrError
from texocr.latex import is_valid, normalize, tokenize

# im2latex-style (arXiv hep-th) formulas, space-tokenised as in the corpus
CORPUS = [
    r"\hat { H } \equiv \sum _ { \alpha = 1 } ^ { N + 1 } c _ { \alpha } a _ { \alpha } ^ { \dagger } a _ { \alpha } \ ,",
    r"\xi ^ { 1 * } \left( x \right) = \xi ^ { 6 * } \left( x \right) = 0",
    r"4 ( 2 p ^ { 2 } - p \frac { d p } { d \phi } ) - ( T ^ { 2 } + 2 \lambda ^ { 2 } ) e ^ { 2 \xi } = 0",
    r"\{ \psi _ { i j } ( x ^ { - } ) , \psi _ { k l } ( y ^ { - } ) \} = \frac { 1 } { 2 } \delta ( x ^ { - } - y ^ { - } )",
    r"\Delta = - D ^ { 2 } - \frac { \mathrm { i } } { 2 } \sigma _ { \mu \nu } F _ { \mu \nu } .",
    r"E _ { \pm n } = \pm \sqrt { m ^ { 2 } + 2 | e B | ( n + { \frac { 1 } { 2 } } ) - 2 e B S _ { \pm } } ,",
    r"d s ^ { 2 } \, = \, a ^ { 2 } ( \eta ) \bigl [ ( 1 + 2 \Phi ) d \eta ^ { 2 } - ( 1 - 2 \Phi ) d x ^ { i } d x _ { i } \bigr ] \, ,",
    r"\beta _ { \mathrm { S G } } = 2 g _ { \mathrm { e f f } } .",
    r"\Psi _ { \xi } ( P _ { 0 } ) = \operatorname { e x p } \left[ \frac { i \xi \kappa } { ( a + 1 ) } \right] \, \psi ( P _ { 0 } ) ,",
    r"{ \frac { M ^ { \prime } } { 4 \pi \kappa \lambda } } = - \left( q ^ { a } + { \frac { \eta ^ { a } } { \lambda } } \right) \epsilon _ { a } ^ { ~ ~ b } p _ { b } ~ .",
    r"S = \int d ^ { 4 } x \sqrt { - g } \left( \frac { 1 } { 1 6 \pi G } R - \frac { 1 } { 4 } F _ { \mu \nu } F ^ { \mu \nu } \right)",
    r"Z = \int { \cal D } \phi \, \exp \left\{ - \int d ^ { d } x \left[ \frac { 1 } { 2 } ( \partial \phi ) ^ { 2 } + V ( \phi ) \right] \right\}",
    r"M = \left( \begin{array} { c c } { m _ { 1 } } & { \mu } \\ { \mu } & { m _ { 2 } } \end{array} \right)",
    r"\langle 0 | T \{ \phi ( x ) \phi ( y ) \} | 0 \rangle = \int \frac { d ^ { 4 } k } { ( 2 \pi ) ^ { 4 } } \frac { i e ^ { - i k ( x - y ) } } { k ^ { 2 } - m ^ { 2 } + i \epsilon }",
    r"\Gamma _ { \mu \nu } ^ { \lambda } = \frac { 1 } { 2 } g ^ { \lambda \rho } ( \partial _ { \mu } g _ { \rho \nu } + \partial _ { \nu } g _ { \rho \mu } - \partial _ { \rho } g _ { \mu \nu } )",
    r"f ( x ) = \left\{ \begin{array} { l l } { 1 } & { \mathrm { i f } \; x > 0 } \\ { 0 } & { \mathrm { o t h e r w i s e } } \end{array} \right.",
    r"\tilde { \chi } _ { n } ( \tau ) = \sum _ { k = 0 } ^ { \infty } a _ { k } ^ { ( n ) } \tau ^ { k } , \qquad n = 1 , 2 , \ldots",
    r"\mathcal { L } = \bar { \psi } ( i \gamma ^ { \mu } D _ { \mu } - m ) \psi - \frac { 1 } { 4 } F _ { \mu \nu } ^ { a } F ^ { a \mu \nu }",
    r"\lim _ { n \rightarrow \infty } \frac { 1 } { n } \log Z _ { n } = - \beta f",
    r"T _ { \mu \nu } = \frac { 2 } { \sqrt { - g } } \frac { \delta S } { \delta g ^ { \mu \nu } }",
    r"\omega ^ { 2 } = k ^ { 2 } + m ^ { 2 } \left( 1 + \frac { \lambda } { 3 ! } \right) , \quad \mathrm { w i t h } \quad k = | \vec { k } |",
    r"\Phi ( r ) = \frac { Q } { 4 \pi \epsilon _ { 0 } r } e ^ { - r / \lambda _ { D } }",
    r"[ Q _ { \alpha } , \bar { Q } _ { \dot { \beta } } ] = 2 \sigma _ { \alpha \dot { \beta } } ^ { \mu } P _ { \mu }",
    r"\rho ( E ) = \frac { 1 } { \pi } \operatorname { I m } \mathrm { T r } \, G ( E + i 0 )",
    r"H = \frac { p ^ { 2 } } { 2 m } + \frac { 1 } { 2 } m \omega ^ { 2 } x ^ { 2 } + g x ^ { 4 }",
    r"A _ { \mu } ^ { \prime } = U A _ { \mu } U ^ { - 1 } + \frac { i } { g } ( \partial _ { \mu } U ) U ^ { - 1 }",
    r"\nabla \cdot \vec { E } = \frac { \rho } { \epsilon _ { 0 } } , \qquad \nabla \times \vec { B } - \frac { \partial \vec { E } } { \partial t } = \mu _ { 0 } \vec { J }",
    r"\zeta ( s ) = \prod _ { p } \frac { 1 } { 1 - p ^ { - s } } \simeq \frac { 1 } { s - 1 } + \gamma + O ( s - 1 )",
    r"\delta \phi = \epsilon ^ { a } \partial _ { a } \phi + \frac { 1 } { 2 } \omega ^ { a b } J _ { a b } \phi \quad \mathrm { f o r } \quad a , b = 0 , \ldots , 3",
    r"\sigma _ { t o t } \leq \frac { \pi } { m _ { \pi } ^ { 2 } } \log ^ { 2 } \left( \frac { s } { s _ { 0 } } \right)",
]


@pytest.fixture(scope="module")
def mutator() -> Mutator:
    return Mutator(CORPUS)


def _draws(mutator: Mutator, n: int, seed: int = 0) -> list[tuple[str, str]]:
    r = random.Random(seed)
    out = []
    for i in range(n):
        src = CORPUS[r.randrange(len(CORPUS))]
        out.append((src, mutator.mutate(src, random.Random(f"{seed}:{i}"))))
    return out


def test_corpus_is_valid() -> None:
    assert all(is_valid(normalize(f)) for f in CORPUS)


def test_mutations_are_valid_normalized_new_and_deterministic(mutator: Mutator) -> None:
    for i, (src, m) in enumerate(_draws(mutator, 500)):
        assert is_valid(m), (src, m)
        assert normalize(m) == m, (src, m)
        assert columns_ok(tokenize(m)), m
        assert m != src and m != normalize(src)
        assert mutator.mutate(src, random.Random(f"0:{i}")) == m  # the same rng state, the same mutation
    again = Mutator(list(CORPUS))  # a fresh analysis of the same corpus mutates identically
    assert [m for _, m in _draws(again, 50)] == [m for _, m in _draws(mutator, 50)]


def test_mutations_are_diverse(mutator: Mutator) -> None:
    muts = [m for _, m in _draws(mutator, 1000, seed=1)]
    corpus = {normalize(f) for f in CORPUS}
    fresh = {m for m in muts if m not in corpus}
    assert len(fresh) >= 950


def test_length_distribution_stays_near_the_corpus(mutator: Mutator) -> None:
    muts = [len(tokenize(m)) for _, m in _draws(mutator, 1000, seed=2)]
    real = [len(tokenize(normalize(f))) for f in CORPUS]
    assert abs(statistics.median(muts) / statistics.median(real) - 1) < 0.3
    assert max(muts) < 3 * max(real)


def test_each_operation_changes_formulas(mutator: Mutator) -> None:
    for op in ("rename", "script", "splice", "recombine"):
        changed = 0
        for i in range(60):
            src = normalize(CORPUS[i % len(CORPUS)])
            out = mutator._apply(tokenize(src), [op], random.Random(i))
            if out is not None:
                assert is_valid(out) and normalize(out) == out
                changed += out != src
        assert changed >= 20, op


def test_protected_tokens_stay(mutator: Mutator) -> None:
    src = normalize(CORPUS[15])  # array column spec `{ l l }`, `\mathrm { o t h e r w i s e }`
    changed = 0
    for i in range(100):
        m = mutator._apply(tokenize(src), ["rename"], random.Random(i))
        if m is None:
            continue
        changed += m != src
        for kept in ("\\begin{array} { l l }", "{ o t h e r w i s e }"):  # the font may change, not the word
            assert kept in m, m
    assert changed >= 50  # the renames happened (95 of 100 today): the kept words were really at stake
    op = r"\rho = \operatorname { I m } \mathrm { T r } \, G"
    changed = 0
    for i in range(50):
        m = mutator._apply(tokenize(op), ["rename"], random.Random(i))
        assert m is None or "\\operatorname { I m }" in m
        changed += m is not None and m != op
    assert changed >= 15  # 38 of 50 today


def test_symbol_classes() -> None:
    assert symbol_class("x") == "lower" and symbol_class("X") == "upper" and symbol_class("7") == "digit"
    assert symbol_class("\\alpha") == "greek" and symbol_class("\\Gamma") == "Greek"
    assert symbol_class("=") == symbol_class("\\leq") == "rel" and symbol_class("\\rightarrow") == "arrow"
    assert symbol_class("+") == "pm" and symbol_class("\\otimes") == "binop"
    assert symbol_class("\\mathbf") == symbol_class("\\mathcal") == "font"
    assert symbol_class("\\hat") == "accent" and symbol_class("\\overline") == "wideaccent"
    assert symbol_class("{") is None and symbol_class("\\frac") is None


def test_columns_ok() -> None:
    assert columns_ok(tokenize(r"\begin{array} { c c } a & b \\ c & d \end{array}"))
    assert not columns_ok(tokenize(r"\begin{array} { c } a & b \end{array}"))
    assert not columns_ok(tokenize(r"\begin{cases} a & b & c \end{cases}"))
    assert columns_ok(tokenize(r"\begin{pmatrix} a & b \\ c & d \end{pmatrix}"))


def test_module_function_and_odd_sources() -> None:
    corpus = list(CORPUS)
    a = mutate(corpus[0], random.Random(5), corpus)
    assert a == mutate(corpus[0], random.Random(5), corpus) == Mutator(corpus).mutate(corpus[0], random.Random(5))
    for odd in ["x", "", r"\frac { a", r"\unknowncommand x = 1", "1"]:  # invalid or tiny: still a valid new formula
        m = mutate(odd, random.Random(1), corpus)
        assert is_valid(m) and normalize(m) == m and m != odd
    with pytest.raises(ValueError):
        Mutator([r"\frac { a"])


# FormulaPool(seed=3, real=[r_{0}..r_{29}], real_ratio=0.5) over indices 0..399 before mutate_ratio existed:
# origins and real formulas joined (generated formulas stand as "generated"), SHA-256 prefix; 206 real draws.
_POOL_BEFORE = "c161c4200f7660d6"


def test_pool_unchanged_without_mutation() -> None:
    real = [f"r_{{{i}}}" for i in range(30)]
    for pool in (FormulaPool(seed=3, real=real, real_ratio=0.5),
                 FormulaPool(seed=3, real=real, real_ratio=0.5, mutate_ratio=0.0)):
        picks = [pool.formula(i) for i in range(400)]
        joined = "\n".join(f if o == "real" else o for f, o in picks)
        assert hashlib.sha256(joined.encode()).hexdigest()[:16] == _POOL_BEFORE
        assert sum(o == "real" for _, o in picks) == 206


def test_pool_mutates_at_ratio() -> None:
    plain = FormulaPool(seed=4, real=CORPUS, real_ratio=0.6)
    pool = FormulaPool(seed=4, real=CORPUS, real_ratio=0.6, mutate_ratio=0.5)
    picks = [pool.formula(i) for i in range(600)]
    origins = [o for _, o in picks]
    assert 0.22 < origins.count("mutated") / 600 < 0.38  # 0.6 * 0.5
    for i, (f, o) in enumerate(picks):
        base, base_origin = plain.formula(i)
        if o == "generated":
            assert base_origin == "generated" and f == base
        else:  # the same draws as without mutation; a mutated one is a new valid formula
            assert base_origin == "real"
            if o == "real":
                assert f == base
            else:
                assert f != base and is_valid(f) and normalize(f) == f
    again = FormulaPool(seed=4, real=CORPUS, real_ratio=0.6, mutate_ratio=0.5)
    assert [again.formula(i) for i in range(0, 600, 37)] == [picks[i] for i in range(0, 600, 37)]
    assert FormulaPool(seed=4, mutate_ratio=0.5).formula(0)[1] == "generated"  # no real formulas: nothing to mutate
    with pytest.raises(TexocrError):
        FormulaPool(real=CORPUS, real_ratio=0.5, mutate_ratio=1.5)


_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "im2latex-val-formulas" / "labels.jsonl"


@pytest.mark.skipif(not _SHARED.exists(), reason="the im2latex formulas in ../shared are not here")
def test_real_corpus_mutations() -> None:
    rows = [json.loads(line)["latex"] for line in _SHARED.read_text(encoding="utf-8").splitlines()[:1500]]
    m = Mutator(rows)
    r = random.Random(0)
    for i in range(300):
        src = rows[r.randrange(len(rows))]
        out = m.mutate(src, random.Random(i))
        assert is_valid(out) and normalize(out) == out and out != normalize(src)

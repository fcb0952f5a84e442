"""A seeded random generator of LaTeX formulas that look like the ones in papers, and a reader of real ones.

    from texocr.data.formulas import FormulaGenerator, FormulaPool
    gen = FormulaGenerator(seed=0)
    gen.formula(17)                   # the same string for the same (seed, index), in any process
    pool = FormulaPool(seed=0, real=read_formulas("labels.jsonl"), real_ratio=0.3)
    latex, origin = pool.formula(17)  # origin: "generated" or "real" ("mutated" with mutate_ratio > 0)

Formulas are built as im2latex-style token lists (space-separated), so their length is controlled in tokens:
each formula first draws a target length from the token-length distribution of the im2latex-100k
validation formulas (`REAL_LENGTH_HIST`), then grows an equation (left side, relation, right side, sometimes
a condition) or a multi-line environment until it reaches that length. Constructs and their weights follow
what arXiv formulas contain: fractions, roots, scripts, big operators with bounds, Greek, accents, font
commands, `\\left...\\right` and `\\big`-family pairs, matrices/arrays/cases/aligned, spacing (also
`\\hspace{1cm}`), `\\text{...}`, relations (also `\\stackrel`, `\\not`), functions (also im2latex's
`\\operatorname*{lim}`), factorials, style switches (`\\displaystyle`, `\\textstyle`).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from texocr.errors import TexocrError

REAL_LENGTH_HIST = [15, 267, 924, 1396, 1314, 1123, 924, 719, 566, 472, 276, 180, 147, 96, 51, 5]
"""Token-length histogram of the 8,475 im2latex-100k validation formulas in bins of 10 tokens (0-9, 10-19, ...)."""

LATIN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
COMMON = "xyzabcnmijktpqrsfgAEFHLMNRSTVXZ"
GREEK = ["alpha", "alpha", "beta", "beta", "gamma", "delta", "mu", "mu", "nu", "nu", "pi", "phi", "phi", "lambda", "sigma", "theta", "psi", "omega", "rho", "tau", "epsilon", "alpha", "beta", "gamma", "delta", "epsilon", "varepsilon", "zeta", "eta", "theta", "vartheta", "iota", "kappa", "lambda", "mu", "nu", "xi", "pi", "rho", "varrho", "sigma", "tau", "upsilon", "phi", "varphi", "chi", "psi", "omega", "Gamma", "Delta", "Theta", "Lambda", "Xi", "Pi", "Sigma", "Phi", "Psi", "Omega"]
ACCENTS = ["hat", "bar", "vec", "tilde", "dot", "ddot", "check", "breve", "overline", "widetilde", "widehat",
           "underline", "acute", "grave"]
FUNCS = ["sin", "cos", "tan", "log", "ln", "exp", "det", "dim", "ker", "arg", "deg", "sinh", "cosh", "tanh",
         "cot", "sec", "arcsin", "arctan", "Pr", "gcd"]
LIMIT_FUNCS = ["lim", "max", "min", "sup", "inf", "limsup", "liminf"]
OPERATORNAMES = ["tr", "Tr", "sgn", "rank", "diag", "Re", "Im", "span", "Res", "erf", "sn", "Ad"]
BIGOPS = ["sum", "sum", "sum", "int", "int", "int", "prod", "oint", "iint", "bigcup", "bigcap", "bigoplus",
          "bigotimes", "coprod"]
RELATIONS = (["="] * 12 + ["\\equiv", "\\leq", "\\geq", "<", ">", "\\neq", "\\approx", "\\sim", "\\simeq",
             "\\propto", "\\to", "\\rightarrow", "\\in", "\\subset", "\\subseteq", "\\le", "\\ge", "\\ll", "\\gg",
             "\\mapsto", "\\Rightarrow", "\\Leftrightarrow", "\\longrightarrow", "\\cong", ": ="])
BINOPS = ["+"] * 8 + ["-"] * 6 + ["\\pm", "\\mp", "\\cdot", "\\times", "\\otimes", "\\oplus", "\\wedge", "\\circ",
                                   "\\ast", "/", "\\cup", "\\cap", "\\star", "\\vee"]
SYMBOLS = ["\\infty", "\\partial", "\\nabla", "\\hbar", "\\ell", "\\emptyset", "\\aleph", "\\Box", "\\prime",
           "\\dagger", "\\forall", "\\exists", "\\wp", "\\imath"]
SPACES = ["\\,", "\\,", "\\;", "\\quad", "\\qquad", "\\!", "\\:", "~", "\\ "]
DOTS = ["\\cdots", "\\ldots", "\\dots", "\\vdots", "\\ddots"]
DELIMS = [("(", ")")] * 6 + [("[", "]")] * 2 + [("\\{", "\\}"), ("|", "|"), ("\\langle", "\\rangle"),
                                                 ("\\|", "\\|"), ("\\lfloor", "\\rfloor")]
BIG = ["\\big"] * 2 + ["\\Big"] * 4 + ["\\bigg"] * 2 + ["\\Bigg"]  # TRAIN: \Big most, \Bigg least
RARE_LETTERS = ["\\hbar", "\\ell", "\\nabla", "\\partial"] * 8 + ["\\imath", "\\wp", "\\triangle"]
RARE_RELATIONS = ["\\leftrightarrow", "\\Longrightarrow", "\\Longleftrightarrow", "\\doteq", "\\perp",
                  "\\parallel", "\\mid"]
# TRAIN spells the adjoint `\dagger` about 4 times as often as `\dag`
SUPERSCRIPTS = ["3", "n", "k", "*", "T", "4", "N", "p"] * 6 + ["\\dagger"] * 12 + ["\\dag"] * 2 + ["\\bullet"]
HSPACES = ["1cm"] * 4 + ["0.5cm", "5mm", "0.3cm", "2cm", "10pt", "1em"]  # what TRAIN's `\hspace`s use
WORDS = ["if", "for", "otherwise", "and", "where", "const", "for all", "with", "s.t.", "on", "in", "mod",
         "as", "even", "odd", "else", "for some"]
MATRIX_ENVS = ["pmatrix", "pmatrix", "bmatrix", "matrix", "vmatrix", "Bmatrix", "Vmatrix"]
BB = "RCZNQPEHF"


CONSTRUCTS = {
    "frac": r"\\[dt]?frac\b", "sqrt": r"\\sqrt\b", "sub": r"_ \{", "sup": r"\^ \{", "sum": r"\\sum\b",
    "int": r"\\i*int\b", "prod": r"\\prod\b", "lim": r"\\lim\b", "greek": r"\\(alpha|beta|mu|nu|pi|phi)\b",
    "accent": r"\\(hat|bar|vec|tilde|dot)\b", "mathbf": r"\\mathbf\b", "mathcal": r"\\(mathcal|cal)\b",
    "mathbb": r"\\mathbb\b", "mathrm": r"\\mathrm\b", "operatorname": r"\\operatorname\b", "left": r"\\left",
    "matrix": r"\\begin\{[pbvBV]?matrix\}", "array": r"\\begin\{array\}", "cases": r"\\begin\{cases\}",
    "aligned": r"\\begin\{aligned\}", "newline": r"\\\\", "space": r"\\[,;:!]|\\q?quad\b", "text": r"\\text\{",
    "relation": r"(=|\\leq|\\geq|\\approx|\\equiv|\\sim)", "function": r"\\(sin|cos|log|exp|ln)\b",
}
"""Regexes naming the constructs the generator must cover (tests and bench/render.py measure their rates)."""


def read_formulas(path: str | Path) -> list[str]:
    """Formulas from a file: labels.jsonl (`latex` field) or plain text, one per line; blank lines skipped."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise TexocrError(f"cannot read formulas file {path}: {e.strerror or e}") from None
    out: list[str] = []
    jsonl = p.suffix == ".jsonl" or text.lstrip().startswith("{")
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if jsonl:
            try:
                latex = json.loads(line).get("latex")
            except (json.JSONDecodeError, AttributeError):
                raise TexocrError(f"{path}:{n}: not a JSON object with a `latex` field") from None
            if isinstance(latex, str) and latex.strip():
                out.append(latex.strip())
        else:
            out.append(line)
    if not out:
        raise TexocrError(f"no formulas in {path}")
    return out


def count_tokens(latex: str) -> int:
    from texocr.latex import tokenize

    return len(tokenize(latex))


class _Builder:
    """Grows token lists for one formula; `self.r` is the formula's own Random."""

    def __init__(self, r: random.Random) -> None:
        self.r = r

    # -- atoms ---------------------------------------------------------------------------------------
    def letter(self) -> list[str]:
        r = self.r.random()
        if r < 0.74:
            return [self.r.choice(COMMON) if self.r.random() < 0.7 else self.r.choice(LATIN)]
        if r < 0.975:  # a 4 % symbol tail made \hbar, \ell, \nabla 4-5x as common as in TRAIN
            return ["\\" + self.r.choice(GREEK)]
        return [self.r.choice(RARE_LETTERS)]

    def number(self) -> list[str]:
        r = self.r.random()
        if r < 0.75:
            return [self.r.choice("1223456789")] if self.r.random() < 0.9 else ["0"]
        if r < 0.92:
            return list(str(self.r.randint(10, 99 if self.r.random() < 0.8 else 9999)))
        return list(f"{self.r.uniform(0, 10):.{self.r.randint(1, 2)}f}")

    def index(self) -> list[str]:
        """A subscript body: i, n, ij, 0, i+1, \\mu\\nu, a word."""
        r = self.r.random()
        if r < 0.35:
            return [self.r.choice("ijknm0123abxtrs")]
        if r < 0.5:
            return ["\\" + self.r.choice(["mu", "nu", "alpha", "beta", "rho", "sigma", "lambda"])]
        if r < 0.65:
            return [self.r.choice("ijkabmn"), self.r.choice("jklbcn")]
        if r < 0.78:
            return [self.r.choice("ijkn"), self.r.choice("+-"), "1"]
        if r < 0.86:
            return ["\\mathrm", "{", *self.r.choice(["eff", "max", "min", "out", "in", "tot", "int", "ext"]), "}"]
        if r < 0.92:
            return [self.r.choice("ijk"), "=", self.r.choice("01")]
        if r < 0.93:  # physics' transverse / parallel parts, light-cone `--` (as TRAIN spells it, glued)
            return [self.r.choice(["\\perp"] * 6 + ["\\parallel", "\\bot", "--"])]
        return self.expr(self.r.randint(2, 4), depth=3)

    def sup(self) -> list[str]:
        r = self.r.random()
        if r < 0.35:
            return ["2"]
        if r < 0.5:
            return [self.r.choice(SUPERSCRIPTS)]
        if r < 0.6:
            return ["-", "1"]
        if r < 0.7:
            return ["\\prime"] * self.r.randint(1, 2)
        if r < 0.88:
            return ["\\mu"] if self.r.random() < 0.5 else ["\\nu"]
        return self.expr(self.r.randint(2, 4), depth=3)

    def scripted(self, base: list[str]) -> list[str]:
        r = self.r.random()
        if r < 0.002:  # `f '`: the apostrophe prime, rarer than `^ { \prime }` in TRAIN
            return base + ["'"]
        if r < 0.4:
            return base + ["_", "{", *self.index(), "}"]
        if r < 0.7:
            return base + ["^", "{", *self.sup(), "}"]
        return base + ["_", "{", *self.index(), "}", "^", "{", *self.sup(), "}"]

    def styled(self) -> list[str]:
        """An accented or font-styled letter."""
        r = self.r.random()
        if r < 0.45:
            acc = self.r.choice(ACCENTS)
            return ["\\" + acc, "{", *self.letter(), "}"]
        if r < 0.53:
            return ["\\mathbf", "{", self.r.choice(LATIN), "}"]
        if r < 0.75:
            return ["\\mathcal", "{", self.r.choice(LATIN[26:]), "}"]
        if r < 0.82:
            return ["{", "\\cal", self.r.choice(LATIN[26:]), "}"]
        if r < 0.88:
            return ["\\mathbb", "{", self.r.choice(BB), "}"]
        if r < 0.93:
            return ["\\mathrm", "{", self.r.choice("deiDT"), "}"]
        if r < 0.97:
            return ["\\boldsymbol", "{", *self.letter(), "}"]
        if r < 0.975:
            return ["\\mathit", "{", self.r.choice(LATIN), "}"]
        return ["\\mathsf", "{", self.r.choice(LATIN), "}"]

    def factor(self, depth: int) -> list[str]:
        """One multiplicative factor (possibly a big construct when depth allows)."""
        r = self.r.random()
        if depth >= 3 or r < 0.38:
            base = self.letter()
            return self.scripted(base) if depth < 3 and self.r.random() < 0.5 else base
        if r < 0.48:
            s = self.styled()
            return self.scripted(s) if self.r.random() < 0.35 else s
        if r < 0.58:
            return self.frac(depth)
        if r < 0.61:
            return self.sqrt(depth)
        if r < 0.73:
            return self.delimited(depth)
        if r < 0.81:
            return self.function(depth)
        if r < 0.87:
            return self.call(depth)
        if r < 0.91:
            return self.derivative()
        if r < 0.94:
            return self.bracket(depth)
        if r < 0.96:
            return ["\\binom", "{", *self.letter(), "}", "{", *self.index(), "}"]
        if r < 0.975:
            return self.operatorname()
        if r < 0.977:
            return self.factorial()
        if r < 0.9775:
            return self.slashed()
        return [self.r.choice(["\\overbrace", "\\underbrace", "\\overline"]), "{", *self.expr(4, depth + 1), "}"]

    def call(self, depth: int) -> list[str]:
        """f(x), G(x, y), \\phi(t)."""
        f = self.scripted(self.letter()) if self.r.random() < 0.3 else self.letter()
        args = self.letter()
        for _ in range(self.r.choice([0, 0, 1, 1, 2])):
            args += [","] + (self.letter() if self.r.random() < 0.7 else self.expr(3, depth + 2))
        return f + ["(", *args, ")"]

    def bracket(self, depth: int) -> list[str]:
        """A commutator-like [A, B], a braket-like \\langle a | b \\rangle, a set \\{ x \\mid x > 0 \\}."""
        r = self.r.random()
        if r < 0.45:
            return ["[", *self.factor(depth + 1), ",", *self.factor(depth + 1), "]"]
        bar = "\\mid" if self.r.random() < 0.15 else "|"  # TRAIN writes brakets with both
        if r < 0.95:
            return ["\\langle", *self.factor(depth + 1), bar, *self.factor(depth + 1), "\\rangle"]
        x = self.letter()
        return ["\\{", *x, "\\mid", *x, self.r.choice(["<", ">", "\\geq", "\\leq", "\\in"]), *self.factor(depth + 1),
                "\\}"]

    def operatorname(self) -> list[str]:
        """\\operatorname { tr } A; im2latex writes det with the star (limits below in display)."""
        if self.r.random() < 0.08:
            return ["\\operatorname*", "{", *"det", "}", *self.letter()]
        return ["\\operatorname", "{", *self.r.choice(OPERATORNAMES), "}", *self.letter()]

    def factorial(self) -> list[str]:
        """n !, 4 !, ( n + 1 ) !: mostly in denominators of series coefficients."""
        r = self.r.random()
        if r < 0.45:
            return [self.r.choice("nkNpm"), "!"]
        if r < 0.75:
            return [self.r.choice("23456"), "!"]
        return ["(", self.r.choice("nkpN"), self.r.choice("+-"), self.r.choice("123"), ")", "!"]

    def slashed(self) -> list[str]:
        """Feynman's slash: \\not \\partial, \\not P (TRAIN's `\\not` is this or `\\not =`)."""
        return ["\\not", self.r.choice(["\\partial", "\\partial", "P", "D", "X", "k", "p", "\\nabla"])]

    # -- constructs ----------------------------------------------------------------------------------
    def frac(self, depth: int) -> list[str]:
        cmd = self.r.choice(["\\frac"] * 8 + ["\\dfrac", "\\tfrac"])
        r = self.r.random()
        if r < 0.015:  # series coefficients: \frac { 1 } { n ! }, \frac { \lambda } { 4 ! }
            num, den = self.number() if self.r.random() < 0.7 else self.letter(), self.factorial()
        elif r < 0.25:
            num, den = self.number(), self.number() if self.r.random() < 0.6 else self.letter()
        else:
            num = self.expr(self.r.randint(1, 8), depth + 1)
            den = self.expr(self.r.randint(1, 8), depth + 1)
            if self.r.random() < 0.01:  # a display-size numerator inside the (smaller) fraction
                num = ["\\displaystyle", *num]
        out = [cmd, "{", *num, "}", "{", *den, "}"]
        if self.r.random() < 0.015:
            return self.sized_frac(out)
        return ["{", *out, "}"] if self.r.random() < 0.15 else out  # im2latex often wraps fractions in braces

    def sized_frac(self, frac: list[str]) -> list[str]:
        """{ \\textstyle \\frac .. }, = \\displaystyle \\frac ..: TRAIN's style switches are nearly all before one."""
        r = self.r.random()
        if r < 0.4:
            return ["{", "\\textstyle", *frac, "}"]
        if r < 0.55:
            return ["\\textstyle", *frac]
        return ["\\displaystyle", *frac]

    def sqrt(self, depth: int) -> list[str]:
        body = self.expr(self.r.randint(1, 7), depth + 1)
        if self.r.random() < 0.15:
            return ["\\sqrt", "[", self.r.choice(["3", "n", "4"]), "]", "{", *body, "}"]
        return ["\\sqrt", "{", *body, "}"]

    def delimited(self, depth: int) -> list[str]:
        left, right = self.r.choice(DELIMS)
        body = self.expr(self.r.randint(2, 10), depth + 1)
        r = self.r.random()
        if r < 0.35:
            out = ["\\left" + left, *body, "\\right" + right]
        elif r < 0.39:
            # TRAIN writes bare `\Big (` .. `\Big )` more often than `\Bigl ( .. \Bigr )`
            b = self.r.choice(BIG)
            lr = ("l", "r") if self.r.random() < 0.4 else ("", "")
            out = [b + lr[0], left, *body, b + lr[1], right]
        else:
            out = [left, *body, right]
        if self.r.random() < 0.3:
            out = self.scripted(out)
        return out

    def function(self, depth: int) -> list[str]:
        if self.r.random() < 0.2:
            f = self.r.choice(LIMIT_FUNCS)
            var = self.r.choice("xntk")
            to = self.r.choice(["0", "\\infty", "1", "a"])
            # im2latex's own spelling of lim / min / max: `\operatorname* { l i m }`
            star = f in ("lim", "min", "max") and self.r.random() < 0.4
            op = ["\\operatorname*", "{", *f, "}"] if star else ["\\" + f]
            return [*op, "_", "{", var, "\\to", to, "}", *self.factor(depth + 1)]
        f = ["\\" + self.r.choice(FUNCS)]
        if self.r.random() < 0.15:
            f = f + ["^", "{", "2", "}"]
        if self.r.random() < 0.6:
            return f + ["(", *self.expr(self.r.randint(1, 5), depth + 1), ")"]
        return f + self.letter()

    def derivative(self) -> list[str]:
        d = "\\partial" if self.r.random() < 0.6 else "d"
        num, var = self.letter(), self.letter()
        if self.r.random() < 0.5:
            return ["\\frac", "{", d, *num, "}", "{", d, *var, "}"]
        return [d, "_", "{", *var, "}", *num]

    def bigop(self, depth: int) -> list[str]:
        op = self.r.choice(BIGOPS)
        out = ["\\" + op]
        if op in ("int", "oint", "iint"):
            if self.r.random() < 0.7:
                out += ["_", "{", *self.r.choice([["0"], ["-", "\\infty"], ["a"], ["\\Omega"], ["M"]]), "}"]
                if op == "int" and self.r.random() < 0.8:
                    out += ["^", "{", *self.r.choice([["1"], ["\\infty"], ["b"], ["t"], ["2", "\\pi"]]), "}"]
            body = self.expr(self.r.randint(2, 10), depth + 1)
            var = self.r.choice(["x", "t", "k", "s", "r", "\\tau", "y", "z"])
            return out + body + ([self.r.choice(SPACES[:3])] if self.r.random() < 0.5 else []) + ["d", var]
        if self.r.random() < 0.85:
            i = self.r.choice("ijknml")
            lo = [i, "=", self.r.choice("01")] if self.r.random() < 0.7 else self.index()
            out += ["_", "{", *lo, "}"]
            if self.r.random() < 0.7:
                out += ["^", "{", *self.r.choice([["n"], ["N"], ["\\infty"], ["k"], ["N", "-", "1"], ["m"]]), "}"]
        return out + self.expr(self.r.randint(2, 10), depth + 1)

    def text(self) -> list[str]:
        """`\\text{...}` as one piece: inside text mode the spaces between tokens would show."""
        word = self.r.choice(WORDS)
        r = self.r.random()
        if r < 0.02:
            return ["\\textrm{" + word + "}"]
        if r < 0.8:
            return ["\\text{" + word + "}"]
        return ["\\mathrm{" + word.replace(" ", "~") + "}"]

    def term(self, depth: int) -> list[str]:
        """A product of factors, sometimes a big operator in front."""
        out: list[str] = []
        if depth < 2 and self.r.random() < 0.12:
            return self.bigop(depth)
        if self.r.random() < 0.15:
            out += self.number()
        for _ in range(1 if self.r.random() < 0.55 else self.r.randint(2, 3)):
            out += self.factor(depth)
            if self.r.random() < 0.03:
                out.append(self.r.choice(SPACES))
        return out

    def expr(self, budget: int, depth: int = 0) -> list[str]:
        """Terms joined by binary operators until about `budget` tokens."""
        out = self.term(depth)
        if self.r.random() < 0.1 and depth == 0:
            out = ["-"] + out
        while len(out) < budget:
            if self.r.random() < 0.05:
                out += [self.r.choice(BINOPS[:14]), self.r.choice(DOTS[:3])]
                continue
            out += [self.r.choice(BINOPS)] + self.term(depth)
        return out

    # -- whole formulas ------------------------------------------------------------------------------
    def lhs(self) -> list[str]:
        r = self.r.random()
        if r < 0.5:
            base = self.letter() if self.r.random() < 0.75 else self.styled()
            out = self.scripted(base) if self.r.random() < 0.6 else base
            if self.r.random() < 0.4:
                out += ["(", *self.r.choice([["x"], ["t"], ["k"], ["x", ",", "t"], ["p"], ["z"]]), ")"]
            return out
        return self.expr(self.r.randint(2, 12), depth=1)

    def equation(self, budget: int) -> list[str]:
        out = self.lhs()
        if len(out) >= budget and self.r.random() < 0.9:  # real formulas are nearly all (in)equalities
            out += self.relation() + self.expr(self.r.randint(1, 4), depth=1)
        while len(out) < budget:
            out += self.relation()
            out += self.expr(max(2, min(budget - len(out), self.r.randint(6, 40))), depth=0)
        if self.r.random() < 0.12:
            out += self.condition()
        if self.r.random() < 0.35:
            out += [self.r.choice(["\\,", "\\;", "\\quad", ""]), self.r.choice([".", ",", ".", ";"])]
            out = [t for t in out if t]
        return out

    def relation(self) -> list[str]:
        """Mostly one of RELATIONS; sometimes a rare one, a negated one, or one with a note set over it."""
        r = self.r.random()
        if r < 0.008:
            over = self.r.choice([["(", self.r.choice("12"), ")"], ["\\Sigma"], ["\\mathrm{def}"], ["!"], ["*"],
                                  [self.r.choice("xtnN"), "\\rightarrow", self.r.choice(["\\infty", "0"])]])
            rel = self.r.choice(["=", "=", "\\rightarrow", "\\sim", "\\approx"])
            return ["\\stackrel", "{", *over, "}", "{", rel, "}"]
        if r < 0.01:
            return ["\\not", self.r.choice(["=", "=", "\\in", "\\subset"])]
        if r < 0.018:
            return [self.r.choice(RARE_RELATIONS)]
        return [self.r.choice(RELATIONS)]

    def condition(self) -> list[str]:
        """A trailing `, \\quad \\text{if} \\, x > 0` or `, \\qquad \\forall t` after a formula."""
        space = self.r.choice(SPACES[3:5]) if self.r.random() < 0.8 else "\\hspace{" + self.r.choice(HSPACES) + "}"
        if self.r.random() < 0.06:
            var = self.letter()
            if self.r.random() < 0.5:
                return [",", space, "\\forall", *var]
            return [",", space, "\\forall", *var, "\\in", "\\mathbb", "{", self.r.choice("RCZN"), "}"]
        return [",", space, *self.text(), self.r.choice(SPACES[:2]), *self.letter(), self.r.choice(RELATIONS[12:20]),
                *self.number()]

    def environment(self, budget: int) -> list[str]:
        kind = self.r.choice(["matrix"] * 4 + ["array"] * 3 + ["cases"] * 2 + ["aligned"] * 2)
        if kind == "matrix":
            env = self.r.choice(MATRIX_ENVS)
            rows, cols = self.r.randint(2, 4), self.r.randint(2, 4)
            # a dotted cell (\vdots, \ddots, \cdots) as in a general n x n matrix
            body = self._grid(rows, cols, cell=lambda: [self.r.choice(DOTS[:2] + DOTS[3:])] if self.r.random() < 0.04
                              else self.expr(self.r.randint(1, 4), depth=2))
            mat = ["\\begin{" + env + "}", *body, "\\end{" + env + "}"]
            if env == "matrix" and self.r.random() < 0.7:
                mat = ["\\left("] + mat + ["\\right)"]
            return self.lhs() + ["="] + mat + (self.expr(4, 1) if self.r.random() < 0.3 else [])
        if kind == "array":
            rows, cols = self.r.randint(1, 4), self.r.randint(1, 4)
            align = [self.r.choice("lcr") for _ in range(cols)]
            body = self._grid(rows, cols, cell=lambda: self.expr(self.r.randint(1, max(2, budget // (rows * cols))),
                                                                 depth=2))
            arr = ["\\begin{array}", "{", *align, "}", *body, "\\end{array}"]
            if self.r.random() < 0.6:
                left, right = self.r.choice([("(", ")"), ("[", "]"), ("\\{", "."), (".", "\\}")])
                arr = ["\\left" + left, *arr, "\\right" + right]
            return (self.lhs() + ["="] + arr) if self.r.random() < 0.6 else arr
        if kind == "cases":
            rows = self.r.randint(2, 3)
            body: list[str] = []
            for k in range(rows):
                body += self.expr(self.r.randint(1, 6), depth=1) + ["&"]
                body += self.text() if self.r.random() < 0.5 else []
                body += self.letter() + [self.r.choice(["<", ">", "\\geq", "\\leq", "=", "\\in"])] + self.number()
                body += ["\\\\"] if k < rows - 1 else []
            return self.lhs() + ["="] + ["\\begin{cases}", *body, "\\end{cases}"]
        rows = self.r.randint(2, 3)
        body = []
        for k in range(rows):
            body += self.lhs() if k == 0 else []
            body += ["&", self.r.choice(RELATIONS[:14])] + self.expr(max(3, budget // rows - 4), depth=1)
            body += ["\\\\"] if k < rows - 1 else []
        return ["\\begin{aligned}", *body, "\\end{aligned}"]

    def _grid(self, rows: int, cols: int, cell) -> list[str]:
        out: list[str] = []
        for i in range(rows):
            for j in range(cols):
                out += cell()
                if j < cols - 1:
                    out.append("&")
            if i < rows - 1:
                out.append("\\\\")
        return out


class FormulaGenerator:
    """Deterministic random formulas: `formula(i)` depends only on (seed, i)."""

    def __init__(self, seed: int = 0, *, env_rate: float = 0.1, length_hist: list[int] | None = None) -> None:
        self.seed = seed
        self.env_rate = env_rate
        self.hist = length_hist or REAL_LENGTH_HIST

    def target_length(self, r: random.Random) -> int:
        b = r.choices(range(len(self.hist)), weights=self.hist)[0]
        return max(3, b * 10 + r.randint(0, 9))

    def formula(self, index: int) -> str:
        r = random.Random(f"formula:{self.seed}:{index}")  # str seeds hash with SHA-512: same in every process
        b = _Builder(r)
        target = self.target_length(r)
        env = r.random() < self.env_rate
        # constructs overshoot their budget: retry with a budget scaled by the miss, keep the closest
        budget, best = target * 0.7, None
        for _ in range(6):
            tokens = b.environment(max(2, int(budget))) if env else b.equation(max(2, int(budget)))
            if best is None or abs(len(tokens) - target) < abs(len(best) - target):
                best = tokens
            if abs(len(tokens) - target) <= max(3, target // 8):
                break
            budget *= min(1.6, max(0.4, target / len(tokens)))
        # `\\ [` would read the bracket as a length (`\\[2pt]`): keep such a cell's bracket literal
        best = [t for k, t in enumerate(best) for t in ((["{", "}", t]) if t == "[" and k and best[k - 1] == "\\\\"
                                                        else [t])]
        return " ".join(best)


class FormulaPool:
    """Generated formulas mixed with real ones at `real_ratio`, deterministic per (seed, index).

    With `mutate_ratio` > 0, that share of the real draws returns a mutation of the drawn real formula
    (`texocr.data.mutate`, origin "mutated") instead of the formula itself: so about `real_ratio *
    mutate_ratio` of all formulas are mutated, `real_ratio * (1 - mutate_ratio)` real.
    With `in_order`, index i is the real formula i (cycling), each once per pass: a test set of given formulas.
    """

    def __init__(self, seed: int = 0, real: list[str] | None = None, real_ratio: float = 0.0,
                 mutate_ratio: float = 0.0, in_order: bool = False) -> None:
        if not 0.0 <= real_ratio <= 1.0:
            raise TexocrError(f"real_ratio must be in [0, 1], got {real_ratio}")
        if not 0.0 <= mutate_ratio <= 1.0:
            raise TexocrError(f"mutate_ratio must be in [0, 1], got {mutate_ratio}")
        self.gen = FormulaGenerator(seed)
        self.real = real or []
        self.real_ratio = real_ratio if self.real else 0.0
        self.mutate_ratio = mutate_ratio if self.real else 0.0
        self.seed = seed
        self._mutator = None  # built on the first mutation (it analyses the real formulas once)
        if in_order and not self.real:
            raise TexocrError("in_order needs real formulas (--formulas)")
        self.in_order = in_order

    def formula(self, index: int) -> tuple[str, str]:
        if self.in_order:
            return self.real[index % len(self.real)], "real"
        r = random.Random(f"pool:{self.seed}:{index}")
        if self.real and r.random() < self.real_ratio:
            latex = self.real[r.randrange(len(self.real))]
            if self.mutate_ratio and r.random() < self.mutate_ratio:
                if self._mutator is None:
                    from texocr.data.mutate import Mutator

                    self._mutator = Mutator(self.real)
                return self._mutator.mutate(latex, random.Random(f"mutate:{self.seed}:{index}")), "mutated"
            return latex, "real"
        return self.gen.formula(index), "generated"

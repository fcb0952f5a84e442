"""New formulas that look like a corpus of real ones: seeded mutations of real formulas.

    from texocr.data.mutate import Mutator, mutate
    m = Mutator(real_formulas)                        # analyses the corpus once (~0.4 ms a formula)
    m.mutate(real_formulas[3], random.Random(7))      # a new formula, same look, different content
    mutate(formula, random.Random(7), real_formulas)  # the same, with the analysis cached per corpus

Formulas are space-tokenised LaTeX (`texocr.latex.tokenize`); every output is in texocr's normal form
(`normalize(m) == m`), passes `texocr.latex.is_valid`, keeps every environment's column count within what it
declares (`columns_ok`), and differs from its source. A mutation combines a few operations, each drawing
its material from the corpus (so the output keeps the corpus's symbol and sub-formula distributions):

- `rename`: symbols change within their class (Latin letters keeping case mostly, Greek, numbers,
  relations, arrows, `+ - \\pm \\mp`, other binary operators, big operators, functions, font commands,
  narrow and wide accents); a renamed letter changes everywhere in the formula, as a variable would;
- `script`: a sub- or superscript's content is replaced, a script is dropped, or one is added to a bare
  letter, with content drawn from the corpus's scripts of the same kind (a big operator's bounds or an
  atom's index);
- `splice`: the content of a group (a fraction's numerator, a root, `\\left( .. \\right)`, `( .. )`, a
  bare `{ .. }`) is replaced by the content of a group of the same kind and similar length from another
  formula;
- `recombine`: the formula is cut at its top-level relations and commas; a piece is replaced by a piece
  of another formula, or the formula is truncated there, or extended by a separator and a piece, towards a
  target length near the source's (so the length distribution stays the corpus's).

Protected tokens (`\\text` and other text-mode arguments, `\\operatorname`, multi-letter `\\mathrm` words,
environment arguments such as array column specs, dimensions, `\\begin{picture}`) are never changed.
A candidate that fails a check is retried with other operations; the result is deterministic for the
`random.Random` passed in. Pure Python; only `texocr.latex` is used for LaTeX syntax.
"""

from __future__ import annotations

import bisect
import random
from collections import Counter
from collections.abc import Sequence

from texocr.latex import commands as C
from texocr.latex import detokenize, is_valid, normalize, tokenize
from texocr.latex.lexer import dimension_end, group_end
from texocr.latex.parser import is_left, is_right

OPERATIONS = ("rename", "script", "splice", "recombine")
_OP_WEIGHTS = (5, 4, 4, 3)
MAX_TRIES = 12

# -- symbol classes -------------------------------------------------------------------------------------
_NARROW_ACCENTS = ("\\hat", "\\tilde", "\\bar", "\\vec", "\\dot", "\\ddot", "\\check", "\\breve", "\\acute",
                   "\\grave")
_WIDE_ACCENTS = ("\\widehat", "\\widetilde", "\\overline", "\\underline")
_FONTS = ("\\mathrm", "\\mathbf", "\\mathit", "\\mathsf", "\\mathtt", "\\boldsymbol")
_CAPITAL_FONTS = ("\\mathcal", "\\mathbb", "\\mathfrak")  # only over capital letters
_LIMIT_FUNCS = frozenset({"\\lim", "\\max", "\\min", "\\sup", "\\inf", "\\limsup", "\\liminf", "\\det", "\\Pr",
                          "\\gcd"})
_PLUSMINUS = frozenset({"+", "-", "\\pm", "\\mp"})
_RELATIONS = (C.RELATIONS | {"=", "<", ">"}) - {"\\mid", "\\colon", "\\not", "\\vdash", "\\dashv", "\\models",
                                                  "\\therefore", "\\because", "\\smile", "\\frown"}
_FRACS = frozenset({"\\frac", "\\dfrac", "\\tfrac", "\\binom", "\\dbinom", "\\tbinom"})
_PROTECT_ARGS = (C.TEXT_ARG_COMMANDS | C.SPACING_WITH_ARGS | {
    "\\operatorname", "\\operatorname*", "\\vspace", "\\color", "\\textcolor", "\\colorbox", "\\rule",
    "\\setlength", "\\label", "\\ref", "\\eqref", "\\tag", "\\href", "\\mathop"})
_SOFT_OPEN = frozenset({"(", "[", "\\{", "\\langle", "\\lfloor", "\\lceil"})
_SOFT_CLOSE = frozenset({")", "]", "\\}", "\\rangle", "\\rfloor", "\\rceil"})
_TRAILING = frozenset({".", ",", ";", "\\,", "\\;", "\\:", "\\!", "~", "\\", "\\quad", "\\qquad"})
# never copied into another formula: rows and cells, pictures, dimensions (their normal form `5 m m` is
# no TeX unit), `\\fbox` (text mode: the corpus puts math in it)
_NO_DONOR = frozenset({"&", "\\\\", "\\begin{picture}", "\\end{picture}", "\\fbox", "\\framebox"}) \
    | C.SPACING_WITH_ARGS | {"\\vspace", "\\hspace", "\\rule"}
_SIMPLE = frozenset({"lower", "upper", "digit", "greek", "Greek"})
_SPLICE_KINDS = ("frac", "sqrt", "delim", "paren", "bare")
_LIMITED_ENVS = {"cases": 2, "cases*": 2, "dcases": 2, "rcases": 2, "drcases": 2}
_MATRIX_COLUMNS = 10  # amsmath's MaxMatrixCols


def symbol_class(tok: str) -> str | None:
    """The substitution class of a token (None: never substituted on its own)."""
    if len(tok) == 1:
        if "a" <= tok <= "z":
            return "lower"
        if "A" <= tok <= "Z":
            return "upper"
        if tok.isdigit():
            return "digit"
        if tok in "=<>":
            return "rel"
        if tok in "+-":
            return "pm"
        return None
    if tok[0] != "\\":
        return None
    if tok in C.GREEK:
        return "Greek" if tok[1].isupper() else "greek"
    if tok in _PLUSMINUS:
        return "pm"
    if tok in C.BINARY_OPS:
        return "binop"
    if tok in C.ARROWS:
        return "arrow"
    if tok in _RELATIONS:
        return "rel"
    if tok in C.BIG_OPERATORS:
        return "bigop"
    if tok in _LIMIT_FUNCS:
        return "limfunc"
    if tok in C.LOG_LIKE:
        return "func"
    if tok in _NARROW_ACCENTS:
        return "accent"
    if tok in _WIDE_ACCENTS:
        return "wideaccent"
    if tok in _FONTS or tok in _CAPITAL_FONTS:
        return "font"
    return None


def columns_ok(tokens: Sequence[str]) -> bool:
    """True when no row of an environment has more cells than it allows (an array's column spec, amsmath's
    10 matrix columns, 2 for cases); the LaTeX checker does not count columns."""
    stack: list[list] = []  # [name, limit, cells in the current row]
    n = len(tokens)
    i = 0
    while i < n:
        tok = tokens[i]
        if tok.startswith("\\begin{"):
            name = tok[7:-1]
            limit = None
            if name in ("array", "darray", "subarray", "tabular"):
                j = i + 1
                if j < n and tokens[j] == "[":
                    while j < n and tokens[j] != "]":
                        j += 1
                    j += 1
                if j < n and tokens[j] == "{":
                    end = _close_of(tokens, j)
                    limit = _spec_columns(tokens[j + 1:end])
                    i = end
            elif name.rstrip("*").endswith("matrix"):
                limit = _MATRIX_COLUMNS
            else:
                limit = _LIMITED_ENVS.get(name)
            stack.append([name, limit, 1])
        elif tok.startswith("\\end{"):
            if stack:
                stack.pop()
        elif stack and tok == "&":
            stack[-1][2] += 1
            if stack[-1][1] is not None and stack[-1][2] > stack[-1][1]:
                return False
        elif stack and tok == "\\\\":
            stack[-1][2] = 1
        i += 1
    return True


def _close_of(tokens: Sequence[str], j: int) -> int:
    end = group_end(tokens, j)
    return len(tokens) - 1 if end is None else end


def _spec_columns(spec: Sequence[str]) -> int:
    """Columns of an array spec (`l c | r`, `p { 3 c m }`, `@ { }`, `* { 3 } { c }` counted roughly)."""
    count, depth, skip_group = 0, 0, False
    for k, tok in enumerate(spec):
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth -= 1
        elif depth == 0 and tok in ("l", "c", "r", "p", "m", "b", "X"):
            count += 1
        elif depth == 0 and tok == "*":
            skip_group = True
        if skip_group and depth == 0 and tok == "}" and k + 1 < len(spec) and spec[k + 1] == "{":
            return 10**6  # `*{n}{c}`: do not guess
    return count


# -- structure of one token list --------------------------------------------------------------------------
class _Layout:
    """Matching pairs, owners of groups, protected tokens and top-level separators of a normalized formula."""

    def __init__(self, t: list[str]) -> None:
        n = len(t)
        self.t = t
        self.close: dict[int, int] = {}  # opener index -> closer index ({ }, \left \right, \begin \end, ( ))
        self.owner: dict[int, str] = {}  # `{` index -> the command whose argument it is ("^" / "_" scripts)
        self.protected = [False] * n
        self.capital = [False] * n  # inside \\mathcal { .. } and the like: letters stay capitals
        self.top: list[bool] = [False] * n  # at hard depth 0 and bracket depth 0
        self.spans: list[tuple[str, int, int]] = []  # (kind, first, end) content spans to splice
        self.scripts: list[tuple[str, int, int, str]] = []  # (^ or _, index of ^/_, index of `}`, base kind)
        hard: list[int] = []
        parens: dict[int, list[int]] = {}
        soft = 0
        picture = 0
        for i, tok in enumerate(t):
            if tok == "{" or is_left(tok) or tok.startswith("\\begin{"):
                hard.append(i)
                if tok == "\\begin{picture}":
                    picture += 1
            elif tok == "}" or is_right(tok) or tok.startswith("\\end{"):
                if hard:
                    j = hard.pop()
                    self.close[j] = i
                if tok == "\\end{picture}":
                    picture -= 1
            elif tok == "(":
                parens.setdefault(hard[-1] if hard else -1, []).append(i)
            elif tok == ")":
                stack = parens.get(hard[-1] if hard else -1)
                if stack:
                    j = stack.pop()
                    if i - j > 1:
                        self.spans.append(("paren", j + 1, i))
            if picture:
                self.protected[i] = True
            if not hard:
                if tok in _SOFT_OPEN:
                    soft += 1
                elif tok in _SOFT_CLOSE:
                    soft -= 1
                self.top[i] = soft == 0 and tok not in _SOFT_CLOSE
        for i, tok in enumerate(t):
            if tok == "\\begin{picture}" and i in self.close:
                for k in range(i, self.close[i] + 1):
                    self.protected[k] = True
            elif is_left(tok) and i in self.close and self.close[i] - i > 1:
                self.spans.append(("delim", i + 1, self.close[i]))
            elif tok.startswith("\\begin{"):
                self._arguments(i, C.ENV_SIGNATURES.get(tok[7:-1], ""), protect=True)
            elif tok in C.SIGNATURES:
                self._arguments(i, C.SIGNATURES[tok], protect=tok in _PROTECT_ARGS)
                if (tok in _CAPITAL_FONTS or tok == "\\mathscr") and i + 1 in self.close and t[i + 1] == "{":
                    for k in range(i + 1, self.close[i + 1]):
                        self.capital[k] = True
            elif tok == "\\not" and i + 1 < n:
                self.protected[i + 1] = True
        for i, tok in enumerate(t):
            if tok != "{" or i not in self.close:
                continue
            end = self.close[i]
            own = self.owner.get(i)
            if own is None and i and t[i - 1] in ("^", "_"):
                continue
            if own == "\\mathrm" and end - i > 2:  # a word: `\mathrm { e f f }`
                for k in range(i, end + 1):
                    self.protected[k] = True
            if end - i < 2 or self.protected[i]:
                continue
            kind = ("bare" if own is None else "frac" if own in _FRACS else "sqrt" if own == "\\sqrt"
                    else None)
            if kind:
                self.spans.append((kind, i + 1, end))
        for i, tok in enumerate(t):
            if tok in ("^", "_") and i + 1 < n and t[i + 1] == "{" and i + 1 in self.close \
                    and not self.protected[i]:
                self.scripts.append((tok, i, self.close[i + 1], self._base_kind(i)))
        # a `\\bigl ( .. \\bigr )` pair is no plain `( .. )`: its parentheses are protected delimiter arguments
        self.spans = [s for s in self.spans if not (self.protected[s[1]] or self.protected[s[1] - 1]
                                                    or self.protected[s[2]])]

    def _arguments(self, i: int, sig: str, protect: bool) -> None:
        t, n = self.t, len(self.t)
        j = i + 1
        for kind in sig:
            if j >= n:
                return
            if kind == "S":
                if t[j] == "*":
                    j += 1
            elif kind == "O":
                if t[j] == "[":
                    depth, k = 0, j
                    while k < n:
                        if t[k] == "{":
                            depth += 1
                        elif t[k] == "}":
                            depth -= 1
                        elif t[k] == "]" and depth == 0:
                            break
                        k += 1
                    if protect:
                        self._protect(j, k)
                    j = k + 1
            elif kind == "A":
                if t[j] == "{" and j in self.close:
                    self.owner[j] = t[i]
                    if protect:
                        self._protect(j, self.close[j])
                    j = self.close[j] + 1
                else:
                    if protect:
                        self._protect(j, j)
                    j += 1
            elif kind == "D":
                self._protect(j, j)
                j += 1
            elif kind == "L":
                end = dimension_end(t, j, n)
                if end is None:
                    return
                self._protect(j, end - 1)
                j = end
        if protect:
            self.protected[i] = True

    def _protect(self, a: int, b: int) -> None:
        for k in range(a, min(b, len(self.t) - 1) + 1):
            self.protected[k] = True

    def _base_kind(self, i: int) -> str:
        """`op` when the script at i belongs to a big operator or a limit-like function, else `atom`."""
        t = self.t
        k = i - 1
        while k >= 0 and t[k] == "}":  # skip an earlier script of the same base (`x _ { i } ^ { 2 }`)
            opener = next((o for o, c in self.close.items() if c == k), None)
            if opener is None or opener < 1 or t[opener - 1] not in ("^", "_"):
                break
            k = opener - 2
        if k >= 0 and (t[k] in C.BIG_OPERATORS or t[k] in _LIMIT_FUNCS or t[k] in ("\\limits", "\\nolimits")):
            return "op"
        return "atom"

    def separators(self) -> list[int]:
        """Top-level relations and commas that a formula can be cut at."""
        t = self.t
        return [i for i, tok in enumerate(t) if self.top[i] and not self.protected[i] and 0 < i < len(t) - 1
                and (tok == "," or symbol_class(tok) in ("rel", "arrow"))]


def _trailing(t: list[str]) -> int:
    """Index where the trailing punctuation and spacing (`\\, .`) begin."""
    k = len(t)
    while k > 1 and t[k - 1] in _TRAILING:
        k -= 1
    return k


class _Weighted:
    """Items drawn by their corpus frequency (deterministic order: first appearance)."""

    def __init__(self, counts: Counter) -> None:
        self.items = list(counts)
        self.cum: list[int] = []
        total = 0
        for item in self.items:
            total += counts[item]
            self.cum.append(total)

    def draw(self, rng: random.Random, avoid=None, tries: int = 6):
        if not self.items:
            return None
        for _ in range(tries):
            x = self.items[bisect.bisect_right(self.cum, rng.random() * self.cum[-1])]
            if x != avoid:
                return x
        return None


class _ByLength:
    """Token tuples indexed by length, for drawing one of about a given length."""

    def __init__(self, items: list[tuple[str, ...]]) -> None:
        items = sorted(items, key=len)  # stable: corpus order within one length
        self.items = items
        self.lengths = [len(x) for x in items]

    def draw(self, rng: random.Random, length: int, slack: float = 0.5) -> tuple[str, ...] | None:
        lo, hi = max(1, int(length * (1 - slack))), int(length * (1 + slack)) + 2
        a, b = bisect.bisect_left(self.lengths, lo), bisect.bisect_right(self.lengths, hi)
        if a >= b:
            return None
        return self.items[rng.randrange(a, b)]


class Mutator:
    """Mutations of formulas drawn from the material of `corpus` (real formulas, any spelling)."""

    def __init__(self, corpus: Sequence[str]) -> None:
        seen: dict[str, None] = {}
        for f in corpus:
            norm = normalize(f)
            if norm and norm not in seen and is_valid(norm) and columns_ok(norm.split(" ")):
                seen[norm] = None
        self.formulas = [tokenize(f) for f in seen]
        if not self.formulas:
            raise ValueError("no valid formula in the corpus to mutate")
        classes: dict[str, Counter] = {}
        numbers: Counter = Counter()
        scripts: dict[tuple[str, str], list[tuple[str, ...]]] = {}
        spans: dict[str, list[tuple[str, ...]]] = {k: [] for k in _SPLICE_KINDS}
        pieces: list[tuple[str, ...]] = []
        seps: Counter = Counter()
        for t in self.formulas:
            lay = _Layout(t)
            for i, tok in enumerate(t):
                if lay.protected[i]:
                    continue
                cls = symbol_class(tok)
                if cls == "digit":
                    if i == 0 or (t[i - 1] != "." and not t[i - 1].isdigit()):
                        numbers[tuple(_number_at(t, i))] += 1
                elif cls is not None:
                    classes.setdefault(cls, Counter())[tok] += 1
            for kind, a, b, base in lay.scripts:
                body = tuple(t[a + 2:b])
                if body and _NO_DONOR.isdisjoint(body):
                    scripts.setdefault((kind, base), []).append(body)
            for kind, a, b in lay.spans:
                body = tuple(t[a:b])
                if _NO_DONOR.isdisjoint(body) and not any(x.startswith("\\begin{") for x in body):
                    spans[kind].append(body)
            cut = _trailing(t)
            prev = 0
            for s in [k for k in lay.separators() if k < cut] + [cut]:
                if s < cut:
                    seps[t[s]] += 1
                body = tuple(t[prev:s])
                while body and body[0] in C.SPACING:  # `, \\quad n = 1`: the spacing belongs to the comma
                    body = body[1:]
                if body and _NO_DONOR.isdisjoint(body) and _whole_piece(body):
                    pieces.append(body)
                prev = s + 1
        self.classes = {k: _Weighted(v) for k, v in classes.items()}
        self.fonts_seen = frozenset(classes.get("font", ()))
        self.numbers = _Weighted(numbers)
        self.scripts = {k: _Weighted(Counter(v)) for k, v in scripts.items()}
        self.spans = {k: _ByLength(v) for k, v in spans.items()}
        self.pieces = _ByLength(pieces)
        self.separators = _Weighted(seps) if seps else _Weighted(Counter({"=": 1}))
        self.lengths = sorted(len(t) for t in self.formulas)

    # -- the public entry --------------------------------------------------------------------------------
    def mutate(self, formula: str, rng: random.Random) -> str:
        """A new valid, normalized formula made from `formula` (deterministic for the state of `rng`)."""
        source = normalize(formula)
        tokens = tokenize(source)
        avoid = {formula, source}
        if not tokens or not is_valid(source) or not columns_ok(tokens):
            tokens = self.formulas[rng.randrange(len(self.formulas))]  # unusable source: mutate a real one
            avoid.add(detokenize(tokens))
        for attempt in range(MAX_TRIES):
            ops = self._plan(rng, attempt)
            out = self._apply(tokens, ops, rng)
            if out is not None and out not in avoid:
                return out
        for _ in range(MAX_TRIES):  # the source resists (tiny or all protected): mutate another real formula
            t = self.formulas[rng.randrange(len(self.formulas))]
            out = self._apply(t, self._plan(rng, 0), rng)
            if out is not None and out not in avoid:
                return out
        return self._fallback(rng, avoid)

    # -- planning and checking ---------------------------------------------------------------------------
    def _plan(self, rng: random.Random, attempt: int) -> list[str]:
        k = rng.choice((1, 2, 2, 3)) if attempt < MAX_TRIES // 2 else 1
        ops = []
        while len(ops) < k:
            op = rng.choices(OPERATIONS, weights=_OP_WEIGHTS)[0]
            if op not in ops:
                ops.append(op)
        return ops

    def _apply(self, tokens: list[str], ops: list[str], rng: random.Random) -> str | None:
        t = list(tokens)
        changed = False
        for op in ops:
            new = getattr(self, "_" + op)(t, rng)
            if new is not None and new != t:
                t, changed = new, True
        if not changed or not t:
            return None
        out = normalize(detokenize(t))
        if not out or not is_valid(out) or normalize(out) != out or not columns_ok(tokenize(out)):
            return None
        return out

    def _fallback(self, rng: random.Random, avoid: set[str]) -> str:
        letters = self.classes.get("lower") or self.classes.get("upper")
        for _ in range(100):
            a = (letters.draw(rng) if letters else None) or rng.choice("abcxyz")
            out = f"{a} = {rng.randint(0, 99)}"
            out = normalize(out)
            if out not in avoid:
                return out
        raise RuntimeError("cannot mutate")  # unreachable: 100 draws of `a = n` all in a 3-item set

    # -- operations: each returns a new token list or None ------------------------------------------------
    def _rename(self, t: list[str], rng: random.Random) -> list[str] | None:
        lay = _Layout(t)
        p = rng.uniform(0.2, 0.6)
        mapping: dict[str, str | None] = {}
        out: list[str] = []
        i, n = 0, len(t)
        while i < n:
            tok = t[i]
            cls = None if lay.protected[i] else symbol_class(tok)
            if cls == "digit":
                num = _number_at(t, i)
                new = self.numbers.draw(rng, avoid=tuple(num)) if rng.random() < p else None
                out.extend(new if new else num)
                i += len(num)
                continue
            if cls in ("lower", "upper", "greek", "Greek"):
                if tok not in mapping:
                    mapping[tok] = self._other_letter(tok, cls, rng) if rng.random() < p else None
                new = mapping[tok]
                out.append(tok if new is None or (lay.capital[i] and symbol_class(new) != "upper") else new)
            elif cls in ("font",):
                out.append(self._other_font(t, i, lay, rng) if rng.random() < p else tok)
            elif cls is not None:
                q = p / 2 if cls in ("rel", "pm") else p
                new = self.classes[cls].draw(rng, avoid=tok) if cls in self.classes and rng.random() < q else None
                out.append(new or tok)
            else:
                out.append(tok)
            i += 1
        return out

    def _other_letter(self, tok: str, cls: str, rng: random.Random) -> str | None:
        if cls in ("lower", "upper") and rng.random() < 0.1:
            cls = "upper" if cls == "lower" else "lower"
        elif cls in ("greek", "Greek") and rng.random() < 0.1:
            cls = "Greek" if cls == "greek" else "greek"
        pool = self.classes.get(cls)
        return pool.draw(rng, avoid=tok) if pool else None

    def _other_font(self, t: list[str], i: int, lay: _Layout, rng: random.Random) -> str:
        j = i + 1
        end = lay.close.get(j) if j < len(t) and t[j] == "{" else None
        if end is None:
            return t[i]
        body = t[j + 1:end]
        if not body or not all(symbol_class(x) in _SIMPLE for x in body):
            return t[i]  # `\\boldsymbol { \\boldmath .. }` or `{ \\scriptsize .. }` loops in TeX: symbols only
        capitals = all(len(x) == 1 and "A" <= x <= "Z" for x in body)
        if t[i] in _CAPITAL_FONTS and not capitals:
            return t[i]
        choices = [f for f in _FONTS + (_CAPITAL_FONTS if capitals else ()) if f != t[i]]
        weights = [1 + 3 * (f in self.fonts_seen) for f in choices]  # the corpus's fonts are likelier
        return rng.choices(choices, weights=weights)[0]

    def _script(self, t: list[str], rng: random.Random) -> list[str] | None:
        lay = _Layout(t)
        r = rng.random()
        if lay.scripts and r < 0.55:  # change an existing script's content
            kind, a, b, base = rng.choice(lay.scripts)
            body = self._script_body(kind, base, rng, b - a - 2, avoid=tuple(t[a + 2:b]))
            return None if body is None else t[:a + 2] + list(body) + t[b:]
        if lay.scripts and r < 0.75:  # drop one
            kind, a, b, base = rng.choice(lay.scripts)
            return t[:a] + t[b + 1:]
        # add one to a bare letter (or one that has the other script only)
        spots = []
        for i, tok in enumerate(t):
            if lay.protected[i] or symbol_class(tok) not in ("lower", "upper", "greek", "Greek"):
                continue
            if i and (t[i - 1] in C.SIGNATURES or t[i - 1] in ("^", "_")):
                continue
            nxt = t[i + 1] if i + 1 < len(t) else None
            if nxt not in ("^", "_", "'"):
                spots.append((i + 1, rng.choice("_^")))
            elif nxt in ("^", "_") and i + 2 < len(t) and t[i + 2] == "{" and i + 2 in lay.close:
                after = lay.close[i + 2] + 1
                if after >= len(t) or t[after] not in ("^", "_", "'"):
                    spots.append((after, "_" if nxt == "^" else "^"))
        if not spots:
            return None
        at, kind = rng.choice(spots)
        body = self._script_body(kind, "atom", rng, 1)
        return None if body is None else t[:at] + [kind, "{", *body, "}"] + t[at:]

    def _script_body(self, kind: str, base: str, rng: random.Random, length: int,
                     avoid: tuple[str, ...] | None = None) -> tuple[str, ...] | None:
        pool = self.scripts.get((kind, base)) or self.scripts.get((kind, "atom"))
        if pool is None:
            return None
        best = None
        for _ in range(3):  # of three draws keep the one closest in length (the length stays the source's)
            x = pool.draw(rng, avoid=avoid)
            if x is not None and (best is None or abs(len(x) - length) < abs(len(best) - length)):
                best = x
        return best

    def _splice(self, t: list[str], rng: random.Random) -> list[str] | None:
        lay = _Layout(t)
        spans = [s for s in lay.spans if self.spans[s[0]].items]
        if not spans:
            return None
        kind, a, b = rng.choice(spans)
        body = self.spans[kind].draw(rng, b - a)
        if body is None or list(body) == t[a:b]:
            return None
        return t[:a] + list(body) + t[b:]

    def _recombine(self, t: list[str], rng: random.Random) -> list[str] | None:
        lay = _Layout(t)
        cut = _trailing(t)
        tail = t[cut:]
        seps = [k for k in lay.separators() if k < cut]
        n = len(t)
        target = n * rng.uniform(0.7, 1.35)
        if seps and target < n * 0.9:  # truncate at the separator that leaves about `target` tokens
            cuts = [(abs(s - target), 0, s) for s in seps if s >= 2] + \
                   [(abs(n - s - 1 - target), 1, s) for s in seps if n - s - 1 >= 2]
            if not cuts:
                return None
            cuts.sort()
            _, tail_side, s = cuts[rng.randrange(min(2, len(cuts)))]
            return t[s + 1:] if tail_side else t[:s] + tail
        if target > n * 1.1 or not seps:  # extend: a separator and a piece of another formula
            piece = self.pieces.draw(rng, max(2, int(target - n)), slack=0.5)
            sep = self.separators.draw(rng)
            if piece is None or sep is None:
                return None
            return t[:cut] + [sep, *piece] + tail
        bounds = [-1] + seps + [cut]  # replace one piece by a piece of similar length
        k = rng.randrange(len(bounds) - 1)
        a, b = bounds[k] + 1, bounds[k + 1]
        if b - a < 1:
            return None
        piece = self.pieces.draw(rng, b - a, slack=0.4)
        return None if piece is None else t[:a] + list(piece) + t[b:]


def _whole_piece(body: tuple[str, ...]) -> bool:
    """A piece that reads as a term: no relation at either end (`| \\phi >`), brackets balanced."""
    if symbol_class(body[0]) in ("rel", "arrow") or symbol_class(body[-1]) in ("rel", "arrow"):
        return False
    return sum(x in _SOFT_OPEN for x in body) == sum(x in _SOFT_CLOSE for x in body)


def _number_at(t: list[str], i: int) -> list[str]:
    """The digits (and one decimal point) starting at i: `1 0`, `0 . 5`."""
    j = i
    while j < len(t) and t[j].isdigit():
        j += 1
    if j + 1 < len(t) and t[j] == "." and t[j + 1].isdigit():
        j += 1
        while j < len(t) and t[j].isdigit():
            j += 1
    return t[i:j]


_CACHE: list[tuple[Sequence[str], int, Mutator]] = []


def mutate(formula: str, rng: random.Random, corpus: Sequence[str] | Mutator) -> str:
    """A mutation of `formula` drawn with `rng` from the material of `corpus` (a list of real formulas, whose
    analysis is cached while the same list object is passed, or a `Mutator`)."""
    if isinstance(corpus, Mutator):
        return corpus.mutate(formula, rng)
    for seq, size, m in _CACHE:
        if seq is corpus and size == len(corpus):
            return m.mutate(formula, rng)
    m = Mutator(corpus)
    _CACHE[:] = [(corpus, len(corpus), m)] + _CACHE[:3]
    return m.mutate(formula, rng)

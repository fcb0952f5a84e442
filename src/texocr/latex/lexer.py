"""LaTeX source -> tokens, in the im2latex / CROHME space-separated convention.

Tokens: a command (`\\frac`, `\\operatorname*`), a control symbol (`\\,`, `\\{`, `\\\\`), a control space
(`\\ `, written as the one-character token `\\`), `\\begin{name}` / `\\end{name}` as one token,
`\\left(` / `\\right\\}` / `\\left\\langle` as one token (a valid delimiter attached; `\\left` alone otherwise), `--` / `---` (the TeX ligatures, as im2latex
keeps them) and otherwise single characters. Whitespace separates tokens and is dropped, so
`tokenize(" ".join(tokenize(s))) == tokenize(s)` for every string.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

from texocr.latex.commands import DELIMITER_TOKENS, TEXT_ARG_COMMANDS

_DELIMITER_NAMES = "|".join(sorted((d[1:] for d in DELIMITER_TOKENS if d[1:].isalpha()), key=len, reverse=True))
_TOKEN_RE = re.compile(
    r"""
     (?P<env>\\(?:begin|end)\s*\{\s*[A-Za-z]+\*?\s*\})
    |(?P<lr>\\(?:left|right)(?![A-Za-z@])\s*(?:\\(?:"""
    + _DELIMITER_NAMES
    + r""")(?![A-Za-z@])|\\[{}|]|[()\[\]|./<>]))
    |(?P<star>\\operatorname\s*\*)
    |(?P<cmd>\\[A-Za-z@]+)
    |(?P<cs>\\(?:\s|$))
    |(?P<sym>\\.)
    |(?P<dash>---?)
    |(?P<ch>\S)
    """,
    re.VERBOSE | re.DOTALL,
)
_FIND_RE = re.compile(re.sub(r"\(\?P<\w+>", "(?:", _TOKEN_RE.pattern), re.VERBOSE | re.DOTALL)
# Only a string matching this can hold a token that needs `_fix` (a fast path for the common case).
_NEEDS_FIX_RE = re.compile(r"\\(?:\s|$|(?:begin|end|left|right|operatorname)\s|(?:begin|end)\s*\{[^}]*\s)")
_SPACE_RE = re.compile(r"\s+")
# An unescaped % (preceded by an even number of backslashes) starts a comment that runs to the line end.
_COMMENT_RE = re.compile(r"(?<!\\)((?:\\\\)*)%[^\n]*")


class Token(NamedTuple):
    """One token and its character span in the source."""

    text: str
    start: int
    end: int


def lex(s: str) -> list[Token]:
    """Tokens of `s` with their spans (comments are not removed: see `blank_comments`)."""
    out: list[Token] = []
    append = out.append
    for m in _TOKEN_RE.finditer(s):
        kind = m.lastgroup
        text = m.group()
        if kind == "env" or kind == "lr" or kind == "star":
            text = _SPACE_RE.sub("", text)
        elif kind == "cs":
            text = "\\"
        append(Token(text, m.start(), m.end()))
    return out


def blank_comments(s: str) -> str:
    """`s` with every `%` comment replaced by spaces of the same length (offsets keep their meaning)."""
    if "%" not in s:
        return s
    return _COMMENT_RE.sub(lambda m: m.group(1) + " " * (len(m.group()) - len(m.group(1))), s)


def tokenize(s: str) -> list[str]:
    """LaTeX source -> list of tokens (see the module docstring for the convention).

    A `%` is kept as a token here (tokenize is lexical); `normalize` drops comments.
    """
    tokens = _FIND_RE.findall(s)  # whole matches: the pattern's groups are non-capturing here
    if _NEEDS_FIX_RE.search(s):
        tokens = [_fix(t) for t in tokens]
    return tokens


def _fix(t: str) -> str:
    """Spell a token canonically: control space -> `\\`, no whitespace inside `\\begin {x}`."""
    if len(t) < 2 or t[0] != "\\":
        return t
    if t[1].isspace():
        return "\\"
    return "".join(t.split())


def detokenize(tokens: list[str]) -> str:
    """Tokens -> source text, space-joined (the im2latex convention), except that a dimension is
    written whole (`\\hspace { 1cm }`, `\\kern -2mu`): TeX reads `1 c m` as a bad unit; and the first four
    arguments of `\\genfrac` are written without spaces.

    `tokenize(detokenize(tokens)) == tokens` for every token list.
    """
    if not _DIMENSION_COMMANDS.intersection(tokens):
        return " ".join(tokens)
    out: list[str] = []
    i, n = 0, len(tokens)
    while i < n:
        tok = tokens[i]
        out.append(tok)
        i += 1
        if tok == "\\genfrac":  # delimiters, rule thickness, style: TeX tests them for emptiness, and `{ }`
            for _ in range(4):      # (a space) is not empty; the thickness is a dimension
                end = group_end(tokens, i)
                if end is None:
                    break
                out.append("{" + _glue(tokens[i + 1:end]) + "}")
                i = end + 1
            continue
        if tok not in _DIMENSION_COMMANDS:
            continue
        if i < n and tokens[i] == "*":
            out.append("*")
            i += 1
        for _ in range(2 if tok == "\\rule" else 1):
            braced = i < n and tokens[i] == "{"
            end = dimension_end(tokens, i + braced, n)
            if end is None or (braced and (end >= n or tokens[end] != "}")):
                break
            out.extend(["{", "".join(tokens[i + 1:end]), "}"] if braced else ["".join(tokens[i:end])])
            i = end + braced
    return " ".join(out)


def typeset_source(s: str) -> str:
    """What a renderer should typeset for the LaTeX `s` (tokenized or not): like `s`, but with dimensions
    whole (`\\hspace { 5mm }`: TeX rejects `5 m m`) and the first argument of a text-mode command glued
    (`\\text{even}`: the token convention's `\\text { e v e n }` would be typeset as spaced-out letters,
    since spaces count in text mode). `s` is returned unchanged when it has neither.
    """
    tokens = tokenize(s)
    if not (_DIMENSION_COMMANDS.intersection(tokens) or TEXT_ARG_COMMANDS.intersection(tokens)):
        return s
    out: list[str] = []
    i, n = 0, len(tokens)
    while i < n:
        out.append(tokens[i])
        j = group_end(tokens, i + 1) if tokens[i] in TEXT_ARG_COMMANDS else None
        if j is not None:  # a balanced argument: one token "{...}" with its letters touching
            out.append("{" + _glue(tokens[i + 2:j]) + "}")
            i = j
        i += 1
    return detokenize(out)


def group_end(tokens: Sequence[str], j: int) -> int | None:
    """Index of the `}` closing the group that opens at `tokens[j] == "{"`; None if there is none."""
    if j >= len(tokens) or tokens[j] != "{":
        return None
    depth = 0
    for k in range(j, len(tokens)):
        depth += {"{": 1, "}": -1}.get(tokens[k], 0)
        if depth == 0:
            return k
    return None


def _glue(tokens: list[str]) -> str:
    """Tokens joined with no spaces wherever they stay the same tokens: one space after a control word
    that a letter follows (`\\alpha b`, not `\\alphab`); the control space (token `\\`) keeps its space
    (`\\}` would be the symbol `\\}`), and dashes stay apart (`--` would be the ligature)."""
    text = ""
    for t in tokens:
        word_then_letter = (t[:1].isalpha() or t[:1] == "@") and re.search(r"\\[A-Za-z@]+$", text)
        if text and (word_then_letter or (text.endswith("-") and t.startswith("-"))):
            text += " "
        text += "\\ " if t == "\\" else t
    return text


def dimension_end(tokens: list[str], j: int, n: int) -> int | None:
    """End index (< n) of a TeX dimension `[sign] digits [unit]` starting at j (`- 0 . 5 e m`), or None."""
    k = j + (j < n and tokens[j] in ("-", "+"))
    start = k
    while k < n and (tokens[k].isdigit() or tokens[k] in (".", ",")):
        k += 1
    if k == start:
        return None
    if k + 1 < n and tokens[k] + tokens[k + 1] in _UNITS:
        k += 2
    return k


_UNITS = frozenset({"pt", "em", "ex", "mu", "cm", "mm", "in", "pc", "bp", "dd", "cc", "sp"})
# Commands followed by a dimension, braced (`\\hspace{1cm}`) or not (`\\kern 2pt`).
_DIMENSION_COMMANDS = frozenset({"\\genfrac", "\\hspace", "\\vspace", "\\kern", "\\mkern", "\\hskip", "\\vskip",
                                 "\\mskip", "\\raise", "\\lower", "\\rule"})

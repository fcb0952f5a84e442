"""validate / is_valid / repair: find what would stop a formula from compiling, and fix what is safe.

Structural issues (repair fixes these): unbalanced braces, unmatched `\\left`/`\\right`, unmatched or
mismatched `\\begin`/`\\end`, a `\\left`/`\\right` without a delimiter, a dangling or double script, a
command missing an argument. Other issues (reported, never repaired): unknown commands or
environments, a misplaced `&`, a `$` inside the formula, commands that
read files or run programs (`unsafe_command`).
"""

from __future__ import annotations

from dataclasses import dataclass

from texocr.latex import commands as C
from texocr.latex.lexer import Token, blank_comments, lex
from texocr.latex.normalize import strip_wrappers
from texocr.latex.parser import Fix, Parser, Problem, TooDeep, is_left, is_right

STRUCTURAL_KINDS = frozenset({
    "unclosed_brace", "unmatched_brace", "unclosed_left", "unmatched_right", "missing_delimiter",
    "unclosed_env", "unmatched_end", "env_mismatch", "dangling_script", "double_superscript",
    "double_subscript", "missing_argument", "too_deep",
})


@dataclass(frozen=True)
class LatexIssue:
    """One problem in a formula: `kind` (machine-readable), `message`, `pos` (character offset)."""

    kind: str
    message: str
    pos: int


def validate(s: str) -> list[LatexIssue]:
    """Every issue found in `s`, in order of position (an empty list means it should compile)."""
    return [LatexIssue(p.kind, p.message, p.pos) for p in _problems(s)]


def is_valid(s: str) -> bool:
    """True when `validate(s)` finds nothing (structure and vocabulary)."""
    return not _problems(s)


def repair(s: str) -> str:
    """A conservative fix of model output: close open braces / environments, add a missing
    `\\right.` / `\\left.`, drop a dangling script or an unmatched closer, brace a double script.

    Returns `s` unchanged when it has no structural issue; unknown commands are left alone.
    """
    for _ in range(4):
        fixes = [p.fix for p in _problems(s, ordered=False)
                 if p.kind in STRUCTURAL_KINDS and p.fix is not None]
        if not fixes:
            return s
        s = _apply(s, fixes)
    return s


# --- internals ------------------------------------------------------------------------------------
def _problems(s: str, ordered: bool = True) -> list[Problem]:
    """Problems by position (`ordered`) or in the parser's order (which `_apply` relies on for ties)."""
    blanked = blank_comments(s)
    tokens = lex(blanked)
    texts = [t.text for t in tokens]
    inner = strip_wrappers(texts)
    cut = (len(texts) - len(inner)) // 2
    tokens = tokens[cut:len(tokens) - cut]
    parser = Parser(inner, [t.start for t in tokens], [t.end for t in tokens], len(s))
    try:
        parser.parse()
        problems = parser.problems
    except TooDeep:
        problems = [Problem("too_deep", "nesting too deep to check", 0, None)] + _flat_braces(tokens, len(s))
    problems.extend(_vocabulary(tokens))
    if ordered:
        problems.sort(key=lambda p: p.pos)
    return problems


def _vocabulary(tokens: list[Token]) -> list[Problem]:
    out = []
    for tok in tokens:
        text = tok.text
        if text[0] != "\\":
            if text in ("$", "#"):
                out.append(Problem("misplaced_character", f"{text} inside a formula", tok.start))
            continue
        if text.startswith(("\\begin{", "\\end{")):
            name = text[text.index("{") + 1:-1]
            if name not in C.KNOWN_ENVIRONMENTS:
                out.append(Problem("unknown_environment", f"unknown environment {name}", tok.start))
        elif is_left(text) or is_right(text):
            continue  # the lexer attaches only valid delimiters; a bare one is a parser problem
        elif text in C.UNSAFE_COMMANDS:
            out.append(Problem("unsafe_command", f"{text} is refused (file access or macros)", tok.start))
        elif text not in C.KNOWN_COMMANDS:
            out.append(Problem("unknown_command", f"unknown command {text}", tok.start))
    return out


def _flat_braces(tokens: list[Token], length: int) -> list[Problem]:
    """Brace balance without the tree (for input nested too deep to parse)."""
    out, depth = [], 0
    for tok in tokens:
        if tok.text == "{":
            depth += 1
        elif tok.text == "}":
            if depth == 0:
                out.append(Problem("unmatched_brace", "a closing brace with no opening brace",
                                   tok.start, Fix(tok.start, tok.end, "")))
            else:
                depth -= 1
    if depth:
        out.append(Problem("unclosed_brace", "an opening brace is never closed", length,
                           Fix(length, length, "}" * depth)))
    return out


def _apply(s: str, fixes: list[Fix]) -> str:
    """Apply non-overlapping edits in order of position (ties keep the parser's order)."""
    tail_comment = blank_comments(s[s.rfind("\n") + 1:]) != s[s.rfind("\n") + 1:]
    parts, cursor = [], 0
    for fix in sorted(fixes, key=lambda f: f.start):  # stable: ties keep recording order
        if fix.start < cursor:
            continue
        text = fix.text
        if fix.start == len(s) and tail_comment:
            text = "\n" + text
            tail_comment = False
        parts.append(s[cursor:fix.start])
        parts.append(text)
        cursor = fix.end
    parts.append(s[cursor:])
    return "".join(parts)

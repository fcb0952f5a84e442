"""TeX's math atom classes and inter-atom spacing (The TeXbook, chapter 18), for rewrites that must not move ink.

LaTeX's `~` is `\\nobreakspace{}`: the same interword glue as `\\ `, plus an empty group, i.e. an empty Ord atom.
That atom takes part in TeX's inter-atom spacing: `= ~ \\sum` gets a thin space more than `= \\ \\sum` (Rel-Ord
thick + Ord-Op thin, against Rel-Op thick), and after it a `-` stays binary. `tilde_is_space` says when the two
typeset the same.
"""

from __future__ import annotations

from texocr.latex import commands as C
from texocr.latex.parser import Cmd, Delim, Group

ORD, OP, BIN, REL, OPEN, CLOSE, PUNCT, INNER = "ord", "op", "bin", "rel", "open", "close", "punct", "inner"

_CHARS = {**dict.fromkeys("+-*", BIN), **dict.fromkeys("=<>:", REL), **dict.fromkeys("([", OPEN),
          **dict.fromkeys(")]!?", CLOSE), **dict.fromkeys(",;", PUNCT), **dict.fromkeys("./|", ORD)}
# not classified (None): `\dots` (amsmath picks its form by what follows), `\colon`, `\dag` (text symbols), ...
_UNCLASSIFIED = frozenset({"\\colon", "\\dag", "\\ddag", "\\vartriangle"})
_COMMANDS = {name: cls for name, cls in {
    **dict.fromkeys(C.ORD_COMMANDS, ORD), **dict.fromkeys(C.BIG_OPERATORS | C.LOG_LIKE, OP),
    **dict.fromkeys(C.RELATIONS | C.ARROWS, REL), **dict.fromkeys(C.BINARY_OPS, BIN),
    "\\{": OPEN, "\\langle": OPEN, "\\lfloor": OPEN, "\\lceil": OPEN,
    "\\}": CLOSE, "\\rangle": CLOSE, "\\rfloor": CLOSE, "\\rceil": CLOSE, "\\|": ORD,
    "\\ldots": INNER, "\\cdots": INNER,  # LaTeX defines both with \mathinner
    "\\operatorname": OP,
}.items() if name not in _UNCLASSIFIED}

# TeX's spacing table, in mu (thin 3, medium 4, thick 5), as (display or text style, script styles).
# Pairs that cannot occur (a Bin beside a Bin, Rel, Open, Punct...) are absent: TeX reclassifies the Bin.
_SPACE = {
    (ORD, OP): (3, 3), (ORD, BIN): (4, 0), (ORD, REL): (5, 0), (ORD, INNER): (3, 0),
    (OP, ORD): (3, 3), (OP, OP): (3, 3), (OP, REL): (5, 0), (OP, INNER): (3, 0),
    (BIN, ORD): (4, 0), (BIN, OP): (4, 0), (BIN, OPEN): (4, 0), (BIN, INNER): (4, 0),
    (REL, ORD): (5, 0), (REL, OP): (5, 0), (REL, OPEN): (5, 0), (REL, INNER): (5, 0),
    (CLOSE, OP): (3, 3), (CLOSE, BIN): (4, 0), (CLOSE, REL): (5, 0), (CLOSE, INNER): (3, 0),
    **{(PUNCT, c): (3, 0) for c in (ORD, OP, REL, OPEN, CLOSE, PUNCT, INNER)},
    (INNER, ORD): (3, 0), (INNER, OP): (3, 3), (INNER, BIN): (4, 0), (INNER, REL): (5, 0),
    (INNER, OPEN): (3, 0), (INNER, PUNCT): (3, 0), (INNER, INNER): (3, 0),
}


def atom_class(x) -> str | None:
    """The class of a parsed item as an atom, or None when unknown (or not an atom: spacing, scripts...)."""
    if isinstance(x, str):
        if len(x) == 1:
            return ORD if x.isalnum() else _CHARS.get(x)
        return _COMMANDS.get(x)
    if isinstance(x, Group):
        return ORD if x.closed else None
    if isinstance(x, Delim):
        return INNER if x.close is not None else None
    if isinstance(x, Cmd) and all(v is not None for k, v in x.args if k == "A"):
        return _COMMANDS.get(x.name)
    return None


def _space(left: str, right: str) -> tuple[int, int]:
    return _SPACE.get((left, right), (0, 0))


def tilde_is_space(before: str | None, after: str | None) -> bool:
    """Does `~` typeset like `\\ ` between atoms of these classes (spacing between them skipped), in every style?
    The empty Ord of `~` must add no inter-atom space and must not keep a Bin binary."""
    if before is None or after is None or BIN in (before, after):
        return False
    direct = _space(before, after)
    via = tuple(a + b for a, b in zip(_space(before, ORD), _space(ORD, after)))
    return direct == via

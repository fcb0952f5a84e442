"""A canonical, space-separated form of a formula, for comparison and for training targets.

Levels (each includes the one before; `normalize(normalize(s, L), L) == normalize(s, L)` at every level):

light
    tokenization (see `lexer`), single spaces between tokens, `%` comments dropped, outer math
    wrappers stripped: `$..$`, `$$..$$`, `\\[..\\]`, `\\(..\\)`, `\\begin{equation}..\\end{equation}`
    (also `equation*`, `displaymath`, `math`).
standard (the default; what training targets and exact match use)
    - `a \\over b` -> `\\frac { a } { b }`, `\\choose` -> `\\binom`, `\\atop` / `\\brack` / `\\brace` ->
      `\\genfrac`, `\\buildrel a \\over b` -> `\\stackrel { a } { b }` (scope: the enclosing group,
      `\\left..\\right`, environment cell or the whole formula, as in TeX);
    - old font switches -> commands: `{\\rm x}` -> `\\mathrm { x }`, and `a \\bf b c` -> `a \\mathbf { b c }`
      (`\\rm \\bf \\it \\cal \\tt \\sf`, `\\mit`/`\\sl` -> `\\mathit`); not inside text-mode arguments;
    - every argument of a known command and every script is braced: `x^2` -> `x ^ { 2 }`,
      `\\frac12` -> `\\frac { 1 } { 2 }`, `\\sqrt x` -> `\\sqrt { x }` (delimiters of `\\big` stay bare);
    - spellings TeX typesets identically unified (`commands.STANDARD_SYNONYMS`): `\\sp` / `\\sb` -> `^` / `_`,
      `\\le` -> `\\leq`, `\\to` -> `\\rightarrow`, `\\ast` -> `*`, `\\left<` -> `\\left\\langle`, `\\vert` -> `|`,
      `\\lbrace` -> `\\{` ...;
    - `~` -> `\\ ` where TeX spaces them the same (`a ~ b`; not `= ~ \\sum` or `= ~ -`: the empty group that
      `~` brings is an Ord atom, `atoms.tilde_is_space`);
    - `\\operatorname { s i n }` -> `\\sin` and `\\operatorname* { l i m }` -> `\\lim` (`commands.OPERATORS_NOLIMITS`,
      `OPERATORS_LIMITS`: amsopn.sty defines the commands so); not across kinds (`\\operatorname { l i m }` stays);
    - `\\dag` / `\\ddag` -> `{ \\dagger }` / `{ \\ddagger }`, LaTeX's own definition in math mode;
    - a run of interword spaces and quads written as its width, widest first (`\\ \\ \\ ` -> `\\quad`, `~ ~ ~`
      -> `\\quad`, `\\quad \\quad` -> `\\qquad`): the same glue in Computer Modern, LaTeX's and im2latex's font,
      whose interword space is a third of its quad (in Times it is a quarter: there they differ);
    - `\\label{..}`, `\\nonumber`, `\\notag` dropped;
    - a superscript before a subscript written after it (`x ^ { a } _ { b }` -> `x _ { b } ^ { a }`): one noad
      to TeX either way; not after a prime (`f ' ^ { 2 } _ { b }`), nor in a run of three scripts (a TeX error);
    - a bare group around one ordinary atom dropped (`{ x }`, `{ \\mathbf { K } }`, `{ \\frac { a } { b } }`,
      `{ { .. } }` -> `{ .. }`; `commands.ORD_COMMANDS`), as it renders the same; kept around other atoms;
      a group (or the formula) whose only content is a bare group around one atom of any class is that atom
      (`^ { { \\dagger } }` -> `^ { \\dagger }`): alone in a list an atom gets no spacing;
    - leading and trailing spacing (`\\,` `\\;` `\\:` `\\!` `\\ ` `~` `\\quad` `\\qquad` `\\hspace{..}`
      `\\kern..` ...) and a trailing `\\\\` dropped; a `\\\\` right before `\\end{..}` dropped.
aggressive (for lenient comparison; lossy: renders may differ slightly)
    - all spacing commands dropped, also inside the formula; `\\displaystyle` and the other style
      switches dropped; `\\left` / `\\right` / `\\middle` / `\\big`-family sizes dropped (the delimiter
      stays; `\\left.` / `\\right.` vanish);
    - near-synonyms unified (`commands.SYNONYMS`): `\\dag`->`\\dagger`, `\\lvert`->`|`,
      `\\dfrac`/`\\tfrac`/`\\cfrac`->`\\frac`, `\\dbinom`/`\\tbinom`->`\\binom`, `\\dots`->`\\ldots`, `--`->`- -` ...; common Unicode symbols -> commands
      (`α`->`\\alpha`, `≤`->`\\leq`); `\\operatorname { s i n }` -> `\\sin` for named operators;
      `\\not =` -> `\\neq` (`commands.NEGATED`); primes become superscripts: `f''` -> `f ^ { \\prime \\prime }`,
      `f'^2` -> `f ^ { \\prime 2 }`;
    - redundant braces dropped: a script argument that is one token is unbraced (`x ^ { 2 }` ->
      `x ^ 2`), a bare group around any one atom is unwrapped (`{ \\sum }` -> `\\sum`, `{ - }` -> `-`),
      except after an unknown command (which may take it as an argument).

Input with an unclosed brace, `\\left` or environment gets only the token-level part of its level
(spellings, synonyms, dropped tokens: no tree rewrites), so it stays recognizably broken; stray
closers are kept in place. Nothing raises.
"""

from __future__ import annotations

from texocr.latex import commands as C
from texocr.latex.atoms import atom_class, tilde_is_space
from texocr.latex.lexer import blank_comments, tokenize
from texocr.latex.parser import (
    Cmd,
    Delim,
    Env,
    Group,
    Parser,
    TooDeep,
    is_closer,
    is_left,
    is_right,
)

LEVELS = ("light", "standard", "aggressive")
_WRAPPERS = [("\\[", "\\]"), ("\\(", "\\)")] + [
    (f"\\begin{{{e}}}", f"\\end{{{e}}}") for e in sorted(C.WRAPPER_ENVIRONMENTS)]
_INFIX = {"\\over": "\\frac", "\\choose": "\\binom", "\\atop": "", "\\brack": "[", "\\brace": "\\{"}
_CLOSING = {"": "", "[": "]", "\\{": "\\}"}
_DROP_STANDARD = frozenset({"\\nonumber", "\\notag"})
_DROP_AGGRESSIVE = C.SPACING | C.STYLES | frozenset({"\\middle", "\\left.", "\\right.", "\\left",
                                                     "\\right"}) | frozenset(
    n for n, sig in C.SIGNATURES.items() if sig == "D")
_CELL_TRIGGERS = frozenset(C.FONT_SWITCHES) | frozenset(_INFIX) | {"\\buildrel"}
# `\dag` in math is LaTeX's `{\dagger}` (latex.ltx: `\ifmmode{\dagger}\else\textdagger\fi`): an Ord atom
_TEXT_DAGGERS = {"\\dag": "\\dagger", "\\ddag": "\\ddagger"}
# Interword spaces in thirds of an em. In Computer Modern (LaTeX's default font, im2latex's) the interword space
# `\ ` is exactly a third of the quad, so `\ \ \ ` and `\quad` are the same glue; not in every font (Times: 1/4).
_SPACE_THIRDS = {"\\": 1, "\\quad": 3, "\\qquad": 6}
# `\operatorname { s i n }` -> `\sin`, `\operatorname* { l i m }` -> `\lim`: what amsopn.sty defines them as
_OPERATOR_SPELLINGS = {"\\operatorname": C.OPERATORS_NOLIMITS, "\\operatorname*": C.OPERATORS_LIMITS}
_REWRITE_TRIGGERS = _DROP_STANDARD | {"\\label", "\\\\"} | frozenset(_TEXT_DAGGERS) | frozenset(_SPACE_THIRDS)
_NOT_BARE = frozenset({"{", "}", "^", "_", "&", "$", "#", "%", "'", "~", "\\", "\\\\", "\\limits",
                       "\\nolimits", "\\not"})


def normalize(s: str, level: str = "standard") -> str:
    """Canonical space-separated form of `s` at `level` (`light`, `standard` or `aggressive`)."""
    if level not in LEVELS:
        raise ValueError(f"unknown normalization level {level!r}; choose one of {', '.join(LEVELS)}")
    tokens = strip_wrappers(tokenize(blank_comments(s)))
    if level == "light":
        return " ".join(tokens)
    aggressive = level == "aggressive"
    tokens = _token_pass(tokens, aggressive)
    parser = Parser(tokens)
    try:
        tree = parser.parse()
    except TooDeep:
        return " ".join(tokens)
    if parser.unclosed:  # an unclosed node would swallow the braces that rewrites add
        return " ".join(tokens)
    cells = not _CELL_TRIGGERS.isdisjoint(tokens)
    rewrites = aggressive or cells or not _REWRITE_TRIGGERS.isdisjoint(tokens) or "{" in tokens or "~" in tokens \
        or ("^" in tokens and "_" in tokens)
    if rewrites:  # else only bracing
        tree = _list(tree, aggressive, text=not cells)
        tree = tree if aggressive else _lone_group(tree)
    tree = _strip_ends(tree)
    out: list[str] = []
    _emit_list(tree, out, aggressive)
    if len(strip_wrappers(out)) < len(out):  # `$ x \, $`: a wrapper shows once spacing is gone
        return normalize(" ".join(out), level)
    return " ".join(out)


def strip_wrappers(tokens: list[str]) -> list[str]:
    """Remove outer `$`, `$$`, `\\[ \\]`, `\\( \\)` and equation-environment wrappers (repeatedly)."""
    while len(tokens) >= 2:
        first, last = tokens[0], tokens[-1]
        if first == "$" and last == "$":
            k = 2 if len(tokens) >= 4 and tokens[1] == "$" and tokens[-2] == "$" else 1
            if "$" in tokens[k:-k]:
                break
            tokens = tokens[k:-k]
            continue
        for open_, close in _WRAPPERS:
            if first == open_ and last == close and open_ not in tokens[1:-1] \
                    and close not in tokens[1:-1]:
                tokens = tokens[1:-1]
                break
        else:
            break
    return tokens


def _token_pass(tokens: list[str], aggressive: bool) -> list[str]:
    """Rewrites that need no structure: spellings, synonyms and (aggressive) dropped tokens."""
    if not aggressive and C.STANDARD_SYNONYMS.keys().isdisjoint(tokens):
        return tokens
    out: list[str] = []
    for tok in tokens:
        if aggressive:
            tok = C.UNICODE_SYMBOLS.get(tok, tok)
            if tok not in _DROP_AGGRESSIVE and (is_left(tok) or is_right(tok)):
                tok = tok[5:] if is_left(tok) else tok[6:]
            if tok in _DROP_AGGRESSIVE:
                continue
            tok = C.STANDARD_SYNONYMS.get(tok, tok)
            tok = C.SYNONYMS.get(tok, tok)
            if " " in tok:
                out.extend(tok.split())
                continue
            if out and out[-1] == "\\not" and tok in C.NEGATED:
                out[-1] = C.NEGATED[tok]
                continue
        else:
            tok = C.STANDARD_SYNONYMS.get(tok, tok)
        out.append(tok)
    return out


# --- tree rewrites --------------------------------------------------------------------------------
def _list(items: list, aggressive: bool, text: bool, math: bool = True) -> list:
    """Rewrite a list; `text` also means "no cell rewrites needed" (text mode or no trigger token); `math`: the
    list is in math mode (not a text-mode argument)."""
    if not text:
        items = _by_cell(items)
    out: list = []
    for x in items:
        if type(x) is str:
            if x in _TEXT_DAGGERS and math and not aggressive:
                out.append(Group([_TEXT_DAGGERS[x]]))  # what LaTeX makes of it; `_lone_group` may unwrap it
            elif x not in _DROP_STANDARD:
                out.append(x)
            continue
        y = _node(x, aggressive, text, math)
        if y is not None:
            out.append(y)
    if aggressive:
        if "'" in out:
            out = _primes(out)
        return _unwrap_groups(_script_order(out) if math else out)
    return _space_runs(_tilde_spaces(_unwrap_ords(_script_order(out) if math else out)))


def _by_cell(items: list) -> list:
    """Apply the font-switch and infix rewrites to each `&` / `\\\\` separated cell."""
    if all(type(x) is not str or x not in _CELL_TRIGGERS for x in items):
        return items
    out: list = []
    cell: list = []
    for x in items:
        # a stray closer is kept in place: bounding the cell keeps it out of the new groups
        if isinstance(x, str) and (x == "&" or x == "\\\\" or is_closer(x)):
            out.extend(_infix(_switches(_buildrel(cell))))
            out.append(x)
            cell = []
        else:
            cell.append(x)
    out.extend(_infix(_switches(_buildrel(cell))))
    return out


def _buildrel(cell: list) -> list:
    """`\\buildrel a \\over b` -> `\\stackrel{a}{b}` (first: its `\\over` is not a fraction)."""
    while "\\buildrel" in cell:
        b = cell.index("\\buildrel")
        k = next((j for j in range(b + 1, len(cell)) if cell[j] == "\\over"), None)
        if k is None:
            break
        above, below = Group(cell[b + 1:k]), Group(cell[k + 1:k + 2])
        cell = cell[:b] + [Cmd("\\stackrel", [("A", above), ("A", below)])] + cell[k + 2:]
    return cell


def _switches(cell: list) -> list:
    for k, x in enumerate(cell):
        if isinstance(x, str) and x in C.FONT_SWITCHES:
            body = Group(_switches(cell[k + 1:]))
            return cell[:k] + [Cmd(C.FONT_SWITCHES[x], [("A", body)], switch=True)]
    return cell


def _infix(cell: list) -> list:
    for k, x in enumerate(cell):
        if not (isinstance(x, str) and x in _INFIX):
            continue
        num, den = Group(cell[:k]), Group(_infix(cell[k + 1:]))
        if x in ("\\over", "\\choose"):
            return [Cmd(_INFIX[x], [("A", num), ("A", den)])]
        left = _INFIX[x]
        args = [Group([left] if left else []), Group([_CLOSING[left]] if left else []),
                Group(["0", "p", "t"]), Group([]), num, den]
        return [Cmd("\\genfrac", [("A", a) for a in args])]
    return cell


def _node(x, aggressive: bool, text: bool, math: bool = True):
    """The rewritten node, or None when it is dropped."""
    if isinstance(x, str):
        return None if x in _DROP_STANDARD else x
    if isinstance(x, Group):
        x.items = _list(x.items, aggressive, text, math)
        if not aggressive:
            x.items = _lone_group(x.items)
        if x.closed and len(x.items) == 1 and isinstance(x.items[0], Cmd) and x.items[0].switch:
            return x.items[0]  # `{\rm x}` -> `\mathrm{x}`, not `{\mathrm{x}}`
        return x
    if isinstance(x, Delim):
        x.items = _list(x.items, aggressive, text, math)
        return x
    if isinstance(x, Env):
        x.args = _args(x.args, aggressive, text=True, math=False)
        x.items = _list(x.items, aggressive, text, math)
        if x.end is not None:
            while x.items and x.items[-1] == "\\\\":
                x.items.pop()
        return x
    # Cmd
    if x.name == "\\label" or (aggressive and x.name in C.SPACING_WITH_ARGS):
        return None
    if x.name in _OPERATOR_SPELLINGS:
        name = _operator_name(x)
        if name and (aggressive or name in _OPERATOR_SPELLINGS[x.name]):
            return name
    textual = x.name in C.TEXT_ARG_COMMANDS
    x.args = _args(x.args, aggressive, text or textual, math and not textual)
    return x


def _args(args: list, aggressive: bool, text: bool, math: bool = True) -> list:
    out = []
    for kind, value in args:
        if kind == "A" and value is not None:
            if not isinstance(value, Group):
                value = Group([value])  # as it will be written: `\\hat x` -> `\\hat { x }`
            value = _node(value, aggressive, text, math)
            if value is None:
                value = Group([])
        elif kind == "O" and value is not None:
            value = _list(value, aggressive, text, math)
        out.append((kind, value))
    return out


def _operator_name(cmd: Cmd) -> str | None:
    arg = cmd.args[0][1]
    if isinstance(arg, Group) and arg.closed and all(isinstance(t, str) for t in arg.items):
        name = "".join(arg.items)
        if name in C.NAMED_OPERATORS:
            return "\\" + name
    return None


def _primes(items: list) -> list:
    """Aggressive: `x''` -> `x ^ { \\prime \\prime }`, merged with a following superscript (as TeX does)."""
    out: list = []
    i, n = 0, len(items)
    while i < n:
        if items[i] != "'":
            out.append(items[i])
            i += 1
            continue
        k = i
        while k < n and items[k] == "'":
            k += 1
        primes = ["\\prime"] * (k - i)
        nxt = items[k] if k < n else None
        if isinstance(nxt, Cmd) and nxt.name == "^" and nxt.args[0][1] is not None:
            arg = nxt.args[0][1]
            rest = arg.items if isinstance(arg, Group) and arg.closed else [arg]
            out.append(Cmd("^", [("A", Group(primes + rest))]))
            i = k + 1
        else:
            out.append(Cmd("^", [("A", Group(primes))]))
            i = k
    return out


def _script_order(items: list) -> list:
    """Standard: `x ^ { a } _ { b }` -> `x _ { b } ^ { a }`. TeX builds one noad from either order (The TeXbook,
    ch. 17: the superscript and subscript fields of the same atom), so they typeset identically; im2latex's targets
    write the subscript first (8,396 of 8,407 pairs). Only a lone pair (`x ^ a _ b _ c` is a TeX error either way),
    and not after a prime: `f ' ^ { 2 }` is one superscript to TeX (`f ^ { \\prime 2 }`), which a subscript
    moved between them would split into a double superscript."""
    ups = [k for k, x in enumerate(items[:-1]) if type(x) is Cmd and x.name == "^"]  # most lists have none
    out = items
    for k in ups:
        if _swappable(out[k], out[k + 1]) and not (k > 0 and (out[k - 1] == "'" or _is_script(out[k - 1]))) \
                and not (k + 2 < len(out) and _is_script(out[k + 2])):
            if out is items:
                out = list(items)
            out[k], out[k + 1] = out[k + 1], out[k]
    return out


def _is_script(x, name: str | None = None) -> bool:
    """`x` is a script (`name`: of that kind)."""
    return isinstance(x, Cmd) and x.name in (("^", "_") if name is None else (name,))


def _swappable(a, b) -> bool:
    """`a b` is `^ {..} _ {..}` with both arguments present (`^ _ 0` is left as written)."""
    return _is_script(a, "^") and _is_script(b, "_") and a.args[0][1] is not None and b.args[0][1] is not None


def _unwrap_groups(items: list) -> list:
    """Aggressive: replace a bare `{ atom }` by the atom where that cannot change the parse."""
    out: list = []
    for x in items:
        if isinstance(x, Group) and x.closed and len(x.items) == 1 and _is_atom(x.items[0]) \
                and not _after_unknown(out):
            out.append(x.items[0])
            continue
        out.append(x)
    return out


def _after_unknown(out: list) -> bool:
    """The list so far ends in an unknown command, which may take the next group as its argument."""
    return bool(out) and isinstance(out[-1], str) and out[-1].startswith("\\") and out[-1] not in C.KNOWN_COMMANDS


def _unwrap_ords(items: list) -> list:
    """Standard: replace a bare `{ x }` by `x` where x is one ordinary atom (a group is one too), which
    renders the same: `{ \\mathbf { K } } ^ { C }` -> `\\mathbf { K } ^ { C }`, `{ { a b } }` -> `{ a b }`.
    Kept: groups around Bin / Rel / Op / Inner atoms (`{ - }`, `{ \\sum }`, `{ \\cdots }`), whose spacing or
    limits the group changes; groups of several atoms (`{ a b } c` differs from `a b c` by a pixel column);
    a group around stacked accents before a script; a group after an unknown command (maybe its argument)."""
    out: list = []
    for k, x in enumerate(items):
        after_unknown = _after_unknown(out)
        nxt = items[k + 1] if k + 1 < len(items) else None
        scripted = (isinstance(nxt, Cmd) and nxt.name in ("^", "_")) or nxt == "'"
        while not after_unknown and isinstance(x, Group) and x.closed and len(x.items) == 1 \
                and _is_ord(x.items[0]) and not (scripted and _stacked_accents(x.items[0])):
            x = x.items[0]
        out.append(x)
    return out


def _tilde_spaces(items: list) -> list:
    """Standard: `~` -> `\\ ` where the empty Ord atom that `~` brings changes no spacing: between the atoms
    around it (spacing skipped; a script belongs to its nucleus), classes known (`atoms.tilde_is_space`)."""
    if "~" not in items:
        return items
    out = list(items)
    for k, x in enumerate(out):
        if x != "~":
            continue
        i = k - 1
        while i >= 0 and (_is_spacing(out[i]) or (isinstance(out[i], Cmd) and out[i].name in ("^", "_"))):
            i -= 1
        j = k + 1
        while j < len(out) and _is_spacing(out[j]):
            j += 1
        if tilde_is_space(atom_class(out[i]) if i >= 0 else None,
                          atom_class(out[j]) if j < len(out) else None):
            out[k] = "\\"
    return out


def _space_runs(items: list) -> list:
    """Standard: a run of interword spaces, `\\quad`s and `\\qquad`s written as its width, widest first
    (`\\ \\ \\ ` -> `\\quad`, `\\quad \\quad` -> `\\qquad`): the same glue in Computer Modern (`_SPACE_THIRDS`)."""
    if _SPACE_THIRDS.keys().isdisjoint(x for x in items if type(x) is str):
        return items
    out: list = []
    k = 0
    while k < len(items):
        if not (type(items[k]) is str and items[k] in _SPACE_THIRDS):
            out.append(items[k])
            k += 1
            continue
        thirds = 0
        while k < len(items) and type(items[k]) is str and items[k] in _SPACE_THIRDS:
            thirds += _SPACE_THIRDS[items[k]]
            k += 1
        out += ["\\qquad"] * (thirds // 6) + ["\\quad"] * (thirds % 6 // 3) + ["\\"] * (thirds % 3)
    return out


def _lone_group(items: list) -> list:
    """Standard: a group's list (or the formula's) that is one bare group around one atom of any class is that
    atom (`^ { { \\dagger } }` -> `^ { \\dagger }`, `{ { - } }` -> `-`): alone in its list, an atom gets no spacing
    and a Bin becomes Ord. Not for `\\left..\\right` contents (the delimiters are atoms of that list) nor
    environment cells (`aligned` puts `{}` before some)."""
    if len(items) == 1 and isinstance(items[0], Group) and items[0].closed and len(items[0].items) == 1 \
            and _is_atom(items[0].items[0]) and not isinstance(items[0].items[0], Group):
        return items[0].items
    return items


def _is_spacing(x) -> bool:
    return (isinstance(x, str) and x in C.SPACING) or (isinstance(x, Cmd) and x.name in C.SPACING_WITH_ARGS)


def _stacked_accents(x) -> bool:
    """`\\dot { \\hat { \\phi } }`: with a script after it, TeX sets it differently inside a group and out."""
    if not (isinstance(x, Cmd) and x.name in C.MATH_ACCENTS and x.args and isinstance(x.args[0][1], Group)):
        return False
    inner = x.args[0][1].items
    return len(inner) == 1 and isinstance(inner[0], Cmd) and inner[0].name in C.MATH_ACCENTS


def _is_ord(x) -> bool:
    if isinstance(x, str):
        return (len(x) == 1 and (x.isalnum() or x in "./|")) or x in C.ORD_COMMANDS
    if isinstance(x, Group):
        return x.closed
    return isinstance(x, Cmd) and x.name in C.ORD_COMMANDS and all(
        v is not None for k, v in x.args if k == "A")


def _is_atom(x) -> bool:
    if isinstance(x, str):
        return _is_bare_token(x) and not (x.startswith("\\") and x not in C.KNOWN_COMMANDS)
    if isinstance(x, Cmd):
        return x.name not in ("^", "_") and all(v is not None for k, v in x.args if k == "A")
    if isinstance(x, Delim):
        return x.close is not None
    if isinstance(x, Env):
        return x.end is not None
    return isinstance(x, Group) and x.closed


def _is_bare_token(t: str) -> bool:
    """A token that may stand unbraced as a script argument."""
    if t in _NOT_BARE:
        return False
    if len(t) == 1:
        return True
    return t[0] == "\\" and t[1:].isalpha() and t not in C.FONT_SWITCHES and t not in _INFIX


def _strip_ends(items: list) -> list:
    """Drop leading/trailing spacing and a trailing `\\\\` of the whole formula."""
    while items and _is_spacing(items[0]):
        items = items[1:]
    while items and (_is_spacing(items[-1]) or items[-1] == "\\\\"):
        items = items[:-1]
    return items


# --- output ---------------------------------------------------------------------------------------
def _emit_list(items: list, out: list[str], aggressive: bool) -> None:
    for x in items:
        if type(x) is str:
            out.append(x)
        else:
            _emit(x, out, aggressive)


def _emit(x, out: list[str], aggressive: bool) -> None:
    if isinstance(x, str):
        out.append(x)
    elif isinstance(x, Group):
        out.append("{")
        _emit_list(x.items, out, aggressive)
        if x.closed:
            out.append("}")
    elif isinstance(x, Delim):
        out.append(x.open)
        _emit_list(x.items, out, aggressive)
        if x.close is not None:
            out.append(x.close)
    elif isinstance(x, Env):
        out.append(x.begin)
        _emit_args(x.args, out, aggressive, script=False)
        _emit_list(x.items, out, aggressive)
        if x.end is not None:
            out.append(x.end)
    else:
        out.append(x.name)
        _emit_args(x.args, out, aggressive, script=x.name in ("^", "_"))


def _emit_args(args: list, out: list[str], aggressive: bool, script: bool) -> None:
    for kind, value in args:
        if value is None:
            continue
        if kind == "A":
            if aggressive and script:
                bare = value.items[0] if (isinstance(value, Group) and value.closed
                                          and len(value.items) == 1) else value
                if isinstance(bare, str) and _is_bare_token(bare):
                    out.append(bare)
                    continue
            if isinstance(value, Group):
                _emit(value, out, aggressive)
            else:
                out.append("{")
                _emit(value, out, aggressive)
                out.append("}")
        elif kind == "O":
            out.append("[")
            _emit_list(value, out, aggressive)
            out.append("]")
        elif kind == "L":
            out.extend(value)
        else:  # S, D
            out.append(value)

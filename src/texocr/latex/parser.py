"""Tokens -> a small tree of math lists, recording structural problems and how to fix each.

The tree is what `normalize` rewrites and what `validate`/`repair` report on. Nodes:

- a plain token (`str`): a character, a symbol command, `&`, `\\\\`, a stray closer;
- `Group`: `{ items }`;  `Delim`: `\\left( items \\right)`;  `Env`: `\\begin{name} args items \\end{name}`;
- `Cmd`: a command or `^`/`_` with its parsed arguments (see `commands.SIGNATURES`).

Unbalanced input never raises: an unclosed node keeps `closed=False` and an issue is recorded with a
`Fix` (insert, delete or replace text at a character offset) that `repair` applies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from texocr.latex.commands import DELIMITER_TOKENS, ENV_SIGNATURES, SIGNATURES
from texocr.latex.lexer import dimension_end

MAX_DEPTH = 100  # nesting deeper than this is reported, not parsed (keeps recursion bounded)
_SCRIPTS = frozenset({"^", "_"})
_SEPARATORS = frozenset({"&", "\\\\"})
_NOT_AN_ARGUMENT = _SCRIPTS | _SEPARATORS | {"}"}
_SPECIAL_FIRST = frozenset("\\{}^_&'")
_STRUCTURAL_PREFIXES = ("\\right", "\\end{", "\\left", "\\begin{", "\\\\")


class TooDeep(Exception):
    """Nesting beyond MAX_DEPTH."""


@dataclass
class Group:
    items: list
    closed: bool = True


@dataclass
class Delim:
    open: str
    items: list
    close: str | None = None


@dataclass
class Env:
    begin: str
    name: str
    args: list  # [(kind, value)] as in Cmd.args
    items: list
    end: str | None = None


@dataclass
class Cmd:
    """A command and its arguments: `args` is [(kind, value)], kind as in `SIGNATURES`.

    Values: A -> a node or None when missing; O -> a list of items or None when absent;
    S -> "*" or None; D -> a delimiter token or None; L -> a list of dimension tokens.
    """

    name: str
    args: list = field(default_factory=list)
    switch: bool = False  # made by normalize from an old-style switch (`{\\rm x}`)


@dataclass
class Fix:
    """Replace s[start:end] by `text` (an insertion when start == end)."""

    start: int
    end: int
    text: str


@dataclass
class Problem:
    kind: str
    message: str
    pos: int
    fix: Fix | None = None


def is_left(tok: str) -> bool:
    """`\\left` or `\\left(` (a combined token), not `\\leftarrow`."""
    return tok.startswith("\\left") and (len(tok) == 5 or not tok[5].isalpha())


def is_right(tok: str) -> bool:
    return tok.startswith("\\right") and (len(tok) == 6 or not tok[6].isalpha())


def is_closer(tok: str) -> bool:
    """`}`, `\\right..` or `\\end{..}`."""
    return tok == "}" or tok.startswith("\\end{") or is_right(tok)


class Parser:
    """Recursive-descent parser over `tokens` (texts) with optional character `starts`/`ends`.

    Without spans (normalize's fast path) positions are token indices and fixes are meaningless.
    """

    def __init__(self, tokens: list[str], starts: list[int] | None = None,
                 ends: list[int] | None = None, length: int | None = None) -> None:
        self.t = tokens
        self.n = len(tokens)
        self.starts = starts
        self.ends = ends
        self.length = self.n if length is None else length
        self.i = 0
        self.open_braces = 0
        self.open_delims = 0
        self.envs: list[str] = []
        self.depth = 0
        self.problems: list[Problem] = []
        self.unclosed = False  # some group, \left or environment runs to the end unclosed
        # Character offset where the current cell of each open list begins (after its opener or
        # after the last `&` / `\\\\` at that level): where a missing `\\left.` goes.
        self.list_starts: list[int] = [self.pos(0) if self.n else 0]

    # --- positions and problems ---------------------------------------------------------------
    def pos(self, i: int) -> int:
        """Character offset of token i (the end of the input when i is past the last token)."""
        if self.starts is None:
            return i
        return self.starts[i] if i < self.n else self.length

    def end_of(self, i: int) -> int:
        return i + 1 if self.ends is None else self.ends[i]

    def problem(self, kind: str, message: str, pos: int, fix: Fix | None = None) -> None:
        self.problems.append(Problem(kind, message, pos, fix))

    def delete(self, i: int) -> Fix:
        return Fix(self.pos(i), self.end_of(i), "")

    def insert(self, i: int, text: str) -> Fix:
        p = self.pos(i)
        return Fix(p, p, text)

    # --- lists ---------------------------------------------------------------------------------
    def parse(self) -> list:
        items, _ = self.parse_list("top", self.n)
        return items

    def parse_list(self, kind: str, stop: int, env: str | None = None) -> tuple[list, str]:
        """Items up to this list's closer. Returns (items, status): status is `closed` (at our own
        closer, not consumed), `outer` (at a closer that belongs to an enclosing node) or `end`."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise TooDeep
        items: list = []
        append = items.append
        t = self.t
        sup = sub = False
        signatures = SIGNATURES
        while True:
            # Fast path: a run of plain tokens (characters, symbol commands) needs no structure.
            i = self.i
            while i < stop:
                tok = t[i]
                if tok[0] in _SPECIAL_FIRST:
                    if tok[0] != "\\" or tok in signatures or tok.startswith(_STRUCTURAL_PREFIXES):
                        break
                    if tok == "\\limits" or tok == "\\nolimits":  # they keep the scripts' base
                        append(tok)
                        i += 1
                        continue
                append(tok)
                i += 1
                sup = sub = False
            self.i = i
            if i >= stop:
                break
            sig = signatures.get(tok)
            if sig is not None:
                append(self.parse_command(tok, sig, stop))
                sup = sub = False
                continue
            if tok == "}":
                if kind == "{":
                    return self._done(items, "closed")
                if self.open_braces:
                    return self._done(items, "outer")
                self._stray(items, "unmatched_brace", "a closing brace with no opening brace",
                            self.delete(self.i))
                sup = sub = False
                continue
            if tok[0] == "\\" and is_right(tok):
                if kind == "delim":
                    return self._done(items, "closed")
                if self.open_delims:
                    return self._done(items, "outer")
                start = self.list_starts[-1]  # a `\\left.` opens the current list (or cell)
                self._stray(items, "unmatched_right", f"{tok} without a matching \\left",
                            Fix(start, start, "\\left. "))
                sup = sub = False
                continue
            if tok.startswith("\\end{"):
                name = tok[5:-1]
                if kind == "env" and name == env:
                    return self._done(items, "closed")
                if name in self.envs:
                    return self._done(items, "outer")
                if kind == "env":
                    self.problem("env_mismatch", f"\\begin{{{env}}} ended by {tok}", self.pos(self.i),
                                 Fix(self.pos(self.i), self.end_of(self.i), f"\\end{{{env}}}"))
                    return self._done(items, "closed")
                if self.envs:
                    return self._done(items, "outer")
                self._stray(items, "unmatched_end", f"{tok} without a matching \\begin",
                            self.delete(self.i))
                sup = sub = False
                continue
            if tok in _SCRIPTS:
                which = "superscript" if tok == "^" else "subscript"
                if (sup if tok == "^" else sub):
                    self.problem(f"double_{which}", f"double {which}", self.pos(self.i),
                                 self.insert(self.i, "{}"))
                    sup = sub = False
                start = self.i
                self.i += 1
                arg = self.parse_arg(stop)
                if arg is None:
                    self.problem("dangling_script", f"{tok} with nothing to attach",
                                 self.pos(start), self.delete(start))
                items.append(Cmd(tok, [("A", arg)]))
                if tok == "^":
                    sup = True
                else:
                    sub = True
                continue
            if tok in _SEPARATORS:
                if tok == "&" and not self.envs:
                    self.problem("misplaced_ampersand", "& outside an environment", self.pos(self.i))
                if kind == "delim" and self.envs:
                    # \left...\right cannot span cells: the \left is unclosed here
                    return self._done(items, "outer")
                item = self.parse_item(stop)
                self.list_starts[-1] = self.end_of(self.i - 1)
            else:
                item = self.parse_item(stop)
            items.append(item)
            if not (isinstance(item, str) and item in ("'", "\\limits", "\\nolimits")):
                sup = sub = False
        return self._done(items, "end")

    def _done(self, items: list, status: str) -> tuple[list, str]:
        self.depth -= 1
        return items, status

    def _stray(self, items: list, kind: str, message: str, fix: Fix) -> None:
        """Keep a closer that closes nothing as a plain token, and report it."""
        self.problem(kind, message, self.pos(self.i), fix)
        items.append(self.t[self.i])
        self.i += 1

    # --- items -------------------------------------------------------------------------------
    def parse_item(self, stop: int):
        """One item at self.i (not a closer, not a script)."""
        tok = self.t[self.i]
        if tok == "{":
            return self.parse_group(stop)
        if tok[0] == "\\" and is_left(tok):
            return self.parse_delim(stop)
        if tok.startswith("\\begin{"):
            return self.parse_env(stop)
        sig = SIGNATURES.get(tok)
        if sig is not None:
            return self.parse_command(tok, sig, stop)
        self.i += 1
        return tok

    def parse_arg(self, stop: int):
        """A mandatory argument at self.i: a node, or None when nothing can serve as one."""
        if self.i >= stop:
            return None
        tok = self.t[self.i]
        if tok in _NOT_AN_ARGUMENT or is_closer(tok):
            return None
        return self.parse_item(stop)

    def _open(self, stop: int, kind: str, env: str | None = None) -> tuple[list, str]:
        self.list_starts.append(self.end_of(self.i - 1))
        result = self.parse_list(kind, stop, env)
        self.list_starts.pop()  # (after TooDeep the parser is dropped, so no try/finally)
        return result

    def parse_group(self, stop: int) -> Group:
        start = self.i
        t = self.t
        j = start + 1
        while j < stop and t[j][0] not in _SPECIAL_FIRST:  # fast path: `{ 2 }`, `{ i j }`
            j += 1
        if j < stop and t[j] == "}":
            self.i = j + 1
            return Group(t[start + 1:j])
        self.i += 1
        self.open_braces += 1
        items, status = self._open(stop, "{")
        self.open_braces -= 1
        if status == "closed":
            self.i += 1
            return Group(items)
        self.unclosed = True
        self.problem("unclosed_brace", "an opening brace is never closed", self.pos(start),
                     self.insert(self.i, "}"))
        return Group(items, closed=False)

    def parse_delim(self, stop: int) -> Delim:
        start = self.i
        tok = self.t[self.i]
        if tok == "\\left":
            self.problem("missing_delimiter", "\\left without a delimiter", self.pos(start),
                         Fix(self.end_of(start), self.end_of(start), "."))
        self.i += 1
        self.open_delims += 1
        items, status = self._open(stop, "delim")
        self.open_delims -= 1
        if status == "closed":
            close = self.t[self.i]
            if close == "\\right":
                self.problem("missing_delimiter", "\\right without a delimiter", self.pos(self.i),
                             Fix(self.end_of(self.i), self.end_of(self.i), "."))
            self.i += 1
            return Delim(tok, items, close)
        self.unclosed = True
        self.problem("unclosed_left", f"{tok} without a matching \\right", self.pos(start),
                     self.insert(self.i, "\\right. " if self.i < self.n else " \\right."))
        return Delim(tok, items, None)

    def parse_env(self, stop: int) -> Env:
        start = self.i
        tok = self.t[self.i]
        name = tok[7:-1]
        self.i += 1
        args = self.parse_args(ENV_SIGNATURES.get(name, ""), stop, start)
        self.envs.append(name)
        items, status = self._open(stop, "env", name)
        self.envs.pop()
        if status == "closed":
            end = self.t[self.i]
            self.i += 1
            return Env(tok, name, args, items, end)
        self.unclosed = True
        self.problem("unclosed_env", f"{tok} without \\end{{{name}}}", self.pos(start),
                     self.insert(self.i, f"\\end{{{name}}} " if self.i < self.n else f" \\end{{{name}}}"))
        return Env(tok, name, args, items, None)

    def parse_command(self, name: str, sig: str, stop: int) -> Cmd:
        start = self.i
        self.i += 1
        return Cmd(name, self.parse_args(sig, stop, start))

    def parse_args(self, sig: str, stop: int, start: int) -> list:
        args: list = []
        t = self.t
        for kind in sig:
            here = t[self.i] if self.i < stop else None
            if kind == "A":
                arg = self.parse_arg(stop)
                if arg is None:
                    self.problem("missing_argument", f"{t[start]} is missing an argument",
                                 self.pos(start), self.insert(self.i, "{}"))
                args.append(("A", arg))
            elif kind == "O":
                close = self._optional_end(stop) if here == "[" else None
                if close is None:
                    args.append(("O", None))
                else:
                    self.i += 1
                    self.list_starts.append(self.end_of(self.i - 1))
                    items, _ = self.parse_list("opt", close)
                    self.list_starts.pop()
                    self.i = close + 1
                    args.append(("O", items))
            elif kind == "S":
                args.append(("S", here if here == "*" else None))
                self.i += here == "*"
            elif kind == "D":
                ok = here is not None and (here in DELIMITER_TOKENS or (
                    len(here) == 1 and here not in "{}^_&$#%"))
                args.append(("D", here if ok else None))
                self.i += ok
            else:  # "L": [sign] digits/point [unit letters], e.g. `- 0 . 5 e m`
                args.append(("L", self._dimension(stop)))
        return args

    def _optional_end(self, stop: int) -> int | None:
        """Index of the `]` closing an optional argument opened at self.i, if it is well formed."""
        depth = 0
        for j in range(self.i + 1, stop):
            tok = self.t[j]
            if tok == "{":
                depth += 1
            elif tok == "}":
                depth -= 1
                if depth < 0:
                    return None
            elif tok.startswith(("\\end{", "\\begin{")) or is_left(tok) or is_right(tok):
                return None
            elif tok == "]" and depth == 0:
                return j
        return None

    def _dimension(self, stop: int) -> list[str]:
        end = dimension_end(self.t, self.i, stop)
        if end is None:
            return []
        out = self.t[self.i:end]
        self.i = end
        return out

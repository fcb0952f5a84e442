"""The LaTeX core: the only place that knows LaTeX syntax.

- `tokenize(s) -> list[str]` / `detokenize(tokens) -> str`: the im2latex space-separated token convention;
  `typeset_source(s)`: what a renderer should typeset for it (dimensions whole, text-mode words glued);
- `normalize(s, level="standard") -> str`: canonical form for training targets and exact match
  (levels `light`, `standard`, `aggressive`; see `texocr.latex.normalize` for exactly what each does);
- `validate(s) -> list[LatexIssue]`, `is_valid(s) -> bool`: structural and vocabulary problems;
- `repair(s) -> str`: conservative structural fix of model output (valid input is returned unchanged).

Pure Python, stdlib only: cheap to import anywhere.
"""

from __future__ import annotations

from texocr.latex.check import STRUCTURAL_KINDS, LatexIssue, is_valid, repair, validate
from texocr.latex.lexer import detokenize, tokenize, typeset_source
from texocr.latex.normalize import LEVELS, normalize

__all__ = ["LEVELS", "STRUCTURAL_KINDS", "LatexIssue", "detokenize", "is_valid", "normalize", "repair",
           "tokenize", "typeset_source", "validate"]

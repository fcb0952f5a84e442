"""A LaTeX tokenizer for texocr's compact model: one id per LaTeX token, characters as the fallback.

    tok = build_latex_tokenizer(specials=["<|im_end|>", ...], eos="<|im_end|>", pad="<|endoftext|>")
    tok(r"\\frac { a } { b }")["input_ids"]          # 7 ids: \\frac { a } { b }
    tok.decode(ids)                                   # "\\frac { a } { b }"

Targets are `texocr.latex.normalize` output: canonical tokens separated by single spaces. The tokenizer is a
`tokenizers` WordPiece model over whitespace-split words: a word that is a known token (`\\frac`,
`\\left(`, `\\begin{pmatrix}`, `x`, `{`) is one id; any other word is spelled with a first character and
`##`-continuation characters, so printable ASCII never becomes `<unk>` and decoding restores the exact
string (words joined by one space, continuations glued). Unnormalized input (`\\frac{a}{b}`) therefore
still round-trips, only in more ids.

The vocabulary is frozen in `texocr/assets/latex_vocab.txt` (the words of the shipped default model, in its id
order), so that a change to the formula generator or the LaTeX core never moves an id of a trained model. Known
commands, `\\left`/`\\right` delimiters and environments missing from it are appended after it (sorted), so
existing ids stay; printable ASCII comes before it. The list was first made from the LaTeX core's known
commands and the synthetic generator's tokens (by frequency); never from an evaluation set.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

CONTINUATION = "##"
UNK = "<unk>"
CHARS = [c for c in string.printable if not c.isspace()]
"""Printable ASCII without whitespace: every one is both a word start and a `##` continuation."""
VOCAB_FILE = Path(__file__).resolve().parent.parent / "assets" / "latex_vocab.txt"


def latex_vocabulary() -> list[str]:
    """Whole-word LaTeX tokens: the frozen list (`VOCAB_FILE`), then known commands, `\\left`/`\\right` +
    delimiters and environments it lacks, sorted."""
    from texocr.latex.commands import (
        DELIMITER_TOKENS,
        KNOWN_COMMANDS,
        KNOWN_ENVIRONMENTS,
    )

    frozen = VOCAB_FILE.read_text(encoding="utf-8").split()
    words = set(KNOWN_COMMANDS)
    words |= {f"{side}{d}" for side in ("\\left", "\\right", "\\middle") for d in DELIMITER_TOKENS}
    words |= {f"\\{kind}{{{env}}}" for kind in ("begin", "end") for env in KNOWN_ENVIRONMENTS}
    known = set(frozen)
    return frozen + sorted(w for w in words if w and w not in known and not any(ch.isspace() for ch in w))


def build_latex_tokenizer(
    specials: list[str],
    *,
    eos: str,
    pad: str,
    words: list[str] | None = None,
) -> PreTrainedTokenizerFast:
    """A `PreTrainedTokenizerFast` (WordPiece over LaTeX tokens) whose ids start with `specials`, then `<unk>`.

    `words` defaults to `latex_vocabulary()`. Special tokens are matched before the
    whitespace split, so `<|vision_start|><|image_pad|>` needs no spaces around it.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for tok in [*specials, UNK, *CHARS, *(CONTINUATION + c for c in CHARS)]:
        vocab.setdefault(tok, len(vocab))
    for w in latex_vocabulary() if words is None else words:
        vocab.setdefault(w, len(vocab))
    core = Tokenizer(
        models.WordPiece(vocab, unk_token=UNK, continuing_subword_prefix=CONTINUATION,
                         max_input_chars_per_word=10_000)
    )
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # cleanup=False: WordPiece's default "cleanup" would glue " ." and " '" and change the LaTeX.
    core.decoder = decoders.WordPiece(prefix=CONTINUATION, cleanup=False)
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in [*specials, UNK]])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=eos,
        pad_token=pad,
        unk_token=UNK,
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
    )

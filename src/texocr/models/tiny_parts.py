"""Building blocks of texocr's tiny test models: a character-level tokenizer, vocabulary rounding, saving.

A leaf module (no texocr imports): the family modules stay free of test-only code, and `tiny.py` (the builders'
entry point) can import the registry without a circle. `padded_vocab_size` also sizes the compact model.
"""

from __future__ import annotations

import string
from typing import Any

# Common commands get one token each so sequences stay short; anything else falls back to characters.
LATEX_COMMANDS = (  # noqa: SIM905 -- one readable string of commands
    r"\frac \sqrt \left \right \sum \int \prod \lim \infty \alpha \beta \gamma \delta \epsilon \theta "
    r"\lambda \mu \pi \sigma \phi \omega \partial \cdot \times \leq \geq \neq \mathrm \mathbf \text "
    r"\begin \end \over \hat \bar \vec \in \to \rightarrow \ldots \cdots \quad"
).split()


def char_tokenizer(specials: list[str], *, bos: str | None, eos: str, pad: str, unk: str,
                   add_bos: bool = False, extra_tokens: list[str] | None = None, **kwargs: Any) -> Any:
    """A character-level `PreTrainedTokenizerFast` whose vocabulary starts with `specials`.

    `bos` is prepended by the post-processor when `add_bos` (Llama style); `extra_tokens` are
    added as special tokens after the printable characters (e.g. Idefics3 row/column markers).
    """
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
    )
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for tok in specials:
        vocab.setdefault(tok, len(vocab))
    for ch in string.printable:
        vocab.setdefault(ch, len(vocab))
    for tok in extra_tokens or []:
        vocab.setdefault(tok, len(vocab))
    for cmd in LATEX_COMMANDS:
        vocab.setdefault(cmd, len(vocab))
    core = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")  # one piece per character
    core.decoder = decoders.Fuse()
    core.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in [*specials, *(extra_tokens or [])]]
    )
    core.add_tokens([AddedToken(c, special=False, normalized=False) for c in LATEX_COMMANDS])
    if bos is not None and add_bos:
        core.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        clean_up_tokenization_spaces=False,
        **kwargs,
    )


def padded_vocab_size(tokenizer: Any, multiple: int = 64) -> int:
    """Embedding rows for `tokenizer`, rounded up (as real checkpoints do)."""
    n = len(tokenizer)
    return (n + multiple - 1) // multiple * multiple


def save_tiny(model: Any, processor: Any, out_dir: str) -> None:
    """Save a freshly built model (float32, safetensors) and its processor."""
    model.eval()
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)

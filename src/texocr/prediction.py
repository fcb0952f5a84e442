"""What recognition returns: `Prediction`, and the one way generated ids become it (`finish_row`: cut at the end
token or a loop, decoded, cleaned of chat tokens / math delimiters / an echoed prompt, LaTeX-repaired).

Its own module so that the Recognizer (`texocr.infer`) and its worker processes (`texocr.prep`) share it without
importing each other.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from texocr.repeats import find_repeat


@dataclass
class Prediction:
    """One image's result. `error` is set (and `text` empty) when the image could not be read or decoded."""

    text: str
    score: float | None = None
    """Mean log-probability of the generated tokens (higher is more confident); None on error."""
    time_s: float = 0.0
    """Wall time of the batch this image was generated in (what a caller waited for it)."""
    batch_size: int = 1
    """Images generated together in that batch: `time_s / batch_size` is this image's share of the time."""
    error: str | None = None
    source: str = ""
    """The input's name: its path, or `<bytes>`, `<Image>`."""
    tokens: int = 0
    stop: str = ""
    """Why generation ended: `end` (end token), `repetition` (loop cut), `max_new_tokens`."""
    reads: int = 1
    """How many times the image was read: more than 1 when `Recognizer(reread=...)` read an unsure input again
    (then `time_s` also counts the batches of those reads, and the kept read is the surest)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- cleaning

_CHAT_TOKENS = re.compile(r"<\|[^|<>]{1,40}\|>|<(?:/s|s|eos|bos|pad|end_of_turn|start_of_turn|end_of_utterance)>")
_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n?(.*?)\n?```$", re.DOTALL)
_WRAPPERS = ((r"$$", r"$$"), (r"\[", r"\]"), (r"\(", r"\)"), ("$", "$"))


def clean_output(text: str, prompt: str | None = None) -> str:
    """Model text -> bare LaTeX: no chat tokens, echoed prompt, code fence, or math delimiters; then repaired."""
    from texocr.latex import repair

    text = _CHAT_TOKENS.sub("", text).strip()
    if prompt and text.startswith(prompt):
        text = text[len(prompt):].strip()
    text = re.sub(r"^(?:assistant|answer|latex)\s*:?\s*\n", "", text, flags=re.IGNORECASE).strip()
    m = _FENCE.match(text)
    if m:
        text = m.group(1).strip()
    for left, right in _WRAPPERS:
        if len(text) > len(left) + len(right) and text.startswith(left) and text.endswith(right):
            inner = text[len(left): len(text) - len(right)]
            if left != "$" or "$" not in inner:  # `$a$ and $b$` is not one wrapped formula
                text = inner.strip()
            break
    return repair(text) if text else ""


# ---------------------------------------------------------------- ids -> Prediction


def finish_row(family: Any, processor: Any, row: list[int], logp: list[float], eos_ids: Sequence[int],
               pad: int | None, elapsed: float) -> Prediction:
    """One generated row (ids after the prompt, their log-probabilities) -> its `Prediction`: cut at the end
    token, padding and a loop's extra copies dropped, decoded, cleaned and repaired. Runs in this process or, for
    a worker pool's batches, in a worker (`PrepPool.finish`): the LaTeX repair parses every formula."""
    stops = set(eos_ids)
    end = next((i for i, t in enumerate(row) if t in stops), None)
    ids = row[:end] if end is not None else row
    while ids and ids[-1] == pad and pad not in stops:  # padding after a row stopped early
        ids = ids[:-1]
    n_scored = len(ids) + (end is not None)  # the end token's probability counts too
    scored = [s for s in logp[:n_scored] if math.isfinite(s)]
    stop = "end" if end is not None else "max_new_tokens"
    rep = find_repeat(ids) if end is None else None
    if rep is not None:
        ids, stop = ids[: rep[0] + rep[1]], "repetition"  # keep one copy of the looping block
    from texocr.models.base import INSTRUCTION

    text = family.decode(processor, [ids])[0]
    return Prediction(clean_output(text, prompt=INSTRUCTION), score=sum(scored) / len(scored) if scored else None,
                      time_s=elapsed, tokens=len(ids), stop=stop)

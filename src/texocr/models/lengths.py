"""Training sequence lengths, counted before training, so that samples over `model.max_length` are left out
once, counted and reported in one line, instead of being dropped batch by batch with a warning each time.

    kept, fit = fit_to_length(samples, family, processor, max_length, target=training_target)
    log.info(fit.summary())           # "kept 94 of 128 training samples; 34 (26.6 %) longer than ..."
    fit.as_metrics()                  # what the run's metrics.json records

A length is what `Family.encode` builds: the prompt with its image tokens expanded, plus the answer tokens and
the end token. The image tokens are counted from each image's size (`processor._get_num_multimodal_tokens`,
transformers' own count) where the family's processor has it and it agrees with the real encoding on probe
images; otherwise every prompt is encoded (exact, slower).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image

    from texocr.models.base import Family
    from texocr.sample import Sample


@dataclass
class LengthFit:
    """How a set of samples fits `max_length`."""

    max_length: int
    lengths: list[int]
    dropped: list[int] = field(default_factory=list)
    """Indexes of the samples longer than `max_length`."""

    @property
    def longest(self) -> int:
        return max(self.lengths, default=0)

    def summary(self, what: str = "training samples") -> str:
        """One log line: how many were kept, how many dropped and the longest."""
        n, k = len(self.lengths), len(self.dropped)
        if not k:
            return (f"sequence lengths: all {n} {what} fit model.max_length={self.max_length} "
                    f"(longest {self.longest})")
        return (f"sequence lengths: dropped {k} of {n} {what} ({100 * k / max(n, 1):.1f} %) longer than "
                f"model.max_length={self.max_length} (longest {self.longest}); raise model.max_length or "
                "lower model.max_pixels to keep them")

    def as_metrics(self) -> dict[str, float]:
        """The record for metrics.json."""
        return {"train_samples": float(len(self.lengths)), "train_dropped_too_long": float(len(self.dropped)),
                "train_longest_sequence": float(self.longest), "max_length": float(self.max_length)}

    def percentiles(self) -> dict[str, int]:
        """p50 / p90 / p99 / max of the lengths (for bench/seq_lengths.py)."""
        if len(self.lengths) < 2:
            return {"max": self.longest}
        q = statistics.quantiles(self.lengths, n=100, method="inclusive")
        return {"p50": round(q[49]), "p90": round(q[89]), "p99": round(q[98]), "max": self.longest}


def _shown_images(family: Family, images: Sequence[Image.Image]) -> list[Image.Image]:
    """The images as the family hands them to its processor (Qwen pads extreme aspect ratios first)."""
    out: list[Image.Image] = []
    for item in family.images_arg(list(images)):
        out += list(item) if isinstance(item, (list, tuple)) else [item]
    return out


def _encoded_prompt_lengths(family: Family, processor: Any, images: Sequence[Image.Image]) -> list[int]:
    out: list[int] = []
    for start in range(0, len(images), 32):
        enc = family._prompt_batch(processor, list(images[start: start + 32]), padding_side="right")
        out += [int(n) for n in enc["attention_mask"].sum(dim=1).tolist()]
    return out


def prompt_lengths(family: Family, processor: Any, images: Sequence[Image.Image]) -> list[int]:
    """Prompt tokens (image tokens expanded) of each image, as `Family.encode` counts them."""
    if not images:
        return []
    count = getattr(processor, "_get_num_multimodal_tokens", None)
    if count is not None:
        try:
            shown = _shown_images(family, images)
            n_image = list(count(image_sizes=[(im.height, im.width) for im in shown]).num_image_tokens)
        except (AttributeError, KeyError, NotImplementedError, TypeError, ValueError):
            n_image = []
        if len(n_image) == len(images):
            # the prompt's other tokens, from a real encoding; checked on the largest image too
            probes = sorted({0, max(range(len(images)), key=lambda i: n_image[i])})
            exact = _encoded_prompt_lengths(family, processor, [images[i] for i in probes])
            rest = exact[0] - n_image[probes[0]]
            if all(e == rest + n_image[i] for i, e in zip(probes, exact)):
                return [rest + n for n in n_image]
    return _encoded_prompt_lengths(family, processor, images)


def sequence_lengths(family: Family, processor: Any, images: Sequence[Image.Image],
                     targets: Sequence[str]) -> list[int]:
    """The training sequence length of each (image, target) pair (see the module docstring)."""
    if not targets:
        return []
    tok = processor.tokenizer
    answers = tok([family.answer_prefix + t for t in targets], add_special_tokens=False)["input_ids"]
    return [p + len(a) + 1 for p, a in zip(prompt_lengths(family, processor, images), answers)]  # + end token


def fit_to_length(samples: Sequence[Sample], family: Family, processor: Any, max_length: int, *,
                  target: Callable[[str], str] = str.strip,
                  image: Callable[[Any], Any] | None = None) -> tuple[list[Sample], LengthFit]:
    """The samples that fit `max_length` (order kept) and the account of the others; `image` gives each image as
    the collator will show it (e.g. enlarged to a glyph height), so its tokens are counted at that size."""
    images = [image(s.image) if image else s.image for s in samples]
    lengths = sequence_lengths(family, processor, images, [target(s.latex) for s in samples])
    fit = LengthFit(max_length, lengths, [i for i, n in enumerate(lengths) if n > max_length])
    dropped = set(fit.dropped)
    return [s for i, s in enumerate(samples) if i not in dropped], fit

"""The training collator: a list of `Sample`s -> one model batch with labels on the answer only.

    collator = Collator(loaded, max_length=cfg.model.max_length, normalize=True)
    batch = collator(samples)          # BatchFeature: input_ids, attention_mask, pixel tensors, labels
    collator.dropped                   # Skipped records of over-long samples (never truncated)

The family does the encoding (prompt, image budget, label mask); this only adapts Samples to it,
normalizes targets when asked and keeps the account of what was left out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from texocr.errors import TexocrError
from texocr.sample import Sample, Skipped

if TYPE_CHECKING:
    from transformers import BatchFeature

    from texocr.models.loading import LoadedModel


class Collator:
    """Callable on `list[Sample]`; over-long samples are dropped and recorded in `self.dropped`."""

    def __init__(self, loaded: LoadedModel, max_length: int, *, normalize: bool = False,
                 normalize_level: str = "standard") -> None:
        self.family = loaded.family
        self.processor = loaded.processor
        self.max_length = max_length
        self.normalize = normalize
        self.normalize_level = normalize_level
        self.dropped: list[Skipped] = []
        self.seen = 0

    def target(self, sample: Sample) -> str:
        if not self.normalize:
            return sample.latex
        from texocr.latex import normalize

        return normalize(sample.latex, level=self.normalize_level)

    def __call__(self, samples: list[Sample]) -> BatchFeature:
        if not samples:
            raise TexocrError("empty batch: the data source yielded no samples")
        self.seen += len(samples)
        images = [s.image.convert("RGB") if s.image.mode != "RGB" else s.image for s in samples]
        targets = [self.target(s) for s in samples]
        enc = self.family.encode(self.processor, images, targets, self.max_length)
        for i, n in enc.dropped:
            self.dropped.append(
                Skipped(samples[i].id, "too_long", f"{n} tokens > model.max_length={self.max_length}")
            )
        if enc.batch is None:
            raise TexocrError(
                f"every sample of a batch of {len(samples)} is longer than model.max_length="
                f"{self.max_length} tokens (longest {max(n for _, n in enc.dropped)}): raise "
                "model.max_length or lower model.max_pixels"
            )
        return enc.batch

    def stats(self) -> dict[str, Any]:
        """How many samples went through and how many were dropped as too long."""
        return {"seen": self.seen, "dropped_too_long": len(self.dropped)}

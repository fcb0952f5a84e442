"""The training collator: a list of `Sample`s -> one model batch with labels on the answer only.

    collator = Collator(loaded, max_length=cfg.model.max_length, normalize=True)
    batch = collator(samples)          # BatchFeature: input_ids, attention_mask, pixel tensors, labels
    collator.dropped                   # Skipped records of over-long samples (never truncated)

The family does the encoding (prompt, image budget, label mask); this only adapts Samples to it,
normalizes targets when asked and keeps the account of what was left out. It is the one collator: training
(`texocr train`, in DataLoader workers) and the benchmarks use it.

`glyph_height=G` enlarges images whose glyphs are smaller than G pixels, as `Recognizer(glyph_height=G)` does before
it reads (`glyph_jitter` spreads G per image): what a model trains on is then what it is shown at inference.

`pack=True` (Qwen2-VL and Qwen2.5-VL models, `train.padding_free`) lays the rows end to end with their own M-RoPE
positions (`texocr.models.packing.pack`): no padding reaches the model.

`worker_side=True` (Qwen2-VL models: `texocr.models.qwen_speed`) also does in the worker what the training
step would otherwise do in the main process: `pixel_values` stay uint8 (normalized on the GPU by
`PixelNormalizer`), and `position_ids` ([3, B, T] M-RoPE) and `vision_width` (most patches of one image, an
int the patched vision attention reads instead of syncing with the GPU) are added to the batch.
"""

from __future__ import annotations

import logging
import random
import zlib
from typing import TYPE_CHECKING, Any

from texocr.errors import TexocrError
from texocr.sample import Sample, Skipped

log = logging.getLogger("texocr.data")

if TYPE_CHECKING:
    from transformers import BatchFeature

    from texocr.models.loading import LoadedModel


def training_target(latex: str, level: str = "standard") -> str:
    """The LaTeX core's canonical form of a label, so that exact match means the same everywhere; a label the
    parser cannot read is still a usable target as written."""
    from texocr.latex import normalize

    try:
        return normalize(latex, level=level) or latex.strip()
    except Exception:  # noqa: BLE001 - an unparsable label is kept as written
        return latex.strip()


def sized_as_read(image: Any, glyph_height: float | None, *, jitter: float = 0.0, key: str = "") -> Any:
    """`image` (PIL) in RGB, enlarged as `Recognizer(glyph_height=...)` enlarges an input before reading it (the
    target spread by +-`jitter`, drawn from `key`): training sees what inference will show the model."""
    img = image.convert("RGB") if image.mode != "RGB" else image
    if not glyph_height:
        return img
    from texocr.data.images import rescale_to_glyph_height

    if jitter:
        glyph_height *= 1 + random.Random(zlib.crc32(key.encode())).uniform(-jitter, jitter)
    return rescale_to_glyph_height(img, glyph_height)


class Collator:
    """Callable on `list[Sample]`; over-long samples are dropped and recorded in `self.dropped`."""

    def __init__(self, loaded: LoadedModel, max_length: int, *, normalize: bool = False,
                 normalize_level: str = "standard", worker_side: bool = False,
                 glyph_height: float | None = None, glyph_jitter: float = 0.0, pack: bool = False) -> None:
        if glyph_height is not None and glyph_height < 0 or not 0 <= glyph_jitter < 1:
            raise TexocrError(f"glyph_height must be >= 0 (0: off) and glyph_jitter in [0, 1), got {glyph_height} "
                              f"and {glyph_jitter}")
        self.glyph_height, self.glyph_jitter = glyph_height or None, glyph_jitter
        self.family = loaded.family
        self.processor = loaded.processor
        self.model_config = None
        self.worker_side, self.pack = worker_side, pack
        if worker_side or pack:
            from texocr.models import packing, qwen_speed

            for on, module, what in ((worker_side, qwen_speed, "worker-side collation"), (pack, packing, "packing")):
                if on and not module.supports(loaded.family.name):
                    raise TexocrError(f"{what} is for {', '.join(module.FAMILIES)} models, not {loaded.family.name}")
            self.model_config = loaded.model.config  # rope_positions: M-RoPE positions are computed per row
        if worker_side:
            self.processor = qwen_speed.uint8_processor(loaded.processor)
        self.max_length = max_length
        self.normalize = normalize
        self.normalize_level = normalize_level
        self.dropped: list[Skipped] = []
        self.seen = 0

    def target(self, sample: Sample) -> str:
        return training_target(sample.latex, self.normalize_level) if self.normalize else sample.latex

    def image(self, sample: Sample) -> Any:  # -> PIL.Image (RGB), sized as the Recognizer would size it
        # seeded by the sample and the count: DataLoader workers hold copies of one collator
        return sized_as_read(sample.image, self.glyph_height, jitter=self.glyph_jitter, key=f"{sample.id}:{self.seen}")

    def __call__(self, samples: list[Sample]) -> BatchFeature:
        if not samples:
            raise TexocrError("empty batch: the data source yielded no samples")
        self.seen += len(samples)
        images = [self.image(s) for s in samples]
        targets = [self.target(s) for s in samples]
        enc = self.family.encode(self.processor, images, targets, self.max_length)
        before = len(self.dropped)
        for i, n in enc.dropped:
            self.dropped.append(
                Skipped(samples[i].id, "too_long", f"{n} tokens > model.max_length={self.max_length}")
            )
        # a stream is not measured before training (texocr.models.lengths): say so at the 1st, 2nd, 4th... drop
        if len(self.dropped) > before and 1 << (len(self.dropped).bit_length() - 1) > before:
            log.warning("%d of %d samples so far dropped as longer than model.max_length=%d (this batch: %s tokens)",
                        len(self.dropped), self.seen, self.max_length, [n for _, n in enc.dropped])
        if enc.batch is None:
            raise TexocrError(
                f"every sample of a batch of {len(samples)} is longer than model.max_length="
                f"{self.max_length} tokens (longest {max(n for _, n in enc.dropped)}): raise "
                "model.max_length or lower model.max_pixels"
            )
        if self.model_config is not None:
            from texocr.models.qwen_speed import rope_positions

            batch = enc.batch
            batch["position_ids"] = rope_positions(batch, self.model_config)  # [3, B, T]
            if self.worker_side:
                grid = batch["image_grid_thw"]  # [images, 3]: patches per image = t * h * w
                batch["vision_width"] = int((grid[:, 0] * grid[:, 1] * grid[:, 2]).max())
            if self.pack:
                from texocr.models.packing import pack

                pack(batch)
        return enc.batch

    def stats(self) -> dict[str, Any]:
        """How many samples went through and how many were dropped as too long."""
        return {"seen": self.seen, "dropped_too_long": len(self.dropped)}

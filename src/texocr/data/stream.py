"""Training streams: what `texocr train` iterates when `data.streaming` is on, instead of a list in memory.

    stream = TrainStream(cfg.data, offset=resumed_step)      # a torch IterableDataset of Samples
    loader = DataLoader(stream, batch_size=..., num_workers=...)

Each (process, DataLoader worker) pair draws its own share, so a multi-GPU launch never sees a sample twice:
- a folder or hub data set is read epoch after epoch; shard `k` of `n` keeps the rows whose position `i`
  has `i % n == k`, then shuffles them in a buffer of `data.shuffle_buffer`;
- `synthetic` is an endless stream of fresh renders (shard `k` renders chunks k, k + n, ...). With
  `data.replay > 0` each worker keeps a pool of clean renders and yields every new render followed by
  `replay` pool images, each augmented afresh: rendering (~10 formulas/s per core with the pip renderer) is
  far slower than the compact model trains (>1,000 samples/s on one GPU);
- `data.real` parts (`texocr.data.realmix`) replace a share `data.real_ratio` of all samples.

`offset` (the optimizer step a run resumes from) moves every random stream on, so a resumed run does not
replay the samples it already trained on, and nothing has to be skipped over to get there.

Bad rows cost that row only (the sources skip and count them); a stream whose every source yields nothing
stops with an error instead of spinning.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from texocr.errors import TexocrError
from texocr.sample import Sample, Skipped

if TYPE_CHECKING:
    from texocr.config import DataConfig

try:  # torch is a dependency of training only; the class is usable (and testable) without a DataLoader
    from torch.utils.data import IterableDataset
except ImportError:  # pragma: no cover
    IterableDataset = object  # type: ignore[assignment,misc]

log = logging.getLogger("texocr.data")


def shard() -> tuple[int, int]:
    """(this reader's index, how many readers): processes of a launch x DataLoader workers of a process."""
    import torch

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    info = torch.utils.data.get_worker_info()
    wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * nw + wid, world * nw


def augment_by_style(img: Any, style: str, rng: random.Random, share: float) -> Any:
    """`img` augmented in its style's way with probability `share` (the stream passes 1 for handwriting-style
    renders, whose distortion is what makes them handwriting-like, and `printed_aug` for printed ones: test sets
    are mostly clean renders)."""
    from texocr.data.augment import augment

    if rng.random() < share:
        return augment(img, random.Random(rng.random()), style)
    return img


class TrainStream(IterableDataset):  # type: ignore[misc]
    """An endless IterableDataset of Samples from `cfg.train` (+ `cfg.real`), sharded over processes and workers."""

    def __init__(self, cfg: DataConfig, *, offset: int = 0) -> None:
        if not cfg.train and not (cfg.real and cfg.real_ratio > 0):
            raise TexocrError("no training data: set data.train (or data.real with data.real_ratio > 0)")
        if not 0.0 <= cfg.real_ratio < 1.0:
            raise TexocrError(f"data.real_ratio must be in [0, 1), got {cfg.real_ratio}")
        if cfg.real_ratio > 0 and not cfg.real:
            raise TexocrError("data.real_ratio > 0 needs data.real parts (KIND:PATH[:WEIGHT])")
        from texocr.data.realmix import RealPart

        self.cfg, self.offset = cfg, offset
        self.parts = [RealPart.parse(r) for r in cfg.real]  # malformed specs fail here, before any worker starts

    # ------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[Sample]:
        import torch

        if torch.utils.data.get_worker_info() is not None:
            torch.set_num_threads(1)  # many workers on few cores: no OpenMP oversubscription
        k, n = shard()
        rng = random.Random(f"stream:{self.cfg.seed}:{self.offset}:{k}")
        reals = None
        if self.parts and self.cfg.real_ratio > 0:
            from texocr.data.realmix import real_samples

            reals = real_samples(self.parts, random.Random(f"real:{self.cfg.seed}:{self.offset}:{k}"))
        if not self.cfg.train:  # real parts alone
            yield from reals  # type: ignore[misc]
            return
        mains = [self._synthetic(k, n, rng) if spec == "synthetic" else self._epochs(spec, k, n, rng)
                 for spec in self.cfg.train]
        while True:
            for main in mains:  # round robin over the sources of data.train
                if reals is not None:
                    while rng.random() < self.cfg.real_ratio:  # geometric: real_ratio of all samples
                        yield next(reals)
                yield next(main)

    def _epochs(self, spec: str, k: int, n: int, rng: random.Random) -> Iterator[Sample]:
        """Rows of shard k of n, epoch after epoch, shuffled in a buffer.

        A shard that yields nothing (a folder with fewer rows than readers, or whose rows of this shard are all
        bad) reads every row instead: duplicates between readers beat a reader that stops the whole run. Only a
        source with no usable row at all is an error."""
        from texocr.data.sources import open_source

        buffer: list[Sample] = []
        epoch = 0
        while True:
            source = open_source(spec, self.cfg, split=self.cfg.split)
            got = 0
            for sample in source.shard(k, n):  # only this reader's rows load their images
                got += 1
                if len(buffer) < self.cfg.shuffle_buffer:
                    buffer.append(sample)
                    continue
                j = rng.randrange(len(buffer))
                buffer[j], sample = sample, buffer[j]
                yield sample
            epoch += 1
            if not got and not buffer:
                if n == 1:
                    raise TexocrError(f"{spec}: no usable sample ({len(source.skipped)} rows skipped); check the "
                                      "data")
                log.warning("%s: reader %d of %d has no usable row of its own; it reads every row", spec, k, n)
                k, n = 0, 1
                continue
            log.debug("%s: epoch %d done on reader %d of %d", spec, epoch, k, n)
            rng.shuffle(buffer)
            while buffer:  # every epoch ends whole: each row once per epoch
                yield buffer.pop()

    def _synthetic(self, k: int, n: int, rng: random.Random) -> Iterator[Sample]:
        """Fresh renders of this reader's chunks, each followed by `replay` augmented pool images."""
        from texocr.data.synth import MAX_FAILED_IN_A_ROW, SyntheticSource

        d = self.cfg
        chunk = d.render_chunk or (64 if d.renderer == "tex" else 1)
        styles = ["printed", "handwritten"] if d.synthetic_style == "mixed" else [d.synthetic_style]
        sources = {s: SyntheticSource(n=2**40, seed=d.seed, style=s, renderer=d.renderer, formulas=d.formulas,
                                      real_ratio=d.real_formula_ratio, mutate_ratio=d.mutate_ratio, augment=False,
                                      chunk=chunk, cache_chunks=1, printed_dpis=d.printed_dpis,
                                      downsample_share=d.downsample_share) for s in styles}
        pool: list[list[Any]] = []  # [clean grey render, target, style, id, last augmentation, augmented share]
        c = 10_000_000 * (1 + self.offset) // chunk + k  # chunk number; a resumed run starts on unseen chunks
        failed = 0
        while True:
            style = styles[0] if len(styles) == 1 else (
                "printed" if rng.random() < d.printed_ratio else "handwritten")
            rendered = sources[style].render_chunk(c)
            c += n
            fresh = [got for got in rendered if not isinstance(got, Skipped)]
            failed = 0 if fresh else failed + len(rendered)
            if failed >= MAX_FAILED_IN_A_ROW:
                last = rendered[-1]
                raise TexocrError(f"synthetic stream: {failed} formulas in a row failed to render "
                                  f"({last.reason}: {last.detail[:120]}); stopping instead of waiting for a sample")
            for got in fresh:
                aug = d.printed_aug if style == "printed" else 1.0
                if got.meta.get("downsample"):  # im2markup-style: its look is the point
                    aug = d.downsample_aug
                item = [got.image.convert("L"), got.latex, style, got.id, None, aug]
                if d.replay <= 0:
                    yield self._augmented(item, rng, fresh=True)
                    continue
                if len(pool) < d.replay_pool:
                    pool.append(item)
                else:
                    pool[rng.randrange(d.replay_pool)] = item
                for it in [item] + [rng.choice(pool) for _ in range(d.replay)]:
                    yield self._augmented(it, rng, fresh=it[4] is None or rng.random() < d.replay_fresh_aug)

    def _augmented(self, item: list[Any], rng: random.Random, *, fresh: bool) -> Sample:
        if fresh:
            item[4] = augment_by_style(item[0].convert("RGB"), item[2], rng, item[5]) \
                if self.cfg.augment else item[0].convert("RGB")
        return Sample(image=item[4], latex=item[1], id=item[3], meta={"style": item[2]})

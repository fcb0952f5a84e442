"""The CPU half of recognition (read, check, glyph-height rescale, processor encoding; generated ids to cleaned
LaTeX) in worker processes.

    prep = Prep(processor, family, max_pixels=..., max_side=..., glyph_height=14)
    img = prep.load("eq.png")                       # RGB PIL image (raises TexocrError), in this process
    with PrepPool(prep, workers=8) as pool:
        for parts, errors, kept in pool.prepare(chunks): ...   # per chunk of sources, in order, prefetched
        preds = pool.finish(rows, logps, eos_ids, pad, elapsed).get()   # generated ids -> Predictions, in workers

Why: on a GPU the decoder turns out a batch of 512 formulas in a fraction of a second, while one CPU core needs
milliseconds per image to decode a PNG, find its glyph height (scipy connected components), resize and
patchify it. The workers do that for the next chunks while the GPU decodes this one. A chunk is encoded in
pieces (32 to 128 images, `PrepPool._piece`) by several workers and the pieces joined (`concat_encodings`: the
processor's own left-padded layout, tested equal). Workers are forked: no model is loaded twice, and they touch
no GPU.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

from texocr.errors import TexocrError

if TYPE_CHECKING:
    import torch


WORKERS_HELP = ("processes that read, rescale and encode images while the model decodes (default: on a GPU "
                "min(8, cores - 1), on a CPU 0)")
"""`--workers` of the commands that read many images (`texocr eval`, `texocr predict`)."""
BATCH_HELP = ("images per model call (default: what the model's run saved, else 512 for a model under 100 M "
              "parameters on a GPU, 16 otherwise)")
"""`--batch-size` of the same commands (`texocr.infer.default_batch_size`)."""


def add_reread_flags(p: Any) -> None:
    """`--reread PX [PX ...]` and `--reread-below LOGP` of the same commands (`Recognizer(reread=, reread_below=)`)."""
    p.add_argument("--reread", type=float, nargs="+", metavar="PX",
                   help="read an unsure input again with its glyphs PX pixels tall (one or more heights; 0: off) and "
                        "keep the surest read (default: the model's setting; the shipped model: 16)")
    p.add_argument("--reread-below", type=float, metavar="LOGP",
                   help="unsure = mean log-probability per token below this (default: the model's setting; "
                        "shipped: -0.01)")


def default_workers(device: str) -> int:
    """Image-preparing processes for a run on `device`: on a GPU one per spare core (at most 8), so that the
    decoder never waits for images; on a CPU none (the cores decode)."""
    import os

    return min(8, (os.cpu_count() or 1) - 1) if str(device).startswith("cuda") else 0


def source_name(src: Any) -> str:
    """How an input is named in messages: its path, a file object's name, or what kind of object it is."""
    from pathlib import Path

    from texocr.sample import DeferredImage

    if isinstance(src, DeferredImage):
        src = src.path or "<image>"
    if isinstance(src, (str, Path)):
        return str(src)
    name = getattr(src, "name", None)
    if isinstance(name, str):
        return name
    return "<bytes>" if isinstance(src, (bytes, bytearray, memoryview)) else "<Image>"


@dataclass
class Prep:
    """A Recognizer's image settings and processor: what a worker needs to turn inputs into model inputs."""

    processor: Any
    family: Any
    max_pixels: int | None
    max_side: int | None
    glyph_height: float | None

    def load(self, src: Any) -> Any:  # -> PIL.Image (RGB)
        """Read `src`, refuse a blank one, enlarge small glyphs (`glyph_height`); TexocrError when unusable."""
        import numpy as np

        from texocr.data.images import load_image, rescale_to_glyph_height
        from texocr.sample import read_image

        img = load_image(read_image(src), max_pixels=self.max_pixels, max_side=self.max_side)
        gray = np.asarray(img.convert("L"))
        if int(gray.max()) - int(gray.min()) < 8:  # also what a fully transparent PNG becomes once composited on white
            raise TexocrError(f"{source_name(src)}: blank image (a single colour): no formula to read")
        return rescale_to_glyph_height(img, self.glyph_height) if self.glyph_height else img

    def encode(self, images: list[Any]) -> dict[str, torch.Tensor]:
        """The family's left-padded generation batch of `images`, as CPU tensors."""
        return dict(self.family.encode_for_generation(self.processor, images))

    def pad_id(self) -> int:
        return int(self.family.generation_kwargs(self.processor)["pad_token_id"])


def concat_encodings(parts: Sequence[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Join left-padded generation batches into one: per-token tensors ([b, T, ...], T = the prompt width) are
    left-padded to the widest (`pad_id` in `input_ids`, 0 elsewhere: what the processor pads with); the rest
    (`pixel_values` [patches, C], `image_grid_thw` [b, 3]) are concatenated."""
    import torch
    import torch.nn.functional as F

    if len(parts) == 1:
        return dict(parts[0])
    width = max(p["input_ids"].shape[1] for p in parts)
    out: dict[str, torch.Tensor] = {}
    for key in parts[0]:
        tensors = []
        for p in parts:
            t, (b, w) = p[key], p["input_ids"].shape
            if t.dim() >= 2 and tuple(t.shape[:2]) == (b, w) and w < width:
                pad = [0, 0] * (t.dim() - 2) + [width - w, 0]  # F.pad lists the last dimension first
                t = F.pad(t, pad, value=pad_id if key == "input_ids" else 0)
            tensors.append(t)
        out[key] = torch.cat(tensors, dim=0)
    return out


_WORKER: dict[str, Prep] = {}


def _init(prep: Prep) -> None:
    import torch
    import torch.multiprocessing

    torch.set_num_threads(1)  # one process per core; torch's own threads would fight over them
    # A tensor this worker returns travels as a named shared-memory file, not as a file descriptor: under the
    # default strategy every tensor's descriptor is handed over through a socket of its own, which cost the
    # receiving (decoding) process ~2.5 ms of CPU per tensor, ~10 ms per piece of 4 tensors, ~0.3 s per
    # batch of 1024; by name ~3 ms per piece (bench/infer.md). Set here, in the worker that pickles: the
    # parent and training's DataLoader keep the default.
    torch.multiprocessing.set_sharing_strategy("file_system")
    try:  # the strategy needs torch's shared-memory manager process; where it cannot start, keep the default
        torch.zeros(1).share_memory_()
    except RuntimeError:
        torch.multiprocessing.set_sharing_strategy("file_descriptor")
    _WORKER["prep"] = prep


def _prepare_piece(sources: list[Any]) -> tuple[dict[str, torch.Tensor] | None, list[tuple[int, Any]], list[int]]:
    """(encoding of the readable sources, [(position, TexocrError)] of the others, positions encoded)."""
    prep = _WORKER["prep"]
    images, errors, kept = [], [], []
    for j, src in enumerate(sources):
        try:
            images.append(prep.load(src))
            kept.append(j)
        except TexocrError as e:  # as a plain TexocrError: ImageError's own arguments do not survive pickling
            errors.append((j, TexocrError(str(e))))
    return (prep.encode(images) if images else None), errors, kept


def _finish_piece(rows: list[list[int]], logps: list[list[float]], eos_ids: list[int], pad: int | None,
                  elapsed: float, batch: int) -> list[Any]:
    from texocr.prediction import finish_row

    prep = _WORKER["prep"]
    preds = [finish_row(prep.family, prep.processor, r, lp, eos_ids, pad, elapsed) for r, lp in zip(rows, logps)]
    for p in preds:
        p.batch_size = batch
    return preds


class _Joined:
    """Pending pieces of one batch's predictions, joined in order by `get()`."""

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts

    def get(self) -> list[Any]:
        return [p for part in self.parts for p in part.get()]


class PrepPool:
    """`workers` forked processes holding `prep`; `prepare` and `finish` keep input order (module docstring)."""

    def __init__(self, prep: Prep, workers: int, *, piece: int | None = None) -> None:
        self.prep, self.workers = prep, max(1, workers)
        self.piece = max(1, piece) if piece else None  # None: `_piece` per chunk
        # fork: the processor is inherited, not pickled; the parent's CUDA context is never used by a worker
        self.pool = multiprocessing.get_context("fork").Pool(self.workers, initializer=_init, initargs=(prep,))

    def prepare(self, chunks: Sequence[list[Any]]) -> Iterator[tuple[list[dict[str, torch.Tensor]],
                                                                     list[tuple[int, Any]], list[int]]]:
        """Per chunk of sources, in order: (its encoding as pieces to join with `concat_encodings`, [(position,
        TexocrError)] of unreadable ones, positions encoded). Each chunk is read, rescaled and encoded in pieces
        (`_piece`) by the workers, every piece of every chunk queued at once (by this call, not by the
        first step of the iterator): the workers prepare the next chunks while the caller decodes. The pieces are
        joined by the caller, on its device: one copy of the pixels in this process (the host-to-device one)
        instead of a concatenation first."""
        pending = []
        for chunk in chunks:
            size = self._piece(len(chunk))
            pending.append((size, [self.pool.apply_async(_prepare_piece, (chunk[i: i + size],))
                                   for i in range(0, len(chunk), size)]))  # queued now, not when iterated
        return self._joined(pending)

    def _piece(self, n: int) -> int:
        """Sources per worker task for a chunk of `n`: every worker busy on one chunk, in pieces of 32 to 128.
        Why not smaller: each piece's hand-over costs the decoding process a few ms of CPU whatever its size
        (`_init`), so a batch of 1024 in pieces of 32 paid it 32 times."""
        return self.piece or max(32, min(128, -(-n // self.workers)))

    def _joined(self, pending: list[tuple[int, list[Any]]]) -> Iterator[tuple[list[dict[str, torch.Tensor]],
                                                                              list[tuple[int, Any]], list[int]]]:
        for size, pieces in pending:
            encs, errors, kept = [], [], []
            for k, piece in enumerate(pieces):
                enc, errs, ok = piece.get()
                errors += [(k * size + j, e) for j, e in errs]
                kept += [k * size + j for j in ok]
                if enc is not None:
                    encs.append(enc)
            yield encs, errors, kept

    def finish(self, rows: list[list[int]], logps: list[list[float]], eos_ids: Sequence[int], pad: int | None,
               elapsed: float) -> _Joined:
        """`texocr.prediction.finish_row` of every generated row (decode, clean, repair: a LaTeX parse each), in the
        workers, in pieces; `get()` gives the Predictions in order. The caller decodes the next batch meanwhile."""
        step = max(16, -(-len(rows) // self.workers))
        return _Joined([self.pool.apply_async(_finish_piece, (rows[i: i + step], logps[i: i + step], list(eos_ids),
                                                              pad, elapsed, len(rows)))
                        for i in range(0, len(rows), step)])

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""What it costs the decoding process to receive one worker piece (texocr.prep), by torch's sharing strategy.

    .venv/bin/python bench/prep_handover.py          # ~20 s; results in bench/infer.md ("hand-over")

A piece is what `prep._prepare_piece` returns for 32 published images at glyph height 16: a dict of four tensors,
`pixel_values` [32 x 276 patches, 588] uint8 (5.2 MB) and three small ones. Two forked workers make them
(cloned from a buffer, so the workers' own time is small); the parent's CPU time (`process_time`: the pool's
result thread unpickling, mapping the shared memory) is what the GPU-feeding process loses per piece. Also a
piece of 128 images (20.8 MB) and the pixels alone, to separate the cost per tensor from the cost per byte.
"""

from __future__ import annotations

import multiprocessing
import sys
import time

import torch

_BUF: dict[int, torch.Tensor] = {}


def _init(strategy: str) -> None:
    torch.multiprocessing.set_sharing_strategy(strategy)
    for rows in (32 * 276, 128 * 276):
        _BUF[rows] = torch.randint(0, 255, (rows, 588), dtype=torch.uint8)


def _piece(rows: int) -> dict[str, torch.Tensor]:
    n = rows // 276
    return {"pixel_values": _BUF[rows].clone(), "input_ids": torch.zeros(n, 80, dtype=torch.long),
            "attention_mask": torch.ones(n, 80, dtype=torch.long), "image_grid_thw": torch.ones(n, 3, dtype=torch.long)}


def _pixels(rows: int) -> torch.Tensor:
    return _BUF[rows].clone()


def main() -> None:
    for strategy in ("file_descriptor", "file_system"):
        pool = multiprocessing.get_context("fork").Pool(2, initializer=_init, initargs=(strategy,))
        for fn, rows, n in ((_piece, 32 * 276, 64), (_piece, 128 * 276, 16), (_pixels, 32 * 276, 64)) * 2:
            c0 = time.process_time()
            out = [r.get() for r in [pool.apply_async(fn, (rows,)) for _ in range(n)]]
            ms = (time.process_time() - c0) / n * 1000
            print(f"{strategy:16s} {fn.__name__:8s} {rows // 276:4d} images ({rows * 588 / 1e6:5.1f} MB): "
                  f"{ms:5.2f} ms of the parent's CPU per piece", flush=True)
            del out
        pool.terminate()
        pool.join()
    print(f"torch {torch.__version__}, python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()

"""How many CPU threads torch should use here (`texocr demo`, `texocr predict`, `texocr eval` on a CPU).

    torch.set_num_threads(cpu_threads())
    use_idle_cores(rec.device)            # the same, only when the model runs on the CPU
"""

from __future__ import annotations

import os


def cpu_threads() -> int:
    """Torch threads for this run: `OMP_NUM_THREADS` when set, else the idle cores, at least one.

    On a machine whose cores are already busy, OpenMP threads spin at barriers: one thread was 2-8x faster
    than two on a loaded 2-core machine (bench/compact.md; a first prediction 0.2 s instead of 1-2.8 s,
    bench/load_time.md), while on an idle machine every core helps.
    """
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return max(1, min(cores, round(cores - busy)))


def use_idle_cores(device: str) -> None:
    """On a CPU, torch threads = `cpu_threads()`; a GPU run is left alone."""
    if str(device).startswith("cpu"):
        import torch

        torch.set_num_threads(cpu_threads())

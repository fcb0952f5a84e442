"""CUDA-graph capture shared by texocr's fast decoder (`compact_decode`: its decode step) and vision tower
(`compact_vision`: the padded small-batch shapes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def capture_graph(step: Callable[[], None]) -> Any:
    """`step` captured in a CUDA graph, after warm-up runs on a side stream (kernel choice, workspaces: what
    torch.cuda.graphs asks for). `step` must read and write preallocated tensors; a tensor it allocates in the
    captured run lives in the graph's memory pool and is rewritten by every replay (how an output is read)."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph

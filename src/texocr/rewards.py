"""Rewards for reinforcement fine-tuning (`train.method: grpo`): how good is a predicted formula, given its label?

    reward = RewardFunction.from_config(cfg.train)            # parts and weights from `train.reward_parts`
    reward([r"a \\leq b", "a < b"], [r"a \\le b", r"a \\le b"])   # -> [Reward(total, parts), Reward(...)]
    reward.close()                                              # stops the render workers

A reward is a weighted sum of named parts (`train.reward_parts`, `NAME[:WEIGHT]` each):

- `image`   the prediction renders and looks like the label's rendering: soft ink IoU in [0, 1] (`ink_iou`) of
            both renders, each cropped to its ink, blank columns dropped (as `texocr.metrics.image_match` does,
            so spacing does not count) and scaled to a common height. `\\le` and `\\leq` score 1, as identical
            strings do; a prediction that does not render scores 0;
- `valid`   1 when the model's own text is valid LaTeX (`texocr.latex.is_valid`, judged before
            `texocr.latex.repair`: repair would make an unclosed brace free), else 0; an empty prediction is 0;
- `edit`    token edit score 1 - Levenshtein / max(length) on normalized tokens (`texocr.metrics.tokens`);
- `length`  a penalty in [-1, 0]: tokens beyond the label's length, relative to it. Only excess costs: a loop or
            a repeated tail is the failure sampling produces, and a prediction that is too short is already an
            `edit` and `image` error.

Rendering goes through texocr's hardened renderer (`texocr.data.render`: refused primitives, no shell, no file
access) in a `RenderPool`: worker threads, each with its own renderer, render chunks of formulas in one TeX
document each; results (the scaled ink, not the image) are cached, so a label renders once per run and a formula
sampled again costs nothing; every formula is bounded by a timeout (see `RenderPool`).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

from texocr.errors import TexocrError

if TYPE_CHECKING:
    import numpy as np

    from texocr.config import TrainConfig

log = logging.getLogger("texocr.rewards")

REWARD_PARTS = ("image", "valid", "edit", "length")
"""The parts a reward can be made of (`train.reward_parts`)."""

PART_RANGES: dict[str, tuple[float, float]] = {"image": (0.0, 1.0), "valid": (0.0, 1.0), "edit": (0.0, 1.0),
                                               "length": (-1.0, 0.0)}
"""(worst, best) value of each part before weighting."""

INK_HEIGHT = 32
"""Rows both renders are scaled to before they are compared: the common height."""
INK_THRESHOLD = 160
"""Grey levels below this are ink when cropping (the threshold `texocr.metrics.image_match` binarizes at)."""
RENDER_DPI = 150
"""Resolution of reward renders: ample for a 32-row comparison, and cheaper for dvipng than 200."""


# ---------------------------------------------------------------- parts


def parse_reward_parts(specs: Sequence[str]) -> dict[str, float]:
    """`["image:1", "valid:0.25", "edit"]` -> `{"image": 1.0, "valid": 0.25, "edit": 1.0}` (weight 1 when left out)."""
    weights: dict[str, float] = {}
    for spec in specs:
        name, _, raw = str(spec).partition(":")
        name = name.strip()
        if name not in REWARD_PARTS:
            raise TexocrError(f"train.reward_parts: unknown part {name!r} in {spec!r}; choose from "
                              f"{', '.join(REWARD_PARTS)} (NAME or NAME:WEIGHT)")
        if name in weights:
            raise TexocrError(f"train.reward_parts: {name!r} is given twice")
        try:
            weight = float(raw) if raw.strip() else 1.0
        except ValueError:
            raise TexocrError(f"train.reward_parts: weight of {spec!r} is not a number") from None
        if not math.isfinite(weight) or weight < 0:
            raise TexocrError(f"train.reward_parts: weight of {spec!r} must be a finite number >= 0")
        weights[name] = weight
    if not any(weights.values()):
        raise TexocrError("train.reward_parts: no part with a weight above 0; e.g. [image:1, valid:0.25, edit:0.5]")
    return weights


def tokens(s: str) -> list[str]:
    """Normalized LaTeX tokens (`texocr.metrics.tokens`); the raw tokens of text the normalizer cannot read."""
    from texocr.latex import tokenize
    from texocr.metrics import tokens as normalized_tokens

    try:
        return normalized_tokens(s)
    except Exception:  # noqa: BLE001 - sampled text can be anything; it still has tokens to count
        return tokenize(s or "")


def edit_part(pred: list[str], ref: list[str]) -> float:
    """1 - token Levenshtein / max(len): 1 for equal token lists (both empty too), 0 for nothing in common."""
    from rapidfuzz.distance import Levenshtein

    longest = max(len(pred), len(ref))
    return 1.0 - Levenshtein.distance(pred, ref) / longest if longest else 1.0


def length_part(pred: list[str], ref: list[str]) -> float:
    """-(tokens beyond the label's length) / label length, clipped to [-1, 0]."""
    excess = max(0, len(pred) - len(ref))
    return -min(1.0, excess / max(len(ref), 1)) if excess else 0.0


def valid_part(raw: str) -> float:
    """1.0 for non-empty valid LaTeX, else 0.0."""
    from texocr.latex import is_valid

    return 1.0 if raw.strip() and is_valid(raw) else 0.0


def ink_profile(img: Any, height: int = INK_HEIGHT) -> np.ndarray | None:
    """An image -> its ink coverage in [0, 1] as float32 [height, W], or None when blank.

    Cropped to the rows and columns holding ink (blank columns between symbols dropped, so spacing does not
    count), then area-resampled to `height` rows with the aspect ratio kept: the soft edges make the comparison
    tolerant of a pixel of shift, and a common height makes it independent of render size.
    """
    import numpy as np
    from PIL import Image

    gray = np.asarray(img.convert("L"), dtype=np.float32)  # [H, W], 255 = paper
    mask = gray < INK_THRESHOLD
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    ink = (255.0 - gray[rows[0]: rows[-1] + 1][:, cols]) / 255.0  # [h, w] with blank columns dropped
    h, w = ink.shape
    width = max(1, round(w * height / h))
    scaled = Image.fromarray(ink).resize((width, height), Image.Resampling.BOX)  # float32 -> a mode "F" image
    return np.clip(np.asarray(scaled, dtype=np.float32), 0.0, 1.0)


def ink_iou(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """Soft IoU sum(min) / sum(max) of two `ink_profile`s, left-aligned and padded to the wider one; 0 if either
    is None. Identical profiles give 1."""
    import numpy as np

    if a is None or b is None:
        return 0.0
    width = max(a.shape[1], b.shape[1])
    a = np.pad(a, ((0, 0), (0, width - a.shape[1])))
    b = np.pad(b, ((0, 0), (0, width - b.shape[1])))
    union = float(np.maximum(a, b).sum())
    return float(np.minimum(a, b).sum()) / union if union > 0 else 0.0


# ---------------------------------------------------------------- rendering


class RenderPool:
    """Formulas -> `ink_profile`s, rendered by worker threads, cached, each formula bounded by a timeout.

    Threads, not processes: the work happens in TeX subprocesses (the GIL is free meanwhile) and a thread needs
    no pickling nor a second probe of the renderer. Each thread has its own renderer (a renderer counts its
    failures; it is not shared). Uncached formulas are split into chunks of `chunk` (one TeX document each:
    TeX renders hundreds of formulas a second in one document, six a second one by one).

    Timeout: the TeX renderer kills a TeX run after `timeout_s` (plus 0.05 s a formula) and bisects the chunk
    to find the formula that hung it, which then fails alone (so at most 1 + log2(chunk) runs of a chunk time
    out). A chunk still running past that bound (a renderer without a timeout of its own: pip, a test's fake)
    is given up: its formulas count as failed for this call (`timeouts`), and its result, should it come,
    goes into the cache. Everything else the renderer returns is cached, failures included (TeX rejects the
    same formula again).
    """

    def __init__(self, kind: str = "auto", *, workers: int = 2, chunk: int = 16, timeout_s: float = 5.0,
                 dpi: int = RENDER_DPI, height: int = INK_HEIGHT, cache_size: int = 100_000,
                 make_renderer: Callable[[], Any] | None = None) -> None:
        if workers < 1 or chunk < 1 or timeout_s <= 0:
            raise TexocrError(f"render pool: workers ({workers}) and chunk ({chunk}) must be >= 1 and the timeout "
                              f"({timeout_s}) > 0")
        self.workers, self.timeout_s, self.dpi, self.height = workers, timeout_s, dpi, height
        self.cache_size = cache_size
        if make_renderer is None:
            from texocr.data.render import get_renderer

            self.kind = get_renderer(kind).name  # probed here, once: a missing TeX package fails now and clearly

            def make_renderer() -> Any:
                return get_renderer(self.kind, probe=False)
        else:
            self.kind = "custom"
        self.chunk = chunk if self.kind in ("tex", "custom") else 1  # the pip renderer draws one at a time anyway
        self._make_renderer = make_renderer
        self._local = threading.local()
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, Any] = OrderedDict()  # formula -> ink profile, or None when it failed
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="texocr-render")
        self.renderers: list[Any] = []
        """Every renderer the workers made (tests read their counts)."""
        self.stats: dict[str, int] = {"requested": 0, "cache_hits": 0, "rendered": 0, "failed": 0, "timeouts": 0}

    # ------------------------------------------------------------ public

    def ink(self, formulas: Sequence[str]) -> list[np.ndarray | None]:
        """The ink profile of each formula (None: it did not render, or not in time); input order kept."""
        found: dict[str, Any] = {}
        todo: list[str] = []
        with self._lock:
            self.stats["requested"] += len(formulas)
            for f in dict.fromkeys(formulas):  # each distinct formula once (a group often repeats itself)
                if f in self._cache:
                    self._cache.move_to_end(f)
                    found[f] = self._cache[f]
                    self.stats["cache_hits"] += 1
                else:
                    todo.append(f)
        if todo:
            found.update(self._render(todo))
        return [found[f] for f in formulas]

    def close(self) -> None:
        """Stop the workers (a chunk still running finishes in the background)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ internals

    def _chunk_limit(self, n: int) -> float:
        """Seconds a running chunk of `n` formulas may take: the TeX renderer's own worst case. It runs latex, then
        dvipng, each killed after `timeout_s` + 0.05 s a formula; a chunk that hung is bisected, one round per
        halving."""
        per_run = 2 * (self.timeout_s + 0.05 * n)
        return per_run * (1 + math.ceil(math.log2(n))) if n > 1 else per_run

    def _render(self, todo: list[str]) -> dict[str, Any]:
        chunks = [todo[i: i + self.chunk] for i in range(0, len(todo), self.chunk)]
        started: dict[int, float] = {}  # chunk index -> when a worker took it up
        futures: dict[Future[list[Any]], int] = {
            self._executor.submit(self._render_chunk, c, started, k): k for k, c in enumerate(chunks)}
        out: dict[str, Any] = {}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.05, return_when=FIRST_COMPLETED)
            for fut in done:
                k = futures[fut]
                try:
                    inks = fut.result()
                except Exception as e:  # noqa: BLE001 - a renderer bug must not end training: the chunk fails
                    log.warning("reward render failed for %d formulas: %s: %s", len(chunks[k]), type(e).__name__, e)
                    inks = [None] * len(chunks[k])
                out.update(zip(chunks[k], inks))
                self._store(chunks[k], inks)
            now = time.monotonic()
            for fut in list(pending):
                k = futures[fut]
                if k in started and now - started[k] > self._chunk_limit(len(chunks[k])):
                    pending.discard(fut)
                    out.update((f, None) for f in chunks[k])
                    with self._lock:
                        self.stats["timeouts"] += len(chunks[k])
                    log.warning("reward render: %d formulas gave up after %.1f s (e.g. %r)", len(chunks[k]),
                                now - started[k], chunks[k][0][:80])
                    fut.add_done_callback(functools.partial(self._store_late, chunks[k]))
        return out

    def _render_chunk(self, formulas: list[str], started: dict[int, float], k: int) -> list[Any]:
        started[k] = time.monotonic()
        renderer = getattr(self._local, "renderer", None)
        if renderer is None:
            renderer = self._local.renderer = self._make_renderer()
            if hasattr(renderer, "timeout_s"):  # TexRenderer: the per-run timeout that isolates a hanging formula
                renderer.timeout_s = self.timeout_s
            with self._lock:
                self.renderers.append(renderer)
        results = renderer.render_detailed(list(formulas), dpi=self.dpi)
        return [ink_profile(r.image, self.height) if r.image is not None else None for r in results]

    def _store_late(self, formulas: list[str], fut: Future[list[Any]]) -> None:
        """A chunk given up on has finished after all: keep its result for the next call."""
        if not fut.cancelled() and fut.exception() is None:
            self._store(formulas, fut.result())

    def _store(self, formulas: list[str], inks: list[Any]) -> None:
        with self._lock:
            for f, ink in zip(formulas, inks):
                self._cache[f] = ink
                self._cache.move_to_end(f)
                self.stats["rendered" if ink is not None else "failed"] += 1
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)


# ---------------------------------------------------------------- the reward


@dataclass
class Reward:
    """One prediction's reward: `total` = sum of weight x part, and each part before weighting."""

    total: float
    parts: dict[str, float] = field(default_factory=dict)


class RewardFunction:
    """Predictions + labels -> `Reward`s, from named, weighted parts (see the module docstring)."""

    def __init__(self, weights: dict[str, float], *, pool: RenderPool | None = None) -> None:
        unknown = set(weights) - set(REWARD_PARTS)
        if unknown:
            raise TexocrError(f"unknown reward parts {sorted(unknown)}; choose from {', '.join(REWARD_PARTS)}")
        self.weights = {k: float(v) for k, v in weights.items() if v}
        if self.weights.get("image") and pool is None:
            raise TexocrError("the `image` reward part needs a RenderPool")
        self.pool = pool

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> RewardFunction:
        """`train.reward_parts` weighted; a render pool (`reward_renderer`, `reward_workers`,
        `reward_timeout_s`) when the `image` part counts."""
        import os

        weights = parse_reward_parts(cfg.reward_parts)
        pool = None
        if weights.get("image"):
            workers = cfg.reward_workers or min(8, os.cpu_count() or 1)
            pool = RenderPool(cfg.reward_renderer, workers=workers, timeout_s=cfg.reward_timeout_s)
        return cls(weights, pool=pool)

    @property
    def best(self) -> float:
        """The highest total a prediction can get (a prediction equal to its label gets it)."""
        return sum(w * PART_RANGES[k][1] for k, w in self.weights.items())

    def __call__(self, preds: Sequence[str], refs: Sequence[str], *,
                 raw: Sequence[str] | None = None) -> list[Reward]:
        """One `Reward` per (prediction, label). `raw` is the model's text before cleaning and repair, which the
        `valid` part judges (default: `preds`)."""
        if len(preds) != len(refs) or (raw is not None and len(raw) != len(preds)):
            raise ValueError(f"{len(preds)} predictions, {len(refs)} labels, {len(raw or preds)} raw texts")
        raw = preds if raw is None else raw
        pred_inks: list[Any] = [None] * len(preds)
        ref_inks: list[Any] = [None] * len(refs)
        if "image" in self.weights and preds:
            assert self.pool is not None
            inks = self.pool.ink(list(preds) + list(refs))
            pred_inks, ref_inks = inks[: len(preds)], inks[len(preds):]
        out = []
        for i, (pred, ref) in enumerate(zip(preds, refs)):
            parts: dict[str, float] = {}
            p_tok, r_tok = tokens(pred), tokens(ref)
            for name in self.weights:
                if name == "image":
                    # an empty prediction or an unrenderable label scores 0: when the label does not render, all
                    # of its group score 0 here and this part moves no advantage
                    parts[name] = ink_iou(pred_inks[i], ref_inks[i]) if pred.strip() else 0.0
                elif name == "valid":
                    parts[name] = valid_part(raw[i])
                elif name == "edit":
                    parts[name] = edit_part(p_tok, r_tok)
                else:
                    parts[name] = length_part(p_tok, r_tok)
            out.append(Reward(sum(self.weights[k] * v for k, v in parts.items()), parts))
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()

"""Synthetic data: random (or real) formulas rendered on the fly, and `texocr data render` that writes them.

    from texocr.data.synth import SyntheticSource
    src = SyntheticSource(n=10_000, seed=0, style="mixed")     # a map-style data set: src[i] is a Sample
    for sample in src: ...                                     # or iterate (shards by DataLoader worker)

Every sample depends only on (seed, index): its formula (`texocr.data.formulas`), its render settings and its
augmentation. Indices are rendered in chunks of `chunk` (TeX wants batches: one document per chunk), so a
chunk shares one font and resolution, drawn from (seed, chunk number); sizes vary per formula. The target
`latex` is `texocr.latex.normalize(formula)`. A formula that fails to render is recorded in `.skipped`
when iterating; `src[i]` falls back deterministically to a fresh index (i + n, i + 2n, ...) so a DataLoader
never sees a hole.

CLI: texocr data render --n 2000 --out data/synth --seed 0 [--style printed|handwritten|mixed]
     [--formulas FILE --real-ratio 0.5 --mutate-ratio 0.0] [--renderer auto|tex|pip] [--workers 0] [--no-augment]
     [--augment-strength 1.0] [--in-order] [--downsample-share 0.25]

A `downsample_share` of printed chunks (default 0.25) imitates the published im2latex-100k images (harvardnlp
im2markup: 10 pt Computer Modern at 200 dpi with solid ink, 8 px margin, bucket sizes, downsampled by 2 with
LANCZOS): rendered at 2x their resolution and brought down by `augment.im2markup`, not further augmented here;
bench/render_realism.md measures how close that comes (the model reads them as it reads the published images).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from texocr.data.augment import MAX_STRENGTH, im2markup
from texocr.data.augment import augment as augment_image
from texocr.data.formulas import FormulaPool, read_formulas
from texocr.data.render import Renderer, get_renderer
from texocr.errors import TexocrError
from texocr.sample import Sample, Skipped

STYLES = ("printed", "handwritten", "mixed")
# resolutions of printed chunks; each formula is further scaled by 0.92-1.44 (`_render_chunk`)
PRINTED_DPIS = (110, 130, 150, 170, 200, 240)
DOWNSAMPLE_SHARE = 0.25
"""Default share of printed chunks drawn the way the published im2latex-100k images were made (`downsample_share`)."""
DOWNSAMPLED_DPIS = (90, 100, 100, 100, 110, 120)
"""Output resolutions of those chunks (rendered at `downsample_factor` x this, then downsampled); im2latex-100k is
10 pt at 100 dpi (200 dpi halved), which is what scale 0.83 (\\footnotesize of the 12 pt base) at 100 dpi gives."""
_DOWNSAMPLED_SCALES = (0.83, 0.83, 0.83, 0.92, 1.0)
_DOWNSAMPLED_FONTS = ("cm", "latinmodern")  # Computer Modern: im2latex's font (the first one this renderer has)
# font weights per style and renderer (fonts missing on this machine are dropped)
_FONTS = {
    ("tex", "printed"): {"cm": 10, "cm-bold": 1, "cm-sans": 1, "euler": 1, "times": 1, "palatino": 1},
    ("tex", "handwritten"): {"euler": 4, "cm-sans": 4, "cm": 2},
    ("pip", "printed"): {"latinmodern": 6, "stix": 4},
    ("pip", "handwritten"): {"stix": 5, "latinmodern": 5},
}
MAX_FAILED_IN_A_ROW = 256
"""A stream stops with an error after this many formulas in a row failed to render (4 chunks of 64)."""


class SyntheticSource:
    """`n` rendered samples, deterministic per (seed, index); map-style and iterable."""

    def __init__(self, n: int = 2000, seed: int = 0, style: str = "printed", *, renderer: str | Renderer = "auto",
                 formulas: str | list[str] | None = None, real_ratio: float = 0.5, mutate_ratio: float = 0.0,
                 augment: bool = True, augment_strength: float = 1.0, in_order: bool = False, chunk: int = 64,
                 cache_chunks: int = 4, printed_dpis: Sequence[int] | None = None,
                 downsample_share: float = DOWNSAMPLE_SHARE, downsample_factor: int = 2) -> None:
        if style not in STYLES:
            raise TexocrError(f"unknown style {style!r}; choose {', '.join(STYLES)}")
        if n < 0 or chunk < 1:
            raise TexocrError("n must be >= 0 and chunk >= 1")
        if not 0.0 <= augment_strength <= MAX_STRENGTH:
            raise TexocrError(f"augment_strength must be in [0, {MAX_STRENGTH}], got {augment_strength}")
        self.augment_strength = augment_strength
        if not 0.0 <= downsample_share <= 1.0:
            raise TexocrError(f"downsample_share must be in [0, 1], got {downsample_share}")
        if not (isinstance(downsample_factor, int) and 2 <= downsample_factor <= 4):
            raise TexocrError(f"downsample_factor must be an integer in [2, 4], got {downsample_factor}")
        self.downsample_share, self.downsample_factor = downsample_share, downsample_factor
        self.printed_dpis = tuple(PRINTED_DPIS if printed_dpis is None else printed_dpis)
        if not self.printed_dpis or any(not 30 <= d <= 1200 for d in self.printed_dpis):
            raise TexocrError(f"printed_dpis must be a non-empty list of resolutions in [30, 1200], got {printed_dpis}")
        self.name = f"synthetic(seed={seed}, style={style})"
        self.n, self.seed, self.style, self.augment, self.chunk = n, seed, style, augment, chunk
        self._renderer_spec = renderer
        self._renderer = renderer if isinstance(renderer, Renderer) else None
        real = read_formulas(formulas) if isinstance(formulas, str) else formulas
        self.pool = FormulaPool(seed, real=real, real_ratio=real_ratio, mutate_ratio=mutate_ratio,
                                in_order=in_order)
        self._cache: OrderedDict[int, list[Sample | Skipped]] = OrderedDict()
        self._cache_chunks = cache_chunks
        self.skipped: list[Skipped] = []

    @property
    def renderer(self) -> Renderer:
        if self._renderer is None:  # made lazily, so the source pickles cheaply into DataLoader workers
            # probed with every font this source's styles may draw (once per process; broken fonts left out)
            styles = {"printed", "handwritten"} if self.style == "mixed" else {self.style}
            fonts = [f for (_, style), weights in _FONTS.items() if style in styles for f in weights]
            self._renderer = get_renderer(str(self._renderer_spec), fonts=fonts)
        return self._renderer

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        if not isinstance(self._renderer_spec, Renderer):
            state["_renderer"] = None
        return state

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < self.n:
            raise IndexError(i)
        for k in range(8):
            got = self.render_index(i + k * self.n)
            if isinstance(got, Sample):
                return got
        raise TexocrError(f"synthetic sample {i}: 8 formulas in a row failed to render ({got.reason}: {got.detail})")

    def __iter__(self) -> Iterator[Sample]:
        """The samples of this worker's chunks; stops with an error when `MAX_FAILED_IN_A_ROW` formulas in a row
        (or every formula of a shorter pass) failed to render: such a stream would never yield."""
        self.skipped = []
        start, step = _worker_shard()
        in_a_row = yielded = 0
        for c in range(start, (self.n + self.chunk - 1) // self.chunk, step):
            for i, got in enumerate(self.render_chunk(c), start=c * self.chunk):
                if i >= self.n:
                    break
                if isinstance(got, Skipped):
                    self.skipped.append(got)
                    in_a_row += 1
                    if in_a_row >= MAX_FAILED_IN_A_ROW:
                        raise self._all_failed(in_a_row)
                else:
                    in_a_row, yielded = 0, yielded + 1
                    yield got
        if self.skipped and not yielded:
            raise self._all_failed(len(self.skipped))

    def _all_failed(self, count: int) -> TexocrError:
        reasons = Counter(s.reason for s in self.skipped[-count:]).most_common()
        last = self.skipped[-1]
        return TexocrError(f"{self.name}: {count} formulas in a row failed to render with the {self.renderer.name} "
                           f"renderer ({', '.join(f'{r} {n}' for r, n in reasons)}; e.g. {last.reason}: "
                           f"{last.detail[:120]}); stopping instead of waiting for a sample")

    def labels(self) -> Iterator[tuple[str, str]]:
        """`(id, latex)` of every index, without rendering (targets of formulas that would fail included)."""
        from texocr.latex import normalize

        for i in range(self.n):
            yield self._id(i), normalize(self.pool.formula(i)[0])

    def render_index(self, i: int) -> Sample | Skipped:
        chunk = self.render_chunk(i // self.chunk)
        return chunk[i % self.chunk]

    def render_chunk(self, c: int) -> list[Sample | Skipped]:
        """Samples (or Skipped) for indices [c * chunk, (c + 1) * chunk), rendered together and cached."""
        if c in self._cache:
            self._cache.move_to_end(c)
            return self._cache[c]
        out = self._render_chunk(c)
        self._cache[c] = out
        while len(self._cache) > self._cache_chunks:
            self._cache.popitem(last=False)
        return out

    def chunk_settings(self, c: int) -> dict[str, Any]:
        """Style, font, resolution and downsampling shared by chunk `c` (deterministic).

        `downsample` is 0, or for a `downsample_share` of printed chunks `downsample_factor`: the chunk is
        im2latex-100k-like, Computer Modern mostly at 10 pt, rendered at `downsample` x `dpi` and brought down to
        `dpi` (one of `DOWNSAMPLED_DPIS`) by `augment.im2markup` (its margin, bucket sizes and filter)."""
        r = random.Random(f"chunk:{self.seed}:{c}")
        style = self.style if self.style != "mixed" else r.choice(["printed", "handwritten"])
        have = set(self.renderer.fonts())
        weights = {f: w for f, w in _FONTS.get((self.renderer.name, style), {}).items() if f in have}
        font = r.choices(list(weights), weights=list(weights.values()))[0] if weights else None
        dpi = r.choice(self.printed_dpis) if style == "printed" else r.choice([130, 150, 170])
        down = 0
        # its own stream of draws, so the other chunks' settings are those of a source without downsampling
        d = random.Random(f"down:{self.seed}:{c}")
        if style == "printed" and d.random() < self.downsample_share:
            down, dpi = self.downsample_factor, d.choice(DOWNSAMPLED_DPIS)
            font = next((f for f in _DOWNSAMPLED_FONTS if f in have), font)
        return {"style": style, "font": font, "dpi": dpi, "downsample": down}

    def _render_chunk(self, c: int) -> list[Sample | Skipped]:
        from texocr.latex import normalize

        idx = range(c * self.chunk, (c + 1) * self.chunk)
        settings = self.chunk_settings(c)
        picks = [self.pool.formula(i) for i in idx]
        scale_rng = random.Random(f"scale:{self.seed}:{c}")
        scales = [scale_rng.choice([0.92, 1.0, 1.0, 1.2, 1.44]) for _ in idx]
        display = scale_rng.random() > 0.1
        down = settings["downsample"]
        if down:  # im2latex-100k: displaymath, mostly 10 pt
            scales, display = [scale_rng.choice(_DOWNSAMPLED_SCALES) for _ in idx], True
        results = self.renderer.render_detailed([f for f, _ in picks], font=settings["font"],
                                                dpi=settings["dpi"] * (down or 1), scales=scales, display=display)
        out: list[Sample | Skipped] = []
        for i, (formula, origin), res in zip(idx, picks, results):
            sid = self._id(i)
            if res.image is None:
                out.append(Skipped(sid, res.reason or "render_failed", res.detail))
                continue
            target = normalize(formula)
            if not target:
                out.append(Skipped(sid, "empty_label", "formula normalizes to nothing"))
                continue
            img = res.image
            if down:  # the published pipeline's look is the point: no further augmentation here
                img = im2markup(img, random.Random(f"im2markup:{self.seed}:{i}"), down)
            elif self.augment:
                img = augment_image(img, random.Random(f"aug:{self.seed}:{i}"), settings["style"],
                                    self.augment_strength)
            meta = {"source": "synthetic", "origin": origin, "renderer": self.renderer.name, **settings,
                    "scale": scales[i - idx.start], "formula": formula}
            out.append(Sample(image=img, latex=target, id=sid, meta=meta))
        return out

    def _id(self, i: int) -> str:
        return f"synth{self.seed}-{i}"


def _worker_shard() -> tuple[int, int]:
    """(first chunk, step) for this DataLoader worker, so that workers split the chunks between them."""
    try:
        from torch.utils.data import get_worker_info
    except ImportError:
        return 0, 1
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


# -- texocr data render ------------------------------------------------------------------------------------

_WORKER_SOURCE: SyntheticSource | None = None


def _init_worker(kwargs: dict[str, Any]) -> None:
    global _WORKER_SOURCE
    _WORKER_SOURCE = SyntheticSource(**kwargs)


def _write_chunk(job: tuple[int, str]) -> list[dict[str, Any]]:
    """Render chunk `c` and save its images under `out/images`; rows for labels.jsonl (or skipped rows)."""
    c, out = job
    assert _WORKER_SOURCE is not None
    rows = []
    for got in _WORKER_SOURCE.render_chunk(c):
        if isinstance(got, Skipped):
            rows.append({"id": got.id, "skipped": got.reason, "detail": got.detail})
            continue
        rel = f"images/{got.id}.png"
        got.image.save(Path(out) / rel, optimize=False, compress_level=1)
        meta = {k: v for k, v in got.meta.items() if k != "formula"}
        rows.append({"image": rel, "latex": got.latex, "id": got.id, **meta,
                     "width": got.image.width, "height": got.image.height})
    return rows


def render_main(args: argparse.Namespace) -> int:
    """`texocr data render`: write N rendered samples as a local data set (labels.jsonl + images/ + montage.png)."""
    from PIL import Image

    from texocr.data.montage import montage

    if args.n < 1:
        raise TexocrError("--n must be at least 1")
    out = Path(args.out)
    # the folder itself is checked by `texocr data render` (texocr.outdir: the rule every --out follows)
    (out / "images").mkdir(parents=True, exist_ok=True)
    kwargs = {"n": args.n, "seed": args.seed, "style": args.style, "renderer": args.renderer,
              "formulas": read_formulas(args.formulas) if args.formulas else None,
              "real_ratio": args.real_ratio, "mutate_ratio": args.mutate_ratio, "augment": not args.no_augment,
              "augment_strength": args.augment_strength, "in_order": args.in_order,
              "downsample_share": getattr(args, "downsample_share", DOWNSAMPLE_SHARE)}
    probe = SyntheticSource(**kwargs)  # validates arguments and the renderer before any worker starts
    renderer = probe.renderer.name
    workers = args.workers or os.cpu_count() or 1
    chunk = probe.chunk
    t0 = time.perf_counter()
    written, failed = 0, Counter()
    examples: dict[str, str] = {}
    next_chunk = 0
    with open(out / "labels.jsonl", "w", encoding="utf-8") as labels:
        # rounds: render enough chunks for what is missing (failures are topped up with further indices)
        for _ in range(5):
            missing = args.n - written
            if missing <= 0:
                break
            count = -(-missing * 105 // 100 // chunk) or 1
            jobs = [(c, str(out)) for c in range(next_chunk, next_chunk + count)]
            next_chunk += count
            for rows in _map(jobs, kwargs, workers):
                for row in rows:
                    if "skipped" in row:
                        failed[row["skipped"]] += 1
                        examples.setdefault(row["skipped"], row["detail"])
                    elif written < args.n:
                        labels.write(json.dumps(row, ensure_ascii=False) + "\n")
                        written += 1
                    else:
                        (out / row["image"]).unlink(missing_ok=True)
            if not written:  # a whole round and not one sample: more rounds would fail the same way
                break
    if not written:
        (out / "labels.jsonl").unlink()  # an empty data set would only pass the failure on to the next command
        reasons = ", ".join(f"{k} {v} (e.g. {examples[k][:80]})" for k, v in failed.most_common())
        raise TexocrError(f"none of {sum(failed.values())} formulas rendered with the {renderer} renderer: {reasons}")
    elapsed = time.perf_counter() - t0
    shown = []
    with open(out / "labels.jsonl", encoding="utf-8") as f:
        for line in f:
            if len(shown) >= 60:
                break
            with Image.open(out / json.loads(line)["image"]) as im:
                shown.append(im.convert("RGB"))
    montage(shown).save(out / "montage.png")
    summary = {"written": written, "failed": dict(failed), "renderer": renderer, "style": args.style,
               "seed": args.seed, "seconds": round(elapsed, 2), "samples_per_s": round(written / elapsed, 1),
               "workers": workers}
    (out / "render_stats.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {written} samples to {out} in {elapsed:.1f} s ({written / elapsed:.1f} samples/s, "
          f"{workers} worker(s), renderer {renderer}, style {args.style})")
    total = written + sum(failed.values())
    print(f"failed to render: {sum(failed.values())} of {total}" +
          "".join(f"\n  {k}: {v} (e.g. {examples[k][:80]})" for k, v in failed.most_common()))
    print(f"preview: {out / 'montage.png'}")
    return 0 if written == args.n else 1


def _map(jobs: list[tuple[int, str]], kwargs: dict[str, Any], workers: int) -> Iterator[list[dict[str, Any]]]:
    """Results of `_write_chunk` over `jobs`, in order; in-process for one worker."""
    if workers <= 1 or len(jobs) == 1:
        _init_worker(kwargs)
        yield from map(_write_chunk, jobs)
        return
    import multiprocessing as mp

    with mp.get_context("spawn" if os.name != "posix" else "fork").Pool(
            min(workers, len(jobs)), initializer=_init_worker, initargs=(kwargs,)) as pool:
        yield from pool.imap(_write_chunk, jobs)

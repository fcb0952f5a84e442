"""`texocr eval`: predict on a data set, score it, and write what a person needs to judge the model.

    texocr eval --model runs/tiny/model --data data/synth-test --out runs/eval [--limit 200]
    texocr eval --model BASE --adapter runs/x/adapter --compare BASE --data D --out runs/before-after
    texocr eval --config configs/tiny/cpu-lora.yaml --out runs/eval --eval.num_beams 3

writes to `--out` (new, empty, or a previous eval's, which is replaced; another folder needs --overwrite):
    predictions.jsonl    one row per sample: id, reference, prediction, exact, edit_distance, score, time_s, error, ...
    metrics.json         the DESIGN.md keys (n, exact_match, bleu4, edit_score, cer, exprate_le1/2, valid_rate,
                         image_match when a renderer is present, images_per_s, latency_ms_p50)
    summary_report.csv   one row per model (two with --compare): model, adapter, data and every metric
    report.html          self-contained page: metrics, token confusions, samples worst first (see report.py)
    compare/             predictions.jsonl + metrics.json of the --compare model

`score(recognizer, samples, eval_cfg)` is the one function that both this command and training's periodic
evaluation call. Latency is the wall time of the batch an image was generated in (what a caller waits);
throughput is images / total generation time (rendering and metrics excluded).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from texocr.data.images import GLYPH_HEIGHT_HELP
from texocr.errors import TexocrError
from texocr.prep import BATCH_HELP, WORKERS_HELP, add_reread_flags
from texocr.sample import DeferredImage, read_image

if TYPE_CHECKING:
    from collections.abc import Iterable

    from texocr.config import EvalConfig
    from texocr.infer import Recognizer
    from texocr.sample import Sample, Skipped

RECORD_KEYS = ("id", "reference", "prediction", "exact", "edit_distance", "image_match", "valid", "score",
               "time_s", "tokens", "stop", "reads", "error")
"""The columns of predictions.jsonl (`reads`: 2 or more where the recognizer read an unsure input again)."""


@dataclass
class EvalResult:
    predictions: list[dict[str, Any]]
    """One record per sample (RECORD_KEYS, plus `ref_tokens`/`pred_tokens` for the report)."""
    metrics: dict[str, Any]
    images: list[Any] = field(default_factory=list)
    """Input images (PNG bytes) when `keep_images` was asked for, for the report."""
    rendered: list[Any] = field(default_factory=list)
    """Rendered predictions (PIL.Image or None) when a renderer was used."""
    confusions: list[tuple[str, str, int]] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    """Samples whose `DeferredImage` turned out unreadable (left out of everything else, as a source skips)."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Where `score` spent its wall time: `generation` (inside `predict`), `other` (reading, ranking, metrics)."""


class MemoRenderer:
    """Wraps a renderer so each distinct formula is rendered once (metrics and report share the images)."""

    def __init__(self, renderer: Any) -> None:
        self.renderer = renderer
        self.cache: dict[str, Any] = {}

    def render_batch(self, formulas: list[str]) -> list[Any]:
        todo = list(dict.fromkeys(f for f in formulas if f not in self.cache))
        if todo:
            self.cache.update(zip(todo, self.renderer.render_batch(todo)))
        return [self.cache[f] for f in formulas]


def default_renderer() -> Any | None:
    """The best renderer installed here, or None (then `image_match` is left out)."""
    try:
        from texocr.data.render import get_renderer

        return get_renderer("auto")
    except (ImportError, TexocrError):
        return None


def _png(image: Any) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def score(recognizer: Recognizer, samples: Iterable[Sample], eval_cfg: EvalConfig | None = None, *,
          renderer: Any | None = None, keep_images: bool = False, image_limit: int | None = None) -> EvalResult:
    """Predict every sample (up to `eval_cfg.limit`) and compute the metrics.

    `renderer`: used for `image_match` and rendered predictions; when None and `eval_cfg.render` is on, the
    best installed renderer is used (none installed: no `image_match`). `keep_images`: the inputs as PNG bytes in
    `EvalResult.images`, all of them, or with `image_limit` only those a report of that many samples shows (the
    worst, `texocr.report.badness`) and the first that many (None for the rest): encoding every input of a large
    set cost more main-process time than a GPU spends reading it (bench/infer.md).
    """
    from texocr.config import EvalConfig
    from texocr.metrics import (
        compute_metrics,
        image_match_flags,
        token_confusions,
        token_distance,
        tokens,
        valid,
    )

    cfg = eval_cfg or EvalConfig()
    began = time.perf_counter()
    chunk_size = max(1, cfg.batch_size) * 4  # bounded memory for streamed sources, batches still grouped by shape
    it = iter(samples)
    ids: list[str] = []
    refs: list[str] = []
    preds: list[Any] = []
    images: list[bytes | None] = []
    skipped: list[Skipped] = []
    gen_time = 0.0
    worst = _WorstImages(image_limit) if keep_images and image_limit is not None else None

    # a recognizer without worker processes reads images itself: the prefetch thread reads them ahead instead
    ahead = not getattr(recognizer, "workers", 0)
    predict_chunks = getattr(recognizer, "predict_chunks", None) or (
        lambda cs, **kw: (recognizer.predict(c, **kw) for c in cs))  # a stand-in with `predict` only

    def run(chunks: Iterable[list[Sample]]) -> None:
        nonlocal gen_time
        taken: deque[list[Sample]] = deque()  # chunks the recognizer has taken (one ahead of the one it yields)

        def feed() -> Iterator[list[Any]]:
            for chunk in chunks:
                taken.append(chunk)
                yield [s.image for s in chunk]

        stream = predict_chunks(feed(), batch_size=cfg.batch_size, num_beams=cfg.num_beams,
                                max_new_tokens=cfg.max_new_tokens)
        while True:
            start = time.perf_counter()
            got = next(stream, None)
            gen_time += time.perf_counter() - start
            if got is None:
                return
            chunk, got = _readable(taken.popleft(), got, skipped)
            if worst is not None:
                for s, p in zip(chunk, got):
                    worst.offer(len(ids), s, p)
                    ids.append(s.id)
            else:
                ids.extend(s.id for s in chunk)
                if keep_images:
                    images.extend(_png(read_image(s.image)) for s in chunk)
            preds.extend(got)
            refs.extend(s.latex for s in chunk)

    run(_prefetched_chunks(it if cfg.limit is None else islice(it, cfg.limit), chunk_size, ahead))
    while cfg.limit is not None and len(ids) < cfg.limit:  # unreadable deferred images: top up from the rest
        more = list(islice(it, cfg.limit - len(ids)))
        if not more:
            break
        run([more])
    texts = [p.text for p in preds]

    if renderer is None and cfg.render:
        renderer = default_renderer()
    memo = MemoRenderer(renderer) if renderer is not None else None
    metrics = compute_metrics(texts, refs, renderer=memo)
    ok_times = [p.time_s for p in preds if p.error is None]
    metrics["images_per_s"] = len(preds) / gen_time if gen_time > 0 else 0.0
    metrics["latency_ms_p50"] = statistics.median(ok_times) * 1000 if ok_times else 0.0
    flags = image_match_flags(texts, refs, memo) if memo is not None else [None] * len(texts)

    records = []
    for sid, ref, pred, flag in zip(ids, refs, preds, flags):
        rt, pt = tokens(ref), tokens(pred.text)
        dist = token_distance(pt, rt)
        records.append({"id": sid, "reference": ref, "prediction": pred.text, "exact": dist == 0,
                        "edit_distance": dist, "image_match": flag, "valid": valid(pred.text),
                        "score": pred.score, "time_s": round(pred.time_s, 4), "tokens": pred.tokens,
                        "stop": pred.stop, "reads": pred.reads, "error": pred.error, "ref_tokens": rt,
                        "pred_tokens": pt})
    if worst is not None:
        images = worst.images(records)
    rendered = [memo.cache.get(t) if t.strip() else None for t in texts] if memo is not None else []
    confusions = token_confusions(texts, refs)
    seconds = {"generation": gen_time, "other": time.perf_counter() - began - gen_time}
    return EvalResult(records, metrics, images, rendered, confusions, skipped, seconds)


def _readable(chunk: list[Sample], preds: list[Any], skipped: list[Skipped]) -> tuple[list[Sample], list[Any]]:
    """`chunk` and its predictions without the samples whose `DeferredImage` cannot be read (added to `skipped`
    with the source's reason), so that a deferred source scores the same samples as a read one. Only samples that
    failed are read again here: a few, not the set."""
    from texocr.sample import Skipped

    keep_s, keep_p = [], []
    for s, p in zip(chunk, preds):
        if p.error is not None and isinstance(s.image, DeferredImage):
            try:
                s.image.load()
            except TexocrError as e:
                skipped.append(Skipped(s.id, getattr(e, "reason", "bad_image"), str(e)))
                continue
        keep_s.append(s)
        keep_p.append(p)
    return keep_s, keep_p


class _WorstImages:
    """PNG bytes of the samples a report of `limit` samples shows (the `limit` worst by `texocr.report.badness`,
    ties to the earlier sample, as the report orders them) and of the first `limit` samples, kept as predictions
    arrive; the rest are never encoded, or dropped once better ones than `limit` others are known.

    A `DeferredImage` is only noted: once every record is scored, the shown ones are read again and encoded
    (`images`). Ranking as predictions arrive costs a LaTeX normalization of each reference and prediction in the
    generation loop (~1 ms each on one core), which for a deferred set is left to the metrics' parallel pass."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.heap: list[tuple[tuple[float, float, str], int]] = []  # (badness, -index): the mildest on top
        self.png: dict[int, bytes] = {}
        self.unread: dict[int, DeferredImage] = {}

    def offer(self, i: int, sample: Sample, pred: Any) -> None:
        import heapq

        from texocr.metrics import token_distance, tokens
        from texocr.report import badness

        if isinstance(sample.image, DeferredImage):
            self.unread[i] = sample.image
            return

        ref = tokens(sample.latex)
        entry = (badness({"error": pred.error, "id": sample.id, "ref_tokens": ref,
                          "edit_distance": token_distance(tokens(pred.text), ref)}), -i)
        if len(self.heap) < self.limit:
            heapq.heappush(self.heap, entry)
        elif self.limit and entry > self.heap[0]:
            _, out = heapq.heapreplace(self.heap, entry)
            if -out >= self.limit:  # not one of the first either
                self.png.pop(-out, None)
        elif i >= self.limit:
            return
        self.png[i] = _png(read_image(sample.image))

    def images(self, records: list[dict[str, Any]]) -> list[bytes | None]:
        """PNG bytes per record (None for those the report does not show)."""
        from texocr.report import sample_order

        n = len(records)
        if self.unread:
            for i in set(range(min(n, self.limit))) | set(sample_order(records)[: self.limit]):
                if i in self.unread:
                    try:
                        self.png[i] = _png(self.unread[i].load())
                    except TexocrError:  # changed on disk since it was read: the report shows no image
                        pass
        return [self.png.get(i) for i in range(n)]


def _prefetched_chunks(it: Iterator[Sample], size: int, read_images: bool = False) -> Iterator[list[Sample]]:
    """Lists of up to `size` samples; the next list is read in a background thread while the caller generates on
    this one, so the accelerator does not wait for the reading between chunks. `read_images`: the samples'
    `DeferredImage`s are read there too (as new Samples; an unreadable one stays deferred, for `_readable`)."""
    from concurrent.futures import ThreadPoolExecutor
    from dataclasses import replace

    def loaded(s: Sample) -> Sample:
        try:
            return replace(s, image=read_image(s.image))
        except TexocrError:
            return s

    def read() -> list[Sample]:
        chunk = list(islice(it, size))
        return [loaded(s) for s in chunk] if read_images else chunk

    with ThreadPoolExecutor(1, thread_name_prefix="texocr-read") as reader:
        pending = reader.submit(read)
        while chunk := pending.result():
            pending = reader.submit(read)
            yield chunk


class _Replayable:
    """An iterable over `it` that keeps what was drawn: every iteration yields the kept items, then draws on. So
    `--compare` scores the same samples as the first run, and a source is read only as far as a run needs."""

    def __init__(self, it: Iterator[Any]) -> None:
        self.it, self.kept = it, []

    def __iter__(self) -> Iterator[Any]:
        yield from self.kept
        for item in self.it:
            self.kept.append(item)
            yield item

    def __bool__(self) -> bool:
        return bool(self.kept) or any(True for _ in islice(iter(self), 1))


# ---------------------------------------------------------------- outputs


def write_predictions(records: list[dict[str, Any]], path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps({k: r.get(k) for k in RECORD_KEYS}, ensure_ascii=False) + "\n")


def write_summary_csv(rows: list[dict[str, Any]], path: Path) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def write_outputs(out: Path, runs: list[tuple[str, str | None, EvalResult]], data: str, *,
                  report_limit: int = 200, notes: list[str] | None = None, names: list[str] | None = None) -> None:
    """predictions.jsonl + metrics.json (first run at the top, others under compare/), summary CSV, report.

    `names`: the report's column headings (e.g. `after`, `before`); default: the models' folder names."""
    from texocr.report import RunView, short_names, write_report

    out.mkdir(parents=True, exist_ok=True)
    summary = []
    for k, (model, adapter, res) in enumerate(runs):
        folder = out if k == 0 else out / ("compare" if k == 1 else f"compare{k}")
        folder.mkdir(parents=True, exist_ok=True)
        write_predictions(res.predictions, folder / "predictions.jsonl")
        (folder / "metrics.json").write_text(json.dumps(res.metrics, indent=2) + "\n")
        summary.append({"model": model, "adapter": adapter or "", "data": data, **res.metrics})
    write_summary_csv(summary, out / "summary_report.csv")
    names = names or short_names([(model, adapter) for model, adapter, _ in runs])
    views = [RunView(name, res.predictions, res.metrics, res.rendered, res.confusions[:20],
                     full_name=model + (f" + {adapter}" if adapter else ""))
             for name, (model, adapter, res) in zip(names, runs)]
    write_report(out / "report.html", views, runs[0][2].images, title=f"texocr eval: {views[0].name} on {data}",
                 limit=report_limit, notes=notes or [])


# ---------------------------------------------------------------- command


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="default, a local model directory or a hub id (default: the config's model)")
    p.add_argument("--adapter", help="a LoRA adapter directory to load on top of --model")
    p.add_argument("--data", help="a data source (folder, InkML folder, hf:<id>, preset, synthetic); "
                                  "default: the config's data.val")
    p.add_argument("--split", help="split of --data (HF split, <split>/ subfolder or rows' split field); "
                                   "default: the config's data.val_split (test)")
    p.add_argument("--out", required=True, help="output folder (new, empty, or a previous `texocr eval`'s)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out that eval did not create")
    p.add_argument("--limit", type=int, help="evaluate at most this many samples")
    p.add_argument("--compare", metavar="OTHER_MODEL", help="also evaluate this model and show both side by side")
    p.add_argument("--compare-adapter", help="adapter for --compare")
    p.add_argument("--config", help="a YAML config; dotted overrides follow (--eval.batch_size 8)")
    p.add_argument("--batch-size", type=int, help=BATCH_HELP)
    p.add_argument("--num-beams", type=int)
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--glyph-height", type=float, metavar="PX", help=GLYPH_HEIGHT_HELP)
    add_reread_flags(p)
    p.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--workers", type=int, help=WORKERS_HELP)
    p.add_argument("--no-render", action="store_true", help="skip rendering (no image_match, no rendered predictions)")
    p.add_argument("--report-limit", type=int, default=200, help="samples shown in report.html (worst first)")
    p.set_defaults(_accepts_overrides=True)


def main(args: argparse.Namespace) -> int:
    from texocr.config import load_config
    from texocr.cpu import use_idle_cores
    from texocr.data.sources import format_skipped, open_source, write_skipped
    from texocr.infer import Recognizer
    from texocr.models.saved import OPTION_KEYS, explicit_keys
    from texocr.prep import default_workers

    cfg = load_config(args.config, args.overrides)
    ev = cfg.eval
    for name in ("limit", "batch_size", "num_beams", "max_new_tokens", "glyph_height", "reread", "reread_below"):
        if getattr(args, name) is not None:
            setattr(ev, name, getattr(args, name))
    ev.render = ev.render and not args.no_render
    model = args.model or cfg.model.name_or_path
    adapter = args.adapter or cfg.model.adapter
    data = args.data or (cfg.data.val[0] if cfg.data.val else None)
    if not data:
        raise TexocrError("no data to evaluate: pass --data (or a config with data.val)")
    from texocr.outdir import prepare_output_dir

    out = prepare_output_dir(args.out, "eval", overwrite=args.overwrite)  # refused before minutes of work
    split = args.split or cfg.data.val_split  # like training's validation; rows without a split field all count
    source = open_source(data, cfg.data, split=split)
    # images stay unread here (`Source.deferred`): the recognizer's workers read them, or its own loop does
    rows = source.deferred() if hasattr(source, "deferred") else iter(source)
    samples = _Replayable(rows)  # read as scored (with --limit, topped up past unreadable images), kept for --compare
    skipped: list[Any] = []  # the source's (rows read so far) and score()'s unreadable images, once the run is done

    def no_samples(found: list[Any]) -> TexocrError:
        why = f"; {format_skipped(data, found)}" if found else ""
        return TexocrError(f"{data}: no usable samples in split {split!r} (choose one with --split){why}")

    if not samples:
        raise no_samples(list(getattr(source, "skipped", [])))
    renderer = default_renderer() if ev.render else None
    # settings the user gave (a flag or a config key) override what each model's run saved; the rest is saved
    given = {**explicit_keys(args.config, args.overrides, "eval"),
             **{k: getattr(args, k) for k in OPTION_KEYS if getattr(args, k) is not None}}
    options = {k: v for k, v in given.items() if k in OPTION_KEYS}

    runs = []
    for m, a in [(model, adapter)] + ([(args.compare, args.compare_adapter)] if args.compare else []):
        loading = time.perf_counter()
        rec = Recognizer.load(m, a, device=args.device, dtype=cfg.model.dtype, family=cfg.model.family,
                              min_pixels=cfg.model.min_pixels, max_pixels=cfg.model.max_pixels, **options)
        use_idle_cores(rec.device)
        rec.workers = args.workers if args.workers is not None else default_workers(rec.device)
        scoring = time.perf_counter()
        try:
            res = score(rec, samples, replace(ev, **rec.settings()), renderer=renderer, keep_images=not runs,
                        image_limit=args.report_limit)
        finally:
            rec.close()
        del rec  # free the first model before loading the second
        if not runs:  # (--compare reads the same samples and finds the same unreadable images)
            skipped += list(getattr(source, "skipped", [])) + res.skipped
            if not res.predictions:
                raise no_samples(skipped)
        runs.append((m, a, res))
        line = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in res.metrics.items())
        print(f"{m}{' + ' + a if a else ''}: {line}")
        took = {"load": scoring - loading, **res.seconds}  # where a run's wall time went (bench/infer.md)
        print("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in took.items()))
    notes = []
    if skipped:
        write_skipped(skipped, out / "skipped.jsonl")
        notes.append(format_skipped(data, skipped) + " (see skipped.jsonl)")
    write_outputs(out, runs, data, report_limit=args.report_limit, notes=notes)
    print(f"wrote {out}/predictions.jsonl, metrics.json, summary_report.csv, report.html")
    return 0

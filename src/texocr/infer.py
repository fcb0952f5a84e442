"""`Recognizer`: images of math in, LaTeX out. What predict, eval, serve, demo and the Python API all call.

    from texocr.infer import Recognizer
    rec = Recognizer.load("runs/tiny/model")                 # or a hub id, or "default"; adapter="runs/x/adapter"
    rec("eq.png")                                            # -> "\\frac{a}{b}"
    rec(["a.png", png_bytes, pil_image])                     # -> [str, str, str], input order kept
    rec(images, return_details=True)                         # -> [Prediction(text, score, time_s, error, ...)]
    for piece in rec.stream("eq.png"): print(piece, end="")  # tokens as they are generated

A batch is grouped by image shape (similar aspect ratio and area generate together, less padding) and put
back in input order. Decoding is greedy unless `num_beams > 1`; greedy decoding of a family that has a fast
exact loop (`Family.greedy_decoder`: Qwen2-VL, hence texocr's compact model) runs that loop instead of `generate`
on a CPU (the same tokens), and on a CUDA GPU in its static-shape CUDA-graph mode (far less overhead per token;
in bf16 a few predictions per thousand differ from `generate`'s, bench/infer.md; `fast_decode=False` turns it
off). `Recognizer(..., workers=N)` reads, rescales and encodes images in N processes, and finishes their text
there. Generation stops at the end token, at `max_new_tokens`, or when the output has fallen into a loop
(`RepetitionStopper`); the looping tail is cut.
With `reread=[PX, ...]` and `reread_below`, an input whose read is unsure (mean token log-probability below
`reread_below`) is read again with its glyphs PX tall and the surest read kept (`Prediction.reads` counts them; the
shipped model's `texocr_options.json` sets 20 px, a second read at 16 px below -0.01; `stream` reads once).
The text is cleaned (chat tokens, `$...$`, code fences, an echoed prompt) and passed through
`texocr.latex.repair`. A bad image (unreadable, empty, 1x1, huge, blank) fails alone: its Prediction carries
the error and the rest of the batch completes.

`no_repeat_ngram_size` is never used and `repetition_penalty` defaults to 1.0: LaTeX repeats n-grams
legitimately (`} ^ {`, `& 0 & 0`), and penalizing them corrupts correct output; loops are cut instead.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from texocr.config import EvalConfig
from texocr.data.images import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE
from texocr.errors import TexocrError
from texocr.models.loading import DEFAULT_MODEL_DIR, resolve_model  # noqa: F401 -- re-exported
from texocr.prediction import Prediction, clean_output, finish_row  # noqa: F401 -- re-exported
from texocr.prep import source_name as _source_name
from texocr.repeats import RepeatRule, find_repeat  # find_repeat: also re-exported

if TYPE_CHECKING:
    import torch

    from texocr.models.loading import LoadedModel

DEFAULTS = EvalConfig()
"""Batch size, new-token limit, beams: EvalConfig is the one place these defaults are written."""

def pick_device(device: str | None = None) -> str:
    """`device` if given, else CUDA, then Apple MPS, then CPU."""
    import torch

    if device:
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


# ---------------------------------------------------------------- loops


def _stopping_criterion(prompt_len: int, **repeat_kw: Any) -> Any:
    """A transformers `StoppingCriteria` that ends each row whose generated tail has fallen into a loop."""
    import torch
    from transformers import StoppingCriteria

    class RepetitionStopper(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
            gen = input_ids[:, prompt_len:].tolist()  # [B, new tokens so far]
            done = [find_repeat(row, **repeat_kw) is not None for row in gen]
            return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    return RepetitionStopper()


# ---------------------------------------------------------------- recognizer


@dataclass
class _Started:
    """A chunk `Recognizer.predict_chunks` has taken: with the worker pool, its batches (input indices, sorted by
    size) and their encodings on the way (`PrepPool.prepare`); without, only the images."""

    images: list[Any]
    size: int
    pool: Any = None
    sources: list[Any] = field(default_factory=list)
    batches: list[list[int]] = field(default_factory=list)
    prepared: Iterator[Any] = field(default_factory=lambda: iter(()))


class Recognizer:
    """A loaded model + processor + family that turns images into LaTeX (see the module docstring)."""

    def __init__(self, model: Any, processor: Any, family: Any, *, device: str = "cpu",
                 batch_size: int = DEFAULTS.batch_size, max_new_tokens: int = DEFAULTS.max_new_tokens,
                 num_beams: int = DEFAULTS.num_beams, repetition_penalty: float = 1.0,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, max_side: int | None = DEFAULT_MAX_SIDE,
                 fast_decode: bool = True, glyph_height: float | None = DEFAULTS.glyph_height, workers: int = 0,
                 reread: Sequence[float] | None = DEFAULTS.reread, reread_below: float | None = DEFAULTS.reread_below,
                 ) -> None:
        self.model, self.processor, self.family, self.device = model, processor, family, device
        # smaller inputs are enlarged until their glyphs are about this tall (pixels, `images.glyph_height`):
        # more to read for the model, more image tokens to pay (texocr's compact model: 20, bench/compact.md)
        if glyph_height is not None and glyph_height < 0:
            raise TexocrError(f"glyph_height must be a positive number of pixels (or 0 / None: off), not {glyph_height}")
        self.glyph_height = glyph_height
        # a read less sure than `reread_below` (mean log-probability per token) is read again with its glyphs
        # at each `reread` height, and the surest read kept (`_reread`; bench/compact.md, "Eighth session")
        heights = tuple(float(h) for h in reread or () if h != 0)
        if any(h < 0 for h in heights) or (heights and reread_below is None):
            raise TexocrError(f"reread needs glyph heights >= 0 (0: off) and a reread_below score, not {reread!r} "
                              f"and {reread_below!r}")
        self.reread = heights
        self.reread_below = reread_below
        self.fast_decode = fast_decode
        self._greedy: Any = None  # the family's fast greedy decoder, built on first use
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.repetition_penalty = repetition_penalty
        self.max_pixels, self.max_side = max_pixels, max_side
        # processes that read, rescale and encode images for `predict` calls of several images (texocr.prep);
        # 0: all in this process. `texocr eval` on a GPU sets it, so the GPU does not wait for one CPU core.
        self.workers = workers
        self._pool: Any = None  # (settings key, PrepPool) once used
        self._uint8: Any = None  # (processor, its uint8-patch copy, PixelNormalizer) on CUDA (`_pixels`)
        self.device_pixels: bool | None = None  # `_pixels`: None = on CUDA for Qwen2-VL-type models

    @classmethod
    def load(cls, model: str = "default", adapter: str | None = None, device: str | None = None,
             dtype: str | None = None, *, family: str | None = None, min_pixels: int | None = None,
             max_pixels: int | None = None, **options: Any) -> Recognizer:
        """Load `model` (`default`, a training run's folder, a model directory or a hub id), optionally + `adapter`.

        The settings a run or model was saved with are used (`texocr.models.saved`): its family, image budget
        (`min_pixels`/`max_pixels`), batch size, new-token limit, beams and glyph height. Arguments that are
        not None override them (`options` are `Recognizer` settings); what neither gives is the default.
        """
        from texocr.config import ModelConfig
        from texocr.models.loading import load_model
        from texocr.models.saved import read_saved

        saved = read_saved(resolve_model(model), adapter)
        given = {"family": family, "min_pixels": min_pixels, "max_pixels": max_pixels}
        model_options = {**saved.model_options, **{k: v for k, v in given.items() if v is not None}}
        cfg = ModelConfig(name_or_path=resolve_model(saved.model), adapter=saved.adapter, dtype=dtype or "auto",
                          **model_options)  # type: ignore[arg-type]
        loaded = load_model(cfg, training=False, device=pick_device(device))
        settings = {**saved.options, **{k: v for k, v in options.items() if v is not None}}
        if "batch_size" not in settings:
            size = default_batch_size(str(loaded.device), sum(p.numel() for p in loaded.model.parameters()))
            settings.update({"batch_size": size} if size else {})
        return cls.from_loaded(loaded, **settings)

    @classmethod
    def from_loaded(cls, loaded: LoadedModel, eval_cfg: EvalConfig | None = None, **options: Any) -> Recognizer:
        """Wrap an already loaded model (e.g. the one being trained, for periodic evaluation) with `eval_cfg`'s
        settings (batch size, new tokens, beams, glyph height; the defaults when None), `options` overriding."""
        from texocr.models.saved import OPTION_KEYS

        base = {k: getattr(eval_cfg, k) for k in OPTION_KEYS} if eval_cfg is not None else {}
        return cls(loaded.model, loaded.processor, loaded.family, device=str(loaded.device), **{**base, **options})

    def settings(self) -> dict[str, Any]:
        """The settings this recognizer generates with, as `EvalConfig` keys (what a report should state)."""
        from texocr.models.saved import OPTION_KEYS

        return {**{k: getattr(self, k) for k in OPTION_KEYS}, "reread": list(self.reread)}

    def image_tokens(self) -> int:
        """Most image tokens one image may become under the processor's budget (what it was trained with)."""
        return int(self.family.max_image_tokens(self.processor))

    # ------------------------------------------------------------ public calls

    def __call__(self, images: Any, *, return_details: bool = False, batch_size: int | None = None,
                 num_beams: int | None = None, max_new_tokens: int | None = None) -> Any:
        """LaTeX for one image (a str) or a list of images (a list); `return_details` gives `Prediction`s."""
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        preds = self.predict(items, batch_size=batch_size, num_beams=num_beams, max_new_tokens=max_new_tokens)
        out = preds if return_details else [p.text for p in preds]
        return out[0] if single else out

    def predict(self, images: Sequence[Any], *, batch_size: int | None = None, num_beams: int | None = None,
                max_new_tokens: int | None = None) -> list[Prediction]:
        """A `Prediction` per input, in input order; bad inputs get their error, the rest are generated.
        With `workers` (and more than one image), images are read, rescaled and encoded in worker processes,
        one round trip per piece of a batch, the next batches' while this one decodes (`PrepPool.prepare`)."""
        return next(self.predict_chunks([images], batch_size=batch_size, num_beams=num_beams,
                                        max_new_tokens=max_new_tokens))

    def predict_chunks(self, chunks: Iterable[Sequence[Any]], *, batch_size: int | None = None,
                       num_beams: int | None = None, max_new_tokens: int | None = None) -> Iterator[list[Prediction]]:
        """`predict` of each chunk of images in turn, yielded in order. With `workers`, the next chunk is taken
        and its images queued to the workers before this one decodes: a long run fed in chunks (`texocr eval`
        keeps its memory bounded that way) has no pause at a chunk boundary while the first batch of the next
        chunk is read and encoded (bench/infer.md). The next chunk is taken from `chunks` before this one's
        predictions are yielded."""
        size = max(1, batch_size or self.batch_size)
        started: deque[_Started] = deque()
        for images in chunks:
            started.append(self._start(list(images), size))
            if len(started) > 1:
                yield self._complete(started.popleft(), num_beams, max_new_tokens)
        while started:
            yield self._complete(started.popleft(), num_beams, max_new_tokens)

    def _start(self, images: list[Any], size: int) -> _Started:
        """A chunk's batches; with the worker pool, their reading and encoding queued now (`_complete` decodes)."""
        pool = self._prep_pool() if self.workers > 0 and len(images) > 1 else None
        if pool is None:
            return _Started(images, size)
        # sorted by the sizes the inputs declare (a file's header): the workers rescale them afterwards, so
        # batches are a little less even than sorting the loaded images, but each image crosses once
        sources = [_sendable(src) for src in images]
        order = sorted(range(len(sources)), key=lambda i: _shape_key(_declared_size(sources[i])))
        batches = [order[start: start + size] for start in range(0, len(order), size)]
        prepared = pool.prepare([[sources[i] for i in c] for c in batches])
        return _Started(images, size, pool, sources, batches, prepared)

    def _complete(self, st: _Started, num_beams: int | None, max_new_tokens: int | None) -> list[Prediction]:
        """Decode a started chunk: its Predictions in input order."""
        images = st.images
        results: list[Prediction | None] = [None] * len(images)
        done: list[tuple[list[int], Any]] = []  # (input indices, their predictions or pending text finishing)
        if st.pool is None:
            loaded: list[tuple[int, Any]] = []
            for i, src in enumerate(images):
                try:
                    loaded.append((i, self._load(src)))
                except TexocrError as e:
                    results[i] = Prediction("", error=str(e), source=_source_name(src))
            # similar shapes together: less padding, and one odd image does not slow the others
            loaded.sort(key=lambda it: _shape_key(it[1].size))
            for start in range(0, len(loaded), st.size):
                chunk = loaded[start: start + st.size]
                done.append(([i for i, _ in chunk],
                             self._generate_safely([im for _, im in chunk], num_beams, max_new_tokens)))
        else:
            for chunk, (enc, errors, kept) in zip(st.batches, st.prepared):
                for j, err in errors:
                    results[chunk[j]] = Prediction("", error=str(err), source=_source_name(images[chunk[j]]))
                ok = [chunk[j] for j in kept]
                if ok and enc:
                    done.append((ok, self._generate_pooled([st.sources[i] for i in ok], enc, num_beams,
                                                           max_new_tokens, st.pool)))
        for idx, preds in done:
            for i, pred in zip(idx, preds if isinstance(preds, list) else preds.get()):
                pred.source = _source_name(images[i])
                results[i] = pred
        out = [r for r in results if r is not None]  # one per input: an error or a prediction
        if self.reread:
            self._reread(images, out, st.size, num_beams, max_new_tokens)
        return out

    def _reread(self, images: list[Any], preds: list[Prediction], size: int, num_beams: int | None,
                max_new_tokens: int | None) -> None:
        """Replace, in place, each prediction less sure than `reread_below` by the surest of it and its reads at the
        `reread` glyph heights. Why: a small model misreads some formulas at one scale and not at another, and its
        mean token log-probability says which read to trust (on TeX renders of held-out im2latex formulas, reading
        at 20 px and again at 16 px below -0.01 took exact match from 64.2 to 65.7 %; bench/compact.md). A height
        that would give the image the scale it was read at (glyphs already taller than both, no ink measure) is
        skipped: the same input reads the same. An input that cannot be read a second time (a consumed stream)
        keeps its first read."""
        import copy

        from texocr.data.images import glyph_height, glyph_scale, rescaled
        from texocr.prep import Prep

        below = float(self.reread_below)  # type: ignore[arg-type] -- set whenever `reread` is (the constructor checks)
        unsure = [i for i, p in enumerate(preds) if p.error is None and p.score is not None and p.score < below]
        # read again here, not kept from the first read: that one may have been made in a worker process, and only
        # the unsure (38 % of the published images) pay the decode and glyph measure twice (0.5 ms each here)
        raw = Prep(self._pixels()[0], self.family, self.max_pixels, self.max_side, None)
        again: list[Any] = []
        owner: list[int] = []
        for i in unsure:
            try:
                img = raw.load(images[i])
            except (TexocrError, OSError, ValueError):
                continue
            height = glyph_height(img)
            scales = {glyph_scale(height, self.glyph_height)}
            for target in self.reread:
                scale = glyph_scale(height, target)
                if scale not in scales:
                    scales.add(scale)
                    again.append(rescaled(img, scale))
                    owner.append(i)
        if not again:
            return
        # the same model and settings, reading the rescaled images as given (guards already applied above)
        other = copy.copy(self)
        other.glyph_height, other.reread, other.workers, other._pool = None, (), 0, None
        other.max_pixels, other.max_side = None, None
        spent = {i: preds[i].time_s for i in owner}  # what the caller waits for: every read's batch
        for i, pred in zip(owner, other._complete(_Started(again, size), num_beams, max_new_tokens)):
            spent[i] += pred.time_s
            kept = preds[i]
            if pred.error is None and pred.score is not None and (kept.score is None or pred.score > kept.score):
                pred.source, pred.reads = kept.source, kept.reads
                preds[i] = pred
            preds[i].reads += 1
        for i, seconds in spent.items():
            preds[i].time_s = seconds

    def _generate_pooled(self, sources: list[Any], enc: list[dict[str, Any]], num_beams: int | None,
                         max_new_tokens: int | None, pool: Any) -> Any:
        """A batch a worker encoded; if it fails, its images are read here and generated one by one."""
        try:
            return self._generate([], num_beams, max_new_tokens, enc, pool)
        except Exception:  # noqa: BLE001 - retried image by image below, so only the culprit fails
            out = []
            for src in sources:
                try:
                    out += self._generate_safely([self._load(src)], num_beams, max_new_tokens)
                except TexocrError as e:
                    out.append(Prediction("", error=str(e)))
            return out

    def _prep_pool(self) -> Any:
        """The worker pool for this recognizer's current image settings (re-made when they changed)."""
        from texocr.prep import PrepPool

        key = (self.max_pixels, self.max_side, self.glyph_height, self.workers, id(self._pixels()[0]))
        if self._pool is None or self._pool[0] != key:
            self.close()
            self._pool = (key, PrepPool(self._prep(), self.workers))
        return self._pool[1]

    def close(self) -> None:
        """Stop the worker processes, if any (they also end with this process)."""
        if self._pool is not None:
            self._pool[1].close()
            self._pool = None

    def stream(self, image: Any, *, max_new_tokens: int | None = None) -> Iterator[str]:
        """Yield text pieces as they are generated (raw model text: not cleaned or repaired)."""
        from transformers import TextIteratorStreamer

        img = self._load(image)
        enc = self._encode([img])
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                self._decode(enc, 1, max_new_tokens, streamer=streamer, scores=False)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread below
                errors.append(e)
                streamer.on_finalized_text("", stream_end=True)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        yield from (piece for piece in streamer if piece)
        thread.join()
        if errors:
            raise TexocrError(f"generation failed: {errors[0]}")

    # ------------------------------------------------------------ internals

    def _prep(self) -> Any:  # -> texocr.prep.Prep
        """This recognizer's image settings and processor, as the one reader of inputs (here or in workers)."""
        from texocr.prep import Prep

        return Prep(self._pixels()[0], self.family, self.max_pixels, self.max_side, self.glyph_height)

    def _pixels(self) -> tuple[Any, Any]:
        """(processor that encodes inputs, normalizer of its uint8 patches on the device, or None).

        On CUDA, a Qwen2-VL-type model's patches leave the CPU as 0..255 uint8 and are rescaled and normalized on
        the GPU (`qwen_speed.PixelNormalizer`, as in training): the CPU skips two float passes over every pixel
        and a worker hands over a quarter of the bytes (bench/infer.md). Elsewhere the processor as it is."""
        from texocr.models import qwen_speed

        wanted = str(self.device).startswith("cuda") if self.device_pixels is None else self.device_pixels
        if not (wanted and qwen_speed.supports(self.family.name)):
            return self.processor, None
        if self._uint8 is None or self._uint8[0] is not self.processor:
            proc = qwen_speed.uint8_processor(self.processor)
            self._uint8 = (self.processor, proc, qwen_speed.PixelNormalizer(proc.image_processor))
        return self._uint8[1], self._uint8[2]

    def _load(self, src: Any) -> Any:  # -> PIL.Image (RGB)
        return self._prep().load(src)

    def _encode(self, images: list[Any], enc: list[dict[str, Any]] | None = None) -> Any:
        """The generation batch of `images` (or its CPU encoding in pieces `enc`, made by workers) on the model's
        device; pieces are moved first and joined there (`concat_encodings`)."""
        import torch

        from texocr.prep import concat_encodings

        dtype = next(self.model.parameters()).dtype
        parts = [{k: (v.to(self.device, dtype) if v.is_floating_point() else v.to(self.device)) for k, v in e.items()}
                 for e in (enc if enc is not None else [self._prep().encode(images)])]
        out = concat_encodings(parts, self._prep().pad_id())
        pixels = out.get("pixel_values")
        if pixels is not None and pixels.dtype == torch.uint8:
            out["pixel_values"] = self._pixels()[1](pixels).to(dtype)  # [patches, C * T * P * P]
        return out

    def _generate_kwargs(self, num_beams: int, max_new_tokens: int | None) -> dict[str, Any]:
        return dict(max_new_tokens=max_new_tokens or self.max_new_tokens, num_beams=num_beams, do_sample=False,
                    repetition_penalty=self.repetition_penalty, **self.family.generation_kwargs(self.processor))

    def _generate_safely(self, images: list[Any], num_beams: int | None, max_new_tokens: int | None) -> Any:
        """Generate a batch; if the batch fails, retry image by image so only the culprit fails."""
        try:
            return self._generate(images, num_beams, max_new_tokens)
        except Exception as e:  # noqa: BLE001 - processor/model errors on odd inputs; retried one by one below
            if len(images) == 1:
                return [Prediction("", error=f"generation failed: {type(e).__name__}: {e}")]
        return [p for im in images for p in self._generate_safely([im], num_beams, max_new_tokens)]

    def _generate(self, images: list[Any], num_beams: int | None, max_new_tokens: int | None,
                  enc: list[dict[str, Any]] | None = None, pool: Any = None) -> Any:
        """Predictions for `images` (or a worker's encoding `enc` of them); with `pool`, as the pool's pending
        result (`.get()`): the workers finish the text while this process decodes the next batch."""
        beams = num_beams or self.num_beams
        start = time.perf_counter()
        enc = self._encode(images, enc)
        kwargs = self._generate_kwargs(beams, max_new_tokens)
        was_training = self.model.training
        self.model.eval()
        try:
            new, logp = self._decode(enc, beams, max_new_tokens)
        finally:
            if was_training:
                self.model.train()
        elapsed = time.perf_counter() - start
        new, logp = _written(new, logp, kwargs.get("pad_token_id"))
        rows, logps = new.tolist(), logp.float().tolist()
        if pool is not None:
            return pool.finish(rows, logps, kwargs["eos_token_id"], kwargs.get("pad_token_id"), elapsed)
        preds = [self._finish(row, lp, kwargs, elapsed) for row, lp in zip(rows, logps)]
        for p in preds:
            p.batch_size = len(preds)
        return preds

    def _greedy_decoder(self) -> Any:
        """The family's fast greedy loop for this model (CPU, or CUDA in its static CUDA-graph mode), or None."""
        if not self.fast_decode or self.repetition_penalty != 1.0 or not str(self.device).startswith(("cpu", "cuda")):
            return None
        if self._greedy is None or self._greedy[0] is not self.model:  # (model, its decoder or None)
            self._greedy = (self.model, self.family.greedy_decoder(self.model))
        return self._greedy[1]

    def _decode(self, enc: Any, beams: int, max_new_tokens: int | None, *, streamer: Any = None,
                scores: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """New ids [B, N] (padded after an early stop) and their log-probabilities [B, N] (None if not `scores`).

        The fast greedy loop where there is one, else `generate`; both stop rows at the end token, at
        `max_new_tokens`, or when they fall into a loop (`find_repeat`).
        """
        import torch
        from transformers import StoppingCriteriaList

        kwargs = self._generate_kwargs(beams, max_new_tokens)
        prompt_len = enc["input_ids"].shape[1]
        fast = self._greedy_decoder() if beams == 1 else None
        if fast is not None:
            out = fast.generate(enc, max_new_tokens=kwargs["max_new_tokens"], eos_ids=kwargs["eos_token_id"],
                                pad_id=kwargs["pad_token_id"], repeat=RepeatRule(), streamer=streamer)
            return out.tokens, out.logprobs
        with torch.inference_mode():
            out = self.model.generate(
                **enc, **kwargs, stopping_criteria=StoppingCriteriaList([_stopping_criterion(prompt_len)]),
                output_scores=scores, return_dict_in_generate=True, streamer=streamer)
            new = out.sequences[:, prompt_len:]  # [B, new tokens]
            if not scores:
                return new, None
            logp = self.model.compute_transition_scores(
                out.sequences, out.scores, getattr(out, "beam_indices", None), normalize_logits=beams == 1)
        return new, logp

    def _finish(self, row: list[int], logp: list[float], kwargs: dict[str, Any], elapsed: float) -> Prediction:
        return finish_row(self.family, self.processor, row, logp, kwargs["eos_token_id"], kwargs.get("pad_token_id"),
                          elapsed)


def _written(new: torch.Tensor, logp: torch.Tensor, pad: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`new` [B, N] and `logp` cut one column after the last in which some row has a non-`pad` id: what follows is
    only the padding of rows that stopped, which `finish_row` drops anyway. The one column more keeps each row's
    end token where a model pads with its end token (`pad` among the end ids). Why: a GPU batch of 1024 decodes as
    many steps as its longest formula (~150 of 256 on published images), and turning the unused columns into
    Python lists and shipping them to the workers cost the decoding process time for nothing."""
    if pad is None or new.shape[1] == 0:
        return new, logp
    cols = (new != pad).any(dim=0).nonzero()  # [k, 1]
    n = min(new.shape[1], int(cols[-1, 0]) + 2 if cols.numel() else 1)
    return new[:, :n], logp[:, :n]


SMALL_MODEL_GPU_BATCH = 512
"""`default_batch_size` of a small model on CUDA."""


def default_batch_size(device: str, parameters: int) -> int | None:
    """The batch size a recognizer uses when neither its caller nor its saved run names one: on CUDA, for a model
    under 100 M parameters (texocr's compact one), `SMALL_MODEL_GPU_BATCH`; otherwise None (`EvalConfig`'s). Why:
    the GPU decoder's throughput keeps rising with the batch (H100: ~25 images/s at batch 1, 1,191 at 512, 1,500
    at 1024; bench/infer.md), so the CPU-sized default would leave a GPU idle; 512 keeps a batch's latency under
    half a second there."""
    return SMALL_MODEL_GPU_BATCH if str(device).startswith("cuda") and parameters < 100_000_000 else None


def _shape_key(size: tuple[int, int]) -> tuple[float, int]:
    """Sort key of an image size: aspect ratio (to one decimal), then area."""
    w, h = size
    return (round(w / h, 1) if h else 0.0, w * h)


def _sendable(src: Any) -> Any:
    """`src` as a worker process can receive it: an open file is read here (it cannot be pickled)."""
    return src.read() if hasattr(src, "read") else src


_PNG = b"\x89PNG\r\n\x1a\n"


def _png_size(src: Any) -> tuple[int, int] | None:
    """A PNG's (width, height) from its IHDR chunk (bytes 16-24), or None for anything else. PIL's `Image.open` takes
    ~50-130 us per image for the same two numbers: for a GPU batch job of thousands of images, in the main process
    before the first batch, that was a tenth of the run (bench/infer.md)."""
    import os
    import struct

    if isinstance(src, (bytes, bytearray, memoryview)):
        head = bytes(src[:24])
    elif isinstance(src, (str, os.PathLike)):
        try:
            with open(src, "rb") as f:
                head = f.read(24)
        except OSError:
            return None
    else:
        return None
    if len(head) < 24 or not head.startswith(_PNG) or head[12:16] != b"IHDR":
        return None
    w, h = struct.unpack(">II", head[16:24])
    return (w, h) if w and h else None


def _declared_size(src: Any) -> tuple[int, int]:
    """The size an input says it has without decoding it (a PIL image's, an encoded file's header); (0, 0) when
    it cannot tell (its worker then says why it is unreadable)."""
    import io

    from PIL import Image

    from texocr.sample import DeferredImage

    if isinstance(src, DeferredImage):  # the file or bytes it will read (an InkML file has no image header: (0, 0))
        src = src.source
    if isinstance(src, Image.Image):
        return src.size
    head = _png_size(src)
    if head is not None:
        return head
    try:
        with Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray, memoryview)) else src) as im:
            return im.size
    except Exception:  # noqa: BLE001 - not an image, missing, too odd for a header read: the worker reports it
        return (0, 0)


"""The static-shape (CUDA-graph) mode of the greedy decoder, run on the CPU with graphs off: the same tokens as the
dynamic loop (and so as `generate`), incl. rows finishing at different steps on device and loop cutting; and
`RepeatTracker` saying what `find_repeat` says at every step."""

# ruff: noqa: F811 -- the fixtures imported from test_compact are the tests' parameters of the same names
from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_compact import _images, compact_dir, compact_loaded, compact_models  # noqa: F401 -- fixtures

# ------------------------------------------------------------------ RepeatTracker


def _sequences(seed: int, n: int = 60) -> list[list[int]]:
    """Random id sequences with loops of many periods spliced in (and broken again), some never looping."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        seq = [rng.randrange(6) for _ in range(rng.randrange(0, 20))]
        for _ in range(rng.randrange(0, 3)):
            period = rng.choice([1, 2, 3, 7, 11, 16, 33, 48, 49])
            block = [rng.randrange(6) for _ in range(period)]
            seq += (block * (200 // period + 2))[: rng.randrange(period, 140)]
            seq += [rng.randrange(6) for _ in range(rng.randrange(0, 5))]
        out.append(seq[:160])
    return out


def test_repeat_tracker_agrees_with_find_repeat_at_every_step() -> None:
    import torch

    from texocr.repeats import RepeatRule, RepeatTracker, find_repeat

    for rule in (RepeatRule(), RepeatRule(max_ngram=8, min_repeats=2, min_span=6)):
        seqs = _sequences(seed=rule.max_ngram)
        length = max(len(s) for s in seqs)
        tracker = RepeatTracker(len(seqs), "cpu", rule)
        fired = 0
        for t in range(length):
            ids = torch.tensor([s[t] if t < len(s) else -2 - i for i, s in enumerate(seqs)])  # unique filler
            got = tracker.push(ids).tolist()
            want = [t < len(s) and find_repeat(s[: t + 1], max_ngram=rule.max_ngram, min_repeats=rule.min_repeats,
                                               min_span=rule.min_span) is not None for s in seqs]
            assert [g for g, s in zip(got, seqs) if t < len(s)] == [w for w, s in zip(want, seqs) if t < len(s)]
            fired += sum(want)
        assert fired > 50  # the sequences really loop (and, per the loop above, not at every step)


# ------------------------------------------------------------------ static mode == dynamic mode


def _run(dec, enc, kw, **extra):
    return dec.generate(enc, eos_ids=kw.get("eos", kw["eos_token_id"]), pad_id=kw["pad_token_id"], **extra)


_DECODERS: dict = {}


def _decoder(model, static: bool, sync_every: int = 8):
    """One decoder per (model, mode): preparing the weights (fp16 packing checks) is the slow part on a CPU."""
    from texocr.models.compact_decode import GreedyDecoder

    key = (id(model), static, sync_every)
    if key not in _DECODERS:
        _DECODERS[key] = (model, GreedyDecoder(model, static=static, graphs=False, sync_every=sync_every))
    return _DECODERS[key][1]


def _both(model, enc, kw, sync_every: int = 8, **extra):
    """(dynamic output, static output, static decoder) of one call."""
    static = _decoder(model, True, sync_every)
    static._shapes.clear()
    out = _run(static, enc, kw, **extra)
    assert static._shapes, "the static mode did not run"
    return _run(_decoder(model, False), enc, kw, **extra), out, static


@pytest.mark.parametrize("which", [0, 1], ids=["tiny-fp32", "base-bf16"])
def test_static_mode_gives_the_dynamic_modes_tokens(compact_models, which: int) -> None:
    """Batch 1 and a left-padded batch of 4 differently sized images (padded to the next bucket when 3)."""
    import torch

    _, model, proc, fam, _ = compact_models[which]
    kw = fam.generation_kwargs(proc)
    images = _images()
    for batch in ([images[1]], images, images[:3]):
        enc = fam.encode_for_generation(proc, batch)
        ref, out, dec = _both(model, enc, kw, max_new_tokens=24, min_new_tokens=24)
        assert torch.equal(out.tokens, ref.tokens)
        assert len({tuple(r) for r in ref.tokens.tolist()}) == len(batch)  # rows differ: not degenerate
        assert torch.allclose(out.logprobs, ref.logprobs, atol=1e-5)
        assert next(iter(dec._shapes))[:2] == (1 if len(batch) == 1 else 4, 64)  # (rows, slots) buckets


@pytest.mark.parametrize("sync_every", [1, 8])
def test_static_mode_stops_rows_on_device_where_the_dynamic_mode_does(compact_models, sync_every: int) -> None:
    """An end token that rows reach at different steps: finished rows emit padding (on device, no host read per
    step) and the batch runs on until every row is done, or `sync_every` steps later; same output."""
    import torch

    _, model, proc, fam, _ = compact_models[1]
    kw = fam.generation_kwargs(proc)
    pad = kw["pad_token_id"]
    enc = fam.encode_for_generation(proc, _images())
    free, _, _ = _both(model, enc, kw, max_new_tokens=30, min_new_tokens=30)
    rows = free.tokens.tolist()
    end = next(t for t in rows[0] if len({r.index(t) if t in r else 30 for r in rows}) > 1)
    ref, out, _ = _both(model, enc, {**kw, "eos": [end]}, sync_every=sync_every, max_new_tokens=30)
    assert torch.equal(out.tokens, ref.tokens)
    assert torch.allclose(out.logprobs, ref.logprobs, atol=1e-5)
    lengths = [r.index(end) + 1 if end in r else 30 for r in ref.tokens.tolist()]
    assert len(set(lengths)) > 1 and min(lengths) < 30  # rows really stopped, at different steps
    assert all((row[n:] == [pad] * (30 - n)) for row, n in zip(ref.tokens.tolist(), lengths))
    # min_new_tokens forbids that end token for the first steps, on device too
    ref, out, _ = _both(model, enc, {**kw, "eos": [end]}, sync_every=sync_every, max_new_tokens=30,
                        min_new_tokens=max(lengths) - 1)
    assert torch.equal(out.tokens, ref.tokens)


def test_static_mode_cuts_loops_and_reuses_its_buffers(compact_loaded) -> None:
    """The tiny model as saved loops: rows stop at the same step through `RepeatTracker`; the same decoder then
    decodes other prompt lengths in the same (reset) buffers."""
    import torch

    from texocr.models.compact_decode import GreedyDecoder
    from texocr.repeats import RepeatRule

    model, proc, fam = compact_loaded.model, compact_loaded.processor, compact_loaded.family
    kw = fam.generation_kwargs(proc)
    static = GreedyDecoder(model, static=True, graphs=False)
    dynamic = GreedyDecoder(model, static=False)
    images = _images()
    for batch in (images, [images[2]], images[:2], images):
        enc = fam.encode_for_generation(proc, batch)
        ref = _run(dynamic, enc, kw, max_new_tokens=60, repeat=RepeatRule())
        out = _run(static, enc, kw, max_new_tokens=60, repeat=RepeatRule())
        assert torch.equal(out.tokens, ref.tokens)
        assert (ref.tokens[:, -1] == kw["pad_token_id"]).any()  # some row was cut before the limit
    assert len(static._shapes) == 3  # buckets of 4, 1 and 2 rows, kept and reused


def test_recognizer_static_mode_agrees_with_generate(compact_loaded, compact_models) -> None:
    """Through `Recognizer`: texts, token counts, stop reasons of the static mode and of `generate`."""
    from texocr.infer import Recognizer
    from texocr.models.compact_decode import GreedyDecoder

    images = _images()
    for model in (compact_models[0][1], compact_loaded.model):
        proc, fam = compact_loaded.processor, compact_loaded.family
        fast = Recognizer(model, proc, fam, max_new_tokens=60, batch_size=3)
        fast._greedy = (model, GreedyDecoder(model, static=True, graphs=False))
        slow = Recognizer(model, proc, fam, max_new_tokens=60, batch_size=3, fast_decode=False)
        a, b = fast(images, return_details=True), slow(images, return_details=True)
        assert fast._greedy[1]._shapes
        assert [(p.text, p.tokens, p.stop) for p in a] == [(p.text, p.tokens, p.stop) for p in b]
        assert [p.score for p in a] == pytest.approx([p.score for p in b], abs=1e-4)


# ------------------------------------------------------------------ worker processes (texocr.prep)


def test_encodings_joined_from_pieces_equal_one_batch_encoding(compact_loaded) -> None:
    import torch

    from texocr.prep import Prep, concat_encodings

    proc, fam = compact_loaded.processor, compact_loaded.family
    prep = Prep(proc, fam, 10**8, 4096, None)
    images = _images() + [_images()[0]]
    whole = prep.encode(images)
    joined = concat_encodings([prep.encode(images[:1]), prep.encode(images[1:3]), prep.encode(images[3:])],
                              prep.pad_id())
    assert (whole["attention_mask"] == 0).any() and whole.keys() == joined.keys()
    for k in whole:
        assert torch.equal(whole[k], joined[k]), k


def test_pool_pieces_keep_positions_and_pixels(compact_loaded, tmp_path) -> None:
    """A chunk split over workers in pieces of 2 (the tensors coming back as named shared memory,
    `prep._init`): joined, the pieces equal one encoding of the readable images, and an unreadable file in the
    second piece is reported at its position in the chunk, not in its piece."""
    import torch

    from texocr.prep import Prep, PrepPool, concat_encodings

    proc, fam = compact_loaded.processor, compact_loaded.family
    prep = Prep(proc, fam, 10**8, 4096, None)
    images = _images()
    paths = []
    for i, im in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        im.save(paths[-1])
    (tmp_path / "bad.png").write_bytes(b"not a png")
    chunk = paths[:3] + [str(tmp_path / "bad.png")] + paths[3:]
    with PrepPool(prep, workers=2, piece=2) as pool:
        assert pool._piece(100) == 2
        [(encs, errors, kept)] = list(pool.prepare([chunk]))
    assert len(encs) == 3 and [j for j, _ in errors] == [3] and "bad.png" in str(errors[0][1])
    assert kept == [0, 1, 2, 4]
    whole, joined = prep.encode([prep.load(chunk[j]) for j in kept]), concat_encodings(encs, prep.pad_id())
    for k in whole:
        assert torch.equal(whole[k], joined[k]), k
    assert PrepPool._piece(pool, 1024) == 2  # an explicit piece wins
    pool.piece = None
    assert pool._piece(1024) == 128 and pool._piece(100) == 50 and pool._piece(10) == 32


def test_predict_with_workers_gives_the_same_predictions(compact_loaded, tmp_path) -> None:
    """Files read, glyph-rescaled and encoded in 2 worker processes: same predictions, same per-image errors."""
    from texocr.infer import Recognizer

    model, proc, fam = compact_loaded.model, compact_loaded.processor, compact_loaded.family
    paths = []
    for i, im in enumerate(_images() * 2):
        paths.append(tmp_path / f"{i}.png")
        im.save(paths[-1])
    (tmp_path / "bad.png").write_bytes(b"not a png")
    inputs = [str(p) for p in paths[:3]] + [str(tmp_path / "bad.png")] + [str(p) for p in paths[3:]]
    plain = Recognizer(model, proc, fam, max_new_tokens=20, batch_size=3, glyph_height=24)
    pooled = Recognizer(model, proc, fam, max_new_tokens=20, batch_size=3, glyph_height=24, workers=2)
    try:
        a, b = plain(inputs, return_details=True), pooled(inputs, return_details=True)
        assert pooled._pool is not None  # the workers really ran
    finally:
        pooled.close()
    assert [(p.text, p.tokens, p.stop, p.error is None, p.source) for p in a] == \
        [(p.text, p.tokens, p.stop, p.error is None, p.source) for p in b]
    assert a[3].error and b[3].error and "bad.png" in b[3].error


def test_predict_chunks_queues_the_next_chunk_before_decoding_this_one(compact_loaded, tmp_path,
                                                                      monkeypatch) -> None:
    """`predict_chunks` (what `texocr eval` feeds its chunks through): each chunk's predictions equal `predict`'s
    of it, in order, and the workers have the next chunk's images queued before this chunk's first batch decodes,
    so a long run does not pause at every chunk boundary."""
    from texocr.infer import Recognizer

    model, proc, fam = compact_loaded.model, compact_loaded.processor, compact_loaded.family
    paths = []
    for i, im in enumerate(_images() * 2):
        paths.append(str(tmp_path / f"{i}.png"))
        im.save(paths[-1])
    (tmp_path / "bad.png").write_bytes(b"not a png")
    chunks = [paths[:3], [str(tmp_path / "bad.png")] + paths[3:5], paths[5:]]
    plain = Recognizer(model, proc, fam, max_new_tokens=20, batch_size=2, glyph_height=24)
    pooled = Recognizer(model, proc, fam, max_new_tokens=20, batch_size=2, glyph_height=24, workers=2)
    events: list[str] = []
    real_start, real_generate = pooled._start, pooled._generate

    def start(images, size):
        events.append(f"queue {len(images)}")
        return real_start(images, size)

    def generate(images, num_beams, max_new_tokens, enc=None, pool=None):
        events.append("decode")
        return real_generate(images, num_beams, max_new_tokens, enc, pool)

    monkeypatch.setattr(pooled, "_start", start)
    monkeypatch.setattr(pooled, "_generate", generate)
    try:
        got = list(pooled.predict_chunks(iter(chunks)))
    finally:
        pooled.close()
    want = [plain.predict(c) for c in chunks]
    assert [[(p.text, p.tokens, p.error is None, p.source) for p in c] for c in got] == \
        [[(p.text, p.tokens, p.error is None, p.source) for p in c] for c in want]
    assert got[1][0].error and "bad.png" in got[1][0].error
    # chunk 2 queued before chunk 1's first batch decodes, chunk 3 before chunk 2's (each chunk: 2 batches of <= 2)
    assert events == ["queue 3", "queue 3", "decode", "decode", "queue 3", "decode", "decode", "decode", "decode"]


def test_a_static_mode_failure_falls_back_to_the_dynamic_loop(compact_models, monkeypatch, caplog) -> None:
    """A driver-level failure of the static mode (e.g. a CUDA graph that cannot be captured) costs a warning, not
    the caller's batch: the decoder reads on with the dynamic loop, same tokens."""
    import torch

    from texocr.models.compact_decode import GreedyDecoder

    _, model, proc, fam, _ = compact_models[0]
    kw = fam.generation_kwargs(proc)
    enc = fam.encode_for_generation(proc, _images())
    ref = _run(_decoder(model, False), enc, kw, max_new_tokens=12, min_new_tokens=12)
    dec = GreedyDecoder(model, static=True, graphs=False)

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    monkeypatch.setattr(dec, "_generate_static", broken)
    with caplog.at_level("WARNING", logger="texocr.models.compact_decode"):
        out = _run(dec, enc, kw, max_new_tokens=12, min_new_tokens=12)
    assert torch.equal(out.tokens, ref.tokens) and not dec.static
    assert "dynamic loop" in caplog.text


# ------------------------------------------------------------------ M-RoPE positions in whole-batch ops


def test_one_image_rope_index_equals_transformers_get_rope_index(compact_loaded) -> None:
    """Left-padded batches of images of many shapes (wide, tall, square, odd grids): the same positions as the
    model's own row-by-row `get_rope_index`, padding included; other layouts are left to that function."""
    import torch

    from texocr.models.qwen_speed import one_image_rope_index

    model, proc, fam = compact_loaded.model, compact_loaded.processor, compact_loaded.family
    core, merge = model.model, model.config.vision_config.spatial_merge_size
    image_id = model.config.image_token_id
    sizes = [(112, 32), (200, 40), (150, 60), (60, 60), (30, 200), (420, 28), (57, 91)]
    for batch in (sizes[:1], sizes[1:2], sizes, sizes[::-1], sizes[2:5]):
        enc = fam.encode_for_generation(proc, [_image_sized(w, h) for w, h in batch])
        want, _ = core.get_rope_index(enc["input_ids"], mm_token_type_ids=(enc["input_ids"] == image_id).int(),
                                      image_grid_thw=enc["image_grid_thw"], attention_mask=enc["attention_mask"])
        got = one_image_rope_index(enc["input_ids"], enc["attention_mask"], enc["image_grid_thw"], image_id, merge)
        assert got is not None and torch.equal(got, want), batch
    # a row whose image block is split, or a batch with fewer grids than rows: not this function's shape
    enc = fam.encode_for_generation(proc, [_image_sized(112, 32), _image_sized(60, 60)])
    ids = enc["input_ids"].clone()
    row = (ids[0] == image_id).nonzero()[:, 0]
    ids[0, row[len(row) // 2]] = ids[0, 0]
    assert one_image_rope_index(ids, enc["attention_mask"], enc["image_grid_thw"], image_id, merge) is None
    assert one_image_rope_index(enc["input_ids"], enc["attention_mask"], enc["image_grid_thw"][:1], image_id,
                                merge) is None


def _image_sized(w: int, h: int):
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (w, h), "white")
    ImageDraw.Draw(im).text((2, 2), "ab", fill="black")
    return im


def test_uint8_patches_normalized_on_the_device_give_the_same_predictions(compact_loaded, tmp_path) -> None:
    """`device_pixels` (the CUDA default): patches leave the CPU as uint8 and are normalized where the model is;
    the model sees the processor's values (within float rounding), so the same predictions, in-process and
    through worker processes."""
    import torch

    from texocr.infer import Recognizer

    model, proc, fam = compact_loaded.model, compact_loaded.processor, compact_loaded.family
    images = _images() * 2
    plain = Recognizer(model, proc, fam, max_new_tokens=20, batch_size=3, glyph_height=24)
    moved = Recognizer(model, proc, fam, max_new_tokens=20, batch_size=3, glyph_height=24)
    moved.device_pixels = True
    enc, enc8 = plain._encode(images[:3]), moved._encode(images[:3])
    assert moved._prep().encode(images[:3])["pixel_values"].dtype == torch.uint8
    assert enc.keys() == enc8.keys() and torch.equal(enc["input_ids"], enc8["input_ids"])
    assert torch.allclose(enc["pixel_values"], enc8["pixel_values"], atol=1e-5)
    paths = []
    for i, im in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        im.save(paths[-1])
    moved.workers = 2
    try:
        a, b, c = plain(paths, return_details=True), moved(paths[:1], return_details=True), moved(paths,
                                                                                               return_details=True)
    finally:
        moved.close()
    assert [(p.text, p.tokens) for p in a] == [(p.text, p.tokens) for p in c] and (b[0].text, b[0].tokens) == (
        a[0].text, a[0].tokens)


def test_predict_with_workers_takes_every_kind_of_input_and_fails_only_the_bad_ones(compact_loaded,
                                                                                     tmp_path) -> None:
    """Through the workers: a path, PNG bytes, an open file, a PIL image, a corrupt file and a blank image, in
    one call; the same predictions as in-process, each bad input its own error, in input order."""
    import io

    from PIL import Image

    from texocr.infer import Recognizer

    model, proc, fam = compact_loaded.model, compact_loaded.processor, compact_loaded.family
    ims = _images()
    ims[0].save(tmp_path / "a.png")
    buf = io.BytesIO()
    ims[1].save(buf, format="PNG")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    blank = Image.new("RGB", (120, 40), "white")

    def inputs() -> list:
        return [str(tmp_path / "a.png"), buf.getvalue(), open(tmp_path / "a.png", "rb"), ims[2],
                str(tmp_path / "bad.png"), blank, ims[3]]

    plain = Recognizer(model, proc, fam, max_new_tokens=20, batch_size=2, glyph_height=24)
    pooled = Recognizer(model, proc, fam, max_new_tokens=20, batch_size=2, glyph_height=24, workers=2)
    try:
        a, b = plain(inputs(), return_details=True), pooled(inputs(), return_details=True)
    finally:
        pooled.close()
    assert [(p.text, p.tokens, p.error is None) for p in a] == [(p.text, p.tokens, p.error is None) for p in b]
    assert [p.error is None for p in b] == [True, True, True, True, False, False, True]
    assert "bad.png" in b[4].error and "blank" in b[5].error
    assert b[0].text == b[2].text  # the open file is the same image as the path


def test_a_failed_worker_encoded_batch_is_read_again_and_generated_image_by_image(compact_loaded, monkeypatch,
                                                                                   tmp_path) -> None:
    from texocr.infer import Recognizer

    model, proc, fam = compact_loaded.model, compact_loaded.processor, compact_loaded.family
    paths = []
    for i, im in enumerate(_images()):
        paths.append(str(tmp_path / f"{i}.png"))
        im.save(paths[-1])
    plain = Recognizer(model, proc, fam, max_new_tokens=20, batch_size=4, glyph_height=24)
    pooled = Recognizer(model, proc, fam, max_new_tokens=20, batch_size=4, glyph_height=24, workers=2)
    real = pooled._generate
    failed = []

    def flaky(images, num_beams, max_new_tokens, enc=None, pool=None):
        if enc is not None:  # the workers' batch: as if the GPU ran out of memory on it
            failed.append(sum(len(e["input_ids"]) for e in enc))
            raise RuntimeError("CUDA out of memory")
        return real(images, num_beams, max_new_tokens, enc, pool)

    monkeypatch.setattr(pooled, "_generate", flaky)
    try:
        a, b = plain(paths, return_details=True), pooled(paths, return_details=True)
    finally:
        pooled.close()
    assert failed == [4]
    assert [(p.text, p.tokens, p.error) for p in a] == [(p.text, p.tokens, p.error) for p in b]
    assert all(p.batch_size == 1 for p in b)  # generated one by one after the batch failed


def test_static_mode_levers_keep_the_tokens(compact_models) -> None:
    """The opt-in GPU levers, run on the CPU in float32 where they change no rounding that matters: the decode
    step through torch.compile (Inductor's generated code, not the eager ops) and the fused RMSNorm give the
    dynamic loop's tokens and log-probabilities for a left-padded batch of four differently sized images."""
    import torch

    from texocr.models.compact_decode import GreedyDecoder

    _, model, proc, fam, _ = compact_models[0]
    kw = fam.generation_kwargs(proc)
    enc = fam.encode_for_generation(proc, _images())
    ref = _run(_decoder(model, False), enc, kw, max_new_tokens=24, min_new_tokens=24)
    dec = GreedyDecoder(model, static=True, graphs=False, fused_norm=True, compile_step=True)
    out = _run(dec, enc, kw, max_new_tokens=24, min_new_tokens=24)
    assert dec.compile_step and dec._compiled is not None  # the compiled step ran (no silent fallback)
    assert torch.equal(out.tokens, ref.tokens)
    assert len({tuple(r) for r in ref.tokens.tolist()}) > 1
    assert torch.allclose(out.logprobs, ref.logprobs, atol=1e-5)


def test_gpu_levers_from_the_environment(monkeypatch) -> None:
    """TEXOCR_GPU_LEVERS names the opt-in GPU levers (or `all`); a misspelt one is a clear error, not ignored."""
    from texocr.models.compact_decode import LEVERS, env_levers

    monkeypatch.delenv("TEXOCR_GPU_LEVERS", raising=False)
    assert env_levers() == set()
    monkeypatch.setenv("TEXOCR_GPU_LEVERS", "norm, compile")
    assert env_levers() == {"norm", "compile"}
    monkeypatch.setenv("TEXOCR_GPU_LEVERS", "all")
    assert env_levers() == set(LEVERS)
    monkeypatch.setenv("TEXOCR_GPU_LEVERS", "norm,fast")
    with pytest.raises(ValueError, match="unknown lever.*fast"):
        env_levers()

"""Recognizer: loop stopping and trimming, output cleaning, per-image errors, order, streaming."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

from texocr.errors import TexocrError
from texocr.infer import (
    Prediction,
    Recognizer,
    _stopping_criterion,
    clean_output,
    find_repeat,
    resolve_model,
)

# ---------------------------------------------------------------- loops


def test_find_repeat_needs_enough_copies():
    assert find_repeat([1] * 31) is None and find_repeat([1] * 32) == (0, 1)  # one token: min_span copies
    block = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]  # 11 tokens: 3 copies suffice
    assert find_repeat([1, 2] + block * 2) is None
    assert find_repeat([1, 2] + block * 3) == (2, 11)
    assert find_repeat(list(range(100))) is None
    # legitimate LaTeX repetition (a short row repeated a few times) is not a loop
    assert find_repeat([7, 8, 9] * 4) is None


def test_find_repeat_aligns_on_where_the_loop_began():
    # generation stopped mid-copy: "ab" + "xyzw" * 9 + "xy"; one copy kept from where the loop began
    ids = list("ab" + "xyzw" * 9 + "xy")
    start, n = find_repeat(ids)
    assert "".join(ids[: start + n]) == "abxyzw"


class _Cycle:
    """A logits processor that forces tokens `first` then `cycle` forever: a model stuck in a loop."""

    def __init__(self, prompt_len: int, first: list[int], cycle: list[int]) -> None:
        self.prompt_len, self.first, self.cycle = prompt_len, first, cycle

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_len
        tok = self.first[step] if step < len(self.first) else self.cycle[(step - len(self.first)) % len(self.cycle)]
        forced = torch.full_like(scores, -1e9)
        forced[:, tok] = 0.0
        return forced


def test_repetition_stopper_stops_a_looping_generate(tiny_loaded, formula_image):
    from transformers import LogitsProcessorList, StoppingCriteriaList

    loaded = tiny_loaded("qwen2_vl")
    fam, proc = loaded.family, loaded.processor
    enc = fam.encode_for_generation(proc, [formula_image()])
    plen = enc["input_ids"].shape[1]
    tok = proc.tokenizer
    ids = [tok.convert_tokens_to_ids(c) for c in "a+b=c"]  # a 5-token loop: ceil(32/5) = 7 copies stop it
    with torch.no_grad():
        out = loaded.model.generate(
            **enc, max_new_tokens=200, do_sample=False, **fam.generation_kwargs(proc),
            logits_processor=LogitsProcessorList([_Cycle(plen, ids[:2], ids)]),
            stopping_criteria=StoppingCriteriaList([_stopping_criterion(plen)]))
    new = out[0, plen:].tolist()
    assert len(new) == 2 + 7 * 5  # stopped as soon as the loop was long enough, not at 200
    start, n = find_repeat(new)
    assert tok.decode(new[: start + n]) == "a+a+b=c"  # the prefix, then one copy of the loop


def test_a_looping_row_is_trimmed_to_one_copy(tiny_loaded):
    rec = Recognizer.from_loaded(tiny_loaded("qwen2_vl"))
    tok = rec.processor.tokenizer
    row = tok("x^{2}+" + "\\alpha+" * 20, add_special_tokens=False)["input_ids"]
    kwargs = rec._generate_kwargs(1, None)
    pred = rec._finish(row, [-0.5] * len(row), kwargs, 0.1)
    assert pred.text == "x^{2}+\\alpha"  # the loop is "+ \\alpha" from the first +: one copy kept
    assert pred.stop == "repetition" and pred.score == pytest.approx(-0.5)


# ---------------------------------------------------------------- cleaning


@pytest.mark.parametrize("raw, clean", [
    ("<|im_start|>assistant\n$x^2$<|im_end|>", "x^2"),
    ("```latex\n\\frac{a}{b}\n```", "\\frac{a}{b}"),
    ("$$ a+b $$", "a+b"),
    ("\\[ x \\]", "x"),
    ("\\(z\\)", "z"),
    ("<s> y </s><eos>", "y"),
    ("Write the LaTeX of this formula. x", "x"),
    ("\\sqrt{x", "\\sqrt{x}"),  # repaired
    ("$a$ and $b$", "$a$ and $b$"),  # not one wrapped formula: left alone
    ("<end_of_turn>", ""),
])
def test_clean_output(raw, clean):
    assert clean_output(raw, prompt="Write the LaTeX of this formula.") == clean


def test_default_model_ships_small_and_rebuildable(tmp_path):
    """`default` is the packaged compact model: <= 32 MB of safetensors, a Qwen2-VL config, and exactly the
    tokenizer that texocr's own builder makes (so retrained weight shards can be assembled into a model)."""
    from texocr.infer import DEFAULT_MODEL_DIR
    from texocr.models.compact import build_compact_processor

    assert resolve_model("default") == str(DEFAULT_MODEL_DIR)
    assert resolve_model("some/dir") == "some/dir"
    weights = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.glob("*.safetensors"))
    assert 0 < weights <= 32 * 1024**2
    assert json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())["model_type"] == "qwen2_vl"
    build_compact_processor().save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").read_bytes() == (DEFAULT_MODEL_DIR / "tokenizer.json").read_bytes()


# ---------------------------------------------------------------- recognizer on a tiny model


@pytest.fixture(scope="module")
def rec(tiny_loaded):
    return Recognizer.from_loaded(tiny_loaded("qwen2_vl"), max_new_tokens=12, batch_size=4)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_inputs_of_every_kind_and_order_kept(rec, formula_image, tmp_path):
    wide, tall, small = formula_image(300, 40), formula_image(60, 90), formula_image(80, 30)
    wide.save(tmp_path / "wide.png")
    inputs = [str(tmp_path / "wide.png"), _png(tall), small, b"not an image", str(tmp_path / "missing.png"),
              Image.new("RGB", (1, 1), "white"), Image.new("RGBA", (50, 20), (0, 0, 0, 0))]
    preds = rec(inputs, return_details=True)
    assert [p.source for p in preds] == [str(tmp_path / "wide.png"), "<bytes>", "<Image>", "<bytes>",
                                         str(tmp_path / "missing.png"), "<Image>", "<Image>"]
    for p in preds[:3]:
        assert p.error is None and isinstance(p.text, str) and p.tokens > 0
        assert p.score is not None and p.score <= 0 and p.time_s > 0 and p.stop
    errors = [p.error for p in preds[3:]]
    assert "not an image" in errors[0] and "no such file" in errors[1]
    assert "smaller than" in errors[2] and "blank image" in errors[3]
    assert all(p.text == "" for p in preds[3:])
    # the plain call returns strings, one per input, and a single image gives a single string
    assert rec(inputs[:3]) == [p.text for p in preds[:3]]
    assert rec(small) == preds[2].text


def test_beam_search_runs(rec, formula_image):
    (p,) = rec([formula_image()], return_details=True, num_beams=2)
    assert p.error is None and p.score is not None


def test_stream_yields_pieces(rec, formula_image):
    pieces = list(rec.stream(formula_image(), max_new_tokens=8))
    assert pieces and all(isinstance(s, str) and s for s in pieces)
    with pytest.raises(TexocrError, match="not an image"):
        list(rec.stream(b"nope"))


def test_prediction_to_dict():
    d = Prediction("x", score=-0.1, source="a.png").to_dict()
    assert d["text"] == "x" and d["error"] is None and d["source"] == "a.png"


def test_model_without_fast_loop_decodes_every_batch(tiny_loaded, formula_image, monkeypatch):
    """A family with no fast greedy loop falls back to `generate` for every batch, not only the first
    (the demo's LoRA "after" run lost 2 of 3 batches to this: the cached 'no decoder' broke batch 2)."""
    loaded = tiny_loaded("qwen2_vl")
    images = [formula_image(120 + 40 * i, 40) for i in range(3)]
    fast = Recognizer.from_loaded(loaded, max_new_tokens=6, batch_size=1)(images)
    monkeypatch.setattr(loaded.family, "greedy_decoder", lambda model: None)  # the family object is shared
    preds = Recognizer.from_loaded(loaded, max_new_tokens=6, batch_size=1)(images, return_details=True)
    assert [p.error for p in preds] == [None] * 3
    assert [p.text for p in preds] == fast  # the fast loop is exact: same tokens either way


def test_adapter_is_merged_for_inference_with_the_same_outputs(tiny_model_dir, formula_image, tmp_path):
    """`Recognizer.load(model, adapter=...)` folds the LoRA into the weights: the same logits as the PEFT model."""
    import peft

    from texocr.config import ModelConfig
    from texocr.models.loading import load_model

    base = str(tiny_model_dir("qwen2_vl"))
    loaded = load_model(ModelConfig(name_or_path=base, dtype="float32"), device="cpu")
    lora = peft.get_peft_model(loaded.model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(0)
    for name, p in lora.named_parameters():
        if "lora_B" in name:  # peft starts B at zero, which would make any merge look right
            torch.nn.init.normal_(p, std=0.5)
    lora.save_pretrained(tmp_path / "adapter")
    batch = loaded.family.encode(loaded.processor, [formula_image()], ["x ^ { 2 }"], 512).batch
    with torch.no_grad():
        want = lora(**batch).logits
        merged = load_model(ModelConfig(name_or_path=base, adapter=str(tmp_path / "adapter"), dtype="float32"),
                            device="cpu").model
        assert not isinstance(merged, peft.PeftModel)
        torch.testing.assert_close(merged(**batch).logits, want, rtol=1e-4, atol=1e-4)


def test_glyph_height_enlarges_small_inputs(rec, tiny_loaded):
    """`glyph_height=PX` enlarges an input until its glyphs are about PX tall; by default images are read as
    they come."""
    from PIL import ImageDraw

    img = Image.new("RGB", (240, 40), "white")
    ImageDraw.Draw(img).rectangle([20, 14, 23, 25], fill="black")  # one 12 px tall glyph
    assert rec.glyph_height is None and rec._load(img).size == (240, 40)
    scaled = Recognizer.from_loaded(tiny_loaded("qwen2_vl"), glyph_height=24, max_new_tokens=4)
    assert scaled._load(img).size == (480, 80)
    (p,) = scaled([img], return_details=True)
    assert p.error is None
    with pytest.raises(TexocrError, match="glyph_height"):
        Recognizer.from_loaded(tiny_loaded("qwen2_vl"), glyph_height=-3)


def test_declared_size_reads_headers_without_decoding(tmp_path) -> None:
    """The sort key's size: a PNG's from its IHDR (bytes or a file), a JPEG's through PIL, (0, 0) for what is not
    an image; a DeferredImage's from the file or bytes it will read. The same sizes PIL reports."""
    import io
    from functools import partial

    from PIL import Image

    from texocr.data.images import load_image
    from texocr.infer import _declared_size
    from texocr.sample import DeferredImage

    png, jpg = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (123, 45), "white").save(png, format="PNG")
    Image.new("RGB", (67, 89), "white").save(jpg, format="JPEG")
    (tmp_path / "a.png").write_bytes(png.getvalue())
    assert _declared_size(png.getvalue()) == (123, 45) == _declared_size(str(tmp_path / "a.png"))
    assert _declared_size(memoryview(png.getvalue())) == (123, 45)
    assert _declared_size(jpg.getvalue()) == (67, 89)
    assert _declared_size(DeferredImage(partial(load_image, tmp_path / "a.png"))) == (123, 45)
    assert _declared_size(png.getvalue()[:20]) == (0, 0)  # a cut header: PIL cannot tell either
    assert _declared_size(b"not an image") == (0, 0) and _declared_size(str(tmp_path / "missing.png")) == (0, 0)
    assert _declared_size(Image.new("RGB", (5, 6))) == (5, 6)


def test_a_small_model_on_a_gpu_gets_a_gpu_sized_batch_unless_one_is_named(tiny_model_dir) -> None:
    """With no batch size from the caller or the saved run: 512 for a small model on CUDA, the CPU default
    elsewhere and for large models; a named batch size always wins."""
    from texocr.config import EvalConfig
    from texocr.infer import Recognizer, default_batch_size

    assert default_batch_size("cuda:0", 10_000_000) == 512 and default_batch_size("cuda", 7_000_000_000) is None
    assert default_batch_size("cpu", 10_000_000) is None
    from texocr.infer import SMALL_MODEL_GPU_BATCH
    from texocr.prep import BATCH_HELP  # what --batch-size's help promises

    assert f"{SMALL_MODEL_GPU_BATCH} for a model" in BATCH_HELP and f"{EvalConfig().batch_size} otherwise" in BATCH_HELP
    model = str(tiny_model_dir("qwen2_vl"))
    assert Recognizer.load(model, device="cpu").batch_size == EvalConfig().batch_size
    assert Recognizer.load(model, device="cpu", batch_size=3).batch_size == 3


def test_generated_columns_after_every_rows_stop_are_cut_before_finishing() -> None:
    """`_written`: only columns that are padding in every row go, all but the first of them (a GPU batch runs as
    many steps as its longest row); every row then finishes as before, also where the end token is the padding."""
    import torch

    from texocr.infer import _written
    from texocr.prediction import finish_row

    class Fam:  # finish_row's decoding: the ids as text
        @staticmethod
        def decode(processor, rows):
            return [" ".join(map(str, r)) for r in rows]

    new = torch.tensor([[5, 2, 0, 0, 0, 0], [5, 6, 7, 2, 0, 0], [5, 0, 0, 0, 0, 0]])
    logp = -torch.arange(18, dtype=torch.float32).view(3, 6) / 10
    for pad, eos in ((0, [2]), (0, [0])):  # padding distinct from the end token, and the end token itself
        cut, lp = _written(new, logp, pad)
        assert cut.tolist() == [[5, 2, 0, 0, 0], [5, 6, 7, 2, 0], [5, 0, 0, 0, 0]] and torch.equal(lp, logp[:, :5])
        whole = [finish_row(Fam, None, r, p, eos, pad, 0.0) for r, p in zip(new.tolist(), logp.tolist())]
        short = [finish_row(Fam, None, r, p, eos, pad, 0.0) for r, p in zip(cut.tolist(), lp.tolist())]
        assert [(a.text, a.stop, a.score, a.tokens) for a in whole] == \
            [(b.text, b.stop, b.score, b.tokens) for b in short]
    assert _written(torch.zeros(2, 3, dtype=torch.long), logp[:2, :3], 0)[0].shape == (2, 1)
    full = torch.tensor([[5, 6, 7]])
    assert _written(full, logp[:1, :3], 0)[0].shape == (1, 3)  # a row that ran to the limit keeps every column
    assert _written(new, logp, None)[0] is new  # no padding id: nothing to tell padding by


# ---------------------------------------------------------------- reading twice


def _glyph_image(width: int, height: int, glyph: int) -> Image.Image:
    """White `width` x `height` with one black box `glyph` pixels tall: `glyph_height` measures `glyph`."""
    from PIL import ImageDraw

    img = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(img).rectangle([10, 4, 13, 4 + glyph - 1], fill="black")
    return img


def test_unsure_reads_are_read_again_and_the_surest_kept(tiny_loaded, monkeypatch):
    """`reread=[PX]`: a prediction scored below `reread_below` is read again with its glyphs PX tall and replaced
    when that read is surer; sure reads, errors, and inputs the other height would not change are not read again;
    input order is kept."""
    rec = Recognizer.from_loaded(tiny_loaded("qwen2_vl"), glyph_height=24, reread=[12], reread_below=-0.01,
                                 batch_size=8)
    widths: list[list[int]] = []

    def scripted(images, num_beams, max_new_tokens):  # a stand-in model: narrower reads are surer
        widths.append(sorted(im.width for im in images))
        return [Prediction(f"w{im.width}", score=-0.005 if im.width < 100 else -im.width / 1000, time_s=1.0)
                for im in images]

    monkeypatch.setattr(rec, "_generate_safely", scripted)
    small = _glyph_image(240, 40, 12)  # read at 24 px: 480 wide, unsure; at 12 px: as it is, surer
    large = _glyph_image(300, 80, 40)  # glyphs taller than both heights: one read, unsure, not read again
    sure = _glyph_image(60, 50, 30)    # not enlarged, scored -0.005: sure
    blank = Image.new("RGB", (50, 50), "white")
    preds = rec([small, large, blank, sure], return_details=True)
    assert [p.text for p in preds] == ["w240", "w300", "", "w60"]
    assert "blank" in preds[2].error
    assert widths == [[60, 300, 480], [240]]  # the first reads, then only the small image again
    assert [p.reads for p in preds] == [2, 1, 1, 1] and [p.time_s for p in preds] == [2.0, 1.0, 0.0, 1.0]
    assert rec.settings()["reread"] == [12.0] and rec.settings()["reread_below"] == -0.01


def test_a_less_sure_second_read_is_not_kept(tiny_loaded, monkeypatch):
    rec = Recognizer.from_loaded(tiny_loaded("qwen2_vl"), glyph_height=24, reread=[12], reread_below=-0.01)
    monkeypatch.setattr(rec, "_generate_safely", lambda images, *a: [
        Prediction(f"w{im.width}", score=-1.0 if im.width < 300 else -0.5) for im in images])
    assert rec(_glyph_image(240, 40, 12)) == "w480"


def test_reread_on_a_real_model_keeps_the_surest_of_the_reads(tiny_loaded, formula_image):
    """On the tiny model, every read unsure (`reread_below=0`): each kept prediction is the better scored of the
    read at 24 px and the read at 12 px, and bad inputs still fail alone."""
    loaded = tiny_loaded("qwen2_vl")
    images = [_glyph_image(200 + 20 * i, 40, 10 + i) for i in range(4)]
    reads = {h: Recognizer.from_loaded(loaded, glyph_height=h, max_new_tokens=6)(images, return_details=True)
             for h in (24, 12)}
    both = Recognizer.from_loaded(loaded, glyph_height=24, reread=[12], reread_below=0.0, max_new_tokens=6)
    got = both(images + [b"not an image"], return_details=True)
    assert got[-1].error and got[-1].text == ""
    for i, pred in enumerate(got[:-1]):
        first, second = reads[24][i], reads[12][i]
        best = second if second.score > first.score else first
        assert (pred.text, pred.score) == pytest.approx((best.text, best.score))


def test_reread_settings_are_checked(tiny_loaded):
    loaded = tiny_loaded("qwen2_vl")
    with pytest.raises(TexocrError, match="reread"):
        Recognizer.from_loaded(loaded, reread=[16])  # no threshold
    with pytest.raises(TexocrError, match="reread"):
        Recognizer.from_loaded(loaded, reread=[-2], reread_below=-0.01)
    assert Recognizer.from_loaded(loaded, reread=[0]).reread == ()  # 0: off, as --glyph-height 0

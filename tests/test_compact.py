"""texocr's compact model: LaTeX tokenizer, family (prompt, label mask, generation), save/load, LoRA."""

from __future__ import annotations

import string
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from texocr.models.qwen_vl import QWEN_SPECIALS


@pytest.fixture(scope="module")
def latex_tok():
    from texocr.models.latex_tokenizer import build_latex_tokenizer

    return build_latex_tokenizer(QWEN_SPECIALS, eos="<|im_end|>", pad="<|endoftext|>")


@pytest.fixture(scope="module")
def compact_dir(tiny_model_dir: Callable[[str], Path]) -> Path:
    return tiny_model_dir("compact")


@pytest.fixture(scope="module")
def compact_loaded(compact_dir: Path):
    from texocr.config import ModelConfig
    from texocr.models.loading import load_model

    return load_model(ModelConfig(name_or_path=str(compact_dir), family="compact"))


def _image(w: int = 112, h: int = 32):
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (w, h), "white")
    ImageDraw.Draw(im).text((4, 8), "x^2+1", fill="black")
    return im


# ------------------------------------------------------------------ tokenizer


def test_known_tokens_are_one_id_each(latex_tok) -> None:
    s = r"\frac { \alpha } { b } \left( x \right. \begin{pmatrix} a \\ b \end{pmatrix}"
    ids = latex_tok(s, add_special_tokens=False)["input_ids"]
    assert latex_tok.convert_ids_to_tokens(ids) == s.split()
    assert latex_tok.decode(ids) == s


def test_generated_formulas_round_trip_without_unk(latex_tok) -> None:
    from texocr.data.formulas import FormulaGenerator
    from texocr.latex import normalize

    gen = FormulaGenerator(seed=123)  # another seed than the vocabulary's
    for i in range(50):
        target = normalize(gen.formula(i))
        ids = latex_tok(target, add_special_tokens=False)["input_ids"]
        assert latex_tok.unk_token_id not in ids
        assert latex_tok.decode(ids) == target
        assert len(ids) <= len(target.split()) * 3  # mostly whole tokens, not characters


def test_unknown_commands_and_unnormalized_text_fall_back_to_characters(latex_tok) -> None:
    for s in [r"\foo { x }", r"\frac{a}{b}", r"a\,b''"]:
        ids = latex_tok(s, add_special_tokens=False)["input_ids"]
        assert latex_tok.unk_token_id not in ids
        assert latex_tok.decode(ids) == s
    assert latex_tok(r"\foo", add_special_tokens=False)["input_ids"] != [latex_tok.unk_token_id]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet=[c for c in string.printable if not c.isspace()], min_size=1, max_size=12),
                min_size=1, max_size=8))
def test_any_printable_ascii_round_trips(latex_tok, words: list[str]) -> None:
    s = " ".join(words)
    ids = latex_tok(s, add_special_tokens=False)["input_ids"]
    assert latex_tok.unk_token_id not in ids
    assert latex_tok.decode(ids) == s


def test_special_tokens_need_no_spaces(latex_tok) -> None:
    ids = latex_tok("<|vision_start|><|image_pad|><|image_pad|><|vision_end|>x", add_special_tokens=False)
    toks = latex_tok.convert_ids_to_tokens(ids["input_ids"])
    assert toks == ["<|vision_start|>", "<|image_pad|>", "<|image_pad|>", "<|vision_end|>", "x"]


def test_tokenizer_saves_and_loads_with_autotokenizer(latex_tok, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    latex_tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    s = r"\sqrt { x ^ { 2 } } \foo"
    assert again(s)["input_ids"] == latex_tok(s)["input_ids"]
    assert again.eos_token == "<|im_end|>"


# ------------------------------------------------------------------ family


def test_registry_knows_compact_and_a_compact_checkpoint_reads_as_qwen2_vl(compact_dir: Path) -> None:
    from texocr.models.registry import detect_family, get_family, known_families

    assert "compact" in known_families()
    assert get_family("compact").name == "compact"
    assert detect_family(str(compact_dir)).name == "qwen2_vl"


def test_prompt_is_image_only_and_same_under_qwen2_vl_family(compact_dir: Path, compact_loaded) -> None:
    from texocr.models.registry import get_family

    fam, proc = compact_loaded.family, compact_loaded.processor
    assert fam.prompt(proc) == "<|vision_start|><|image_pad|><|vision_end|>"
    # detected as plain qwen2_vl, the saved chat template gives the same prompt
    assert get_family("qwen2_vl").prompt(proc) == fam.prompt(proc)


def test_label_mask_covers_answer_and_end_token_only(compact_loaded) -> None:
    fam, proc = compact_loaded.family, compact_loaded.processor
    targets = [r"\frac { a } { b }", "x ^ { 2 }"]
    batch = fam.encode_for_training(proc, [_image(), _image(168, 56)], targets, max_length=512)
    tok = proc.tokenizer
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for row, ids, target in zip(batch["labels"].tolist(), batch["input_ids"].tolist(), targets):
        answer = [t for t in row if t != -100]
        assert answer == tok(target, add_special_tokens=False)["input_ids"] + [end]
        first = row.index(answer[0])
        assert ids[:first].count(tok.convert_tokens_to_ids("<|image_pad|>")) > 0  # image tokens are masked
        assert all(t == -100 for t in row[:first])
    # 112x32 -> 28x28 merged patches: 4x1 grid at least 16 tokens (the family's minimum budget)
    n_img = (batch["input_ids"][0] == proc.image_token_id).sum().item()
    assert n_img == batch["image_grid_thw"][0].prod().item() // 4


def test_generate_and_decode(compact_loaded) -> None:
    import torch

    fam, proc, model = compact_loaded.family, compact_loaded.processor, compact_loaded.model
    enc = fam.encode_for_generation(proc, [_image(), _image(200, 40)])
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=6, min_new_tokens=6, do_sample=False,
                             **fam.generation_kwargs(proc))
    new = out[:, enc["input_ids"].shape[1]:]
    assert new.shape == (2, 6)
    texts = fam.decode(proc, new)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert "<|" not in "".join(texts)


def test_save_and_load_give_identical_logits(compact_loaded, tmp_path: Path) -> None:
    import torch

    from texocr.config import ModelConfig
    from texocr.models.loading import load_model

    fam, proc, model = compact_loaded.family, compact_loaded.processor, compact_loaded.model
    model.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    again = load_model(ModelConfig(name_or_path=str(tmp_path)))
    batch = fam.encode_for_training(proc, [_image()], ["a + b"], max_length=512)
    batch.pop("labels")
    with torch.inference_mode():
        a = model(**batch).logits
        b = again.model(**batch).logits
    assert torch.equal(a, b)


def test_lora_through_the_registry_trains_only_adapters(compact_dir: Path) -> None:
    import torch

    from texocr.config import ModelConfig
    from texocr.models.loading import load_model

    loaded = load_model(ModelConfig(name_or_path=str(compact_dir), family="compact", method="lora", lora_r=4),
                        training=True)
    model = loaded.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert any("language_model" in n and "q_proj" in n for n in trainable)
    batch = loaded.family.encode_for_training(loaded.processor, [_image()], [r"\alpha"], max_length=512)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):  # lora_B starts at zero, so lora_A moves only from the second step
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert torch.isfinite(loss)
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert set(changed) == trainable


def test_unknown_size_is_a_clear_error(tmp_path: Path) -> None:
    from texocr.errors import TexocrError
    from texocr.models.compact import compact_config

    with pytest.raises(TexocrError, match="unknown compact size"):
        compact_config("huge")


def test_base_size_fits_the_shipping_budget() -> None:
    """The shipped model must stay <= 32 MB in bf16 (and be big enough to learn: >= ~15M parameters)."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from texocr.models.compact import compact_config

    with torch.device("meta"):
        model = Qwen2VLForConditionalGeneration(compact_config("base", vocab_size=1344))
    n = sum(p.numel() for p in model.parameters())
    assert 14e6 <= n <= 16e6, n


@pytest.mark.slow
def test_pretrain_config_on_rendered_synthetic_data(tmp_path: Path) -> None:
    """configs/compact/pretrain.yaml through `texocr train` on the synthetic render stream (pip renderer, as on a
    machine without TeX): two optimizer steps of a fresh tiny model, a checkpoint, the model folder (~1 min)."""
    from texocr.cli import main as cli

    out = tmp_path / "run"
    rc = cli(["train", "--config", str(Path(__file__).resolve().parents[1] / "configs" / "compact" / "pretrain.yaml"),
              "--model.init_size", "tiny", "--data.renderer", "pip", "--data.formulas", "null", "--data.real", "[]",
              "--data.real_ratio", "0", "--data.val", "[]", "--train.output_dir", str(out), "--train.max_steps", "2",
              "--train.batch_size", "2", "--train.save_steps", "1", "--train.dataloader_workers", "0",
              "--train.warmup_ratio", "0"])
    assert rc == 0
    assert (out / "init" / "config.json").is_file() and (out / "model" / "config.json").is_file()
    assert (out / "checkpoints" / "checkpoint-2").is_dir()


# ------------------------------------------------------------------ fast greedy decoding (compact_decode.py)


def _scramble(model, seed: int = 0, bf16: bool = False):
    """Re-draw every matrix so that a random model's greedy output varies with the image and the step.

    A freshly initialized model with tied embeddings repeats one token forever (the residual stream is its
    own input embedding), which would make "same tokens as generate" a weak check. `bf16`: round every
    weight through bfloat16, as the shipped checkpoint is (the decoder then stores its matrices in fp16).
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                std = 0.05 if "embed" in name else 2.0 / p.shape[1] ** 0.5
                p.copy_(torch.randn(p.shape, generator=g) * std)
            if bf16:
                p.copy_(p.bfloat16().float())
    return model


def _images() -> list:
    """Four formula images of different shapes (16-24 image tokens each: a padded batch)."""
    return [_image(112, 32), _image(200, 40), _image(150, 60), _image(60, 60)]


@pytest.fixture(scope="module")
def compact_models(compact_loaded):
    """(name, model, processor, family, expected fp16 storage): the tiny model in fp32, and a base-size
    model with random bf16-representable weights and the tiny model's processor (same special-token ids)."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from texocr.models.compact import compact_config
    from texocr.models.qwen_vl import QWEN_SPECIALS
    from texocr.models.tiny import padded_vocab_size

    proc, fam = compact_loaded.processor, compact_loaded.family
    tiny = _scramble(Qwen2VLForConditionalGeneration(compact_loaded.model.config).eval(), seed=1)
    tok = proc.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    torch.manual_seed(0)
    base = Qwen2VLForConditionalGeneration(compact_config("base", padded_vocab_size(tok), ids))
    base.generation_config.eos_token_id = ids["<|im_end|>"]
    base = _scramble(base.eval(), seed=2, bf16=True)
    return [("tiny", tiny, proc, fam, False), ("base", base, proc, fam, True)]


def _generate_reference(model, fam, proc, enc, n: int, **kw):
    """HF greedy generate: (new tokens [B, n'], log-probabilities [B, n'])."""
    import torch

    gen = dict(fam.generation_kwargs(proc), **kw)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=n, do_sample=False, output_scores=True,
                             return_dict_in_generate=True, **gen)
        logp = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    return out.sequences[:, enc["input_ids"].shape[1]:], logp


@pytest.mark.parametrize("which", [0, 1], ids=["tiny-fp32", "base-bf16"])
def test_fast_greedy_gives_generates_tokens(compact_models, which: int) -> None:
    """Batch 1 and a left-padded batch of differently sized images, 24 tokens with the end token forbidden."""
    import torch

    from texocr.models.compact_decode import GreedyDecoder

    _, model, proc, fam, half = compact_models[which]
    dec = GreedyDecoder.for_model(model)
    assert dec is not None
    kw = fam.generation_kwargs(proc)
    images = _images()
    for batch in ([images[1]], images):
        enc = fam.encode_for_generation(proc, batch)
        assert (enc["attention_mask"] == 0).any() or len(batch) == 1  # the batch really is padded
        ref, ref_lp = _generate_reference(model, fam, proc, enc, 24, min_new_tokens=24)
        out = dec.generate(enc, max_new_tokens=24, min_new_tokens=24, eos_ids=kw["eos_token_id"],
                           pad_id=kw["pad_token_id"])
        assert dec.half is half
        assert torch.equal(out.tokens, ref)
        assert len({tuple(r) for r in ref.tolist()}) == len(batch)  # rows differ: not a degenerate model
        assert torch.allclose(out.logprobs, ref_lp, atol=1e-4)


@pytest.mark.parametrize("which", [0, 1], ids=["tiny-fp32", "base-bf16"])
def test_fast_greedy_rows_stop_where_generate_stops_them(compact_models, which: int) -> None:
    """An end token that rows reach at different steps: finished rows leave the batch, padded like generate."""
    import torch

    from texocr.models.compact_decode import GreedyDecoder

    _, model, proc, fam, _ = compact_models[which]
    dec = GreedyDecoder.for_model(model)
    pad = fam.generation_kwargs(proc)["pad_token_id"]
    enc = fam.encode_for_generation(proc, _images())
    free, _ = _generate_reference(model, fam, proc, enc, 30, min_new_tokens=30)
    rows = free.tolist()

    def first_steps(token: int) -> set[int]:
        return {row.index(token) if token in row else len(row) for row in rows}

    # an end token that the rows' free runs reach at different steps (a random model may repeat one token
    # in every row, so a fixed position such as free[0, 4] can stop all rows at once)
    end = next((t for t in rows[0] if len(first_steps(t)) > 1), None)
    assert end is not None, "no token of row 0 separates the rows' stopping steps"
    ref, ref_lp = _generate_reference(model, fam, proc, enc, 30, eos_token_id=end, pad_token_id=pad)
    out = dec.generate(enc, max_new_tokens=30, eos_ids=[end], pad_id=pad)
    n = ref.shape[1]
    assert torch.equal(out.tokens[:, :n], ref) and bool((out.tokens[:, n:] == pad).all())
    lengths = {row.index(end) if end in row else n for row in ref.tolist()}
    assert len(lengths) > 1  # rows really stopped at different steps
    stopped = ref != pad
    assert torch.allclose(out.logprobs[:, :n][stopped], ref_lp[stopped], atol=1e-4)


def test_fast_greedy_follows_weight_updates(compact_models) -> None:
    """Weights changed in place (a training step between evaluations) are picked up on the next call."""
    import torch

    from texocr.models.compact_decode import GreedyDecoder

    _, model, proc, fam, _ = compact_models[0]
    dec = GreedyDecoder.for_model(model)
    kw = fam.generation_kwargs(proc)
    enc = fam.encode_for_generation(proc, [_image()])
    before = dec.generate(enc, max_new_tokens=8, eos_ids=kw["eos_token_id"], pad_id=kw["pad_token_id"]).tokens
    layer = model.model.language_model.layers[0]
    saved = layer.mlp.down_proj.weight.detach().clone()
    try:
        with torch.no_grad():
            layer.mlp.down_proj.weight.mul_(-3.0)
        ref, _ = _generate_reference(model, fam, proc, enc, 8)
        after = dec.generate(enc, max_new_tokens=8, eos_ids=kw["eos_token_id"], pad_id=kw["pad_token_id"]).tokens
        assert torch.equal(after[:, : ref.shape[1]], ref) and not torch.equal(after, before)
    finally:
        with torch.no_grad():
            layer.mlp.down_proj.weight.copy_(saved)


def test_fast_greedy_is_only_for_plain_qwen2_vl(compact_loaded, tiny_loaded) -> None:
    from peft import LoraConfig, get_peft_model

    from texocr.models.compact_decode import GreedyDecoder
    from texocr.models.registry import get_family

    assert get_family("compact").greedy_decoder(compact_loaded.model) is not None
    assert GreedyDecoder.for_model(tiny_loaded("qwen2_5_vl").model) is None
    assert get_family("qwen2_5_vl").greedy_decoder(tiny_loaded("qwen2_5_vl").model) is None
    import copy

    lora = get_peft_model(copy.deepcopy(compact_loaded.model), LoraConfig(r=2, target_modules=["q_proj"]))
    assert GreedyDecoder.for_model(lora) is None
    assert GreedyDecoder.for_model(lora.get_base_model()) is None  # LoRA layers wrap the Linear: not exact


def test_recognizer_fast_and_generate_paths_agree(compact_models, compact_loaded) -> None:
    """Same texts, token counts, stop reasons and scores through both paths, incl. loop cutting."""
    from texocr.infer import Recognizer

    _, model, proc, fam, _ = compact_models[0]
    images = _images()
    fast = Recognizer(model, proc, fam, max_new_tokens=40, batch_size=4)
    slow = Recognizer(model, proc, fam, max_new_tokens=40, batch_size=4, fast_decode=False)
    assert fast._greedy_decoder() is not None and slow._greedy_decoder() is None
    a, b = fast(images, return_details=True), slow(images, return_details=True)
    assert [(p.text, p.tokens, p.stop) for p in a] == [(p.text, p.tokens, p.stop) for p in b]
    assert [p.score for p in a] == pytest.approx([p.score for p in b], abs=1e-4)
    # the tiny model as saved (tied embeddings, small init) loops: both cut the loop the same way
    plain = Recognizer(compact_loaded.model, proc, fam, max_new_tokens=60)
    plain_slow = Recognizer(plain.model, proc, fam, max_new_tokens=60, fast_decode=False)
    c, d = plain(images[:2], return_details=True), plain_slow(images[:2], return_details=True)
    assert [(p.text, p.tokens, p.stop) for p in c] == [(p.text, p.tokens, p.stop) for p in d]
    assert "repetition" in {p.stop for p in c}
    assert "".join(plain.stream(images[0], max_new_tokens=60)) == "".join(plain_slow.stream(images[0],
                                                                                           max_new_tokens=60))


@pytest.mark.parametrize("size", ["base", "small", "xsmall", "tiny"])
def test_every_size_builds_a_model_that_runs(size: str, compact_loaded) -> None:
    """Each size's config is consistent (head dims, M-RoPE sections) and its model runs a training forward."""
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from texocr.models.compact import SIZES, compact_config
    from texocr.models.tiny import padded_vocab_size

    proc, fam = compact_loaded.processor, compact_loaded.family
    ids = {t: proc.tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    cfg = compact_config(size, padded_vocab_size(proc.tokenizer), ids)
    text = cfg.text_config
    assert sum(text.rope_parameters["mrope_section"]) == text.hidden_size // text.num_attention_heads // 2
    assert cfg.vision_config.embed_dim == SIZES[size]["vis_dim"]
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(cfg)
    enc = fam.encode(proc, _images()[:2], ["x ^ { 2 }", "\\frac { a } { b }"], 512).batch
    loss = model(**enc).loss
    assert torch.isfinite(loss)


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from texocr.models.compact import build_compact

    return build_compact(tmp_path_factory.mktemp("small"), size="small", dtype="bfloat16")


@pytest.mark.parametrize("size", ["small-v7", "small-t4"])
def test_grown_model_computes_what_the_trained_one_did_and_its_new_layers_learn(small_dir: Path, size: str,
                                                                               tmp_path: Path) -> None:
    import torch

    from texocr.config import ModelConfig
    from texocr.models.compact import SIZES, grow_compact
    from texocr.models.loading import load_model

    grown_dir = grow_compact(small_dir, size, tmp_path / "grown")
    old = load_model(ModelConfig(name_or_path=str(small_dir), family="compact", dtype="float32", method="full"))
    new = load_model(ModelConfig(name_or_path=str(grown_dir), family="compact", dtype="float32", method="full"),
                     training=True)
    assert len(new.model.model.visual.blocks) == SIZES[size]["vis_depth"]
    assert len(new.model.model.language_model.layers) == SIZES[size]["layers"]
    batch = old.family.encode_for_training(old.processor, [_image()], [r"\frac { a } { b }"], max_length=512)
    with torch.no_grad():
        want = old.model(**batch).logits
    got = new.model(**batch)
    assert torch.allclose(got.logits, want, atol=1e-5)
    got.loss.backward()  # the zeroed output projections of the new layers get gradients: they will train
    last = new.model.model.language_model.layers[-1] if size == "small-t4" else new.model.model.visual.blocks[-1]
    proj = last.self_attn.o_proj if size == "small-t4" else last.attn.proj
    assert torch.count_nonzero(proj.weight) == 0 and proj.weight.grad.abs().sum() > 0
    trained = old.model.model.language_model.layers[-1] if size == "small-t4" else old.model.model.visual.blocks[-1]
    first = last.self_attn.q_proj if size == "small-t4" else last.attn.qkv
    assert torch.equal(first.weight, (trained.self_attn.q_proj if size == "small-t4" else trained.attn.qkv).weight)


def test_grow_refuses_other_widths_and_shrinking(small_dir: Path, tmp_path: Path) -> None:
    from texocr.errors import TexocrError
    from texocr.models.compact import grow_compact

    with pytest.raises(TexocrError, match="cannot grow"):
        grow_compact(small_dir, "xsmall", tmp_path / "a")  # narrower
    v7 = grow_compact(small_dir, "small-v7", tmp_path / "v7")
    with pytest.raises(TexocrError, match="cannot grow"):
        grow_compact(v7, "small", tmp_path / "b")  # fewer layers
    with pytest.raises(TexocrError, match="unknown compact size"):
        grow_compact(small_dir, "huge", tmp_path / "c")


# ------------------------------------------------------------------ CPU fast paths (compact_vision.py, compact_prefill.py)


@pytest.mark.parametrize("which", [0, 1], ids=["tiny-fp32", "base-bf16"])
def test_fast_vision_equals_the_models_vision_tower(compact_models, which: int) -> None:
    """FastVision gives get_image_features' output: images of different sizes, of one size, one image, and
    patches whose two temporal frames differ (then the full, unsummed patch kernel is used)."""
    import torch

    from texocr.models.compact_vision import FastVision

    _, model, proc, fam, _ = compact_models[which]
    core = model.model
    assert FastVision.supports(core.visual)
    fast = FastVision(core.visual)
    images = _images()
    with torch.inference_mode():
        for batch in (images, [images[0], images[0], images[0]], [images[2]]):
            enc = fam.encode_for_generation(proc, batch)
            pixels, grid = enc["pixel_values"], enc["image_grid_thw"]
            ref = torch.cat(core.get_image_features(pixels, grid).pooler_output)
            out = fast(pixels, grid)
            assert out.shape == ref.shape
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
        noise = torch.randn_like(pixels)  # frames differ: not a still image
        ref = torch.cat(core.get_image_features(noise, grid).pooler_output)
        torch.testing.assert_close(fast(noise, grid), ref, rtol=1e-4, atol=1e-4)
        with torch.no_grad():  # a weight changed in place (training between evaluations) is picked up
            core.visual.patch_embed.proj.weight.mul_(2.0)
        try:
            ref = torch.cat(core.get_image_features(pixels, grid).pooler_output)
            torch.testing.assert_close(fast(pixels, grid), ref, rtol=1e-4, atol=1e-4)
        finally:
            with torch.no_grad():
                core.visual.patch_embed.proj.weight.div_(2.0)


def test_fast_vision_padded_to_a_power_of_two_gives_the_same_features(compact_models) -> None:
    """`FastVision.padded` (the shapes the vision tower's CUDA graphs are captured for) on the CPU without graphs:
    the patches padded with zeros as one more attention segment change no image's features; a video (frames
    that differ) is refused with None (the caller's path runs)."""
    import torch

    from texocr.models.compact_vision import FastVision

    _, model, proc, fam, _ = compact_models[0]
    fast = FastVision(model.model.visual)
    images = _images()
    with torch.inference_mode():
        for batch in ([images[2]], images[:3], images):
            enc = fam.encode_for_generation(proc, batch)
            pixels, grid = enc["pixel_values"], enc["image_grid_thw"]
            ref = fast(pixels, grid)
            out = fast.padded(pixels, grid)
            assert out is not None and out.shape == ref.shape
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        assert fast.padded(torch.randn_like(pixels), grid) is None


@pytest.mark.gpu
def test_fast_vision_on_a_gpu_matches_the_models_tower_in_bf16(compact_models) -> None:
    """On CUDA in bf16 FastVision's attention is one varlen Flash Attention call for all images
    (`GreedyDecoder(gpu_fast_vision=True)`): the model's own tower's output within bf16 rounding. Run on the GPU
    machine with `pytest -m gpu tests/test_compact.py`."""
    import copy

    import torch

    from texocr.models import packing
    from texocr.models.compact_vision import FastVision

    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    _, model, proc, fam, _ = compact_models[1]
    core = copy.deepcopy(model).to("cuda", torch.bfloat16).model  # the shared fixture stays on the CPU
    fast = FastVision(core.visual)
    enc = fam.encode_for_generation(proc, _images())
    pixels, grid = enc["pixel_values"].to("cuda", torch.bfloat16), enc["image_grid_thw"].to("cuda")
    with torch.inference_mode():
        ref = torch.cat(core.get_image_features(pixels, grid).pooler_output).float()
        out = fast(pixels, grid).float()
    assert not packing._FLASH_FAILED  # the varlen kernel ran
    assert (out - ref).norm() / ref.norm() < 2e-2
    with torch.inference_mode():  # the padded shapes as CUDA-graph replays (GreedyDecoder vision_graphs)
        for batch in ([_images()[2]], _images()[:2], [_images()[1]]):
            enc = fam.encode_for_generation(proc, batch)
            pixels, grid = enc["pixel_values"].to("cuda", torch.bfloat16), enc["image_grid_thw"].to("cuda")
            want = fast(pixels, grid).float()
            got = fast.padded(pixels, grid, graphs=True)
            assert got is not None and fast._graphs  # captured
            assert (got.float() - want).norm() / want.norm() < 1e-2


def test_prefill_groups_are_the_cheapest_split() -> None:
    """The dynamic program's groups cost no more than any split of the sorted rows into contiguous runs."""
    import itertools
    import random

    from texocr.models.compact_prefill import groups

    assert groups([10, 100, 12, 98], group_cost=8) == [[0, 2], [3, 1]]
    assert groups([10, 100, 12, 98], group_cost=1000) == [[0, 2, 3, 1]]
    assert groups([50, 50, 50], group_cost=0) in ([[0, 1, 2]], [[0], [1], [2]], [[0, 1], [2]], [[0], [1, 2]])

    def cost(parts: list[list[int]], lengths: list[int], c: int) -> int:
        return sum(len(p) * max(lengths[i] for i in p) + c for p in parts)

    rng = random.Random(0)
    for _ in range(30):
        lengths = [rng.randint(5, 150) for _ in range(rng.randint(1, 8))]
        got = groups(lengths, group_cost=20)
        assert sorted(i for p in got for i in p) == list(range(len(lengths)))
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        best = min(cost([order[a:b] for a, b in zip((0, *cuts), (*cuts, len(order)))], lengths, 20)
                   for k in range(len(order)) for cuts in itertools.combinations(range(1, len(order)), k))
        assert cost(got, lengths, 20) == best


@pytest.mark.parametrize("which", [0, 1], ids=["tiny-fp32", "base-bf16"])
def test_grouped_prefill_equals_one_padded_prefill(compact_models, which: int) -> None:
    """Same tokens and log-probabilities with and without the grouped prefill, on a padded batch whose rows
    fall into several groups."""
    import torch

    from texocr.models.compact_decode import GreedyDecoder
    from texocr.models.compact_prefill import groups

    _, model, proc, fam, _ = compact_models[which]
    kw = fam.generation_kwargs(proc)
    images = [_image(56, 28), _image(800, 84), _image(60, 60), _image(760, 84), _image(56, 28)]
    enc = fam.encode_for_generation(proc, images)
    lengths = enc["attention_mask"].sum(1).tolist()
    assert len(groups(lengths)) > 1  # the grouping really splits this batch
    outs = []
    for grouped in (False, True):
        dec = GreedyDecoder(model, group_prefill=grouped)
        outs.append(dec.generate(enc, max_new_tokens=16, min_new_tokens=16, eos_ids=kw["eos_token_id"],
                                 pad_id=kw["pad_token_id"]))
    assert torch.equal(outs[0].tokens, outs[1].tokens)
    torch.testing.assert_close(outs[0].logprobs, outs[1].logprobs, rtol=1e-4, atol=1e-4)

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

    return build_latex_tokenizer(QWEN_SPECIALS, eos="<|im_end|>", pad="<|endoftext|>", n_formulas=200)


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
def test_pretrain_script_smoke_run_and_checkpoints(tmp_path: Path) -> None:
    """scripts/pretrain_compact.py: two optimizer steps of the tiny model on rendered synthetic data (~1 min)."""
    import importlib.util

    script = Path(__file__).resolve().parents[1] / "scripts" / "pretrain_compact.py"
    spec = importlib.util.spec_from_file_location("pretrain_compact", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "run"
    rc = mod.main(["--config", str(script.parents[1] / "configs" / "compact" / "pretrain.yaml"), "--size", "tiny",
                   "--train.output_dir", str(out), "--train.max_steps", "2", "--train.batch_size", "2",
                   "--train.save_steps", "1", "--train.eval_steps", "0", "--train.dataloader_workers", "0",
                   "--data.val_limit", "2"])
    assert rc == 0
    assert (out / "init" / "config.json").is_file() and (out / "model" / "config.json").is_file()
    assert (out / "checkpoints" / "checkpoint-2").is_dir()

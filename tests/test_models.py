"""Model families: label masks, image budgets, over-long samples, save/load, LoRA targets, decoding.

Every test runs on each tiny family (built once per session by the `tiny_model_dir` fixture).
"""

from __future__ import annotations

import pytest
import torch

from texocr.config import ModelConfig
from texocr.errors import TexocrError
from texocr.models.base import IGNORE_INDEX
from texocr.models.loading import load_model, trainable_parameters

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "paligemma", "paligemma2", "idefics3", "smolvlm", "mllama"]
TARGETS = [r"\frac{a}{b}", r"x^{2}+\alpha_{1} = \sqrt{y}"]


@pytest.fixture(params=FAMILIES)
def family_name(request: pytest.FixtureRequest) -> str:
    return request.param


def _encode(loaded, images, targets, max_length=4096):
    return loaded.family.encode(loaded.processor, images, targets, max_length)


def test_label_mask_is_exactly_answer_and_end_token(family_name, tiny_loaded, formula_image):
    loaded = tiny_loaded(family_name)
    fam, proc = loaded.family, loaded.processor
    tok = proc.tokenizer
    enc = _encode(loaded, [formula_image(), formula_image(200, 40)], TARGETS)
    batch = enc.batch
    assert enc.dropped == [] and batch["labels"].shape == batch["input_ids"].shape
    image_id = fam.image_token_id(proc)
    end_id = fam.end_token_id(proc)
    for row, target in enumerate(TARGETS):
        ids, labels, mask = batch["input_ids"][row], batch["labels"][row], batch["attention_mask"][row]
        pos = (labels != IGNORE_INDEX).nonzero().flatten().tolist()
        # one contiguous block, ending right where the real tokens end (no padding inside the loss)
        assert pos == list(range(pos[0], pos[-1] + 1))
        assert pos[-1] == int(mask.sum()) - 1
        expected = tok(fam.answer_prefix + target, add_special_tokens=False)["input_ids"] + [end_id]
        assert labels[pos].tolist() == expected == ids[pos].tolist()
        text = tok.decode(ids[pos][:-1], skip_special_tokens=False)
        assert text == fam.answer_prefix + target
        # the prompt (with its image tokens) is entirely outside the loss
        assert (labels[: pos[0]] == IGNORE_INDEX).all()
        assert image_id in ids[: pos[0]].tolist() and image_id not in labels.tolist()


def test_forward_backward_and_image_tokens_match_vision_tower(family_name, tiny_loaded, formula_image):
    loaded = tiny_loaded(family_name)
    enc = _encode(loaded, [formula_image(), formula_image(4000, 600, "huge")], TARGETS)
    batch = enc.batch
    fam, proc = loaded.family, loaded.processor
    n_image = (batch["input_ids"] == fam.image_token_id(proc)).sum(dim=1)
    assert (n_image >= 1).all() and (n_image <= fam.max_image_tokens(proc)).all()
    if "image_grid_thw" in batch:  # Qwen: tokens = patches / merge^2, per image
        merge = proc.image_processor.merge_size
        assert n_image.tolist() == (batch["image_grid_thw"].prod(-1) // merge**2).tolist()
    with torch.no_grad():  # transformers raises if image features and image tokens do not match
        out = loaded.model(**batch)
    assert torch.isfinite(out.loss)


def test_overlong_sample_is_dropped_not_truncated(family_name, tiny_loaded, formula_image):
    from texocr.data.collate import Collator
    from texocr.sample import Sample

    loaded = tiny_loaded(family_name)
    short, long = "x", "y+" * 200
    full = _encode(loaded, [formula_image()], [short]).batch
    limit = int(full["attention_mask"].sum()) + 5
    enc = _encode(loaded, [formula_image(), formula_image()], [long, short], max_length=limit)
    assert enc.kept == [1] and enc.dropped[0][0] == 0 and enc.dropped[0][1] > limit
    assert enc.batch["input_ids"].shape[0] == 1
    assert torch.equal(enc.batch["input_ids"], full["input_ids"])
    collator = Collator(loaded, max_length=limit)
    samples = [Sample(formula_image(), long, "a"), Sample(formula_image(), short, "b")]
    assert collator(samples)["input_ids"].shape[0] == 1
    assert [(s.id, s.reason) for s in collator.dropped] == [("a", "too_long")]
    with pytest.raises(TexocrError, match="max_length"):
        collator(samples[:1])


def test_generation_and_decode(family_name, tiny_loaded, formula_image):
    loaded = tiny_loaded(family_name)
    fam, proc = loaded.family, loaded.processor
    gen = fam.encode_for_generation(proc, [formula_image(), formula_image(300, 60)])
    assert (gen["attention_mask"][:, -1] == 1).all()  # left padding: prompts end at the right edge
    with torch.no_grad():
        out = loaded.model.generate(**gen, max_new_tokens=4, do_sample=False, **fam.generation_kwargs(proc))
    assert len(fam.decode(proc, out[:, gen["input_ids"].shape[1] :])) == 2
    # decode cuts at the end token and drops special tokens
    tok = proc.tokenizer
    ids = tok(fam.answer_prefix + TARGETS[1], add_special_tokens=False)["input_ids"]
    row = ids + [fam.end_token_id(proc)] + tok("junk", add_special_tokens=False)["input_ids"]
    assert fam.decode(proc, [row]) == [TARGETS[1]]


@pytest.mark.parametrize("scope", ["language", "vision_language"])
def test_lora_targets_exist_and_only_lora_trains(family_name, tiny_model_dir, scope):
    fam_dir = str(tiny_model_dir(family_name))
    loaded = load_model(ModelConfig(name_or_path=fam_dir, lora_scope=scope, lora_r=4), training=True)
    names = [n for n, _ in loaded.model.named_modules() if n.endswith("lora_A")]
    vision = loaded.family.vision_module.split(".")[-1]
    assert any(loaded.family.language_module.split(".")[-1] in n for n in names)
    assert any(vision in n for n in names) == (scope == "vision_language")
    trainable = [n for n, p in loaded.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert 0 < trainable_parameters(loaded.model)["percent"] < 100


def test_save_load_identical_logits_full_and_lora(family_name, tiny_model_dir, tmp_path, formula_image):
    fam_dir = str(tiny_model_dir(family_name))
    full = load_model(ModelConfig(name_or_path=fam_dir, method="full"), training=True)
    batch = _encode(full, [formula_image()], ["x"]).batch
    with torch.no_grad():
        for p in full.model.parameters():  # move off the saved weights so a stale load would show
            p.add_(0.01 * torch.randn_like(p))
    full.model.eval()
    full.model.save_pretrained(tmp_path / "full")
    full.processor.save_pretrained(tmp_path / "full")
    again = load_model(ModelConfig(name_or_path=str(tmp_path / "full")))
    with torch.no_grad():
        assert torch.allclose(full.model(**batch).logits, again.model(**batch).logits, atol=1e-5)

    lora = load_model(ModelConfig(name_or_path=fam_dir, lora_r=4), training=True)
    with torch.no_grad():
        for n, p in lora.model.named_parameters():
            if "lora_B" in n:
                p.add_(0.05 * torch.randn_like(p))
    lora.model.eval()
    lora.model.save_pretrained(tmp_path / "adapter")
    reloaded = load_model(ModelConfig(name_or_path=fam_dir, adapter=str(tmp_path / "adapter")))
    base = load_model(ModelConfig(name_or_path=fam_dir))
    with torch.no_grad():
        want = lora.model(**batch).logits
        assert torch.allclose(want, reloaded.model(**batch).logits, atol=1e-5)
        assert not torch.allclose(want, base.model(**batch).logits, atol=1e-4)


def test_gradient_checkpointing_lora_step_changes_every_trainable_param(tiny_model_dir, formula_image):
    cfg = ModelConfig(name_or_path=str(tiny_model_dir("qwen2_vl")), gradient_checkpointing=True, lora_r=4)
    loaded = load_model(cfg, training=True)
    with torch.no_grad():
        for n, p in loaded.model.named_parameters():
            if "lora_B" in n:  # B starts at zero, which would leave A's gradient at zero
                p.add_(0.05 * torch.randn_like(p))
    batch = _encode(loaded, [formula_image(), formula_image()], TARGETS).batch
    loaded.model(**batch).loss.backward()
    grads = {n: p.grad for n, p in loaded.model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_full_training_freezes_vision_tower(tiny_model_dir):
    cfg = ModelConfig(name_or_path=str(tiny_model_dir("qwen2_vl")), method="full", freeze_vision=True)
    model = load_model(cfg, training=True).model
    for n, p in model.named_parameters():
        assert p.requires_grad == (".visual." not in f".{n}")


def test_qlora_without_cuda_is_a_clear_error(tiny_model_dir):
    cfg = ModelConfig(name_or_path=str(tiny_model_dir("qwen2_vl")), method="qlora")
    with pytest.raises(TexocrError, match="QLoRA needs a CUDA GPU"):
        load_model(cfg, training=True, device="cpu")


def test_qwen_image_budget_follows_config(tiny_model_dir, formula_image):
    cfg = ModelConfig(name_or_path=str(tiny_model_dir("qwen2_vl")), max_pixels=64 * 28 * 28)
    loaded = load_model(cfg)
    enc = _encode(loaded, [formula_image(4000, 600)], ["x"])
    n = int((enc.batch["input_ids"] == loaded.family.image_token_id(loaded.processor)).sum())
    assert loaded.family.max_image_tokens(loaded.processor) == 64 and 32 < n <= 64
    # an extreme aspect ratio (over the processor's 200:1 limit) is padded, not refused
    assert _encode(loaded, [formula_image(3000, 10)], ["x"]).batch is not None


def test_bf16_weights_read_in_bf16_on_a_cpu_that_computes_it(tiny_model_dir, tmp_path, monkeypatch):
    """dtype `auto` on a CPU: float32, except weights stored in bfloat16, read (not trained, no adapter to fold
    in) on a CPU with native bfloat16 (`cpu_computes_bf16`): those stay bfloat16 (the shipped model's fast path)."""
    import shutil

    from texocr.models import loading

    folder = tmp_path / "bf16"
    model = load_model(ModelConfig(name_or_path=str(tiny_model_dir("qwen2_vl")), dtype="bfloat16"), device="cpu")
    model.model.save_pretrained(folder)
    for f in tiny_model_dir("qwen2_vl").iterdir():
        if not (folder / f.name).exists() and f.is_file():
            shutil.copy(f, folder / f.name)
    assert loading.stored_dtype(str(folder)) == "bfloat16"
    assert loading.stored_dtype(str(tiny_model_dir("qwen2_vl"))) == "float32"

    def dtype_of(path, **kw):
        return next(load_model(ModelConfig(name_or_path=str(path)), device="cpu", **kw).model.parameters()).dtype

    monkeypatch.setattr(loading, "cpu_computes_bf16", lambda: True)
    assert dtype_of(folder) == torch.bfloat16
    assert dtype_of(folder, training=True) == torch.float32  # master weights for training stay float32
    assert dtype_of(tiny_model_dir("qwen2_vl")) == torch.float32  # stored in float32: read so
    monkeypatch.setattr(loading, "cpu_computes_bf16", lambda: False)  # emulated bf16 is slower: float32
    assert dtype_of(folder) == torch.float32
    assert loading.resolve_dtype("bfloat16", "cpu") == torch.bfloat16  # asked for by name: given

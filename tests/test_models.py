"""Every model family, on its tiny random model: label mask, image tokens and budget, dropping over-long
samples, save/load round trips (full and LoRA), LoRA targets, QLoRA errors, decoding, detection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from texocr.config import ModelConfig  # noqa: E402
from texocr.errors import TexocrError  # noqa: E402
from texocr.models.base import IGNORE_INDEX  # noqa: E402
from texocr.models.loading import load_model, trainable_parameters  # noqa: E402
from texocr.models.registry import detect_family, get_family, known_families  # noqa: E402
from texocr.sample import Sample  # noqa: E402

# Tiny builds (see tests/conftest.py): one per family, plus variants served by the same family.
TINY = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
TARGETS = [r"\frac{a}{b}+x^{2}", r"\sqrt{y}"]


def _encode(loaded, images, targets, max_length=4096):
    return loaded.family.encode(loaded.processor, images, targets, max_length)


def _image_token_count(loaded, ids: torch.Tensor) -> int:
    return int((ids == loaded.family.image_token_id(loaded.processor)).sum())


@pytest.mark.parametrize("name", TINY)
def test_labels_cover_exactly_answer_and_end_token(name, tiny_loaded, formula_image):
    loaded = tiny_loaded(name)
    tok, fam = loaded.processor.tokenizer, loaded.family
    # Different widths: prompts of different lengths (dynamic-resolution families) and right padding.
    images = [formula_image(200, 40, "a/b"), formula_image(90, 30, "y")]
    enc = _encode(loaded, images, TARGETS)
    assert enc.kept == [0, 1] and enc.dropped == []
    batch = enc.batch
    end_id = fam.end_token_id(loaded.processor)
    for b, target in enumerate(TARGETS):
        ids, labels, mask = batch["input_ids"][b], batch["labels"][b], batch["attention_mask"][b]
        on = (labels != IGNORE_INDEX).nonzero().flatten().tolist()
        expected = tok(target, add_special_tokens=False)["input_ids"] + [end_id]
        assert labels[on].tolist() == expected  # token by token
        assert ids[on].tolist() == expected
        assert on == list(range(on[0], on[0] + len(expected)))  # one contiguous span ...
        assert on[-1] == int(mask.sum()) - 1  # ... that ends the real (unpadded) sequence
        assert tok.decode(labels[on][:-1].tolist()) == target
        prompt = ids[: on[0]]
        assert _image_token_count(loaded, prompt) > 0  # image tokens only ever in the masked prompt
        assert _image_token_count(loaded, ids[on]) == 0
        assert (labels[int(mask.sum()) :] == IGNORE_INDEX).all()  # padding not in the loss


@pytest.mark.parametrize("name", TINY)
def test_forward_backward_and_image_budget(name, tiny_model_dir, formula_image):
    loaded = load_model(ModelConfig(name_or_path=str(tiny_model_dir(name))), training=True)
    fam = loaded.family
    huge = formula_image(4000, 600, "x" * 40)
    batch = fam.encode_for_training(loaded.processor, [formula_image(120, 36), huge], TARGETS, 8192)
    n_image = [_image_token_count(loaded, row) for row in batch["input_ids"]]
    assert 0 < n_image[1] <= fam.max_image_tokens(loaded.processor)
    out = loaded.model(**batch)  # the model itself checks image features == image tokens
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in loaded.model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)


def test_qwen_budget_follows_config(tiny_model_dir, formula_image):
    path = str(tiny_model_dir("qwen2_vl"))
    small = load_model(ModelConfig(name_or_path=path, max_pixels=64 * 28 * 28))
    fam = small.family
    assert fam.max_image_tokens(small.processor) == 64
    batch = fam.encode_for_generation(small.processor, [formula_image(4000, 600)])
    assert 0 < _image_token_count(small, batch["input_ids"][0]) <= 64
    with pytest.raises(TexocrError, match="min_pixels"):
        load_model(ModelConfig(name_or_path=path, min_pixels=10**7, max_pixels=10**5))


@pytest.mark.parametrize("name", TINY)
def test_over_long_sample_dropped_not_truncated(name, tiny_loaded, formula_image):
    from texocr.data.collate import Collator

    loaded = tiny_loaded(name)
    images = [formula_image(100, 32), formula_image(100, 32)]
    targets = ["x", "y" * 60]
    full = _encode(loaded, images, targets)
    lengths = full.batch["attention_mask"].sum(1).tolist()
    limit = int(lengths[1]) - 1  # the second sample is one token too long
    collator = Collator(loaded, max_length=limit)
    samples = [Sample(im, t, f"s{i}") for i, (im, t) in enumerate(zip(images, targets))]
    batch = collator(samples)
    assert batch["input_ids"].shape[0] == 1
    assert int(batch["attention_mask"].sum()) == lengths[0]  # the kept sample is whole
    assert [(s.id, s.reason) for s in collator.dropped] == [("s1", "too_long")]
    assert collator.stats() == {"seen": 2, "dropped_too_long": 1}
    with pytest.raises(TexocrError, match="max_length"):
        Collator(loaded, max_length=5)(samples)


def test_collator_normalizes_targets_when_asked(tiny_loaded, formula_image):
    from texocr.data.collate import Collator
    from texocr.latex import normalize

    loaded = tiny_loaded("qwen2_vl")
    raw = r"\frac  {a}{ b}"
    sample = Sample(formula_image(), raw, "n")
    tok = loaded.processor.tokenizer
    for flag, want in ((False, raw), (True, normalize(raw))):
        batch = Collator(loaded, 4096, normalize=flag)([sample])
        labels = batch["labels"][0]
        answer = labels[labels != IGNORE_INDEX][:-1].tolist()
        assert tok.decode(answer) == want


@pytest.mark.parametrize("name", TINY)
def test_decode_strips_prompt_and_chat_tokens(name, tiny_loaded):
    loaded = tiny_loaded(name)
    fam, proc = loaded.family, loaded.processor
    tok = proc.tokenizer
    end = fam.end_token_id(proc)
    pad = fam.generation_kwargs(proc)["pad_token_id"]
    row = tok(r"x^{2}", add_special_tokens=False)["input_ids"] + [end, pad, pad]
    tail = tok("junk", add_special_tokens=False)["input_ids"]
    assert fam.decode(proc, [row, row[:-2] + tail]) == ["x^{2}", "x^{2}"]
    assert fam.decode(proc, torch.tensor([row])) == ["x^{2}"]


@pytest.mark.parametrize("name", TINY)
def test_generate_stops_and_decodes(name, tiny_loaded, formula_image):
    loaded = tiny_loaded(name)
    fam, proc = loaded.family, loaded.processor
    batch = fam.encode_for_generation(proc, [formula_image(150, 40), formula_image(60, 30)])
    assert (batch["attention_mask"][:, -1] == 1).all()  # left padding: prompts end together
    with torch.no_grad():
        out = loaded.model.generate(**batch, max_new_tokens=4, do_sample=False, **fam.generation_kwargs(proc))
    texts = fam.decode(proc, out[:, batch["input_ids"].shape[1] :])
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def _logits(loaded, batch):
    loaded.model.eval()
    with torch.no_grad():
        return loaded.model(**batch).logits


@pytest.mark.parametrize("name", TINY)
def test_save_load_identical_logits_full_and_lora(name, tiny_model_dir, tmp_path, formula_image):
    path = str(tiny_model_dir(name))
    cfg = ModelConfig(name_or_path=path, method="full")
    loaded = load_model(cfg, training=True)
    batch = loaded.family.encode_for_training(loaded.processor, [formula_image()], ["x"], 4096)
    with torch.no_grad():  # make the weights differ from the saved ones
        for p in loaded.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    loaded.model.save_pretrained(tmp_path / "full")
    loaded.processor.save_pretrained(tmp_path / "full")
    before = _logits(loaded, batch)
    again = load_model(ModelConfig(name_or_path=str(tmp_path / "full")))
    assert again.family is loaded.family
    torch.testing.assert_close(_logits(again, batch), before)

    lora = load_model(ModelConfig(name_or_path=path, method="lora", lora_r=4), training=True)
    with torch.no_grad():  # lora_B starts at zero: give the adapter an effect
        for n, p in lora.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    lora.model.save_pretrained(tmp_path / "adapter")
    before = _logits(lora, batch)
    base = _logits(load_model(ModelConfig(name_or_path=path)), batch)
    assert not torch.allclose(before, base)
    for cfg in (ModelConfig(name_or_path=path, adapter=str(tmp_path / "adapter")),
                ModelConfig(name_or_path=str(tmp_path / "adapter"))):  # adapter dir alone finds its base
        torch.testing.assert_close(_logits(load_model(cfg), batch), before)


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("scope", ["language", "vision_language"])
def test_lora_targets_exist_and_only_lora_trains(name, scope, tiny_model_dir):
    fam = get_family(json.loads((tiny_model_dir(name) / "config.json").read_text())["model_type"])
    loaded = load_model(
        ModelConfig(name_or_path=str(tiny_model_dir(name)), lora_scope=scope, lora_r=2), training=True
    )
    names = [n for n, _ in loaded.model.named_modules() if n.endswith(".lora_A")]
    vision = fam.vision_module.split(".")[-1]
    language = fam.language_module.split(".")[-1]
    assert any(f".{language}." in n for n in names)
    in_vision = [n for n in names if f".{vision}." in n]
    assert bool(in_vision) == (scope == "vision_language")
    trainable = [n for n, p in loaded.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    stats = trainable_parameters(loaded.model)
    assert 0 < stats["trainable"] < stats["total"]


@pytest.mark.parametrize("freeze", ["vision", "language"])
def test_full_training_freezes_a_tower(freeze, tiny_model_dir):
    cfg = ModelConfig(name_or_path=str(tiny_model_dir("qwen2_vl")), method="full",
                      freeze_vision=freeze == "vision", freeze_language=freeze == "language")
    model = load_model(cfg, training=True).model
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    prefix = "model.visual." if freeze == "vision" else "model.language_model."
    assert frozen and all(n.startswith(prefix) for n in frozen)
    assert all(n in frozen for n, _ in model.named_parameters() if n.startswith(prefix))


def test_gradient_checkpointing_with_lora_trains(tiny_model_dir, formula_image):
    cfg = ModelConfig(name_or_path=str(tiny_model_dir("qwen2_vl")), gradient_checkpointing=True, lora_r=2)
    loaded = load_model(cfg, training=True)
    assert loaded.model.base_model.model.is_gradient_checkpointing
    batch = loaded.family.encode_for_training(loaded.processor, [formula_image()], ["x"], 4096)
    with torch.no_grad():
        for n, p in loaded.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    loaded.model(**batch).loss.backward()
    grads = [p.grad for n, p in loaded.model.named_parameters() if p.requires_grad]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_qlora_without_cuda_is_a_clear_error(tiny_model_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = ModelConfig(name_or_path=str(tiny_model_dir("qwen2_vl")), method="qlora")
    with pytest.raises(TexocrError, match="QLoRA needs a CUDA GPU"):
        load_model(cfg, training=True)


@pytest.mark.parametrize(
    ("hub_id", "family"),
    [
        ("Qwen/Qwen2-VL-7B-Instruct", "qwen2_vl"),
        ("Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_5_vl"),
        ("Qwen/Qwen3-VL-2B-Instruct", "qwen3_vl"),
        ("google/paligemma-3b-pt-224", "paligemma"),
        ("google/paligemma2-3b-pt-448", "paligemma"),
        ("HuggingFaceM4/Idefics3-8B-Llama3", "idefics3"),
        ("HuggingFaceTB/SmolVLM-256M-Instruct", "idefics3"),
        ("HuggingFaceTB/SmolVLM2-2.2B-Instruct", "smolvlm"),
        ("meta-llama/Llama-3.2-11B-Vision-Instruct", "mllama"),
    ],
)
def test_detect_family_from_hub_id(hub_id, family):
    if family not in known_families():
        pytest.skip(f"family {family} not registered")
    assert detect_family(hub_id).name == family


@pytest.mark.parametrize("name", TINY)
def test_detect_family_from_local_dir(name, tiny_model_dir):
    model_type = json.loads((tiny_model_dir(name) / "config.json").read_text())["model_type"]
    fam = detect_family(str(tiny_model_dir(name)))
    assert model_type in fam.model_types


def test_detect_family_errors_name_the_known_families(tmp_path):
    with pytest.raises(TexocrError, match="qwen2_vl"):
        detect_family("someone/unknown-model")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(TexocrError, match="'bert' is not supported"):
        detect_family(str(tmp_path))
    assert detect_family(str(tmp_path), family="qwen2_vl").name == "qwen2_vl"
    with pytest.raises(TexocrError, match="known families"):
        get_family("nope")


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(TexocrError, match="cannot load model"):
        load_model(ModelConfig(name_or_path="Qwen/Qwen2-VL-2B-Instruct"))
    with pytest.raises(TexocrError):
        load_model(ModelConfig(name_or_path=str(Path(tmp_path) / "nothing")))

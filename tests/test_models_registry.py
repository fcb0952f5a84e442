"""Family detection (hub ids, local config.json, forced family), loading errors, adapter-directory loading,
freezing the language model, and the collator's target normalization. The per-family encoding tests are
in tests/test_models.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from texocr.config import ModelConfig
from texocr.errors import TexocrError
from texocr.models.registry import detect_family, get_family, known_families

HUB_IDS = [
    ("Qwen/Qwen2-VL-7B-Instruct", "qwen2_vl"),
    ("Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_5_vl"),
    ("Qwen/Qwen3-VL-2B-Instruct", "qwen3_vl"),
    ("google/paligemma-3b-pt-224", "paligemma"),
    ("google/paligemma2-3b-pt-448", "paligemma"),
    ("HuggingFaceM4/Idefics3-8B-Llama3", "idefics3"),
    ("HuggingFaceTB/SmolVLM-256M-Instruct", "idefics3"),  # SmolVLM (1) checkpoints are model_type idefics3
    ("HuggingFaceTB/SmolVLM2-2.2B-Instruct", "smolvlm"),
    ("meta-llama/Llama-3.2-11B-Vision-Instruct", "mllama"),
]
MODEL_TYPES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "paligemma", "idefics3", "smolvlm", "mllama"]


@pytest.mark.parametrize(("hub_id", "family"), HUB_IDS)
def test_detect_family_from_hub_id(hub_id: str, family: str) -> None:
    assert detect_family(hub_id).name == family


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_detect_family_from_local_config(model_type: str, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    fam = detect_family(str(tmp_path))
    assert model_type in fam.model_types
    assert get_family(model_type) is fam  # a model_type also works as a family name


def test_local_config_wins_over_a_misleading_directory_name(tmp_path: Path) -> None:
    d = tmp_path / "my-qwen2-vl-finetune"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "paligemma"}))
    assert detect_family(str(d)).name == "paligemma"


def test_detection_errors_name_the_known_families(tmp_path: Path) -> None:
    with pytest.raises(TexocrError, match="known families: .*qwen2_vl"):
        detect_family("someone/unknown-model")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(TexocrError, match="'bert' is not supported"):
        detect_family(str(tmp_path))
    assert detect_family(str(tmp_path), family="qwen2_vl").name == "qwen2_vl"  # model.family forces it
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(TexocrError, match="config.json"):
        detect_family(str(tmp_path))
    with pytest.raises(TexocrError, match="known families"):
        get_family("nope")
    assert {"qwen2_vl", "paligemma", "idefics3", "mllama"} <= set(known_families())


def test_model_that_cannot_be_found_is_a_clear_error(tmp_path: Path, tiny_model_dir) -> None:
    from texocr.models.loading import load_model

    # offline (tests set HF_HUB_OFFLINE): a hub id that is not in the cache
    with pytest.raises(TexocrError, match="cannot load model 'Qwen/Qwen2-VL-2B-Instruct'"):
        load_model(ModelConfig(name_or_path="Qwen/Qwen2-VL-2B-Instruct"))
    with pytest.raises(TexocrError):
        load_model(ModelConfig(name_or_path=str(tmp_path / "nothing")))
    with pytest.raises(TexocrError, match="no adapter_config.json"):
        load_model(ModelConfig(name_or_path=str(tiny_model_dir("qwen2_vl")), adapter=str(tmp_path)))


def test_adapter_directory_alone_loads_its_base_and_trains_when_asked(tiny_model_dir, tmp_path, formula_image):
    import torch

    from texocr.models.loading import load_model

    base_dir = str(tiny_model_dir("qwen2_vl"))
    lora = load_model(ModelConfig(name_or_path=base_dir, lora_r=2), training=True)
    with torch.no_grad():
        for n, p in lora.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    lora.model.save_pretrained(tmp_path / "adapter")
    batch = lora.family.encode_for_generation(lora.processor, [formula_image()])
    lora.model.eval()
    with torch.no_grad():
        want = lora.model(**batch).logits
        # `--model ADAPTER_DIR`: the adapter's recorded base model + that adapter
        alone = load_model(ModelConfig(name_or_path=str(tmp_path / "adapter")))
        # merged into the weights for inference: equal up to float rounding (W + BA summed once, not per call)
        torch.testing.assert_close(alone.model(**batch).logits, want, rtol=1e-4, atol=1e-4)
    resumed = load_model(ModelConfig(name_or_path=base_dir, adapter=str(tmp_path / "adapter")), training=True)
    trainable = [n for n, p in resumed.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_full_training_can_freeze_the_language_model(tiny_model_dir) -> None:
    from texocr.models.loading import load_model

    cfg = ModelConfig(name_or_path=str(tiny_model_dir("qwen2_vl")), method="full", freeze_language=True)
    model = load_model(cfg, training=True).model
    for n, p in model.named_parameters():
        assert p.requires_grad == (not n.startswith("model.language_model.")), n


def test_collator_normalizes_targets_only_when_asked(tiny_loaded, formula_image) -> None:
    from texocr.data.collate import Collator
    from texocr.latex import normalize
    from texocr.models.base import IGNORE_INDEX
    from texocr.sample import Sample

    loaded = tiny_loaded("qwen2_vl")
    raw = r"\frac  {a}{ b}"
    assert normalize(raw) != raw
    tok = loaded.processor.tokenizer
    for flag, want in ((False, raw), (True, normalize(raw))):
        batch = Collator(loaded, 4096, normalize=flag)([Sample(formula_image(), raw, "n")])
        labels = batch["labels"][0]
        assert tok.decode(labels[labels != IGNORE_INDEX][:-1].tolist()) == want
    with pytest.raises(TexocrError, match="empty batch"):
        Collator(loaded, 4096)([])


def test_inconsistent_image_budget_is_a_clear_error(tiny_model_dir) -> None:
    from texocr.models.loading import load_model

    cfg = ModelConfig(name_or_path=str(tiny_model_dir("qwen2_vl")), min_pixels=10**7, max_pixels=10**5)
    with pytest.raises(TexocrError, match="min_pixels"):
        load_model(cfg)

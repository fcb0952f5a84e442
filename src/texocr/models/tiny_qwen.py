"""Tiny random Qwen2-VL / Qwen2.5-VL / Qwen3-VL models (real config classes, 2 layers, hidden 64)."""

from __future__ import annotations

from typing import Any

from texocr.models.qwen_vl import QWEN_SPECIALS
from texocr.models.tiny_parts import char_tokenizer, padded_vocab_size, save_tiny


def build_tiny_qwen(family: Any, out_dir: str, *, hidden_size: int = 64, layers: int = 2,
                    vision_dim: int = 32, heads: int = 4) -> None:
    """Build and save a tiny model of a `QwenVLFamily` (`family.name` picks the generation)."""
    import transformers

    tok = char_tokenizer(QWEN_SPECIALS, bos=None, eos="<|im_end|>", pad="<|endoftext|>", unk="<|endoftext|>")
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    head_dim = hidden_size // heads
    half = head_dim // 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]  # [t, h, w] sections summing to head_dim/2
    text = {
        "vocab_size": padded_vocab_size(tok), "hidden_size": hidden_size, "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": heads // 2,
        "max_position_embeddings": 4096,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
    }
    tokens = {
        "image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
    }
    patch = family.patch_size
    if family.name == "qwen2_vl":
        vision = {"depth": layers, "embed_dim": vision_dim, "hidden_size": hidden_size, "num_heads": 2,
                  "mlp_ratio": 2, "patch_size": patch}
        config = transformers.Qwen2VLConfig(text_config=text, vision_config=vision, **tokens)
        model_cls = transformers.Qwen2VLForConditionalGeneration
    elif family.name == "qwen2_5_vl":
        vision = {"depth": layers, "hidden_size": vision_dim, "intermediate_size": 2 * vision_dim, "num_heads": 2,
                  "out_hidden_size": hidden_size, "patch_size": patch, "window_size": 2 * patch * 2,
                  "fullatt_block_indexes": [layers - 1]}
        config = transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
        model_cls = transformers.Qwen2_5_VLForConditionalGeneration
    elif family.name == "qwen3_vl":
        text.update(head_dim=head_dim)
        vision = {"depth": layers, "hidden_size": vision_dim, "intermediate_size": 2 * vision_dim, "num_heads": 2,
                  "out_hidden_size": hidden_size, "patch_size": patch, "num_position_embeddings": 256,
                  "deepstack_visual_indexes": [0]}
        config = transformers.Qwen3VLConfig(text_config=text, vision_config=vision, **tokens)
        model_cls = transformers.Qwen3VLForConditionalGeneration
    else:  # pragma: no cover - only the three Qwen families call this
        raise ValueError(f"not a Qwen-VL family: {family.name}")

    image_processor = transformers.Qwen2VLImageProcessorPil(patch_size=patch, merge_size=2, temporal_patch_size=2)
    processor = family.processor_class()(image_processor, tok, chat_template=family.chat_template)
    family.configure_processor(processor, None)
    save_tiny(model_cls(config), processor, out_dir)

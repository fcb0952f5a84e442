"""Tiny random PaliGemma (1 and 2), Idefics3 / SmolVLM and Mllama models (real config classes, 2 small layers).

Test-only builders, reached through `texocr.models.tiny.build_tiny`; no production module imports this one.
"""

from __future__ import annotations

from typing import Any

from texocr.models import idefics3, mllama
from texocr.models.tiny_parts import char_tokenizer, padded_vocab_size, save_tiny

PALIGEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"]


def paligemma_processor(image_size: int, image_seq_length: int) -> tuple[Any, Any, dict[str, int]]:
    """(processor, tokenizer, special-token ids): SigLIP images of `image_size` px, a character tokenizer."""
    from transformers import PaliGemmaProcessor, SiglipImageProcessorPil

    tok = char_tokenizer(PALIGEMMA_SPECIALS, bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>",
                         extra_special_tokens={"image_token": "<image>"})
    ip = SiglipImageProcessorPil(size={"height": image_size, "width": image_size},
                                 image_mean=[0.5] * 3, image_std=[0.5] * 3)
    ip.image_seq_length = image_seq_length
    processor = PaliGemmaProcessor(ip, tok)  # adds <loc....>/<seg...> tokens to the tokenizer
    return processor, tok, {t: tok.convert_tokens_to_ids(t) for t in PALIGEMMA_SPECIALS}


def build_tiny_paligemma(family: Any, out_dir: str, *, variant: str = "paligemma", hidden_size: int = 64,
                         layers: int = 2, vision_dim: int = 32, image_size: int = 56, patch: int = 14) -> None:
    """Tiny PaliGemma (Gemma text) or PaliGemma 2 (`variant="paligemma2"`, Gemma2 text)."""
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    processor, tok, ids = paligemma_processor(image_size, (image_size // patch) ** 2)
    text = {
        "model_type": "gemma2" if variant == "paligemma2" else "gemma",
        "vocab_size": padded_vocab_size(tok), "hidden_size": hidden_size, "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 16,
        "max_position_embeddings": 2048, "pad_token_id": ids["<pad>"], "eos_token_id": ids["<eos>"],
        "bos_token_id": ids["<bos>"],
    }
    if variant == "paligemma2":
        text.update(query_pre_attn_scalar=16, sliding_window=512)
    vision = {"hidden_size": vision_dim, "intermediate_size": 2 * vision_dim, "num_hidden_layers": layers,
              "num_attention_heads": 2, "image_size": image_size, "patch_size": patch, "vision_use_head": False}
    config = PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=ids["<image>"],
                             vocab_size=text["vocab_size"], projection_dim=hidden_size,
                             hidden_size=hidden_size)
    save_tiny(PaliGemmaForConditionalGeneration(config), processor, out_dir)


def build_tiny_idefics3(family: Any, out_dir: str, *, hidden_size: int = 64, layers: int = 2, vision_dim: int = 32,
                        tile: int = 32, patch: int = 8) -> None:
    """Tiny Idefics3 or SmolVLM (`family` picks the classes): SigLIP tiles + pixel shuffle + Llama."""
    import transformers

    tok = char_tokenizer(idefics3.SPECIALS, bos="<|begin_of_text|>", eos="<|end_of_text|>", pad="<|pad|>",
                         unk="<|end_of_text|>", extra_tokens=idefics3.ROW_COL)
    seq_len = (tile // patch) ** 2 // 4  # pixel shuffle with scale factor 2
    ip = family.image_processor_class()(
        size={"longest_edge": 4 * tile}, max_image_size={"longest_edge": tile},
        image_mean=[0.5] * 3, image_std=[0.5] * 3,
    )
    processor = family.processor_class()(ip, tok, image_seq_len=seq_len, chat_template=family.chat_template)
    ids = {t: tok.convert_tokens_to_ids(t) for t in idefics3.SPECIALS}
    text = {"model_type": "llama", "vocab_size": padded_vocab_size(tok), "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size, "num_hidden_layers": layers, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 4096, "pad_token_id": ids["<|pad|>"],
            "bos_token_id": ids["<|begin_of_text|>"], "eos_token_id": ids["<end_of_utterance>"]}
    vision = {"hidden_size": vision_dim, "intermediate_size": 2 * vision_dim, "num_hidden_layers": layers,
              "num_attention_heads": 2, "image_size": tile, "patch_size": patch}
    config_cls = getattr(transformers, family.model_class_name.replace("ForConditionalGeneration", "Config"))
    config = config_cls(vision_config=vision, text_config=text, image_token_id=ids["<image>"],
                        scale_factor=2, pad_token_id=ids["<|pad|>"])
    model = getattr(transformers, family.model_class_name)(config)
    family.configure_processor(processor, None)
    save_tiny(model, processor, out_dir)


def build_tiny_mllama(family: Any, out_dir: str, *, hidden_size: int = 64, layers: int = 2, vision_dim: int = 32,
                      tile: int = 28, patch: int = 14) -> None:
    """Tiny Llama 3.2 Vision: a 4-tile ViT read by one cross-attention layer."""
    from transformers import (
        MllamaConfig,
        MllamaForConditionalGeneration,
        MllamaProcessor,
    )

    specials = mllama.SPECIALS
    tok = char_tokenizer(specials, bos="<|begin_of_text|>", eos="<|eot_id|>",
                         pad="<|finetune_right_pad_id|>", unk="<|end_of_text|>")
    ip = mllama.image_processor_class()(size={"height": tile, "width": tile}, max_image_tiles=4)
    processor = MllamaProcessor(ip, tok, chat_template=mllama.MLLAMA_TEMPLATE)
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials}
    vocab = padded_vocab_size(tok)
    vision = {"hidden_size": vision_dim, "intermediate_size": 2 * vision_dim, "num_hidden_layers": layers,
              "num_global_layers": 1, "attention_heads": 2, "image_size": tile, "patch_size": patch,
              "intermediate_layers_indices": [0], "vision_output_dim": 2 * vision_dim, "max_num_tiles": 4}
    text = {"vocab_size": vocab + 8, "hidden_size": hidden_size, "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
            "cross_attention_layers": [layers - 1], "max_position_embeddings": 4096,
            "bos_token_id": ids["<|begin_of_text|>"], "eos_token_id": ids["<|eot_id|>"],
            "pad_token_id": ids["<|finetune_right_pad_id|>"]}
    config = MllamaConfig(vision_config=vision, text_config=text, image_token_index=ids["<|image|>"])
    save_tiny(MllamaForConditionalGeneration(config), processor, out_dir)

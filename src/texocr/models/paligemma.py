"""PaliGemma 1 and 2 (SigLIP + Gemma / Gemma2): fixed-size images, prefix-LM attention, no chat template.

Sequence: `<image>` x image_seq_length, `<bos>`, instruction, `\\n` (the prefix, attended bidirectionally,
`token_type_ids` 0), then the answer and `<eos>` (`token_type_ids` 1, causal, in the loss).

Image budget: fixed by the checkpoint (224 px -> 256 tokens, 448 -> 1024, 896 -> 4096); every image is
resized to it, so `min_pixels`/`max_pixels` do not apply. Pick the 224 checkpoints for formulas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from texocr.models.base import INSTRUCTION, Family
from texocr.models.tiny import char_tokenizer, padded_vocab_size, save_tiny

if TYPE_CHECKING:
    from texocr.config import ModelConfig

_LANG = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
_VISION = r".*vision_tower.*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)|.*multi_modal_projector\.linear"


class PaliGemma(Family):
    name = "paligemma"
    model_types = ("paligemma",)
    hub_patterns = (r"paligemma",)
    lora_language = _LANG
    lora_vision_language = f"({_LANG})|({_VISION})"
    vision_module = "model.vision_tower"
    language_module = "model.language_model"
    # the answer is the causal "suffix" of the prefix-LM
    answer_token_values: ClassVar[dict[str, int]] = {"token_type_ids": 1}

    def build_processor(self, path: str, cfg: ModelConfig | None = None) -> Any:
        from transformers import (
            AutoTokenizer,
            PaliGemmaProcessor,
            SiglipImageProcessorPil,
        )

        image_processor = SiglipImageProcessorPil.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        return PaliGemmaProcessor(image_processor, tokenizer)

    def max_image_tokens(self, processor: Any) -> int:
        return int(processor.image_seq_length)

    def image_token_id(self, processor: Any) -> int:
        return int(processor.image_token_id)

    def prompt(self, processor: Any) -> str:
        # The processor inserts <bos> after the image tokens and appends "\n".
        return processor.image_token + INSTRUCTION

    def images_arg(self, images: list[Any]) -> list[Any]:
        return list(images)

    def encode_for_generation(self, processor: Any, images: list[Any]) -> Any:
        enc = super().encode_for_generation(processor, images)
        enc.pop("labels", None)  # the processor derives labels from token_type_ids; not for generate()
        return enc

    def build_tiny(self, out_dir: str, *, variant: str = "paligemma", hidden_size: int = 64,
                   layers: int = 2, vision_dim: int = 32, image_size: int = 56, patch: int = 14) -> None:
        """Tiny PaliGemma (Gemma text) or PaliGemma 2 (`variant="paligemma2"`, Gemma2 text)."""
        from transformers import (
            PaliGemmaConfig,
            PaliGemmaForConditionalGeneration,
            PaliGemmaProcessor,
            SiglipImageProcessorPil,
        )

        specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"]
        tok = char_tokenizer(specials, bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>",
                             extra_special_tokens={"image_token": "<image>"})
        n_img = (image_size // patch) ** 2
        ip = SiglipImageProcessorPil(size={"height": image_size, "width": image_size},
                                     image_mean=[0.5] * 3, image_std=[0.5] * 3)
        ip.image_seq_length = n_img
        processor = PaliGemmaProcessor(ip, tok)  # adds <loc....>/<seg...> tokens to the tokenizer
        ids = {t: tok.convert_tokens_to_ids(t) for t in specials}
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


FAMILY_CLASSES = [PaliGemma]

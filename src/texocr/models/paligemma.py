"""PaliGemma 1 and 2 (SigLIP + Gemma / Gemma2): fixed-size images, prefix-LM attention, no chat template.

Sequence: `<image>` x image_seq_length, `<bos>`, instruction, `\\n` (the prefix, attended bidirectionally,
`token_type_ids` 0), then the answer and `<eos>` (`token_type_ids` 1, causal, in the loss).

Image budget: fixed by the checkpoint (224 px -> 256 tokens, 448 -> 1024, 896 -> 4096); every image is
resized to it, so `min_pixels`/`max_pixels` do not apply. Pick the 224 checkpoints for formulas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from texocr.models.base import INSTRUCTION, Family

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


FAMILY_CLASSES = [PaliGemma]

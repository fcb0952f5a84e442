"""Idefics3 and SmolVLM (SigLIP tiles + pixel shuffle + Llama/SmolLM): `User:<image>...<end_of_utterance>`.

SmolVLM (v1) checkpoints use model_type `idefics3`; SmolVLM2 uses `smolvlm` (own classes, and a video
processor that needs torchvision: texocr builds its processor without one).

Image budget: the image is resized so its long side is `size["longest_edge"]`, cut into tiles of
`max_image_size` plus one global view, each tile costing `image_seq_len` tokens (64 for SmolVLM-256M/500M,
81 for SmolVLM-2.2B, 169 for Idefics3-8B). The stock 4 x tile long side means up to 17 tiles (1,088 to 2,873
tokens). texocr's default long side is 2 tiles when three tiles (a wide formula: 2 + global) fit in ~256
tokens, otherwise one global view only (no splitting). `ModelConfig.max_pixels` sets the long side to
~sqrt(max_pixels) in whole tiles.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from texocr.models.base import Family
from texocr.models.saved import (
    IMAGE_BUDGET_KEY,
    keeps_budget,
    saved_image_budget,
    with_image_budget,
)

if TYPE_CHECKING:
    from texocr.config import ModelConfig

TOKEN_BUDGET = 256
_LANG = r".*(text_model|language_model).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
_VISION = r".*vision_model.*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)|.*connector\.modality_projection\.proj"

IDEFICS3_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
SPECIALS = ["<|end_of_text|>", "<|begin_of_text|>", "<|pad|>", "<fake_token_around_image>", "<image>",
            "<end_of_utterance>", "<global-img>"]
ROW_COL = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]


class Idefics3(Family):
    name = "idefics3"
    model_types = ("idefics3",)
    hub_patterns = (r"idefics3", r"smolvlm(?!2)")
    lora_language = _LANG
    lora_vision_language = f"({_LANG})|({_VISION})"
    vision_module = "model.vision_model"
    language_module = "model.text_model"
    answer_prefix = " "  # the chat format writes `Assistant: answer`
    processor_class_name = "Idefics3Processor"
    image_processor_path = "transformers.models.idefics3.image_processing_pil_idefics3.Idefics3ImageProcessorPil"
    model_class_name = "Idefics3ForConditionalGeneration"
    chat_template = IDEFICS3_TEMPLATE

    def processor_class(self) -> type:
        import transformers

        return keeps_budget(getattr(transformers, self.processor_class_name))

    def image_processor_class(self) -> type:
        # Imported from its module: the lazy top-level name wrongly demands torchvision in 5.17.
        import importlib

        module, _, cls = self.image_processor_path.rpartition(".")
        return getattr(importlib.import_module(module), cls)

    def build_processor(self, path: str, cfg: ModelConfig | None = None) -> Any:
        import transformers

        ip = self.image_processor_class().from_pretrained(path)
        tok = transformers.AutoTokenizer.from_pretrained(path)
        extra = self._processor_kwargs(path)
        processor = self.processor_class()(ip, tok, chat_template=tok.chat_template or self.chat_template,
                                           **extra)
        self.configure_processor(processor, cfg, saved=saved_image_budget(path))
        return processor

    def _processor_kwargs(self, path: str) -> dict[str, Any]:
        import json

        from transformers.utils import cached_file

        try:
            cfg_file = cached_file(path, "processor_config.json")
        except OSError:
            cfg_file = None
        data = json.loads(Path(cfg_file).read_text()) if cfg_file else {}
        return {"image_seq_len": data["image_seq_len"]} if "image_seq_len" in data else {}

    def _tile(self, processor: Any) -> int:
        return int(processor.image_processor.max_image_size["longest_edge"])

    def configure_processor(self, processor: Any, cfg: ModelConfig | None,
                            saved: dict[str, int] | None = None) -> None:
        """The long side in tiles: from `cfg.max_pixels`, else the budget saved with the processor, else the default."""
        tile = self._tile(processor)
        max_pixels = (cfg.max_pixels if cfg and cfg.max_pixels else None) or (saved or {}).get("max_pixels")
        if max_pixels:
            k = max(1, round(math.sqrt(max_pixels) / tile))
        else:
            k = 2 if 3 * processor.image_seq_len <= TOKEN_BUDGET + 64 else 1
        ip = processor.image_processor
        ip.do_image_splitting = k > 1
        ip.size = {"longest_edge": k * tile}
        setattr(processor, IMAGE_BUDGET_KEY, {"max_pixels": (k * tile) ** 2})

    def max_image_tokens(self, processor: Any) -> int:
        ip = processor.image_processor
        k = ip.size["longest_edge"] // self._tile(processor) if ip.do_image_splitting else 0
        return (k * k + 1) * int(processor.image_seq_len)

    def image_token_id(self, processor: Any) -> int:
        return int(processor.image_token_id)

    def end_token(self, processor: Any) -> str:
        return "<end_of_utterance>"

    def model_class(self) -> type:
        import transformers

        return getattr(transformers, self.model_class_name)


def _smolvlm_no_video() -> type:
    """SmolVLMProcessor without its video processor (that one needs torchvision)."""
    from transformers import ProcessorMixin, SmolVLMProcessor

    class TexocrSmolVLMProcessor(SmolVLMProcessor):
        # `image_seq_len` is spelled out: ProcessorMixin saves only the attributes named in __init__.
        def __init__(self, image_processor=None, tokenizer=None, image_seq_len: int = 169,
                     chat_template=None, **kwargs):
            kwargs.pop("video_processor", None)
            super().__init__(image_processor, tokenizer, None, image_seq_len=image_seq_len,
                             chat_template=chat_template, **kwargs)

        def to_dict(self) -> dict[str, Any]:
            out = super().to_dict()
            out["processor_class"] = "SmolVLMProcessor"
            return with_image_budget(out, self)

        def apply_chat_template(self, conversation: Any, chat_template: Any = None, **kwargs: Any) -> Any:
            # SmolVLMProcessor's own version reads video defaults from the (absent) video processor.
            return ProcessorMixin.apply_chat_template(self, conversation, chat_template, **kwargs)

    return TexocrSmolVLMProcessor


class SmolVLM(Idefics3):
    name = "smolvlm"
    model_types = ("smolvlm",)
    hub_patterns = (r"smolvlm2",)
    vision_module = "model.vision_model"
    language_module = "model.text_model"
    image_processor_path = "transformers.models.smolvlm.image_processing_pil_smolvlm.SmolVLMImageProcessorPil"
    model_class_name = "SmolVLMForConditionalGeneration"

    def processor_class(self) -> type:
        return _smolvlm_no_video()


FAMILY_CLASSES = [Idefics3, SmolVLM]

"""Llama 3.2 Vision (Mllama): a ViT over up to 4 tiles, read by cross-attention layers of Llama 3.1.

The text holds one `<|image|>` token per image (vision features enter through cross-attention, not as
sequence tokens), so an image never lengthens the sequence. Per-token `cross_attention_mask`
[B, T, n_images, n_tiles] says which tiles each token may see; answer tokens copy the prompt's last row.

Image budget: the image is resized into at most `max_image_tiles` tiles of 560 px (1,601 vision patches
each); the tile grid ids index the checkpoint's aspect-ratio table, so the tile count is the checkpoint's
and `min_pixels`/`max_pixels` do not apply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from texocr.models.base import Family

if TYPE_CHECKING:
    from texocr.config import ModelConfig

_LANG = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
_VISION = r".*vision_model.*\.(q_proj|k_proj|v_proj|o_proj|fc1|fc2)|.*multi_modal_projector"
IMAGE_PROCESSOR = "transformers.models.mllama.image_processing_pil_mllama.MllamaImageProcessorPil"

MLLAMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|image|>{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>", "<|python_tag|>", "<|image|>"]


def image_processor_class() -> type:
    import importlib

    module, _, cls = IMAGE_PROCESSOR.rpartition(".")  # the lazy top-level name demands torchvision
    return getattr(importlib.import_module(module), cls)


class Mllama(Family):
    name = "mllama"
    model_types = ("mllama",)
    hub_patterns = (r"llama-3\.2-\d+b-vision", r"llama-?3\.2.*vision", r"mllama")
    lora_language = _LANG
    lora_vision_language = f"({_LANG})|({_VISION})"
    vision_module = "model.vision_model"
    language_module = "model.language_model"

    def build_processor(self, path: str, cfg: ModelConfig | None = None) -> Any:
        from transformers import AutoTokenizer, MllamaProcessor

        ip = image_processor_class().from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
        return MllamaProcessor(ip, tok, chat_template=tok.chat_template or MLLAMA_TEMPLATE)

    def max_image_tokens(self, processor: Any) -> int:
        return 1  # one <|image|> per image; the tiles go through cross-attention

    def image_token_id(self, processor: Any) -> int:
        return int(processor.image_token_id)

    def end_token(self, processor: Any) -> str:
        return "<|eot_id|>"


FAMILY_CLASSES = [Mllama]

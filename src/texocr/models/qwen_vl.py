"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: dynamic resolution, one token per (patch x merge)^2 pixels.

Image budget: the stock processor allows 1280 tokens (28*28*1280 pixels, 16384 in Qwen3-VL), so a large
scan of a formula costs thousands of tokens and runs out of memory. texocr's default caps an image at
256 tokens (`max_pixels = 256 * (patch*merge)^2`) and lifts tiny crops to 16 tokens; `ModelConfig.min_pixels`
and `max_pixels` override both. The budget is saved with the processor (processor_config.json) and read back
with it, so a model trained at 32 image tokens is read at 32. Images wider than 100:1 are padded with white first (the processor refuses
aspect ratios above 200).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from texocr.models.base import Family
from texocr.models.saved import IMAGE_BUDGET_KEY, keeps_budget, saved_image_budget

if TYPE_CHECKING:
    from PIL import Image

    from texocr.config import ModelConfig

DEFAULT_MAX_TOKENS = 256
DEFAULT_MIN_TOKENS = 16
MAX_ASPECT = 100

# Module names of the HF implementation (checked on the tiny models in tests/test_models.py):
# language model `model.language_model.layers.N.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj}`,
# vision tower `model.visual.blocks.N.{attn.{qkv,proj}, mlp.{fc1,fc2 | gate_proj,up_proj,down_proj |
# linear_fc1,linear_fc2}}` and its merger `model.visual.merger.*`.
_LANG = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
_VISION = r".*visual\.blocks.*\.(qkv|proj|fc1|fc2|gate_proj|up_proj|down_proj|linear_fc1|linear_fc2)"

QWEN2_VL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN3_VL_TEMPLATE = QWEN2_VL_TEMPLATE.replace(
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}",
    "",
)
QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>",
]


def _no_video(processor_cls: type) -> type:
    """A subclass of a Qwen processor that needs no video processor (which needs torchvision)."""

    class Processor(keeps_budget(processor_cls)):  # type: ignore[misc]
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            kwargs.pop("video_processor", None)
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    Processor.__name__ = Processor.__qualname__ = f"Texocr{processor_cls.__name__}"
    return Processor


class QwenVLFamily(Family):
    """Shared by the three Qwen-VL generations; they differ in classes, patch size and template."""

    lora_language = _LANG
    lora_vision_language = f"({_LANG})|({_VISION})"
    vision_module = "model.visual"
    language_module = "model.language_model"
    processor_class_name = "Qwen2VLProcessor"
    patch_size = 14

    def processor_class(self) -> type:
        import transformers

        return _no_video(getattr(transformers, self.processor_class_name))

    def build_processor(self, path: str, cfg: ModelConfig | None = None) -> Any:
        processor = self.processor_class().from_pretrained(path)
        self.configure_processor(processor, cfg, saved=saved_image_budget(path))
        return processor

    def _pixels_per_token(self, processor: Any) -> int:
        ip = processor.image_processor
        return int((ip.patch_size * ip.merge_size) ** 2)

    def configure_processor(self, processor: Any, cfg: ModelConfig | None,
                            saved: dict[str, int] | None = None) -> None:
        """The budget: `cfg`'s keys where set, else the one the processor was saved with by texocr (`saved`, from
        processor_config.json), else texocr's defaults (a stock hub processor's own budget is far too large)."""
        per_token = self._pixels_per_token(processor)
        saved = saved or {}
        given_lo, given_hi = (cfg.min_pixels, cfg.max_pixels) if cfg else (None, None)
        lo = given_lo or saved.get("min_pixels") or DEFAULT_MIN_TOKENS * per_token
        hi = given_hi or saved.get("max_pixels") or DEFAULT_MAX_TOKENS * per_token
        if lo > hi and given_lo and given_hi:
            from texocr.errors import TexocrError

            raise TexocrError(f"model.min_pixels ({lo}) is larger than model.max_pixels ({hi})")
        if lo > hi:  # one bound given, the other saved or default: the given one wins
            lo, hi = (lo, lo) if given_lo else (hi, hi)
        ip = processor.image_processor
        # A fresh dict: the PIL processor's class-level `size` is shared between instances.
        ip.size = {"shortest_edge": int(lo), "longest_edge": int(hi)}
        for attr, value in (("min_pixels", lo), ("max_pixels", hi)):
            if hasattr(ip, attr):
                setattr(ip, attr, int(value))
        setattr(processor, IMAGE_BUDGET_KEY, {"min_pixels": int(lo), "max_pixels": int(hi)})

    def max_image_tokens(self, processor: Any) -> int:
        return int(processor.image_processor.size["longest_edge"]) // self._pixels_per_token(processor)

    def image_token_id(self, processor: Any) -> int:
        return int(processor.image_token_id)

    def end_token(self, processor: Any) -> str:
        return "<|im_end|>"

    def images_arg(self, images: list[Image.Image]) -> list[Any]:
        return [_pad_aspect(im) for im in images]


def _pad_aspect(image: Image.Image) -> Image.Image:
    """Pad with white so that the long side is at most MAX_ASPECT times the short side."""
    from PIL import Image as PILImage

    w, h = image.size
    if max(w, h) <= MAX_ASPECT * min(w, h):
        return image
    nw, nh = (w, max(h, -(-w // MAX_ASPECT))) if w > h else (max(w, -(-h // MAX_ASPECT)), h)
    canvas = PILImage.new("RGB", (nw, nh), "white")
    canvas.paste(image.convert("RGB"), ((nw - w) // 2, (nh - h) // 2))
    return canvas


class Qwen2VL(QwenVLFamily):
    name = "qwen2_vl"
    model_types = ("qwen2_vl",)
    hub_patterns = (r"qwen2-vl", r"qwen2_vl")
    chat_template = QWEN2_VL_TEMPLATE

    def greedy_decoder(self, model: Any) -> Any | None:
        # Here, not only in Compact: a compact checkpoint's config.json says `qwen2_vl`, so it is usually
        # detected as this family. The loop gives the same tokens as `generate` for any plain Qwen2-VL.
        from texocr.models.compact_decode import GreedyDecoder

        return GreedyDecoder.for_model(model)


class Qwen25VL(QwenVLFamily):
    name = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    hub_patterns = (r"qwen2\.5-vl", r"qwen2_5_vl", r"qwen25-vl")
    processor_class_name = "Qwen2_5_VLProcessor"
    chat_template = QWEN2_VL_TEMPLATE


class Qwen3VL(QwenVLFamily):
    name = "qwen3_vl"
    model_types = ("qwen3_vl",)
    hub_patterns = (r"qwen3-vl", r"qwen3_vl")
    processor_class_name = "Qwen3VLProcessor"
    chat_template = QWEN3_VL_TEMPLATE
    patch_size = 16


FAMILY_CLASSES = [Qwen2VL, Qwen25VL, Qwen3VL]

"""`Family`: what differs between vision-language model families, behind one interface.

A family knows how to build its processor without torchvision, the prompt it is trained with, how a
(image, LaTeX) pair becomes a training sequence whose labels cover only the answer, how a batch is
prepared for generation, how generated ids become LaTeX, its image budget and its LoRA targets.

The training encoding is the same recipe for every family (`Family.encode`):

    prompt ids  = processor(text=prompt, images=[image])      # image tokens expanded by the processor
    answer ids  = tokenizer(target) + [end token]             # tokenized apart: no merge across the seam
    input_ids   = prompt ids + answer ids                     # never truncated
    labels      = [-100] * len(prompt ids) + answer ids

A sequence longer than `max_length` is dropped (and reported), never cut: a cut through the image tokens
is what makes models fail with "image features and image tokens do not match".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # heavy imports stay out of the CLI's start-up path
    import torch
    from PIL import Image
    from transformers import BatchFeature, ProcessorMixin

    from texocr.config import ModelConfig

IGNORE_INDEX = -100
INSTRUCTION = "Write the LaTeX of this formula."


@dataclass
class Encoded:
    """A training batch and the samples that did not fit.

    `batch` is None when every sample was dropped. `kept` indexes the input lists; `dropped` holds
    `(index, sequence_length)` of each over-long sample.
    """

    batch: BatchFeature | None
    kept: list[int]
    dropped: list[tuple[int, int]] = field(default_factory=list)


class Family:
    """Base class: the shared recipe. Subclasses set the class attributes and override the hooks."""

    name: str = ""
    model_types: tuple[str, ...] = ()
    """config.json `model_type` values this family serves."""
    hub_patterns: tuple[str, ...] = ()
    """Regexes (case-insensitive, `re.search`) that recognize a hub id, e.g. `qwen2-vl`."""
    lora_language: str | list[str] = ""
    """LoRA targets (peft regex or names) for scope `language`."""
    lora_vision_language: str | list[str] = ""
    """LoRA targets for scope `vision_language`."""
    vision_module: str = ""
    """Attribute path of the vision tower (and projector) under the model, frozen by `freeze_vision`."""
    language_module: str = ""
    """Attribute path of the language model, frozen by `freeze_language`."""
    answer_prefix: str = ""
    """Text put before the target inside the answer (e.g. the space after Idefics3's `Assistant:`)."""
    answer_token_values: ClassVar[dict[str, int]] = {}
    """Values of per-token processor outputs (besides ids/mask) for answer tokens; default: repeat the
    prompt's last value (right for Mllama's cross-attention mask and Qwen3's mm_token_type_ids)."""

    # ------------------------------------------------------------ model / processor

    def model_class(self) -> type:
        """The transformers class whose `from_pretrained` loads this family."""
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText

    def build_processor(self, path: str, cfg: ModelConfig | None = None) -> ProcessorMixin:
        """Load the processor saved at `path` (local dir or hub id) with PIL image processing."""
        raise NotImplementedError

    def configure_processor(self, processor: Any, cfg: ModelConfig | None) -> None:
        """Apply the image budget (family defaults, `cfg.min_pixels`/`cfg.max_pixels` overrides)."""

    def max_image_tokens(self, processor: Any) -> int:
        """Most image tokens one image can put into the text sequence under the current budget."""
        raise NotImplementedError

    def image_token_id(self, processor: Any) -> int:
        """Id of the placeholder token that the processor repeats once per image feature."""
        tok = processor.tokenizer
        return tok.convert_tokens_to_ids(processor.image_token)

    # ------------------------------------------------------------ prompt

    def prompt(self, processor: Any) -> str:
        """The text before the answer, with the family's image placeholder and generation prompt."""
        messages = [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": INSTRUCTION}],
            }
        ]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def end_token(self, processor: Any) -> str:
        """The token that closes an answer (trained on, and where generation stops)."""
        return processor.tokenizer.eos_token

    def end_token_id(self, processor: Any) -> int:
        return processor.tokenizer.convert_tokens_to_ids(self.end_token(processor))

    def images_arg(self, images: list[Image.Image]) -> list[Any]:
        """The `images=` argument for one image per text (nested: one list per sample)."""
        return [[im] for im in images]

    # ------------------------------------------------------------ encoding

    def _prompt_batch(self, processor: Any, images: list[Image.Image], padding_side: str) -> BatchFeature:
        prompt = self.prompt(processor)
        return processor(
            text=[prompt] * len(images),
            images=self.images_arg(images),
            padding=True,
            padding_side=padding_side,
            add_special_tokens=False,  # the prompt already holds BOS where the family wants one
            return_tensors="pt",
        )

    def encode(
        self, processor: Any, images: list[Image.Image], targets: list[str], max_length: int
    ) -> Encoded:
        """Training encoding with over-long samples dropped (see the module docstring)."""
        import torch

        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        tok = processor.tokenizer
        end_id = self.end_token_id(processor)
        answers = [
            tok(self.answer_prefix + t, add_special_tokens=False)["input_ids"] + [end_id] for t in targets
        ]
        enc = self._prompt_batch(processor, images, padding_side="right")
        prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
        lengths = [int(p) + len(a) for p, a in zip(prompt_lens, answers)]
        kept = [i for i, n in enumerate(lengths) if n <= max_length]
        dropped = [(i, n) for i, n in enumerate(lengths) if n > max_length]
        if not kept:
            return Encoded(None, [], dropped)
        if dropped:  # re-run on the kept ones so every image tensor matches the kept texts
            enc = self._prompt_batch(processor, [images[i] for i in kept], padding_side="right")
            answers = [answers[i] for i in kept]
            prompt_lens = [int(prompt_lens[i]) for i in kept]

        ids_tensor = enc["input_ids"]  # [B, P] right-padded prompts
        token_keys = [
            k
            for k, v in enc.items()
            if k not in ("input_ids", "attention_mask")
            and isinstance(v, torch.Tensor)
            and v.dim() >= 2
            and tuple(v.shape[:2]) == tuple(ids_tensor.shape)
        ]
        total = max(int(p) + len(a) for p, a in zip(prompt_lens, answers))
        batch_size = len(answers)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else end_id
        input_ids = torch.full((batch_size, total), pad_id, dtype=torch.long)  # [B, T]
        attention_mask = torch.zeros((batch_size, total), dtype=torch.long)
        labels = torch.full((batch_size, total), IGNORE_INDEX, dtype=torch.long)
        extra = {k: enc[k].new_zeros((batch_size, total, *enc[k].shape[2:])) for k in token_keys}
        for b, (p, ans) in enumerate(zip(prompt_lens, answers)):
            a = torch.tensor(ans, dtype=torch.long)
            input_ids[b, :p] = ids_tensor[b, :p]
            input_ids[b, p : p + len(ans)] = a
            attention_mask[b, : p + len(ans)] = 1
            labels[b, p : p + len(ans)] = a
            for k in token_keys:
                extra[k][b, :p] = enc[k][b, :p]
                if k in self.answer_token_values:
                    extra[k][b, p : p + len(ans)] = self.answer_token_values[k]
                else:
                    extra[k][b, p : p + len(ans)] = enc[k][b, p - 1]
        data = {k: v for k, v in enc.items() if k not in token_keys}
        data.update(extra, input_ids=input_ids, attention_mask=attention_mask, labels=labels)
        from transformers import BatchFeature

        return Encoded(BatchFeature(data=data), kept, dropped)

    def encode_for_training(
        self, processor: Any, images: list[Image.Image], targets: list[str], max_length: int
    ) -> BatchFeature | None:
        """`input_ids`, `attention_mask`, pixel tensors and `labels` (-100 except answer + end token).

        Over-long samples are left out (use `encode` to learn which); None when none fits.
        """
        return self.encode(processor, images, targets, max_length).batch

    def encode_for_generation(self, processor: Any, images: list[Image.Image]) -> BatchFeature:
        """Left-padded prompts ending in the generation prompt, with their pixel tensors."""
        return self._prompt_batch(processor, images, padding_side="left")

    def generation_kwargs(self, processor: Any) -> dict[str, Any]:
        """Arguments for `model.generate` so it stops at the end token and pads cleanly."""
        tok = processor.tokenizer
        end_id = self.end_token_id(processor)
        eos = [end_id]
        if tok.eos_token_id is not None and tok.eos_token_id != end_id:
            eos.append(tok.eos_token_id)
        pad = tok.pad_token_id if tok.pad_token_id is not None else end_id
        return {"eos_token_id": eos, "pad_token_id": pad}

    def greedy_decoder(self, model: Any) -> Any | None:
        """A faster exact replacement for greedy `model.generate` (see `models/compact_decode.py`), or None
        (the default): then `generate` decodes."""
        return None

    def decode(self, processor: Any, new_token_ids: torch.Tensor | list[list[int]]) -> list[str]:
        """Generated ids (prompt excluded) -> LaTeX strings: cut at the end token, no special tokens."""
        tok = processor.tokenizer
        stops = set(self.generation_kwargs(processor)["eos_token_id"])
        rows = new_token_ids.tolist() if hasattr(new_token_ids, "tolist") else new_token_ids
        out = []
        for row in rows:
            cut = next((i for i, t in enumerate(row) if t in stops), len(row))
            text = tok.decode(row[:cut], skip_special_tokens=True, clean_up_tokenization_spaces=False)
            out.append(text.strip())
        return out

    # ------------------------------------------------------------ LoRA

    def lora_targets(self, scope: str) -> str | list[str]:
        if scope == "language":
            return self.lora_language
        if scope == "vision_language":
            return self.lora_vision_language
        raise ValueError(f"unknown LoRA scope {scope!r}; use 'language' or 'vision_language'")

    def matches_hub_id(self, name: str) -> bool:
        return any(re.search(p, name, flags=re.IGNORECASE) for p in self.hub_patterns)

    def __repr__(self) -> str:
        return f"<Family {self.name}>"
